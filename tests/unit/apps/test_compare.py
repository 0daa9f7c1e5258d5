"""``python -m analysis.compare``: whatever arms an ad-hoc sweep's records hold, one table per model × task, paired
differences against a reference arm, curve plots, and the records it could not place. Bad input: one line, exit 2."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.compare import main

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "tests" / "fixtures" / "records" / "cpu" / "tiny-opt" / "toy" / "full_ft" / "default" / "seed0.json"
ROUGE_L = {("full_ft", 0): 30.0, ("full_ft", 1): 32.0, ("full_ft", 2): 34.0,
           ("mezo", 0): 20.0, ("mezo", 1): 23.0, ("mezo", 2): 23.0,
           ("hizfo", 0): 31.0, ("hizfo", 1): 34.0}                    # hizfo ran two seeds only


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def write_sweep(root: Path) -> None:
    """An ad-hoc sweep on smollm2-135m × pydoc (no paper table has it): three arms, a failed run, a stray file."""
    template = json.loads(TEMPLATE.read_text())
    for (method, seed), score in ROUGE_L.items():
        record = copy.deepcopy(template)
        record["config"].update(seed=seed, variant="default")
        record["config"]["model"]["name"], record["config"]["task"]["name"] = "smollm2-135m", "pydoc"
        record["config"]["method"] = {"name": method, "_target_": f"x.{method}", "epochs": 1, "alpha_mode": "update"}
        record["metrics"] = {"rougeL": score}
        record["config_hash"] = f"{method}-{seed}"          # one computation per record (compare merges equal ones)
        record["curve"] = {"every": 1, "train_loss": [[1, 3.0 + seed], [2, 2.0 + seed]], "eval": []}
        path = root / "smollm2-135m" / "pydoc" / method / "default" / f"seed{seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
    failed = copy.deepcopy(template)
    failed.update(status="failed", error="TrainingDiverged: loss 1e9 at step 3", metrics={})
    (root / "failed.json").write_text(json.dumps(failed))
    (root / "notes.json").write_text('{"todo": 1}')


def test_compare_tables_the_arms_of_an_ad_hoc_sweep_with_paired_differences(tmp_path, capsys):
    write_sweep(tmp_path / "runs")
    assert main(["--results", str(tmp_path / "runs"), "--against", "full_ft", "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "memory / planned" not in out                                # no record holds a prediction
    lines = out.splitlines()
    assert "## smollm2-135m × pydoc" in lines
    first = lines.index(next(l for l in lines if l.startswith("Paired differences against full_ft")))
    row = {cells(line)[0]: cells(line) for line in lines[:first] if line.startswith("| ")}
    assert row["full_ft"][1:3] == ["3", "32.00 ± 4.97"]                 # t(0.975, 2) · 2 / √3 = 4.97
    assert row["hizfo"][1] == "2"
    # paired on the seeds both have: mezo − full_ft = -10, -9, -11 (mean -10, CI ±2.48); hizfo: +1, +2
    diff = {cells(line)[0]: cells(line) for line in lines[first:] if line.startswith("| ")}
    assert diff["mezo"][1:3] == ["3", "-10.00 [-12.48, -7.52]"], diff["mezo"]
    assert diff["hizfo"][1] == "2" and diff["hizfo"][2].startswith("+1.50 ["), diff["hizfo"]
    plot = Path(next(l for l in lines if l.startswith("curves: ")).split("curves: ")[1])
    assert plot.is_file() and plot.parent == tmp_path / "plots"
    unplaced = lines[lines.index(next(l for l in lines if l.startswith("## Records not placed"))):]
    assert unplaced[0] == "## Records not placed (2)"
    assert any("failed.json: status failed: TrainingDiverged" in l for l in unplaced)
    assert any("notes.json: not a results record" in l for l in unplaced)


@pytest.mark.subprocess
@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(tmp_path):
    write_sweep(tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    for args, expected in ((["--results", str(tmp_path / "empty")], "error: --results: no usable records under "),
                           (["--results", str(tmp_path / "runs"), "--against", "lora"],
                            "error: --against: no arm 'lora' in ")):
        proc = subprocess.run([sys.executable, "-m", "analysis.compare", *args, "--no-plots"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith(expected), proc.stderr
    assert "arms: full_ft, hizfo, mezo" in proc.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_compare_imports_no_torch():
    code = "import sys, analysis.compare; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


@pytest.mark.parametrize("arm", ["full_ft"])
def test_the_reference_arm_can_be_any_arm_of_the_records(tmp_path, capsys, arm):
    write_sweep(tmp_path / "runs")
    assert main(["--results", str(tmp_path / "runs"), "--against", "mezo", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| arm − mezo | paired seeds | rougeL |" in out and f"| {arm} | 3 | +10.00 [+7.52, +12.48] |" in out


def test_tables_name_the_records_they_leave_out_and_why(tmp_path):
    """analysis.paper.tables has no table for smollm2-135m × pydoc: it says so per cell, with the records' paths."""
    from analysis.loading import Report
    from analysis.paper.tables import write_tables
    write_sweep(tmp_path / "runs")
    report = Report(quiet=True)
    assert write_tables(tmp_path / "runs", tmp_path / "tables", None, report) == {}
    left = [w for w in report.warnings if w.startswith("left out of every table: ")]
    assert len(left) == 3, report.warnings                          # full_ft, hizfo, mezo
    mezo = next(w for w in left if "/mezo:" in w)
    assert "smollm2-135m/pydoc/mezo: no table has smollm2-135m × pydoc" in mezo and "seed2.json" in mezo


def test_a_gpu_records_prediction_is_shown_beside_its_measured_peak(tmp_path, capsys):
    """A CUDA run keeps the planner's per-GPU peak (provenance.planned_peak_bytes) beside max_memory_allocated; the
    arm's table shows measured / planned, so a sweep on GPUs says how good the planner was."""
    write_sweep(tmp_path / "runs")
    for path, measured_gib, planned_gib in [("full_ft/default/seed0.json", 45.0, 50.0),
                                            ("full_ft/default/seed1.json", 46.0, 50.0)]:
        record_path = tmp_path / "runs" / "smollm2-135m" / "pydoc" / path
        record = json.loads(record_path.read_text())
        record["costs"]["peak_memory_gb"] = measured_gib
        record["provenance"]["planned_peak_bytes"] = int(planned_gib * 2**30)
        record_path.write_text(json.dumps(record))
    assert main(["--results", str(tmp_path / "runs"), "--out", str(tmp_path / "plots")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = cells(next(line for line in lines if line.startswith("| arm ")))
    row = {cells(line)[0]: cells(line) for line in lines if line.startswith("| ")}
    column = header.index("memory / planned")
    assert row["full_ft"][column] == "0.91 ± 0.13"                     # 0.90 and 0.92: t(0.975, 1) · 0.01 = 0.127
    assert row["mezo"][column] == "–"                                   # no prediction recorded


def rename_variant(root: Path, method: str, variant: str, *, same_config: bool = True) -> None:
    """Move an arm's records under another variant; same_config keeps their config_hash (the variant only reports)."""
    for path in sorted((root / "smollm2-135m" / "pydoc" / method / "default").glob("seed*.json")):
        record = json.loads(path.read_text())
        record["config"]["variant"] = variant
        if not same_config:
            record["config_hash"] += "-other"
        target = root / "smollm2-135m" / "pydoc" / method / variant / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record))
        path.unlink()


def test_against_names_a_method_whose_only_variant_is_not_the_default(tmp_path, capsys):
    """A README reader's sweep runs under debug=fast: `--against full_ft` means `full_ft [debug=fast]`."""
    write_sweep(tmp_path / "runs")
    rename_variant(tmp_path / "runs", "full_ft", "debug=fast", same_config=False)
    assert main(["--results", str(tmp_path / "runs"), "--against", "full_ft", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| arm − full_ft [debug=fast] | paired seeds | rougeL |" in out
    assert "| mezo | 3 | -10.00 [-12.48, -7.52] |" in out


def test_against_a_method_with_two_variants_asks_for_one(tmp_path, capsys):
    """Two variants and no default: which is the reference is the user's call (with a default, it is the default)."""
    write_sweep(tmp_path / "runs")
    template = tmp_path / "runs" / "smollm2-135m" / "pydoc" / "full_ft" / "default" / "seed0.json"
    record = json.loads(template.read_text())
    record["config"]["variant"], record["config_hash"] = "method.lr=0.001", "0123456789abcdef"
    other = template.parent.parent / "method.lr=0.001" / "seed0.json"
    other.parent.mkdir()
    other.write_text(json.dumps(record))
    assert main(["--results", str(tmp_path / "runs"), "--against", "full_ft", "--no-plots"]) == 0   # the default
    capsys.readouterr()
    rename_variant(tmp_path / "runs", "full_ft", "debug=fast", same_config=False)
    assert main(["--results", str(tmp_path / "runs"), "--against", "full_ft", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--against: full_ft has 2 variants" in err
    assert "'full_ft [debug=fast]'; 'full_ft [method.lr=0.001]'" in err


def test_arms_whose_records_share_a_config_hash_are_one_arm(tmp_path, capsys):
    """hizfo's seed 0 also ran under a variant name that changes nothing (same config_hash): one arm, two seeds."""
    write_sweep(tmp_path / "runs")
    runs = tmp_path / "runs" / "smollm2-135m" / "pydoc" / "hizfo"
    record = json.loads((runs / "default" / "seed0.json").read_text())
    record["config"]["variant"] = "method.rho=0.6"
    (runs / "method.rho=0.6").mkdir()
    (runs / "method.rho=0.6" / "seed0.json").write_text(json.dumps(record))
    rename_variant(tmp_path / "runs", "mezo", "method.eps=0.01", same_config=False)   # a real variant: kept apart
    assert main(["--results", str(tmp_path / "runs"), "--no-plots"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "- hizfo [method.rho=0.6] merged into hizfo (same config_hash)" in lines
    row = {cells(line)[0]: cells(line) for line in lines if line.startswith("| ")}
    assert "hizfo [method.rho=0.6]" not in row and row["hizfo"][1] == "2"
    assert row["mezo [method.eps=0.01]"][1] == "3" and "mezo" not in row
