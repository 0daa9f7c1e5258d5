"""experiment=smollm2_study: its arms compose to the right method, task and variant, and the sweep is the issue's grid."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose

PRESET = ROOT / "conf" / "experiment" / "smollm2_study.yaml"
ARMS = sorted(p.stem for p in (ROOT / "conf" / "study_arm").glob("*.yaml") if p.stem.startswith(("pd_", "he_")))


def test_the_preset_names_its_command_and_sweeps_every_arm_over_three_seeds():
    lines = PRESET.read_text().splitlines()
    assert lines[1].startswith("# python run.py -m experiment=smollm2_study")
    params = OmegaConf.load(PRESET).hydra.sweeper.params
    assert str(params["seed"]).split(",") == ["0", "1", "2"]
    assert sorted(str(params["+study_arm"]).split(",")) == ARMS


@pytest.mark.slow
@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_composes_at_the_papers_settings(arm: str):
    cfg = compose(["experiment=smollm2_study", f"+study_arm={arm}"])
    assert cfg.model.name == "smollm2-135m" and cfg.results_dir == "results/smollm2/runs"
    assert cfg.task.name == ("pydoc" if arm.startswith("pd_") else "humaneval_split")
    method = cfg.method
    expected_epochs = 3 if method.name.startswith("hizfo") else (1 if method.name == "zero_shot" else 5)
    assert method.epochs == expected_epochs                        # the paper's epochs, untouched
    default = compose([f"method={method.name}", f"task={cfg.task.name}"]).method   # nothing tuned: its own defaults
    changed = {k for k in method if method[k] != default[k]}
    swept = {pair.split("=")[0].split(".")[1] for pair in cfg.variant.split(",") if "=" in pair}
    assert changed == swept, (arm, changed, swept)
    assert cfg.study_seeds >= 1
    assert (cfg.variant == "default") == (not swept)


@pytest.mark.slow
def test_the_issues_sweeps_are_all_there():
    variants = {compose(["experiment=smollm2_study", f"+study_arm={arm}"]).variant for arm in ARMS if "pd_hizfo" in arm}
    for key, values in (("rho", (0.2, 0.4, 0.8)), ("lr_ratio", (0.3, 0.5, 0.7)), ("alpha", (0.0, 0.4))):
        assert {f"method.{key}={v}" for v in values} <= variants      # the default value is the pd_hizfo arm
