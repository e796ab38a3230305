"""Gateway memory per idle socket: RSS growth of a `pgflow serve` process holding N sockets.

    python bench/memory.py [--quick] [--sockets 10000] [--repeat N] [-- `pgflow serve` options]

Per repeat, two fresh gateways (and servers), the memory phase of bench/fanout.py only:
`subscribed` sockets each follow one run and have received its replay; `idle` sockets never
subscribe. KiB per socket = (RSS with the sockets open - RSS before) / sockets. The client
offers permessage-deflate, as browsers do (negotiated sockets cost nothing more between
messages: no compression context is kept). Prints one JSON line.
"""

from __future__ import annotations

import argparse
from typing import Any

from _common import emit, machine, summary
from fanout import once


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="2,000 sockets, 1 repeat")
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("gateway_args", nargs="*", help="extra `pgflow serve` options")
    args = parser.parse_args()
    if args.quick:
        args.sockets, args.repeat = 2000, 1
    results: dict[str, list[dict[str, Any]]] = {"subscribed": [], "idle": []}
    for _ in range(args.repeat):
        for mode in results:
            run = argparse.Namespace(
                sockets=args.sockets, events=0, paced=0, pace=0.0, timeout=120.0,
                deflate=True, idle=mode == "idle", memory_only=True, client_gc=False,
                gateway_args=args.gateway_args)
            results[mode].append(once(run))
    emit({
        "benchmark": "memory",
        "sockets": args.sockets,
        "repeat": args.repeat,
        "kib_per_subscribed_socket": summary([r["kib_per_idle_socket"]
                                              for r in results["subscribed"]]),
        "kib_per_idle_socket": summary([r["kib_per_idle_socket"] for r in results["idle"]]),
        "deflate_negotiated_sockets": [r["deflate_negotiated_sockets"]
                                       for rs in results.values() for r in rs],
        "runs": results,
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
