"""The CPU studies: real-model records turned into arms, intervals, the paper's claims and plots.

    python -m analysis.study --results results/smollm2_cpu/runs --out results/smollm2_cpu/report

The rooms: the driver (driver.py), the arms (arms.py), the statistics (stats.py), the claims (claims.py), the
writer of report.md, claims.md and the plots (report.py), the time and memory budget (budget.py), study 1's arms
(study1_spec.py), and study 2's pre-registered arms (study2_spec.py) and rules (prereg.py). It reads records through analysis.loading and the
shared names of analysis.specs; it imports nothing from analysis.paper (tests/unit/project/test_structure.py).
"""
