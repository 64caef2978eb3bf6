"""``python -m torchgeo_xscale`` runs the ``xscale`` command."""

from .cli import main

raise SystemExit(main())
