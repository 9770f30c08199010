"""``python -m mudsc``: see :mod:`mudsc.cli`."""

from .cli import main

raise SystemExit(main())
