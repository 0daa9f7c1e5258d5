"""experiment=smollm2_study_cpu: every arm composes, arms differ only in their own keys, and what the study's runs
compute is frozen (their config_hash is committed here; change the study by making a new preset)."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose
from hizfo.run.runspec import RunSpec

PRESET = ROOT / "conf" / "experiment" / "smollm2_study_cpu.yaml"
ARMS = str(OmegaConf.load(PRESET).hydra.sweeper.params["+study_arm"]).split(",")
# The study's shared settings: every arm of a task gets the same data, prompt cap, protocol and precision.
SHARED_TASK_KEYS = ("train_limit", "limit", "max_input_length", "group_by_length", "protocol", "generation",
                    "batch_size", "eval_batch_size", "max_target_length")
# config_hash of (arm, seed 0), committed with the study's first records: a change to the code's defaults that
# moves one of these changes what a committed run computes. Make a new preset instead.
# Every arm: each value is also the committed seed-0 record's config_hash (test_the_frozen_hashes_are_the_records).
FROZEN = {
    "pd_zero_shot": "8da14a2de05f4ba4", "pd_full_ft": "4412f054d0a4c71b", "pd_hizfo": "f527b7cb5c340373",
    "pd_hizfo_zo_off": "263e234167b72820", "pd_hizfo_random_dir": "40d6753603b30e4b", "pd_mezo": "59bc83de4f94cad3",
    "pd_hizfo_alpha_loss": "2d87e3b139f9b372", "pd_hizfo_alpha_loss0.0": "2356e1e7ada41bb6",
    "pd_hizfo_alpha0.0": "c87987f46cf4a2d0", "pd_hizfo_alpha0.4": "a4bdd74c3825dc74",
    "pd_hizfo_rho0.2": "f0bc793704023130", "pd_hizfo_rho0.4": "17f6e7e3fb98900f",
    "pd_hizfo_rho0.8": "95133faceb7d1017", "pd_hizfo_r0.3": "a6eeceb558c68000", "pd_hizfo_r0.5": "08b032ccda38dcff",
    "pd_hizfo_r0.7": "57193bb161e01f0d", "pd_lora": "408d81522eb85886", "pd_greentrainer": "a53017b7f5709722",
    "he_zero_shot": "7cadf22c201669cb", "he_full_ft": "efd1971cea8968ed", "he_hizfo": "5072a101e4b9819f",
    "he_hizfo_zo_off": "bcda026c621e996a", "he_hizfo_random_dir": "e0b14d37b38d7c5e", "he_mezo": "cd3dde63b237b87f",
}


def arm_config(arm: str, seed: int = 0):
    return compose(["experiment=smollm2_study_cpu", f"+study_arm={arm}", f"seed={seed}"])


def test_the_preset_names_its_command_first_and_lists_each_arm_once():
    lines = PRESET.read_text().splitlines()
    assert lines[1].startswith("# python scripts/run_study.py smollm2_study_cpu")
    assert len(ARMS) == len(set(ARMS))
    assert {a for a in ARMS if a.startswith("pd_")} <= {p.stem for p in (ROOT / "conf" / "study_arm").glob("pd_*")}


@pytest.mark.slow
@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_changes_only_its_own_method_keys(arm: str):
    cfg = arm_config(arm)
    assert cfg.model.name == "smollm2-135m" and cfg.precision == "bf16-mixed"
    assert cfg.results_dir == "results/smollm2_cpu/runs" and cfg.study_seeds >= 1
    method = cfg.method
    default = compose([f"method={method.name}", f"task={cfg.task.name}"]).method     # nothing tuned per arm
    changed = {k for k in method if method[k] != default[k]}
    swept = {pair.split("=")[0].split(".")[1] for pair in cfg.variant.split(",") if "=" in pair}
    assert changed == swept, (arm, changed, swept)
    expected_epochs = 3 if method.name.startswith("hizfo") else (1 if method.name == "zero_shot" else 5)
    assert method.epochs == expected_epochs                                          # the paper's epochs


@pytest.mark.slow
def test_every_arm_of_a_task_shares_the_tasks_settings():
    seen: dict[str, dict] = {}
    for arm in ARMS:
        task = OmegaConf.to_container(arm_config(arm).task, resolve=True)
        shared = {k: task.get(k) for k in SHARED_TASK_KEYS}
        assert seen.setdefault(task["name"], shared) == shared, arm
    assert set(seen) == {"pydoc", "humaneval_split"}
    assert seen["pydoc"]["train_limit"] == 128 and seen["pydoc"]["max_input_length"] == 128
    assert seen["humaneval_split"]["generation"]["max_new_tokens"] == 320


@pytest.mark.slow
def test_seed_counts_are_sized_for_power():
    seeds = {arm: arm_config(arm).study_seeds for arm in ARMS}
    for arm in ("pd_full_ft", "pd_hizfo", "pd_hizfo_zo_off", "pd_hizfo_random_dir"):
        assert seeds[arm] >= 8, arm
    for arm in ("pd_mezo", "pd_hizfo_alpha_loss", "pd_hizfo_alpha_loss0.0"):
        assert seeds[arm] >= 5, arm
    assert seeds["pd_zero_shot"] == seeds["pd_hizfo_alpha0.0"] == seeds["he_zero_shot"] == 1
    assert all(n >= 3 for arm, n in seeds.items() if arm not in ("pd_zero_shot", "pd_hizfo_alpha0.0", "he_zero_shot"))


@pytest.mark.slow
@pytest.mark.parametrize("arm", sorted(FROZEN))
def test_the_studys_runs_are_frozen(arm: str):
    overrides = ["experiment=smollm2_study_cpu", f"+study_arm={arm}", "seed=0"]
    config = OmegaConf.to_container(compose(overrides), resolve=True)
    spec = RunSpec.build(config, overrides)
    assert spec.config_hash == FROZEN[arm]
    # a frozen value that no committed record carries would freeze nothing real
    assert json.loads((ROOT / spec.path).read_text())["config_hash"] == FROZEN[arm]


def test_every_arm_is_frozen():
    assert set(FROZEN) == set(ARMS)                 # all 24 arms, not a sample


@pytest.mark.slow
def test_the_code_execution_opt_in_the_driver_passes_leaves_the_hash_alone():
    """run_study.py --allow-code-execution adds task.allow_code_execution=true to each run: the humaneval_split arms
    need it to start, and it must not move their frozen hash. The preset's command line carries the flag."""
    base = ["experiment=smollm2_study_cpu", "+study_arm=he_mezo", "seed=0"]
    opted = base + ["task.allow_code_execution=true"]
    config = OmegaConf.to_container(compose(opted), resolve=True)
    assert config["task"]["allow_code_execution"] is True
    assert RunSpec.build(config, opted).config_hash == FROZEN["he_mezo"]
    needs_opt_in = any(arm_config(arm).task.name.startswith("humaneval") for arm in ARMS)
    assert needs_opt_in == ("--allow-code-execution" in PRESET.read_text().splitlines()[1])
