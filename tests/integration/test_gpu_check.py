"""benchmarks/gpu_check.py --cpu-smoke: the GPU check's whole matrix at a tiny shape on CPU, one subprocess.

The smoke run carries the check's own self-test (--inject-failure: a Full FT cell at lr 1e30 that diverges), so one
run shows both that every real cell passes its checks and that a failing cell fails the check with exit 1.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
ENV = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def gpu_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=ENV)


@pytest.mark.subprocess
def test_cpu_smoke_runs_the_matrix_and_reports_the_injected_failure(tmp_path):
    from benchmarks.gpu_check import PRECISIONS, method_names
    start = os.times()
    proc = gpu_check("--cpu-smoke", "--inject-failure", "--out", str(tmp_path))
    end = os.times()            # its CPU seconds (one thread): a busy box stretches its wall-clock, not these
    seconds = end.children_user + end.children_system - start.children_user - start.children_system
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]      # the injected cell failed
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    cells = {c["name"]: c for c in report["cells"]}
    training = [m for m in method_names() if m != "zero_shot"]
    assert len(training) >= 10                       # 8 methods + 2 controls (conf/method)
    expected = {f"{m}/{p}" for m in training for p in PRECISIONS} | {f"zero_shot/{p}" for p in PRECISIONS}
    expected |= {"mezo/bf16+lr0", "full_ft/fp32+injected"}
    assert set(cells) == expected
    injected = cells.pop("full_ft/fp32+injected")
    assert injected["injected"] and injected["status"] == "failed"
    assert "not finite" in injected["problems"][0], injected
    assert all(c["status"] == "ok" for c in cells.values()), [(n, c["problems"]) for n, c in cells.items()
                                                             if c["status"] != "ok"]
    assert cells["mezo/bf16+lr0"]["facts"]["weights_bit_identical"] is True
    for precision in ("bf16", "bf16-mixed"):
        assert cells[f"hizfo/{precision}"]["facts"]["fo_changed_min"] >= 0.99
    for name, cell in cells.items():
        record = json.loads(open(cell["record"]).read())
        assert record["status"] == "ok" and record["config"]["precision"] == cell["precision"], name
    # the costs: every precision measured, every ratio a positive number
    assert set(report["ratios"]) == set(PRECISIONS)
    for precision, ratios in report["ratios"].items():
        assert all(v is not None and v > 0 for v in ratios.values()), (precision, ratios)
        assert report["measurements"][precision]["hizfo"]["fo_tensors"] > 0      # Θ_FO is not empty at this shape
    # the verdict lines and the summary line, last
    lines = proc.stdout.strip().splitlines()
    assert sum(line.startswith("cell ") for line in lines) == len(expected)
    assert "cell full_ft/fp32+injected: FAILED (injected, expected)" in proc.stdout
    summary = lines[-1]
    assert summary.startswith(f"gpu_check: cells_ok={len(expected) - 1}/{len(expected)} ")
    for key in ("hizfo_step_over_fullft", "hizfo_peak_over_fullft", "profiling_over_fullft_step",
                "mezo_peak_over_forward"):
        assert f" {key}=fp32:" in summary, summary
    assert summary == report["summary"]
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| full_ft/fp32+injected (injected) | failed |" in markdown and summary in markdown
    # a budget: 29.6 s of CPU measured on a Zen 4 (AVX512-BF16), about 75 s on a Zen 3 that emulates bf16, where a
    # busy sibling hyperthread stretches CPU seconds too
    from hizfo.core.precision import cpu_has_native_bf16
    assert seconds < (150 if cpu_has_native_bf16() else 300), seconds


@pytest.mark.subprocess
def test_a_passing_matrix_exits_0(tmp_path):
    proc = gpu_check("--cpu-smoke", "--methods", "zero_shot", "--no-measure", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_check: cells_ok=3/3 ")


@pytest.mark.subprocess
@pytest.mark.parametrize("args, message", [
    (["--cpu-smoke", "--minutes", "0.1"], "--minutes: 0.1 is below what one cell needs"),
    (["--cpu-smoke", "--methods", "full_ft,sgd"], "--methods: unknown sgd; choose from"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = gpu_check(*args, "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr, proc.stderr


@pytest.mark.subprocess
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_no_cuda_without_cpu_smoke_is_one_line_and_exit_2(tmp_path):
    proc = gpu_check("--out", str(tmp_path))
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_missing_wheel_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    from benchmarks import gpu_check as check
    monkeypatch.setitem(check.NEEDED, "hizfo_absent_module", "hizfo-absent-dist")
    (tmp_path / "wheelhouse").mkdir()
    code = check.main(["--cpu-smoke", "--wheelhouse", str(tmp_path / "wheelhouse"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: could not install hizfo-absent-dist (not in ") and "\n" not in err
