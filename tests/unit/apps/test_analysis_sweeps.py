"""Analysis sweeps: the ρ, lr-ratio and α sweep plots and the partition maps drawn from fixture records, their legends
clear of the panels, and every task's display name and score label."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from analysis.loading import Report
from analysis.paper import sweeps, tables
from analysis.paper.experiments import EXPERIMENTS
from analysis.specs import METHOD_DISPLAY, TASK_DISPLAY
from hizfo.tasks.catalogue import TASKS, score_of
from tests.unit.apps.test_analysis import FIXTURES, PAPER_RECORDS, ROOT, alpha_sweep_scores


def assert_image_drawn(path: Path, min_side: int = 200) -> None:
    """A PNG of a sensible size that is not blank: a good share of its pixels are not the background."""
    from matplotlib import image
    pixels = image.imread(path)
    assert pixels.shape[0] >= min_side and pixels.shape[1] >= min_side
    grey = pixels[..., :3].mean(axis=-1)
    assert grey.std() > 0.05
    assert (grey < 0.9).mean() > 0.01


def assert_legends_clear(figure) -> None:
    """Every legend lies whole inside what savefig(bbox_inches="tight") keeps and covers no axes (twins included)."""
    renderer = figure.canvas.get_renderer()
    kept = figure.get_tightbbox(renderer).transformed(figure.dpi_scale_trans)     # inches -> pixels
    legends = list(figure.legends) + [axis.get_legend() for axis in figure.axes if axis.get_legend()]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert kept.x0 - 1 <= box.x0 and box.x1 <= kept.x1 + 1 and kept.y0 - 1 <= box.y0 and box.y1 <= kept.y1 + 1
        for axis in figure.axes:
            assert not box.overlaps(axis.get_window_extent(renderer)), legend.get_texts()[0].get_text()


# ---------------------------------------------------------------------------------------------------
# sweep plots and partition maps


@pytest.mark.slow
def test_sweep_plots_and_partition_map_from_fixture_records(tmp_path: Path) -> None:
    written = sweeps.write_sweeps(FIXTURES / "cpu", tmp_path, paper_dir=PAPER_RECORDS, report=Report(quiet=True))
    names = {p.name for p in written}
    for stem in ("rho_sweep_cpu", "lr_ratio_sweep_cpu", "alpha_sweep_cpu", "partition_tiny-opt_toy"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        assert_image_drawn(tmp_path / f"{stem}.png")
        pdf = (tmp_path / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and len(pdf) > 5000
    assert not any(name.startswith("rho_sweep.") for name in names)         # no paper-scale records given


@pytest.mark.slow
def test_alpha_sweep_draws_one_line_per_reading_of_alpha() -> None:
    lookup, _, _ = tables.load_cells(FIXTURES / "cpu", Report(quiet=True))
    paper_lookup, _, _ = tables.load_cells(PAPER_RECORDS, Report(quiet=True))
    spec = EXPERIMENTS["fig4"]
    assert spec.cpu.methods == ("hizfo", "hizfo_alpha_loss")
    figure = sweeps.sweep_figure(spec, spec.cpu, "cpu", lookup, paper_lookup)
    try:
        [axis] = figure.axes
        drawn = {c.get_label(): dict(zip(*c.lines[0].get_data())) for c in axis.containers}
        assert set(drawn) == {f"tiny-OPT · {METHOD_DISPLAY[r]} (measured)" for r in ("hizfo", "hizfo_alpha_loss")}
        for reading in ("hizfo", "hizfo_alpha_loss"):
            expected = alpha_sweep_scores(reading)
            assert len(expected) == 7
            assert drawn[f"tiny-OPT · {METHOD_DISPLAY[reading]} (measured)"] == pytest.approx(expected)
        # the loss line holds α = 0.5 from a record written before alpha_mode existed
        old = json.loads((FIXTURES / "cpu" / "tiny-opt" / "toy" / "hizfo" / "method.alpha=0.5,method.alpha_mode=loss"
                          / "seed0.json").read_text())
        assert "alpha_mode" not in old["config"]["method"]
        # no paper points: the CPU twin's tiny-OPT on the toy task is not the paper's OPT-2.7B on DialogSum
        assert not [line for line in axis.get_lines() if line.get_label().startswith("paper:")]
        [legend] = figure.legends
        assert not any(t.get_text().startswith("paper:") for t in legend.get_texts())
        assert_legends_clear(figure)
    finally:
        plt.close(figure)


@pytest.mark.slow
def test_rho_sweep_legend_covers_no_panel() -> None:
    lookup, _, _ = tables.load_cells(FIXTURES / "cpu", Report(quiet=True))
    paper_lookup, _, _ = tables.load_cells(PAPER_RECORDS, Report(quiet=True))
    spec = EXPERIMENTS["table4"]
    figure = sweeps.sweep_figure(spec, spec.cpu, "cpu", lookup, paper_lookup)
    try:
        assert len(figure.axes) == 3                                 # three panels; the paper's models are not here
        labels = [t.get_text() for t in figure.legends[0].get_texts()]
        assert labels == ["tiny-OPT (hidden_size=64) (measured)", "tiny-OPT (hidden_size=128) (measured)"]
        assert_legends_clear(figure)
    finally:
        plt.close(figure)


def _partition_row(partition: dict) -> pd.Series:
    return pd.Series({"partition": partition, "model": "tiny-bloom", "task": "toy", "method": "hizfo", "rho": 0.6,
                      "path": "results/x/seed0.json"})


def _outside_names(partition: dict) -> list[str]:
    return [e["name"] for e in partition["tensor_sets"] if e["layer"] is None]


@pytest.mark.parametrize("crowded", [False, True])
def test_partition_map_names_every_tensor_outside_the_layers_in_full(crowded: bool) -> None:
    partition = json.loads((FIXTURES / "template" / "hizfo_tiny_opt.json").read_text())["partition"]
    sets = partition["tensor_sets"]
    if crowded:    # BLOOM's long names, and more of them than a row has room for on one line each
        inputs = [dict(sets[0], name=f"transformer.word_embeddings_layernorm_{k}.weight") for k in range(9)]
        sets = inputs + [e for e in sets if e["layer"] is not None] + [dict(sets[-1], name="transformer.ln_f.bias")]
        partition = dict(partition, tensor_sets=sets)
    figure = sweeps.partition_figure(_partition_row(partition))
    try:
        left = figure.axes[0]
        renderer = figure.canvas.get_renderer()
        assert sorted(t.get_text().replace("\n", "") for t in left.texts) == sorted(_outside_names(partition))
        boxes = [patch.get_window_extent(renderer) for patch in left.patches]
        for text in left.texts:
            extent = text.get_window_extent(renderer)
            assert any(b.x0 <= extent.x0 and extent.x1 <= b.x1 and b.y0 <= extent.y0 and extent.y1 <= b.y1
                       for b in boxes), text.get_text()
        assert any("\n" in t.get_text() for t in left.texts) == crowded          # wrapped only where needed
        layer0 = [e for e in sets if e["layer"] == 0]
        assert [t.get_text() for t in left.get_xticklabels()] == [sweeps.short_name(e["name"], 0) for e in layer0]
        assert_legends_clear(figure)
    finally:
        plt.close(figure)


def test_wrapped_names_join_back_to_the_name() -> None:
    name = "transformer.word_embeddings_layernorm.weight"
    candidates = sweeps.wrap_candidates(name)
    assert candidates[0] == name and all(c.replace("\n", "") == name for c in candidates)
    assert candidates[-1].split("\n") == ["transformer.", "word_", "embeddings_", "layernorm.", "weight"]


def test_every_task_config_has_a_display_name_and_a_score() -> None:
    configured = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml"))
    assert {"pydoc", "humaneval_split"} <= set(configured)
    assert [t for t in configured if t not in TASK_DISPLAY or t not in TASKS] == []
    assert score_of("pydoc") == score_of("scitldr") and score_of("humaneval_split") == score_of("humaneval")
    assert sweeps.score_label("humaneval_split").endswith("(fraction)")
    assert sweeps.score_label("pydoc").endswith("(×100)")


def test_partition_rows_follow_the_model_from_the_input_side() -> None:
    template = json.loads((FIXTURES / "template" / "hizfo_tiny_opt.json").read_text())
    rows = sweeps.partition_rows(template["partition"]["tensor_sets"])
    assert [label for label, _ in rows] == ["input side", "layer 0", "layer 1", "output side"]
    assert sweeps.short_name("model.decoder.layers.1.fc1.weight", 1) == "fc1.weight"
    layer1 = dict(rows)["layer 1"]
    assert {e["set"] for e in layer1} == {"fo", "zo"}


@pytest.mark.slow
def test_paper_sweeps_plot_without_overlaying_themselves(tmp_path: Path) -> None:
    written = sweeps.write_sweeps(PAPER_RECORDS, tmp_path, paper_dir=PAPER_RECORDS, report=Report(quiet=True))
    assert {p.name for p in written} >= {"rho_sweep.png", "lr_ratio_sweep.png", "alpha_sweep.png"}
    assert_image_drawn(tmp_path / "rho_sweep.png")
