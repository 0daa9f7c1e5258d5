"""Figures on disk: each as PNG and PDF, the same records giving the same bytes. Shared by the paper's sweep plots
and the study's plots (matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(figure: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem``.png and ``stem``.pdf and close the figure; the PDF carries no creation date, so the same
    records give the same bytes and a regenerated report changes only the plots whose data changed."""
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        metadata = {"CreationDate": None} if path.suffix == ".pdf" else None
        figure.savefig(path, dpi=150, bbox_inches="tight", metadata=metadata)
    plt.close(figure)
    return paths
