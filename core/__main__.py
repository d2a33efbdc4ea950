"""`python -m core ...` is the `reelforge` command."""

from core.cli import main

raise SystemExit(main())
