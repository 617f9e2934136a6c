"""``python -m mtlx`` = the ``mtlx`` command, with mtlx's own ``methods`` and ``envs`` loaded
by file location first (see :mod:`mtlx`)."""

import mtlx  # noqa: F401  (loads mtlx's own methods and envs before the orchestrator)
from orchestrator.cli import main

raise SystemExit(main())
