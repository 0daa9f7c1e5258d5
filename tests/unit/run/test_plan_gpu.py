"""GPU memory has one owner (hizfo/run/plan_gpu.py): the planner, the Slurm pre-flight and a CUDA run's own check
give one cell one verdict; device_map=auto is counted the same way by the run and by Slurm; a world size must
divide the global batch."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hizfo.errors import ConfigError
from hizfo.run.plan_gpu import HEADROOM_GIB, Gpu, GiB, gres_memory_gb, spread_of

ROOT = Path(__file__).resolve().parents[3]
LORA_13B = ["model=opt-13b", "method=lora", "task=scitldr", "logger=none"]


def _slurm_config(cells: list[str]):
    launcher = OmegaConf.load(ROOT / "conf" / "launcher" / "slurm.yaml").hydra.launcher
    launcher.partition = "gpu"
    return OmegaConf.create({"hydra": {"launcher": launcher, "sweeper": {"params": {}},
                                       "overrides": {"task": cells}}})


def _nodes(gres: str):
    from hizfo.run.slurm_preflight import Node
    return [Node(partition="gpu", default=True, cpus=64, mem_mb=515000, gpus=8, gres=gres)]


def test_a_vendor_size_is_compared_as_torch_reports_it_less_the_headroom():
    h100 = Gpu.of_size(80)
    assert 79.15 <= h100.total_bytes / GiB < 79.25           # an H100 run printed its total as "79.2 GiB"
    assert h100.usable_bytes == h100.total_bytes - int(HEADROOM_GIB * GiB)
    assert h100.text() == "the 78.19 GiB usable of a 79.19 GiB GPU (1.00 GiB headroom)"
    assert h100.fits(h100.usable_bytes) and not h100.fits(h100.usable_bytes + 1)
    assert Gpu(h100.total_bytes, spread=2).fits(2 * h100.usable_bytes)
    assert [gres_memory_gb(g) for g in ("gpu:h100:8(S:0-1)", "gpu:a100_80gb:4", "gpu:h200:8", "gpu:4")] == \
        [80, 80, 141, None]


@pytest.mark.slow
def test_one_cell_gets_one_verdict_from_the_planner_the_slurm_check_and_the_run(capsys, monkeypatch):
    """LoRA on OPT-13B (beam-4 generation, 79.25 GiB predicted) was "1 (at the edge)" for the planner's 80 GiB and
    refused by a real H100's 79.2 GiB: now all three compare against the same usable memory and refuse it on an
    H100, and all three accept it on an H200."""
    from hizfo.run.plan import main
    from hizfo.run.plan_fit import check_memory_fits
    from hizfo.run.plan_slurm import memory_problems
    from tests.conftest import compose
    monkeypatch.delenv("HIZFO_PLAN_ENFORCE", raising=False)
    cfg = compose(LORA_13B)
    verdicts = {}
    for name, gb, gres in (("h100", 80, "gpu:h100:8"), ("h200", 141, "gpu:h200:8")):
        planner = main([*LORA_13B, f"plan.gpu_gb={gb}"]) == 0
        slurm = not memory_problems(_slurm_config(LORA_13B), _nodes(gres), None)[0]
        try:
            check_memory_fits(cfg, torch.device("cuda"), 1, total_bytes=Gpu.of_size(gb).total_bytes, device_count=1)
            run = True
        except ConfigError as exc:
            run = False
            assert "predicted peak 79.25 GiB per GPU (generation) exceeds the 78.19 GiB usable" in str(exc)
        verdicts[name] = (planner, slurm, run)
    assert verdicts == {"h100": (False, False, False), "h200": (True, True, True)}
    out = capsys.readouterr().out
    assert "at world size 1: predicted peak 79.25 GiB per GPU (generation) exceeds the 78.19 GiB usable" in out


def test_device_map_auto_is_counted_over_the_gpus_by_the_run_and_by_slurm(monkeypatch):
    """One process with model.device_map=auto spreads the model over the GPUs it sees: the run's check (the device
    count given through its seam: no GPU here) and the Slurm pre-flight share spread_of and fits_line."""
    from hizfo.run.plan_fit import check_memory_fits
    from hizfo.run.plan_slurm import cell_problem
    from tests.conftest import compose
    monkeypatch.delenv("HIZFO_PLAN_ENFORCE", raising=False)
    cell = ["model=opt-6.7b", "method=full_ft", "task=scitldr", "logger=none", "model.device_map=auto"]
    cfg = compose(cell)
    assert spread_of(cfg, 1, 4) == 4 and spread_of(cfg, 2, 4) == 1 and spread_of(compose(cell[:-1]), 1, 4) == 1
    gpu = Gpu.of_size(80)
    with pytest.raises(ConfigError, match="exceeds the 78.19 GiB usable") as one:
        check_memory_fits(cfg, torch.device("cuda"), 1, total_bytes=gpu.total_bytes, device_count=1)
    two = check_memory_fits(cfg, torch.device("cuda"), 1, total_bytes=gpu.total_bytes, device_count=2)
    whole = check_memory_fits(cfg, torch.device("cuda"), 1, total_bytes=10 ** 15, device_count=1)
    assert two == -(-whole // 2)                                 # the per-GPU share of the same prediction
    slurm_one, slurm_two = cell_problem(cell, gpu, 1, 1), cell_problem(cell, gpu, 1, 2)
    assert slurm_two is None and slurm_one is not None
    assert str(one.value).split(": ", 1)[1] == slurm_one.split(": ", 1)[1]      # the same line after the name
    assert cell_problem(cell[:-1], gpu, 1, 2) is not None      # no device_map=auto: one GPU, whatever the node has


@pytest.mark.slow
def test_a_world_size_that_does_not_divide_the_global_batch_is_refused(capsys):
    from hizfo.run.plan import main
    cell = ["model=opt-350m", "method=full_ft", "task=scitldr", "logger=none"]
    assert main([*cell, "plan.world_size=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: plan.world_size: 3 does not divide the global batch 4 (task.batch_size); "
                   "allowed: 1, 2, 4"]
    assert main(["-m", "model=opt-350m,opt-125m", *cell[1:], "plan.world_size=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plan.world_size (cell model=opt-350m" in err[0] and "allowed: 1, 2, 4" in err[0]
    assert main([*cell, "plan.world_size=2"]) == 0


def test_the_report_shows_the_backwards_activations_where_the_adamw_step_sets_the_peak(capsys):
    """At OPT-13B Full FT the AdamW step sets the training peak (no activations then): the report puts the
    backward's largest moment beside it, and the profiling and generation peaks on lines of their own."""
    from hizfo.run.plan import main
    assert main(["model=opt-13b", "method=full_ft", "task=scitldr", "logger=none", "plan.enforce=false"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^training peak per device: [\d.]+ GiB at the optimizer step; the backward's largest moment "
                     r"\((loss|head backward|block backward)\): [\d.]+ GiB$", out, re.M), out
    row = re.search(r"^  activations +([\d.]+) +([\d.]+)$", out, re.M)
    assert row and float(row.group(1)) == 0 and float(row.group(2)) > 1, out
    assert re.search(r"^profiling peak [\d.]+ GiB$", out, re.M) and re.search(r"^generation peak [\d.]+ GiB", out, re.M)


def test_the_record_keeps_the_prediction_of_what_its_measured_peak_covers():
    """The measured peak is read when training ends (hizfo/run/loop.py), before the final generation: the run's
    check returns training and profiling's prediction, and planned_phases keeps generation's apart."""
    from hizfo.run.plan_fit import PlanOptions, check_memory_fits, measured_like, plan_config, planned_phases
    from tests.conftest import compose
    cfg = compose(LORA_13B)
    pred = plan_config(cfg, PlanOptions())[2]
    assert pred.peak_phase == "generation" and measured_like(pred) == pred.training_peak < pred.peak
    assert check_memory_fits(cfg, torch.device("cuda"), 1, total_bytes=10 ** 15, device_count=1) == pred.training_peak
    assert planned_phases(pred) == {"planned_peak_bytes": pred.training_peak,
                                    "planned_generation_bytes": pred.generation}
    from hizfo.run.plan_fit import check_memory_phases
    assert check_memory_phases(cfg, torch.device("cuda"), 1, total_bytes=10 ** 15, device_count=1) == \
        planned_phases(pred)

