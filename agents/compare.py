"""``python -m agents.compare``: the benchmark report's command line (see :mod:`agents.report`)."""

import sys

from .report.benchmark import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
