"""``python -m intentra``: the command-line tool."""

from intentra.cli import main

raise SystemExit(main())
