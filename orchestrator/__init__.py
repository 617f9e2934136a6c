"""mtlx's orchestrator: the ``mtlx`` CLI, typed configs, runs on Ray, results and reports.

Importing it checks that ``methods`` and ``envs`` are mtlx's own packages (not another
project's of the same name first on ``sys.path``: :mod:`orchestrator.packages`). In a process
started by one that imported :mod:`mtlx` (Ray workers inherit ``MTLX_OWN_PACKAGES=1``), it
loads them the same way first.
"""

import os

if os.environ.get("MTLX_OWN_PACKAGES") == "1":
    import mtlx  # noqa: F401  (mtlx's own methods and envs, by file location)

from orchestrator.packages import check_own_packages

check_own_packages()
