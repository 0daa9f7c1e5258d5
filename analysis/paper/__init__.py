"""The paper's tables and figures: what each holds and how it is shown (experiments.py), the tables (tables.py),
the sweep plots and partition maps (sweeps.py), the records no table shows (coverage.py), the paper's own numbers
as records (reference.py) and the paper-scale GPU-hours estimate (gpu_hours.py).

    python -m analysis.tables --results results/runs --out results/tables
    python -m analysis.sweeps --results results/runs --out results/figures
    python -m analysis.paper.reference          # regenerate results/paper/ from results/paper/source/*.csv
    python -m analysis.paper.gpu_hours          # paper-scale GPU-hours per preset, from results/paper/

Beneath it, shared with the CPU studies (analysis/study/): analysis.loading, analysis.cells, analysis.specs,
analysis.render and analysis.figures.
"""
