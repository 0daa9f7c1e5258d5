"""The planner ("Will it fit?"): the analytic model against committed MemTracker traces and one live trace, bad input."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hizfo.core import memory
from hizfo.core.memory import Setting, predict
from hizfo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
TRACES = json.loads((ROOT / "benchmarks" / "planner_traces.json").read_text())["cells"]
FO = ("full_ft", "ft_top2", "lora", "prefix", "greentrainer", "hizfo")


ALLOC = json.loads((ROOT / "benchmarks" / "planner_alloc.json").read_text())["cells"]
TOLERANCE = 0.05       # the largest |predicted / measured - 1| of any committed cell (benchmarks/RESULTS_planner.md)
# cells past it, each an open modelling error stated in RESULTS_planner.md, at its committed ratio (a change either
# way, a fix included, fails here until the file and this list say so)
KNOWN_MISSES: dict[str, float] = {}      # none since MeZO's no-grad loss counts cross_entropy's log_softmax output


@pytest.fixture(scope="module")
def tiny():
    from benchmarks.planner_traces import shape_of
    return shape_of("tiny-opt")


@pytest.fixture(scope="module")
def shapes():
    from benchmarks.planner_traces import shape_of
    return {name: shape_of(name) for name in sorted({c["shape"] for c in TRACES} | {"tiny-opt"})}


def _predict(shape, cell):
    # threads=0: no noise chunks in hizfo/core/zo.py's worker threads, which MemTracker (thread-local) cannot see
    return predict(shape, Setting(method=cell["method"], method_cfg=(), precision=cell["precision"],
                                  batch=cell["batch"], seq_len=cell["seq_len"], device="cpu", threads=0))


def _ratios(shapes) -> list[tuple[str, float]]:
    """predicted / measured for every committed MemTracker trace and real-allocation cell."""
    out = [(f"{c['shape']} {c['method']} {c['precision']}", _predict(shapes[c["shape"]], c).training_peak /
            c["peak"]["Total"]) for c in TRACES]
    return out + [(f"alloc {c['method']} {c['precision']}", _predict(shapes["tiny-opt"], c).training_peak /
                   c["peak"]) for c in ALLOC]


@pytest.mark.slow
def test_weights_and_optimizer_match_the_committed_traces(shapes):
    for cell in TRACES:
        pred, peak = _predict(shapes[cell["shape"]], cell), cell["peak"]
        assert abs(pred.training["weights"] / peak["PARAM"] - 1) < 0.03, cell
        if cell["method"] in ("full_ft", "ft_top2", "greentrainer", "hizfo") and pred.moment != "optimizer step":
            # ChangeMonitor's samples are in the planner's optimizer, in MemTracker's Activation
            assert abs(pred.training["optimizer"] / peak["OPT"] - 1) < 0.15, cell


@pytest.mark.slow
def test_every_method_and_precision_within_the_stated_error(shapes):
    ratios = dict(_ratios(shapes))
    bad = [(name, round(r, 3)) for name, r in ratios.items() if abs(r - 1) > TOLERANCE and name not in KNOWN_MISSES]
    assert not bad, bad
    assert {name: round(ratios[name], 3) for name in KNOWN_MISSES} == KNOWN_MISSES
    assert {c["method"] for c in TRACES} == {"full_ft", "ft_top2", "lora", "prefix", "greentrainer", "mezo",
                                             "bilevel_zofo", "hizfo"}


@pytest.mark.slow
def test_mezo_within_3_percent_of_every_committed_trace(shapes):
    """MeZO's peak is its no-grad loss at the real vocabularies (the logits, their fp32 copy under bf16 compute and
    cross_entropy's log_softmax output, [N, V] fp32) and its widest FFN point on tiny-opt, in every precision; each
    was 13-19 % under while the model lacked the log_softmax output (benchmarks/RESULTS_planner.md, MeZO)."""
    ratios = {name: round(r, 3) for name, r in _ratios(shapes) if " mezo " in f" {name} "}
    assert len(ratios) == 10 and all(abs(r - 1) <= 0.03 for r in ratios.values()), ratios


@pytest.mark.slow
@pytest.mark.parametrize("category", memory.CATEGORIES)
def test_dropping_a_category_breaks_the_match(shapes, monkeypatch, category):
    """Some cell the model gets within 5 % is more than 10 % off once ``category`` is dropped from every moment."""
    close = {name for name, r in _ratios(shapes) if abs(r - 1) <= 0.05}
    original = memory._moments

    def without(s, r, act):
        return {k: {**v, category: 0} for k, v in original(s, r, act).items()}
    monkeypatch.setattr(memory, "_moments", without)
    assert any(name in close and abs(r - 1) > 0.10 for name, r in _ratios(shapes)), category


@pytest.mark.slow
def test_one_live_trace_agrees_with_the_committed_one(tiny):
    from benchmarks.planner_traces import trace_cell
    torch.set_num_threads(1)
    live = trace_cell(tiny, "hizfo", "fp32", 16, 80)
    committed = next(c for c in TRACES if (c["shape"], c["method"], c["precision"]) == ("tiny-opt", "hizfo", "fp32"))
    assert live["peak"]["PARAM"] == committed["peak"]["PARAM"]
    assert abs(live["peak"]["Total"] / committed["peak"]["Total"] - 1) < 0.02


def test_fsdp_shards_weights_and_state(tiny):
    cell = next(c for c in TRACES if (c["shape"], c["method"], c["precision"]) == ("tiny-opt", "full_ft", "fp32"))
    s = Setting(method="full_ft", method_cfg=(), batch=16, seq_len=80, device="cuda")
    one, two = predict(tiny, s), predict(tiny, replace(s, world_size=2, fsdp=True))
    assert two.training["optimizer"] < 0.6 * one.training["optimizer"]
    assert cell


def test_bad_input_is_one_line_exit_2(capsys):
    from hizfo.run.plan import main
    assert main(["plan.gpu_gb=0", "logger=none"]) == 2
    assert main(["plan.world_size=0", "logger=none"]) == 2
    assert main(["model.hub_id=nobody/unknown-model", "model=opt-13b", "logger=none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "plan.gpu_gb" in err[0] and "plan.world_size" in err[1] and "offline" in err[2]


def test_python_m_hizfo_plan_is_the_planner(monkeypatch, capsys):
    """``python -m hizfo.plan`` (the short name) runs the planner's entry point, its exit status included."""
    import runpy
    monkeypatch.setattr("sys.argv", ["hizfo.plan", "plan.gpu_gb=0", "logger=none"])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("hizfo.plan", run_name="__main__")
    assert exited.value.code == 2 and capsys.readouterr().err.strip().startswith("error: plan.gpu_gb")


@pytest.mark.slow
def test_a_cell_that_cannot_fit_is_refused_with_what_would(tiny):
    from hizfo.run.plan import fits_line
    from hizfo.run.plan_gpu import HEADROOM_GIB, Gpu
    s = Setting(method="full_ft", method_cfg=(), batch=16, seq_len=80, device="cuda")
    pred = predict(tiny, s)
    headroom = int(HEADROOM_GIB * memory.GiB)
    assert fits_line(pred, s, Gpu(pred.peak + headroom), tiny, "cell") is None
    line = fits_line(pred, s, Gpu(pred.peak + headroom - 1), tiny, "cell")
    assert line and "predicted peak" in line and "GiB GPU" in line and "\n" not in line


def test_unknown_model_shape_is_refused():
    from omegaconf import OmegaConf
    from hizfo.core.shapes import model_shape
    with pytest.raises(ConfigError, match="not known offline"):
        model_shape(OmegaConf.create({"name": "x", "family": "opt", "hub_id": "nobody/none"}))


@pytest.mark.slow
def test_the_block_by_block_count_equals_the_full_forward(tiny):
    """The fast count (a 2-block copy, per-block patterns) against one forward of the whole 5-block model."""
    from hizfo.core.memory_blocks import with_depth
    from hizfo.core.memory_trace import activations_and_roles, full_saved_bytes
    deep = with_depth(tiny, 5)
    for method, precision in (("full_ft", "fp32"), ("lora", "fp32"), ("prefix", "bf16-mixed"), ("hizfo", "fp32"),
                              ("greentrainer", "bf16")):
        s = Setting(method=method, method_cfg=(), precision=precision, batch=4, seq_len=24, device="cpu")
        fast = activations_and_roles(deep, s)[0]
        assert fast > 0 and fast == full_saved_bytes(deep, s), (method, precision)


def test_what_the_run_does_not_shard_is_predicted_whole(tiny):
    """Several processes profile the whole model on the whole global batch, and generate with the model gathered
    whole beside its shards (hizfo/core/distributed.py): the planner may not divide those phases by the world."""
    s = Setting(method="hizfo", method_cfg=(), batch=16, seq_len=80, device="cuda")
    one, two = predict(tiny, s), predict(tiny, replace(s, world_size=2, fsdp=True))
    assert two.profiling == one.profiling
    assert two.generation > one.generation
    bf16_one, bf16_two = (predict(tiny, replace(s, precision="bf16", world_size=n, fsdp=n > 1)) for n in (1, 2))
    assert two.training["weights"] < bf16_two.training["weights"] * 2      # fp32 Θ_ZO sharded, bf16's whole
    assert bf16_two.training["weights"] > bf16_one.training["weights"] // 2


def test_a_cuda_run_that_does_not_fit_is_refused_before_it_loads(monkeypatch, capsys):
    """The run's own pre-load check (hizfo/run/session.py calls it on CUDA): the planner's verdict for the world size
    the run has, against the GPU's memory (given here: no GPU on this machine)."""
    from hizfo.run.plan_fit import check_memory_fits
    from hizfo.run.plan_gpu import Gpu
    from tests.conftest import compose
    cfg = compose(["model=opt-6.7b", "method=full_ft", "task=scitldr", "logger=none"])
    h100 = Gpu.of_size(80).total_bytes                    # as torch reports an H100 80GB: about 79.19 GiB
    monkeypatch.delenv("HIZFO_PLAN_ENFORCE", raising=False)
    with pytest.raises(ConfigError, match=r"on 1 GPU\(s\): predicted peak [\d.]+ GiB per GPU \(training\) exceeds the "
                                          r"78.19 GiB usable of a 79.19 GiB GPU \(1.00 GiB headroom\); world size 2 "
                                          r"with FSDP2 fits"):
        check_memory_fits(cfg, torch.device("cuda"), world_size=1, total_bytes=h100, device_count=1)
    check_memory_fits(cfg, torch.device("cuda"), world_size=2, total_bytes=h100, device_count=1)   # FSDP2 over 2
    monkeypatch.setenv("HIZFO_PLAN_ENFORCE", "0")
    check_memory_fits(cfg, torch.device("cuda"), world_size=1, total_bytes=h100, device_count=1)
    assert capsys.readouterr().err.startswith("warning: model ")


def test_a_profile_on_the_shards_is_predicted_per_rank_and_named_where_it_fits():
    """profile_shards: the shards, their codes and the rank's rows (hizfo/core/profiling.py), so OPT-13B Hi-ZFO in fp32
    fits 2 GPUs of 80 GB where the whole-model profile fits none; bf16 Hi-ZFO still profiles whole (hybrid.py)."""
    from omegaconf import OmegaConf
    from hizfo.core.memory import smallest_world_size
    from hizfo.core.shapes import model_shape
    shape = model_shape(OmegaConf.load(ROOT / "conf" / "model" / "opt-13b.yaml"))
    s = Setting(method="hizfo", method_cfg=(), batch=4, seq_len=576, device="cuda", world_size=2, fsdp=True)
    whole, shards = predict(shape, s), predict(shape, replace(s, profile_shards=True))
    assert shards.profiling < whole.profiling / 1.5          # measured 51.8 GB against 89.8
    assert predict(shape, replace(s, profile_shards=True, precision="bf16")).profiling == \
        predict(shape, replace(s, precision="bf16")).profiling
    from hizfo.core.distributed import profiles_on_shards           # the rule the methods and the planner share
    assert profiles_on_shards(True, 2, "greentrainer", True) and not profiles_on_shards(True, 2, "hizfo", True)
    assert not profiles_on_shards(True, 1, "hizfo", False) and not profiles_on_shards(False, 2, "hizfo", False)
    gpu = 80 * 10 ** 9
    assert smallest_world_size(shape, replace(s, world_size=1), gpu, True) is None
    assert smallest_world_size(shape, replace(s, world_size=1, profile_shards=True), gpu, True) == 2


def test_terms_found_by_the_per_rank_breakdown(tiny):
    """Named allocations the planner once missed (benchmarks/RESULTS_planner.md, "Per rank under FSDP2"): zo.py's
    cached noise chunk is alive through Hi-ZFO's FO backward too; in a forward or backward FSDP2 holds two blocks and
    the root unit unsharded, in the weights' dtype (no MixedPrecisionPolicy), and none at the AdamW step; the profile
    holds probe_step's Scratch and the last block's FFN backward."""
    from hizfo.core.memory_trace import activations_and_roles
    MiB = 1 << 20
    s = Setting(method="hizfo", method_cfg=(), batch=16, seq_len=80, device="cpu")
    one = predict(tiny, s)
    assert one.moment != "ZO forward" and one.training["zo_buffers"] == 415872 * 4      # |Θ_ZO| fp32, main thread
    roles = activations_and_roles(tiny, s)[2]
    root = roles.total_numel - roles.layers * roles.block_numel
    for precision in ("fp32", "bf16-mixed"):
        cell = replace(s, precision=precision, world_size=4, fsdp=True)
        moments = memory._moments(cell, roles, activations_and_roles(tiny, cell)[0])
        sharded = moments["optimizer step"]["weights"]
        assert sharded == roles.total_numel * 4 // 4
        for name in ("loss", "block backward", "ZO forward"):
            assert moments[name]["weights"] - sharded == (2 * roles.block_numel + root) * 4, (precision, name)
    # the profile: Scratch (3 fp32 chunks of 2^18 and a flag chunk) and the FFN backward, which sets its peak here
    assert 28 * MiB < one.profiling < 29 * MiB                    # measured 26.96 MiB; 22.24 before both terms


def test_greentrainer_bf16_masters_cover_every_candidate_when_sharded(tiny):
    """precision=bf16: one process makes a master at a tensor's first gradient (the selected ones); under FSDP2
    every candidate's master is made at once (hizfo/core/precision.py, MasterWeights), so all of them count."""
    s = Setting(method="greentrainer", method_cfg=(), batch=16, seq_len=80, device="cpu", precision="bf16")
    one = predict(tiny, s).training["masters"]
    two = predict(tiny, replace(s, world_size=2, fsdp=True)).training["masters"]
    from hizfo.core.memory_trace import activations_and_roles
    roles = activations_and_roles(tiny, s)[2]
    assert one == sum(roles.fo_sizes) * 4 < roles.total_numel * 4
    assert two == roles.total_numel * 4 // 2


def test_bilevel_zofo_bf16_keeps_the_backbones_state_whole_when_sharded(tiny):
    """precision=bf16 under FSDP2: Bilevel-ZOFO's backbone θ stays whole on every rank (ZOParams' virtual mode),
    and so do its fp32 master, the upper AdamW's moments over it and its ZO gradient: none of them is 1/N."""
    from hizfo.core.memory_trace import activations_and_roles
    s = Setting(method="bilevel_zofo", method_cfg=(), batch=16, seq_len=80, device="cpu", precision="bf16")
    two = replace(s, world_size=2, fsdp=True)
    roles = activations_and_roles(tiny, two)[2]
    step = memory._moments(two, roles, activations_and_roles(tiny, two)[0])["optimizer step"]
    theta = roles.zo_numel * 4
    assert step["masters"] >= theta and step["grads"] >= theta and step["optimizer"] >= 2 * theta


def test_a_cpu_run_over_the_free_ram_is_warned_before_it_loads(monkeypatch, capsys):
    """On CPU the run asks the planner too (hizfo/run/session.py ``_planned_phases``) and warns, rank 0 alone, when the
    processes of the machine are predicted over its free RAM; a tiny model is not asked (its run would pay the
    planner's second for nothing), and the record keeps no CPU prediction (its CPU peak is an RSS)."""
    from hizfo.core import distributed
    from hizfo.core.memory import GiB
    from hizfo.core.shapes import model_shape
    from hizfo.run import plan_fit
    from hizfo.run.session import _planned_phases
    from tests.conftest import compose
    cfg = compose(["model=opt-1.3b", "method=full_ft", "task=scitldr", "logger=none"])
    assert plan_fit.approximate_parameters(model_shape(cfg.model)) == 12 * 24 * 2048**2 + 50272 * 2048   # ~1.3e9
    monkeypatch.setattr(plan_fit, "_free_ram", lambda: 4 * GiB)
    assert _planned_phases(cfg, torch.device("cpu"), distributed.World()) is None
    err = capsys.readouterr().err
    assert err.startswith("warning: model opt-1.3b method full_ft: predicted peak ") and "exceeds the 4.0 GiB" in err
    one = plan_fit.warn_over_free_ram(cfg, 1, free=10**15)
    assert one is None and not capsys.readouterr().err                           # it fits: nothing said
    _, _, pred = plan_fit.plan_config(cfg, plan_fit.PlanOptions(device="cpu", world_size=2, fsdp=True))
    two = plan_fit.warn_over_free_ram(cfg, 2, free=int(pred.peak * 1.5))        # one process's would fit; two not
    assert two is not None and f"(2 processes, {pred.peak / GiB:.1f} GiB each)" in two
    assert capsys.readouterr().err == two + "\n"
    _planned_phases(cfg, torch.device("cpu"), distributed.World(rank=1, size=2))    # rank 1 says nothing
    assert not capsys.readouterr().err
    tiny_cfg = compose(["model=tiny-opt", "method=full_ft", "logger=none"])
    assert plan_fit.warn_over_free_ram(tiny_cfg, 1, free=1) is None            # under CPU_PLAN_MIN_PARAMS: not asked


def test_the_report_gives_the_breakdown_and_exits_1_for_a_config_that_does_not_fit(capsys):
    """``python -m hizfo.run.plan``: the parts of the training peak, the phase that sets the peak, the world sizes
    that fit; exit 1 when the config does not fit at plan.world_size (plan.enforce=false: 0), so a script can gate
    its submission on it."""
    from hizfo.run.plan import main
    cell = ["model=opt-13b", "method=full_ft", "task=scitldr", "logger=none"]
    assert main(cell) == 1
    out = capsys.readouterr().out
    for part in ("weights", "grads", "optimizer", "masters", "activations", "zo_buffers", "temporaries"):
        # one column at the peak's moment, or two: it and the backward's largest (test_plan_gpu.py)
        assert re.search(rf"^  {part} +[\d.]+( GiB| +[\d.]+)$", out, re.M), (part, out)
    assert re.search(r"^peak: [\d.]+ GiB, set by (training|profiling|generation); ", out, re.M)
    assert re.search(r"^80 GB GPUs \(78.19 GiB usable\), with FSDP2 sharding: world size \d+ fits$", out, re.M)
    assert "at world size 1: predicted peak" in out and "(plan.enforce=false: report only)" in out
    assert "rough time per epoch" in out
    assert main([*cell, "plan.enforce=false"]) == 0
    assert main(["model=opt-350m", "method=full_ft", "task=scitldr", "logger=none"]) == 0       # fits: exit 0
    capsys.readouterr()
    assert main(["model=opt-13b", "method=hizfo", "task=scitldr", "logger=none"]) == 1
    # the whole-model profile sets Hi-ZFO's peak at any world size; the line names what does fit
    out = capsys.readouterr().out
    assert "no world size dividing the batch fits; world size 2 with FSDP2 and profile_shards=true fits" in out
    assert re.search(r"^80 GB GPUs \(78.19 GiB usable\), with FSDP2 sharding and profile_shards=true .*: world size 2 "
                     r"fits$", out, re.M)


def test_a_grid_prints_one_row_per_cell_and_lists_every_cell_that_does_not_fit(capsys):
    from hizfo.run.plan import main
    assert main(["-m", "model=opt-350m,opt-13b", "method=full_ft,hizfo", "task=scitldr", "logger=none"]) == 1
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("| model=")]
    assert len(rows) == 4 and sum(line.endswith("| no |") for line in rows) == 2, out      # OPT-13B's two
    assert "2 of 4 cells do not fit a 80 GB GPU (the 78.19 GiB usable of a 79.19 GiB GPU (1.00 GiB headroom)) at " \
        "world size 1:" in out
    failing = [line for line in out if line.startswith("  model=opt-13b")]
    assert len(failing) == 2 and all("predicted peak" in line for line in failing)


@pytest.mark.slow
def test_the_plan_of_a_config_that_ran_uses_its_records_partition(default_run):
    """Hi-ZFO's Θ_FO needs a profile; after the run, its ok record's partition stands in for the planner's stated
    assumption (the cost-only heuristic), and the report says which it used."""
    from hizfo.run.plan_fit import PlanOptions, plan_config
    from tests.conftest import compose
    from tests.readme_run import readme_default_run
    overrides, _ = readme_default_run()
    (path,) = (default_run.folder / "runs").rglob("seed0.json")
    stored = json.loads(path.read_text())["partition"]["fo_names"]
    cfg = compose([*overrides, f"results_dir={default_run.folder}/runs"])
    _, s, pred = plan_config(cfg, PlanOptions(device="cpu"))
    assert s.selection == tuple(stored) and pred.selection == "a record's stored partition"
    assert set(pred.fo_names) == set(stored)
    _, s, pred = plan_config(compose([*overrides, f"results_dir={default_run.folder}/elsewhere"]), PlanOptions())
    assert s.selection is None and pred.selection.startswith("cost-only heuristic")
