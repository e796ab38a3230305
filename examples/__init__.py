"""Example flows for ``pgflow demo`` and the tests: ``--flows examples.flows``."""

from __future__ import annotations
