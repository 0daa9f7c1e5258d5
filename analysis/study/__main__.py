"""``python -m analysis.study``: the study's report from its records (analysis/study/driver.py)."""
import sys

from analysis.study.driver import main

if __name__ == "__main__":
    sys.exit(main())
