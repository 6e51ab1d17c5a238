"""``python -m gpubp``: the same command line as the ``gpubp`` script."""

from .cli import main

raise SystemExit(main())
