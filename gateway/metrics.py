"""The gateway's counters and gauges, rendered as Prometheus text (``GET /metrics``).

Counters are plain integer attributes, incremented on hot paths without locks (one event loop).
Gauges are read from their owners (fan-out, listener) when the page is rendered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Metrics:
    notifications_in: int = 0
    events_in_notify: int = 0  # events that arrived inline in a NOTIFY
    events_in_log: int = 0  # events read from the log (replays, catch-ups, refs)
    frames_out: int = 0  # frames handed to the server for sockets
    log_reads: int = 0
    log_gaps: int = 0  # subscriptions ended because their run's log lacks events (or the run)
    sockets_accepted: int = 0
    sockets_refused: Counter[str] = field(default_factory=Counter)  # reason -> count
    http_requests: Counter[int] = field(default_factory=Counter)  # status -> count
    # Values kept by their owners (fan-out, listener): name -> (kind, help, read).
    observed: dict[str, tuple[str, str, Callable[[], float]]] = field(default_factory=dict)

    def observe(self, name: str, kind: str, help_text: str, read: Callable[[], float]) -> None:
        """Registers a gauge or counter whose value is read when the page is rendered."""
        if kind not in ("gauge", "counter"):
            raise RuntimeError(f"metric kind must be gauge or counter, not {kind!r}")
        self.observed[name] = (kind, help_text, read)

    def render(self) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                number = int(value) if float(value).is_integer() else value
                lines.append(f"{name}{labels} {number}")

        for name, (kind, help_text, read) in self.observed.items():
            metric(name, kind, help_text, [("", read())])
        metric("pgflow_notifications_total", "counter",
               "pgflow_events notifications received", [("", self.notifications_in)])
        metric("pgflow_events_in_total", "counter", "events received, by source", [
            ('{source="notify"}', self.events_in_notify),
            ('{source="log"}', self.events_in_log),
        ])
        metric("pgflow_frames_out_total", "counter",
               "websocket frames handed to the server", [("", self.frames_out)])
        metric("pgflow_log_reads_total", "counter",
               "queries reading the event log (replays, catch-ups)", [("", self.log_reads)])
        metric("pgflow_log_gaps_total", "counter",
               "subscriptions ended with gap or not_found: events or run missing from the log",
               [("", self.log_gaps)])
        metric("pgflow_sockets_accepted_total", "counter", "websockets accepted",
               [("", self.sockets_accepted)])
        metric("pgflow_sockets_refused_total", "counter", "websockets refused, by reason",
               [(f'{{reason="{r}"}}', n) for r, n in sorted(self.sockets_refused.items())])
        metric("pgflow_http_requests_total", "counter", "HTTP requests, by status",
               [(f'{{status="{s}"}}', n) for s, n in sorted(self.http_requests.items())])
        return "\n".join(lines) + "\n"
