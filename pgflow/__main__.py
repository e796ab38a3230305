from __future__ import annotations

from pgflow.cli import main

raise SystemExit(main())
