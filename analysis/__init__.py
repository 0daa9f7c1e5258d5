"""Analysis: reads results records only and writes the paper's tables and plots and the CPU studies' reports.

    python -m analysis.tables --results results/runs --out results/tables      # analysis/paper/tables.py
    python -m analysis.sweeps --results results/runs --out results/figures     # analysis/paper/sweeps.py
    python -m analysis.study --results results/smollm2_cpu/runs --out results/smollm2_cpu/report
    python -m analysis.compare --results results/runs --against full_ft        # any records' arms
    python -m analysis.paper.reference          # regenerate results/paper/ from results/paper/source/*.csv
    python -m analysis.paper.gpu_hours          # paper-scale GPU-hours per preset, from results/paper/

Two packages over shared rooms: analysis/paper/ (the paper's tables and figures) and analysis/study/ (the CPU
studies), both over analysis.loading (records), analysis.cells (cell lookups), analysis.specs (shared names),
analysis.render (tables as Markdown / LaTeX) and analysis.figures (plots on disk). The study imports nothing from
analysis.paper (tests/unit/project/test_structure.py).
"""
