"""A frame is encoded once per encoding, and each compressed message stands alone."""

from __future__ import annotations

import os
import zlib

from websockets.frames import Frame, Opcode

from gateway.wire import TextFrame


def parse(data: bytes) -> Frame:
    """Parses one unmasked server frame (no extension: RSV1 stays visible)."""
    first, second = data[0], data[1]
    length, offset = second & 0x7F, 2
    if length == 126:
        length, offset = int.from_bytes(data[2:4]), 4
    elif length == 127:
        length, offset = int.from_bytes(data[2:10]), 10
    assert not second & 0x80, "server frames are not masked"
    assert len(data) == offset + length
    return Frame(Opcode(first & 0x0F), data[offset:], fin=bool(first & 0x80),
                 rsv1=bool(first & 0x40))


def inflate_alone(payload: bytes) -> str:
    """What a client without context takeover does: a fresh inflater per message."""
    inflater = zlib.decompressobj(wbits=-15)
    return (inflater.decompress(payload + b"\x00\x00\xff\xff") + inflater.flush()).decode()


def test_a_plain_frame_is_the_text_in_one_final_unmasked_text_frame() -> None:
    text = '{"type":"event","seq":1,"note":"ünïcödé"}'
    frame = parse(TextFrame(text).wire(False))
    assert (frame.opcode, frame.fin, frame.rsv1) == (Opcode.TEXT, True, False)
    assert bytes(frame.data).decode() == text


def test_each_deflated_message_inflates_without_any_earlier_one() -> None:
    texts = [f'{{"type":"event","seq":{i},"output":"{"abc" * (50 + i)}"}}' for i in range(3)]
    frames = [parse(TextFrame(text).wire(True)) for text in texts]
    assert all(f.rsv1 and f.fin for f in frames)
    # Decoded in reverse order, each alone: no message depends on another's context.
    for text, frame in reversed(list(zip(texts, frames, strict=True))):
        assert inflate_alone(bytes(frame.data)) == text
    assert sum(len(f.data) for f in frames) < sum(len(t) for t in texts) / 4


def test_a_deflated_frame_is_never_larger_than_the_plain_one() -> None:
    for _ in range(20):
        # Random code points: UTF-8 that deflate can barely shrink, if at all.
        text = "".join(chr(0x4E00 + b) for b in os.urandom(300))
        frame = TextFrame(text)
        assert len(frame.wire(True)) <= len(frame.wire(False))
        decoded = parse(frame.wire(True))
        payload = bytes(decoded.data)
        assert (inflate_alone(payload) if decoded.rsv1 else payload.decode()) == text


def test_encodings_are_made_once_and_shared() -> None:
    frame = TextFrame("y" * 1000)
    assert frame.wire(True) is frame.wire(True)
    assert frame.wire(False) is frame.wire(False)
    assert frame.asgi is frame.asgi
    assert frame.asgi == {"type": "websocket.send", "text": "y" * 1000}
