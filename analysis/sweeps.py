"""``python -m analysis.sweeps``: the paper's sweep plots and partition maps (analysis/paper/sweeps.py)."""
import sys

from analysis.paper.sweeps import main

if __name__ == "__main__":
    sys.exit(main())
