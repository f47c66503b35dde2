"""``python -m bench``: the ``cxr-triage bench`` group from a checkout that is on ``PYTHONPATH`` but not
installed (``bench/gpu.sh`` on a bare GPU machine), where the console script finds no entry points."""

import os

from bench.cli import bench
from cxr_triage.logs import configure_logging

configure_logging(os.environ.get("CXR_LOG_LEVEL", "INFO").upper())
bench(prog_name="cxr-triage bench")
