"""``python -m etcdkit``: the same as the ``etcdkit`` command."""

from etcdkit.cli import main

raise SystemExit(main())
