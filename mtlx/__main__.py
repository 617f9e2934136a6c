"""``python -m mtlx`` = the ``mtlx`` command, with mtlx's own ``methods`` and ``envs`` loaded
by file location first (see :mod:`mtlx`)."""

from mtlx import main

raise SystemExit(main())
