"""``python -m analysis.tables``: the paper's tables (analysis/paper/tables.py)."""
import sys

from analysis.paper.tables import main

if __name__ == "__main__":
    sys.exit(main())
