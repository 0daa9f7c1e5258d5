"""Analysis tables: the paper's numbers round-trip into Tables 1–5 cell for cell, CPU-scale records fill them, bad
input is survived (the sweep plots and partition maps: tests/unit/apps/test_analysis_sweeps.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.paper import gpu_hours, sweeps, tables
from analysis.paper import reference as paper_reference
from analysis.loading import Report, load_records, settle_cells
from analysis.paper.experiments import EXPERIMENTS
from analysis.specs import (FLOPS_SHARE, METHOD_ALIASES, METHOD_DISPLAY, MODEL_ALIASES, QUANTITY_HEADERS, TASK_DISPLAY,
                            method_label, model_display)

ROOT = Path(__file__).resolve().parents[3]
PAPER_RECORDS = ROOT / "results" / "paper"
PAPER_CSV = PAPER_RECORDS / "source"
FIXTURES = ROOT / "tests" / "fixtures" / "records"


# ---------------------------------------------------------------------------------------------------
# helpers


def parse_markdown_tables(text: str) -> dict[str, dict[tuple, str]]:
    """{section heading: {(row section, row label, column group, sub-column): cell}} from a tables.py .md file."""
    parsed: dict[str, dict[tuple, str]] = {}
    heading, lines = None, text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            heading = line[3:].strip()
            parsed[heading] = {}
        elif line.startswith("| ") and heading is not None and not parsed[heading]:
            groups = [c.strip() for c in line.strip("|").split("|")][1:]
            for j in range(1, len(groups)):              # group names span their empty neighbours
                groups[j] = groups[j] or groups[j - 1]
            subs = [c.strip() for c in lines[i + 2].strip("|").split("|")][1:]
            section, i = None, i + 3
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip("|").split("|")]
                if cells[0].startswith("**"):
                    section = cells[0].strip("*")
                else:
                    for group, sub, value in zip(groups, subs, cells[1:]):
                        parsed[heading][(section, cells[0], group, sub)] = value
                i += 1
            continue
        i += 1
    return parsed


def numbers(cell: str) -> list[float | None]:
    """'35.6/16.7/29.1' -> [35.6, 16.7, 29.1]; '–' -> [None]."""
    return [None if part == "–" else float(part) for part in cell.split("/")]


def is_number(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def expected_cells(csv_dir: Path) -> dict[str, list[tuple[tuple, float]]]:
    """Every number of the paper's CSVs with the (section, row, group, sub-column) it must appear in."""
    out: dict[str, list[tuple[tuple, float]]] = {f"table{i}": [] for i in range(1, 6)}
    show_model = lambda name: model_display(MODEL_ALIASES[name])          # noqa: E731
    show_method = lambda name: METHOD_DISPLAY[METHOD_ALIASES[name]]       # noqa: E731
    for name in ("table1", "table3"):
        for r in pd.read_csv(csv_dir / f"{name}.csv").to_dict("records"):
            where = (show_model(r["model"]), show_method(r["method"]), TASK_DISPLAY[r["task"]])
            out[name] += [((*where, "Mem. (GB)", 0), r["mem_gb"]), ((*where, "Time (h)", 0), r["time_h"])]
            if r["task"] == "webquestions":
                out[name].append(((*where, "Acc.", 0), r["acc"]))
            else:
                out[name] += [((*where, "R1/R2/RL", k), r[c]) for k, c in enumerate(("rouge1", "rouge2", "rougeL"))]
    for r in pd.read_csv(csv_dir / "table2.csv").to_dict("records"):
        for column, task, sub in (("gsm8k_acc", "GSM8K", "Acc"), ("math500_acc", "Math500", "Acc"),
                                  ("humaneval_pass1", "HumanEval", "pass@1")):
            out["table2"].append(((show_model(r["model"]), show_method(r["method"]), task, sub, 0), r[column]))
    for r in pd.read_csv(csv_dir / "table4.csv").to_dict("records"):
        where = (None, f"ρ = {r['rho']:g}", show_model(r["model"]))
        out["table4"] += [((*where, "Time (h)", 0), r["time_h"]), ((*where, "Mem (GB)", 0), r["mem_gb"])]
        out["table4"] += [((*where, "R1/R2/RL", k), r[c]) for k, c in enumerate(("rouge1", "rouge2", "rougeL"))]
    for r in pd.read_csv(csv_dir / "table5.csv").to_dict("records"):
        row = "Hi-ZFO" if r["alpha"] else "w/o ZO-Loss"
        task = TASK_DISPLAY[r["task"]]
        reading = METHOD_DISPLAY["hizfo"]            # the paper's records hold the update reading of α
        if r["task"] == "webquestions":
            out["table5"].append(((reading, row, show_model(r["model"]), f"{task} Acc.", 0), r["acc"]))
        else:
            out["table5"] += [((reading, row, show_model(r["model"]), f"{task} R1/R2/RL", k), r[c])
                              for k, c in enumerate(("rouge1", "rouge2", "rougeL"))]
    return {name: [(where, float(v)) for where, v in cells if is_number(v)] for name, cells in out.items()}


def alpha_sweep_scores(reading: str) -> dict[float, float]:
    """ROUGE-1 by α of the fixture's tiny-OPT Hi-ZFO records of one reading of α (ρ and r at the defaults)."""
    scores: dict[float, float] = {}
    for path in (FIXTURES / "cpu" / "tiny-opt" / "toy" / "hizfo").rglob("seed0.json"):
        record = json.loads(path.read_text())
        method = record["config"]["method"]
        if ("model." not in record["config"]["variant"] and method_label(method) == reading
                and method["rho"] == 0.6 and method["lr_ratio"] == 0.1):
            scores[method["alpha"]] = record["metrics"]["rouge1"]
    return scores


@pytest.fixture(scope="module")
def paper_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paper_tables")
    written = tables.write_tables(PAPER_RECORDS, out, paper_dir=None, report=Report(quiet=True))
    assert set(written) == {"table1", "table2", "table3", "table4", "table5"}
    return out


# ---------------------------------------------------------------------------------------------------
# round trip: the paper's numbers, as records, regenerate its tables


@pytest.mark.parametrize("name", ["table1", "table2", "table3", "table4", "table5"])
def test_paper_records_regenerate_each_table_cell_for_cell(paper_tables: Path, name: str) -> None:
    parsed = parse_markdown_tables((paper_tables / f"{name}.md").read_text())
    assert list(parsed) == ["Paper-scale grid"]                      # no CPU twin for the paper's own records
    shown = parsed["Paper-scale grid"]
    expected = expected_cells(PAPER_CSV)[name]
    assert expected
    for (section, row, group, sub, position), value in expected:
        cell = shown[(section, row, group, sub)]
        assert numbers(cell)[position] == pytest.approx(value, abs=1e-9), (name, section, row, group, sub, cell)
    filled = sum(1 for cell in shown.values() for n in numbers(cell) if n is not None)
    assert filled == len(expected), "a cell holds a number the paper does not give"
    latex = (paper_tables / f"{name}.tex").read_text()
    assert r"\toprule" in latex and r"\bottomrule" in latex
    assert all(cell.replace("–", "--") in latex for cell in shown.values() if cell != "–")


def test_paper_layout_rows_and_columns_follow_the_paper(paper_tables: Path) -> None:
    text = (paper_tables / "table1.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| Model & Method"))
    assert header.split("|")[2].strip() == "SciTLDR" and "WebQuestion" in header
    rows = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert rows[3:12] == ["**OPT-2.7B**", "Full FT", "FT-Top2", "Prefix-T", "LoRA", "MeZO", "Bilevel-ZOFO", "GT-0.7",
                          "Hi-ZFO"]
    assert "Bieval" not in text and "BLOOM-3B" not in text


def test_paper_points_of_the_figures_are_in_the_sweeps() -> None:
    lookup, _, _ = tables.load_cells(PAPER_RECORDS, Report(quiet=True))
    fig3, fig4 = EXPERIMENTS["fig3"].paper, EXPERIMENTS["fig4"].paper
    r = sweeps.series(fig3, lookup, "opt-2.7b", "metric.rouge1").set_index("x")["mean"].to_dict()
    alpha = sweeps.series(fig4, lookup, "opt-2.7b", "metric.rouge1").set_index("x")["mean"].to_dict()
    assert r == {0.1: 26.7, 0.7: 14.2}
    assert alpha == {0.0: 23.1, 0.1: 26.7}


def test_committed_paper_records_match_the_csvs(tmp_path: Path) -> None:
    """results/paper is what analysis.paper.reference makes from its CSVs (results/paper/source/)."""
    written = paper_reference.write_paper_records(PAPER_CSV, tmp_path)
    assert len(written) == 160
    committed = sorted(p.relative_to(PAPER_RECORDS) for p in PAPER_RECORDS.rglob("seed*.json"))
    assert sorted(p.relative_to(tmp_path) for p in written) == committed
    for relative in committed:
        assert json.loads((tmp_path / relative).read_text()) == json.loads((PAPER_RECORDS / relative).read_text())


def test_paper_inconsistency_is_refused(tmp_path: Path) -> None:
    for name in paper_reference.SOURCE_FILES:
        shutil.copy(PAPER_CSV / name, tmp_path / name)
    table3 = pd.read_csv(tmp_path / "table3.csv")
    table3.loc[(table3["model"] == "OPT-2.7B") & (table3["method"] == "Hi-ZFO") & (table3["task"] == "scitldr"),
               "rouge1"] = 99.9
    table3.to_csv(tmp_path / "table3.csv", index=False)
    with pytest.raises(ValueError, match="disagrees with itself"):
        paper_reference.collect_cells(tmp_path)


@pytest.mark.slow
def test_gpu_hours_sum_the_papers_time_column() -> None:
    costs = gpu_hours.preset_costs(PAPER_RECORDS).set_index("preset")
    table1 = pd.read_csv(PAPER_CSV / "table1.csv")
    assert costs.loc["table1", "job_hours"] == pytest.approx(table1["time_h"].sum(), abs=0.01)
    table3 = pd.read_csv(PAPER_CSV / "table3.csv")
    gpus = np.ceil(table3["mem_gb"] / 80).clip(lower=1)
    assert costs.loc["table3", "gpu_hours"] == pytest.approx((table3["time_h"] * gpus).sum(), abs=0.01)
    assert pd.isna(costs.loc["table2", "job_hours"])                 # the paper reports no time for Table 2
    assert costs.loc["fig3", "time_estimated"] == 9


# ---------------------------------------------------------------------------------------------------
# CPU-scale records: seeds, units, missing cells, the view against the paper


@pytest.fixture(scope="module")
def cpu_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cpu_tables")
    tables.write_tables(FIXTURES / "cpu", out, paper_dir=PAPER_RECORDS, report=Report(quiet=True))
    return out


@pytest.mark.slow
def test_seeds_are_averaged_and_cpu_memory_is_labelled(cpu_tables: Path) -> None:
    shown = parse_markdown_tables((cpu_tables / "table1.md").read_text())["CPU-scale twin (stand-in models, toy task)"]
    assert shown[("tiny-OPT", "Full FT", "Toy", "R1/R2/RL")] == "37.0±1.4/14.8±0.6/29.6±1.1"   # seeds 38 and 36
    assert shown[("tiny-OPT", "Full FT", "Toy", "Peak RSS (GB)")] == "0.52±0.00"
    assert shown[("tiny-OPT", "Full FT", "Toy", "Time (s)")] == "6.2±0.3"
    assert shown[("tiny-OPT", "FT-Top2", "Toy", "R1/R2/RL")] == "–/–/–"                        # missing, not zero
    assert shown[("tiny-Qwen2", "MeZO", "Toy", "Time (s)")] == "–"                              # failed run
    text = (cpu_tables / "table1.md").read_text()
    assert "Mem. (GB)" not in text and "not GPU memory" in text
    assert "Failed, shown as '–': tiny-Qwen2 / MeZO / Toy: TrainingDiverged" in text
    assert "tiny-qwen2/toy/mezo/default/seed0.json" in text


def test_a_config_run_under_two_variant_names_counts_once(cpu_tables: Path) -> None:
    report = Report(quiet=True)
    settled = settle_cells(load_records(FIXTURES / "cpu", report), report)
    default_cell = settled[(settled["model"] == "tiny-opt") & (settled["method"] == "hizfo") & (settled["rho"] == 0.6)
                           & (settled["alpha"] == 0.1) & (settled["lr_ratio"] == 0.1)]
    assert len(default_cell) == 1
    assert any("counted once" in note and "method.alpha=0.1" in note for note in report.notes)
    shown = parse_markdown_tables((cpu_tables / "table5.md").read_text())["CPU-scale twin (stand-in models, toy task)"]
    assert shown[(METHOD_DISPLAY["hizfo"], "Hi-ZFO", "tiny-OPT", "Toy R1/R2/RL")] == "42.0/16.8/33.6"


def test_width_ladder_rows_and_rho_rows(cpu_tables: Path) -> None:
    table4 = parse_markdown_tables((cpu_tables / "table4.md").read_text())["CPU-scale twin (stand-in models, toy task)"]
    assert table4[(None, "ρ = 0.6", "tiny-OPT (hidden_size=128)", "R1/R2/RL")].startswith("43.5±0.7/")
    table3 = parse_markdown_tables((cpu_tables / "table3.md").read_text())["CPU-scale twin (stand-in models, toy task)"]
    assert table3[("tiny-OPT (hidden_size=64)", "Hi-ZFO", "Toy", "R1/R2/RL")].startswith("40.5±0.7/")
    assert table3[("tiny-OPT (hidden_size=32)", "Hi-ZFO", "Toy", "R1/R2/RL")] == "–/–/–"


def test_table4_shows_the_backward_flops_share_per_rho(cpu_tables: Path, paper_tables: Path) -> None:
    header = QUANTITY_HEADERS[FLOPS_SHARE]
    assert header == "backward FLOPs (share of Full FT)"
    shown = parse_markdown_tables((cpu_tables / "table4.md").read_text())["CPU-scale twin (stand-in models, toy task)"]
    for width in (64, 128):
        model = f"tiny-OPT (hidden_size={width})"
        for rho in EXPERIMENTS["table4"].cpu.sweep_values:
            variant = f"method.rho={rho},model.arch.hidden_size={width}"
            folder = FIXTURES / "cpu" / "tiny-opt" / "toy" / "hizfo" / variant
            shares = [json.loads(p.read_text())["partition"]["backward_flops_share"] for p in folder.glob("seed*.json")]
            assert len(shares) == 2
            mean, std = shown[(None, f"ρ = {rho:g}", model, header)].split("±")
            assert float(mean) == pytest.approx(np.mean(shares), abs=0.005)             # mean over the seeds
            assert float(std) == pytest.approx(np.std(shares, ddof=1), abs=0.005)
        # the budget's clamp (ρ_bp = 0.05) makes the two smallest ρ spend the same, as in the paper's Table 4
        low = {shown[(None, f"ρ = {rho}", model, header)] for rho in (0.2, 0.3)}
        assert low == {"0.05±0.00"} and shown[(None, "ρ = 0.6", model, header)] not in low
    latex = (cpu_tables / "table4.tex").read_text()
    assert latex.count("backward FLOPs (share of Full FT)") == 2 and r"\begin{tabular}{l cccc cccc}" in latex
    assert "0.41$\\pm$0.01" in latex
    # the paper's records carry no partition: the column is there, every cell "–"
    paper = parse_markdown_tables((paper_tables / "table4.md").read_text())["Paper-scale grid"]
    column = [cell for (_, _, _, sub), cell in paper.items() if sub == header]
    assert len(column) == 14 and set(column) == {"–"}


def test_table5_shows_both_readings_of_alpha(cpu_tables: Path) -> None:
    shown = parse_markdown_tables((cpu_tables / "table5.md").read_text())["CPU-scale twin (stand-in models, toy task)"]
    for reading in ("hizfo", "hizfo_alpha_loss"):
        scores = alpha_sweep_scores(reading)
        for alpha, row in ((0.1, "Hi-ZFO"), (0.0, "w/o ZO-Loss")):
            cell = shown[(METHOD_DISPLAY[reading], row, "tiny-OPT", "Toy R1/R2/RL")]
            assert numbers(cell)[0] == pytest.approx(scores[alpha], abs=0.05), (reading, row)
    assert shown[(METHOD_DISPLAY["hizfo_alpha_loss"], "Hi-ZFO", "tiny-BLOOM", "Toy R1/R2/RL")] == "–/–/–"
    latex = (cpu_tables / "table5.tex").read_text()
    assert r"\textit{Hi-ZFO ($\alpha$ in loss)}" in latex


@pytest.mark.slow
def test_view_against_the_paper(cpu_tables: Path, tmp_path: Path) -> None:
    # no CPU-scale cell is one the paper reports: no view is written, and an old one in the folder goes
    assert not list(cpu_tables.glob("*_vs_paper.md"))
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "table1_vs_paper.md").write_text("an old view")
    tables.write_tables(FIXTURES / "cpu", stale, paper_dir=PAPER_RECORDS, report=Report(quiet=True))
    assert (stale / "table1.md").exists() and not (stale / "table1_vs_paper.md").exists()
    # a paper-scale record of one cell: the view shows measured, paper and the difference
    record = json.loads((PAPER_RECORDS / "opt-2.7b" / "dialogsum" / "hizfo" / "default" / "seed0.json").read_text())
    record["provenance"] = {"source": "run", "created": "2026-02-01T00:00:00+00:00"}
    record["metrics"]["rouge1"] = 25.7
    target = tmp_path / "runs" / "opt-2.7b" / "dialogsum" / "hizfo" / "default" / "seed0.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(record))
    tables.write_tables(tmp_path / "runs", tmp_path / "out", paper_dir=PAPER_RECORDS, report=Report(quiet=True))
    view = (tmp_path / "out" / "table1_vs_paper.md").read_text()
    assert "| OPT-2.7B | Hi-ZFO | DialogSum | rouge1 | 25.700 | 26.700 | -1.000 |" in view
    assert "| OPT-2.7B | Hi-ZFO | DialogSum | mem_gb | 45.100 | 45.100 | +0.000 |" in view
    shown = parse_markdown_tables((tmp_path / "out" / "table1.md").read_text())["Paper-scale grid"]
    assert shown[("OPT-2.7B", "Full FT", "SciTLDR", "Mem. (GB)")] == "–"
    assert shown[("OPT-2.7B", "Hi-ZFO", "DialogSum", "Mem. (GB)")] == "45.1"


# ---------------------------------------------------------------------------------------------------
# bad input


def test_corrupt_half_written_and_conflicting_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = FIXTURES / "bad"
    assert tables.main(["--results", str(bad), "--out", str(tmp_path), "--paper", "none"]) == 0
    err = capsys.readouterr().err.splitlines()
    corrupt = [line for line in err if "not valid JSON" in line]
    assert len(corrupt) == 2
    assert any("tiny-bloom/toy/full_ft/default/seed0.json" in line for line in corrupt)
    assert any("tiny-opt/toy/hizfo/default/seed0.json" in line for line in corrupt)
    assert any(line.startswith("warning: skipping") and "notes.json" in line for line in err)
    [conflict] = [line for line in err if "different configs" in line]
    assert "tiny-opt/toy/full_ft/default/seed0.json" in conflict
    assert "tiny-opt/toy/full_ft/method.epochs=5/seed0.json" in conflict
    shown = parse_markdown_tables((tmp_path / "table1.md").read_text())["CPU-scale twin (stand-in models, toy task)"]
    assert shown[("tiny-OPT", "Full FT", "Toy", "R1/R2/RL")] == "25.0/10.0/20.0"   # the newer config, not 22.5
    assert shown[("tiny-OPT", "Hi-ZFO", "Toy", "R1/R2/RL")] == "–/–/–"             # the half-written one: skipped
    assert shown[("tiny-OPT", "LoRA", "Toy", "R1/R2/RL")] == "30.0/12.0/24.0"


@pytest.mark.parametrize("command", [tables.main, sweeps.main])
def test_nothing_usable_exits_non_zero_with_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           command) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert command(["--results", str(empty), "--out", str(tmp_path / "out"), "--paper", "none"]) == 1
    err = capsys.readouterr().err
    assert f"{empty}: no results records here" in err and "error: nothing to" in err
    only_corrupt = tmp_path / "corrupt"
    only_corrupt.mkdir()
    (only_corrupt / "seed0.json").write_text('{"status": "ok", "config": {')
    assert command(["--results", str(only_corrupt), "--out", str(tmp_path / "out"), "--paper", "none"]) == 1
    assert "seed0.json: not valid JSON" in capsys.readouterr().err


def test_records_carry_their_evaluation_protocol_and_older_records_are_labelled():
    from analysis.loading import LEGACY_PROTOCOL, record_protocol, task_protocols
    assert task_protocols("webquestions") == ("greentrainer", "normalized") and task_protocols("gsm8k") == ()
    assert record_protocol({"name": "scitldr", "protocol": "greentrainer"}) == "greentrainer"
    assert record_protocol({"name": "scitldr"}) == LEGACY_PROTOCOL       # written before task.protocol existed
    assert record_protocol({"name": "gsm8k", "protocol": None}) is None
    assert record_protocol({"name": "toy"}) is None
