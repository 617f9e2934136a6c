"""``python -m orchestrator`` = the ``mtlx`` command."""

from orchestrator.cli import main

raise SystemExit(main())
