"""A server text frame, built once and written as the same bytes to every socket it goes to.

The fan-out shares one ``TextFrame`` between all the subscribers of an event. Each encoding is
made on first use and kept: the ASGI ``websocket.send`` message (sockets served through ASGI),
the plain wire bytes, and the permessage-deflate bytes. Deflate is negotiated without context
takeover in either direction (``gateway/websocket.py``), so a compressed message depends on no
earlier one and one compression serves every socket.
"""

from __future__ import annotations

from typing import Any

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

# Stateless between messages (no context takeover), hence shareable. memLevel 5, 12-bit window:
# a small compressor, made once per compressed event.
_DEFLATE = PerMessageDeflate(
    remote_no_context_takeover=True,
    local_no_context_takeover=True,
    remote_max_window_bits=15,
    local_max_window_bits=12,
    compress_settings={"memLevel": 5},
)


class TextFrame:
    """One outgoing text message."""

    # __weakref__: listener.FrameCache shares large log frames while an outbox holds them.
    __slots__ = ("__weakref__", "_asgi", "_deflated", "_plain", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._asgi: dict[str, Any] | None = None
        self._plain: bytes | None = None
        self._deflated: bytes | None = None

    @property
    def asgi(self) -> dict[str, Any]:
        """The ``websocket.send`` message, for a socket served through ASGI."""
        message = self._asgi
        if message is None:
            message = self._asgi = {"type": "websocket.send", "text": self.text}
        return message

    def for_socket(self, deflate_from: int | None, deflate_upto: int) -> bytes:
        """The bytes for one socket: ``deflate_from`` is None unless the socket negotiated
        permessage-deflate, then the length from which its frames go compressed; frames whose
        payload is over ``deflate_upto`` bytes go plain (``--deflate-max-bytes``: Node's
        WebSocket refuses a compressed message that inflates past 4 MiB)."""
        size = len(self.text)
        if deflate_from is None or size < deflate_from:
            return self.wire(False)
        # Checked on characters first: a UTF-8 payload is at most 4 bytes per character.
        return self.wire(size * 4 <= deflate_upto or self.payload_bytes <= deflate_upto)

    @property
    def payload_bytes(self) -> int:
        """The UTF-8 length of the text (from the plain frame, encoded once and kept)."""
        plain = self.wire(False)
        # The header is 2 bytes, plus 2 or 8 for the length past 125 and 65535 bytes.
        length = plain[1] & 0x7F
        return len(plain) - (2 if length < 126 else 4 if length == 126 else 10)

    def wire(self, deflate: bool) -> bytes:
        """The frame's bytes, compressed (``deflate``: permessage-deflate, RSV1 set) or not.

        Each message chooses (RFC 7692): the caller sends small frames plain even on a deflate
        socket, and a frame that would not shrink goes out plain anyway.
        """
        if deflate:
            data = self._deflated
            if data is None:
                data = self._deflated = self._encode_deflated()
            return data
        data = self._plain
        if data is None:
            data = self._plain = Frame(Opcode.TEXT, self.text.encode()).serialize(mask=False)
        return data

    def _encode_deflated(self) -> bytes:
        payload = self.text.encode()
        compressed = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[_DEFLATE])
        plain = self.wire(False)
        # Incompressible text (rare for JSON) goes out plain rather than larger.
        return compressed if len(compressed) < len(plain) else plain

    def __repr__(self) -> str:
        return f"<TextFrame {self.text[:40]!r}>"
