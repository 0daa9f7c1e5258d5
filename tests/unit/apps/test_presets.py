"""Every experiment preset composes and launches exactly the grid the paper describes (analysis.paper.experiments)."""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from analysis.loading import model_label, semantic_key
from analysis.paper.experiments import EXPERIMENTS, sweeper_params
from analysis.specs import Grid, SWEPT_DEFAULTS, method_label

ROOT = Path(__file__).resolve().parents[3]
PRESETS = [(name, scale) for name in EXPERIMENTS for scale in ("paper", "cpu")]
# the paper's grid sizes (docs/design.md, "What each table reports"): counted here by hand, once
PAPER_JOBS = {"table1": 72, "table2": 21, "table3": 60, "table4": 14, "table5": 12, "fig3": 10, "fig4": 7}
PAPER_JOBS.update(table5=2 * 12, fig4=2 * 7)   # both readings of α (method.alpha_mode) for the α experiments
NLP_PRESETS = ("table1", "table3", "table4", "table5", "fig3", "fig4")
# sha256 of the job list each preset launched when its grid moved into analysis/specs.py: the paper's grids are
# fixed, so a preset that launches other jobs (or the same ones in another order) is a deliberate change
JOBS_SHA256 = {
    "table1": "e6fe2ef422009bb0", "table1_cpu": "60ff29dfe4556d9e", "table2": "afdfd31ce051ea7a",
    "table2_cpu": "40be7aee1e563d59", "table3": "75327914216477b4", "table3_cpu": "6218185101f56550",
    "table4": "40b51f3f53bcbe68", "table4_cpu": "1652e481b0ce78a1", "table5": "8c0fbd373bb51b3a",
    "table5_cpu": "a16d09bfa1471533", "fig3": "caec17805cab7c6f", "fig3_cpu": "5757234e57ef4374",
    "fig4": "aec662187f694c0b", "fig4_cpu": "914ed11e46911137",
}
GENERATOR = ROOT / "scripts" / "gen_experiment_grids.py"


def preset_name(name: str, scale: str) -> str:
    return name if scale == "paper" else f"{name}_cpu"


@pytest.fixture(scope="module")
def hydra_conf() -> Iterator[None]:
    from hizfo.registry import register_schemas
    register_schemas()
    yield


def compose_preset(preset: str, extra: list[str] | None = None, hydra_config: bool = False) -> Any:
    """The composed config of ``experiment=preset`` plus ``extra`` overrides (cached: composing is slow)."""
    return _compose_cached(preset, tuple(extra or ()), hydra_config)


@functools.lru_cache(maxsize=None)
def _compose_cached(preset: str, extra: tuple[str, ...], hydra_config: bool) -> Any:
    from hizfo.run.session import compose
    return compose([f"experiment={preset}", *extra], hydra=hydra_config)


def expand_jobs(params: dict[str, str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for these sweeper params (its own parser and product)."""
    overrides = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    [batch] = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return batch


def job_cell(job: list[str], sweep_key: str | None) -> tuple[str, str, str, float | None]:
    """The (model label, task, method, swept value) a job fills, read as analysis reads its record."""
    from hizfo.run.runspec import derive_variant
    values = dict(item.split("=", 1) for item in job)
    variant = derive_variant(job + ["experiment=x"])
    swept = float(values[f"method.{sweep_key}"]) if sweep_key else None
    method = method_label({"name": values["method"], "alpha_mode": values.get("method.alpha_mode", "update")})
    return model_label(values["model"], variant), values["task"], method, swept


def covering_jobs(params: dict[str, str]) -> list[list[str]]:
    """Few jobs in which every model, task and method appears (composing all 196 is slow); a swept
    hyperparameter only needs to exist in the schema, so its first and last values are enough."""
    overrides = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    axes = {o.get_key_element(): [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            if o.is_sweep_override() else [f"{o.get_key_element()}={o.get_value_element_as_str()}"]
            for o in overrides}
    axes = {key: values if "." not in key else [values[0], values[-1]] for key, values in axes.items()}
    width = max(len(values) for values in axes.values())
    return [[values[i % len(values)] for values in axes.values()] for i in range(width)]


@pytest.mark.parametrize("name,scale", PRESETS)
def test_preset_header_names_its_command(name: str, scale: str) -> None:
    preset = preset_name(name, scale)
    lines = (ROOT / "conf" / "experiment" / f"{preset}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith(f"# python run.py -m experiment={preset}")


@pytest.mark.parametrize("name,scale", PRESETS)
def test_preset_expands_to_the_papers_grid(hydra_conf: None, name: str, scale: str) -> None:
    preset = preset_name(name, scale)
    cfg = compose_preset(preset, hydra_config=True)
    assert cfg.experiment == preset
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    jobs = expand_jobs(params)
    grid: Grid = getattr(EXPERIMENTS[name], scale)
    if scale == "paper":
        assert len(jobs) == PAPER_JOBS[name]
    assert len(jobs) == len(grid)
    cells = [job_cell(job, grid.sweep_key) for job in jobs]
    assert len(set(cells)) == len(cells), "two jobs fill the same cell"
    assert set(cells) == set(grid.cells())
    if grid.sweep_key:                       # a swept key exists only where the grid's methods define it
        assert all(grid.sweep_key in SWEPT_DEFAULTS.get(method, {}) for method in grid.methods)


@pytest.mark.parametrize("name,scale", PRESETS)
def test_a_preset_launches_the_jobs_it_always_has(hydra_conf: None, name: str, scale: str) -> None:
    preset = preset_name(name, scale)
    jobs = expand_jobs(OmegaConf.to_container(compose_preset(preset, hydra_config=True).hydra.sweeper.params))
    assert hashlib.sha256(json.dumps(jobs).encode()).hexdigest()[:16] == JOBS_SHA256[preset], jobs


def _generator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENERATOR), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.subprocess
def test_each_presets_sweep_is_what_analysis_specs_writes() -> None:
    out = _generator("--check")
    assert out.returncode == 0, out.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_hand_edited_grid_is_caught_and_rewritten(tmp_path: Path) -> None:
    for path in (ROOT / "conf" / "experiment").glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    edited = tmp_path / "fig3_cpu.yaml"
    edited.write_text(edited.read_text().replace(",0.9\n", "\n"))
    out = _generator("--check", "--conf", str(tmp_path))
    assert out.returncode == 1 and "fig3_cpu.yaml" in out.stderr and "fig3.yaml" not in out.stderr, out.stderr
    assert _generator("--conf", str(tmp_path)).returncode == 0
    assert edited.read_text() == (ROOT / "conf" / "experiment" / "fig3_cpu.yaml").read_text()
    edited.write_text(edited.read_text().replace("    params:", "    parameters:"))
    out = _generator("--check", "--conf", str(tmp_path))
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and "fig3_cpu.yaml" in out.stderr, out.stderr



@pytest.mark.subprocess
@pytest.mark.slow
def test_a_spec_without_presets_gets_them_created(tmp_path: Path) -> None:
    """Adding a table is a spec entry: the generator creates its two presets, and they sweep what the committed
    ones do (header, name, the CPU twin's cpu_scale defaults, sweep folder, params)."""
    import yaml
    for path in (ROOT / "conf" / "experiment").glob("*.yaml"):
        if path.name not in ("fig3.yaml", "fig3_cpu.yaml"):
            shutil.copy(path, tmp_path / path.name)
    out = _generator("--check", "--conf", str(tmp_path))
    assert out.returncode == 1 and "fig3.yaml (missing)" in out.stderr and "fig3_cpu.yaml (missing)" in out.stderr
    assert _generator("--conf", str(tmp_path)).returncode == 0
    assert _generator("--check", "--conf", str(tmp_path)).returncode == 0
    for preset in ("fig3", "fig3_cpu"):
        created = yaml.safe_load((tmp_path / f"{preset}.yaml").read_text())
        committed = yaml.safe_load((ROOT / "conf" / "experiment" / f"{preset}.yaml").read_text())
        assert created["experiment"] == preset and created.get("defaults") == committed.get("defaults")
        assert created["hydra"] == committed["hydra"]
        lines = (tmp_path / f"{preset}.yaml").read_text().splitlines()
        assert lines[:2] == ["# @package _global_", f"# python run.py -m experiment={preset}"]

def test_a_grid_that_is_no_product_of_value_lists_has_no_sweep() -> None:
    assert sweeper_params(Grid(("tiny-opt (arch.hidden_size=64)",), ("toy",), ("hizfo", "hizfo_alpha_loss"))) == {
        "model": "tiny-opt", "model.arch.hidden_size": "64", "task": "toy", "method": "hizfo",
        "method.alpha_mode": "update,loss"}
    for grid in (Grid(("tiny-opt", "tiny-opt (arch.hidden_size=64)"), ("toy",), ("hizfo",)),   # width of the first?
                 Grid(("tiny-opt",), ("toy",), ("full_ft", "hizfo_alpha_loss"))):              # two of four cells
        with pytest.raises(ValueError):
            sweeper_params(grid)


def test_paper_presets_use_the_papers_batch_sizes(hydra_conf: None) -> None:
    for name in NLP_PRESETS:
        assert compose_preset(name, hydra_config=True).task.batch_size == 4, name   # GreenTrainer's NLP setting
    table2 = compose_preset("table2", hydra_config=True)
    assert (table2.task.batch_size, table2.precision) == (8, "bf16-mixed")        # Bilevel-ZOFO's reasoning setting


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_cpu_twins_stay_small_and_offline(hydra_conf: None, name: str) -> None:
    cfg = compose_preset(f"{name}_cpu", hydra_config=True)
    assert cfg.results_dir == "results/cpu/runs"
    assert cfg.logger.kind == "none"
    assert cfg.task.train_limit is not None and cfg.task.train_limit <= 256
    assert cfg.task.limit is not None and cfg.task.limit <= 64
    assert EXPERIMENTS[name].cpu.tasks == ("toy",)


@pytest.mark.slow
@pytest.mark.parametrize("name,scale", PRESETS)
def test_every_sweep_value_composes(hydra_conf: None, name: str, scale: str) -> None:
    """Each model, task, method and swept value composes against the typed schemas and passes the method's checks."""
    preset = preset_name(name, scale)
    params = OmegaConf.to_container(compose_preset(preset, hydra_config=True).hydra.sweeper.params)
    missing = []
    for job in covering_jobs(params):
        try:
            cfg = compose_preset(preset, job)
        except MissingConfigException as exc:           # a method or task another change has yet to add
            missing.append(str(exc).splitlines()[0])
            continue
        instantiate(cfg.method, _convert_="all")        # the method's own checks on its values, as run.py does
        if scale == "paper" and cfg.method.name != "zero_shot":
            assert cfg.method.epochs == (3 if cfg.method.name == "hizfo" else 5), job   # paper A.2
    if missing:
        pytest.skip(f"{preset}: not in conf/ yet: {sorted(set(missing))}")


def _job_config(preset: str, job: list[str]) -> dict[str, Any]:
    from hizfo.run.runspec import derive_variant
    config = OmegaConf.to_container(compose_preset(preset, job), resolve=True)
    config["variant"] = derive_variant(job)
    return config


HIZFO_OPT = ["model=opt-2.7b", "task=dialogsum", "method=hizfo"]
HIZFO_TINY = ["model=tiny-opt", "task=toy", "method=hizfo"]
LADDER_64 = ["model=tiny-opt", "model.arch.hidden_size=64", "task=toy", "method=hizfo"]
SHARED_CELLS = {
    "opt-2.7b default Hi-ZFO": [("table1", HIZFO_OPT), ("table3", HIZFO_OPT),
                                ("table4", HIZFO_OPT + ["method.rho=0.6"]),
                                ("table5", HIZFO_OPT + ["method.alpha=0.1"]),
                                ("fig3", HIZFO_OPT + ["method.lr_ratio=0.1"]),
                                ("fig4", HIZFO_OPT + ["method.alpha=0.1"])],
    "tiny-opt default Hi-ZFO": [("table1_cpu", HIZFO_TINY), ("table5_cpu", HIZFO_TINY + ["method.alpha=0.1"]),
                                ("fig3_cpu", HIZFO_TINY + ["method.lr_ratio=0.1"]),
                                ("fig4_cpu", HIZFO_TINY + ["method.alpha=0.1"])],
    "tiny-opt width 64 Hi-ZFO": [("table3_cpu", LADDER_64), ("table4_cpu", LADDER_64 + ["method.rho=0.6"])],
}


@pytest.mark.slow
@pytest.mark.parametrize("cell", list(SHARED_CELLS))
def test_cells_shared_by_presets_are_one_config(hydra_conf: None, cell: str) -> None:
    """A cell several presets fill (OPT-2.7B's Hi-ZFO in Tables 1, 3, 4, 5, Figures 3, 4) is one computation."""
    try:
        keys = {preset: semantic_key(_job_config(preset, job)) for preset, job in SHARED_CELLS[cell]}
    except MissingConfigException as exc:
        pytest.skip(f"not in conf/ yet: {str(exc).splitlines()[0]}")
    assert len(set(keys.values())) == 1, keys
