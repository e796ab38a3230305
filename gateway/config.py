"""The gateway's settings: limits, access control, and their command-line options."""

from __future__ import annotations

import argparse


def add_gateway_options(parser: argparse.ArgumentParser) -> None:
    """Options of ``pgflow serve`` beyond host, port, database and flows (auth, limits)."""
