"""`python -m edgecut` is the `edgecut` command."""

from edgecut.cli import main

raise SystemExit(main())
