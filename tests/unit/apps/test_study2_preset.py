"""experiment=smollm2_study2_cpu: its files are what analysis/study/study2_spec.py writes, its arms are frozen (every
config_hash, committed before the first record), study 1's reused arms keep study 1's hash, no two arms are one
computation, and scripts/run_study.py reuses a study-1 record only on the same CPU model."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from analysis.study.study2_spec import ARMS, PRESET, ArmSpec, check_arms
from conftest import ROOT, compose
from hizfo.run.records import RunRecord, cpu_model, reuse_refusal
from hizfo.run.runspec import RunSpec
from scripts import gen_study2_arms, run_study

PRESET_FILE = ROOT / "conf" / "experiment" / f"{PRESET}.yaml"
# config_hash of (arm, seed 0), committed with the analysis rules before any study-2 record. The wn arms' values
# moved once, when the wordnet_revdict sizing was set from its pilot (train_limit 192), before their first record.
FROZEN = {
    "pd_full_ft": "4412f054d0a4c71b", "pd_hizfo_zo_off": "263e234167b72820",          # study 1's, reused
    "s2_pd_hizfo_adamw": "25785c7237e92575", "s2_pd_hizfo_random_dir_adamw": "1a67e7c888cbcf9a",
    "s2_pd_hizfo_adamw_r0.3": "fd8e43e2d18caf74", "s2_pd_hizfo_adamw_r0.5": "22097113c4e8ac34",
    "s2_pd_hizfo_adamw_r0.7": "932235e8694341ad", "s2_wn_zero_shot": "e9a2df6bfb9846cb",
    "s2_wn_full_ft": "97eab3137cbda7df", "s2_wn_hizfo": "1bd6149dd0dd9cdc", "s2_wn_hizfo_adamw": "f9c6c38ef46387c7",
    "s2_wn_hizfo_zo_off": "a7299765ab6031aa", "s2_wn_hizfo_random_dir": "eb4f33df1892d1eb",
    "s2_wn_hizfo_random_dir_adamw": "126b8063034411af", "s2_wn_mezo": "07a94b1fc17b4a8b",
    "s2_wn_lora": "94f64696d69f9fe4", "s2_wn_greentrainer": "61ed9a9e5f85df29",
}


def test_the_files_are_what_the_spec_writes():
    assert gen_study2_arms.main(["--check"]) == 0
    listed = str(OmegaConf.load(PRESET_FILE).hydra.sweeper.params["+study_arm"]).split(",")
    assert listed == [a.name for a in ARMS]
    from analysis.study.study2_plan import CODE_COMMIT
    assert PRESET_FILE.read_text().splitlines()[1].startswith(f"# bash scripts/study_slice.sh {PRESET} {CODE_COMMIT}")


def test_the_check_finds_a_hand_edited_arm(tmp_path: Path):
    conf = tmp_path / "conf"
    for sub in ("study_arm", "study_task", "experiment"):
        (conf / sub).mkdir(parents=True)
    (conf / "study_task" / "smollm2_study_cpu_pydoc.yaml").write_text(
        (ROOT / "conf/study_task/smollm2_study_cpu_pydoc.yaml").read_text())
    (conf / "experiment" / f"{PRESET}.yaml").write_text(PRESET_FILE.read_text())
    assert gen_study2_arms.main(["--conf", str(conf)]) == 0
    assert gen_study2_arms.main(["--check", "--conf", str(conf)]) == 0
    edited = conf / "study_arm" / "s2_wn_mezo.yaml"
    edited.write_text(edited.read_text().replace("study_seeds: 5", "study_seeds: 4"))
    assert gen_study2_arms.main(["--check", "--conf", str(conf)]) == 1


def test_an_arm_that_restates_another_is_refused(capsys: pytest.CaptureFixture):
    assert check_arms() == []
    twin = replace(ARMS[2], name="s2_pd_hizfo_adamw_again")
    assert check_arms(ARMS + (twin,)) == [
        "s2_pd_hizfo_adamw_again: restates s2_pd_hizfo_adamw (task pydoc, method hizfo, variant "
        "method.zo_optimizer=adamw)"]
    assert check_arms(ARMS + (ArmSpec("s2_wn_lora", "pydoc", "lora", 3),)) == ["s2_wn_lora: named twice"]
    with pytest.raises(ValueError, match="restates"):
        gen_study2_arms.wanted_files(ROOT / "conf", ARMS + (twin,))


def test_every_arm_is_frozen_and_no_two_are_one_computation():
    assert set(FROZEN) == {a.name for a in ARMS}
    assert len(set(FROZEN.values())) == len(FROZEN)


@pytest.mark.slow
@pytest.mark.parametrize("arm", ARMS, ids=lambda a: a.name)
def test_each_arm_composes_to_its_spec_and_frozen_hash(arm: ArmSpec):
    overrides = [f"experiment={PRESET}", f"+study_arm={arm.name}", "seed=0"]
    cfg = compose(overrides)
    assert (cfg.task.name, cfg.method.name, cfg.study_seeds) == (arm.task, arm.method, arm.seeds)
    assert cfg.precision == "bf16-mixed" and cfg.results_dir == "results/smollm2_cpu_study2/runs"
    assert all(cfg.method[k] == v for k, v in arm.keys)
    spec = RunSpec.build(OmegaConf.to_container(cfg, resolve=True), overrides)
    assert spec.config_hash == FROZEN[arm.name]
    if arm.reused:                                   # study 1's run: its committed record has this hash
        study1 = ROOT / "results" / "smollm2_cpu" / "runs" / spec.folder.with_suffix(".json")
        assert json.loads(study1.read_text())["config_hash"] == FROZEN[arm.name]


# -- the CPU model: in provenance, and the rule for reusing another study's record ---------------------------------
def test_the_cpu_model_is_read_from_cpuinfo_with_a_fallback(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                    "flags\t\t: amx_bf16\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n")
    assert cpu_model(info) == "Intel(R) Xeon(R) Platinum 8480+"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nstepping\t: 1\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n")
    assert cpu_model(info) == "AMD EPYC (family 25, model 17, stepping 1)"    # a generic name gets its ids
    info.write_text("processor\t: 0\nCPU implementer\t: 0x41\n")            # no model name line (some ARM kernels)
    assert cpu_model(info) and cpu_model(info) == cpu_model(tmp_path / "absent")


def fixture_record(cpu: str | None, status: str = "ok", config_hash: str = "abc") -> RunRecord:
    provenance = {"git_sha": "0" * 40} | ({"cpu_model": cpu} if cpu else {})
    return RunRecord.from_json({"status": status, "config": {"seed": 0}, "config_hash": config_hash,
                                "provenance": provenance})


def test_a_record_is_reused_only_on_the_same_cpu_model():
    xeon, epyc = "Intel(R) Xeon(R) Processor", "AMD EPYC"
    assert reuse_refusal(fixture_record(xeon), "abc", xeon) is None
    assert "ran on CPU model 'Intel(R) Xeon(R) Processor', this machine is 'AMD EPYC'" in \
        reuse_refusal(fixture_record(xeon), "abc", epyc)
    assert "no cpu_model" in reuse_refusal(fixture_record(None), "abc", xeon)       # study 1's records
    assert reuse_refusal(fixture_record(None), "abc", xeon, legacy_cpu=xeon) is None
    assert "this machine is 'AMD EPYC'" in reuse_refusal(fixture_record(None), "abc", epyc, legacy_cpu=xeon)
    assert reuse_refusal(fixture_record(xeon), "other", xeon).startswith("config_hash abc")
    assert reuse_refusal(fixture_record(xeon, status="failed"), "abc", xeon) == "status failed"
    assert reuse_refusal(None, "abc", xeon) == "no record"


def test_the_driver_counts_a_study1_record_only_on_its_cpu_model(tmp_path: Path):
    """run_study.reused_record on a fixture study-1 folder: found and counted on the same CPU, not on another."""
    spec = RunSpec.build({"model": {"name": "m"}, "task": {"name": "t"}, "method": {"name": "x"}, "seed": 0,
                          "results_dir": str(tmp_path / "study2")}, [])
    path = tmp_path / "study1" / spec.folder.with_suffix(".json")
    path.parent.mkdir(parents=True)
    record = fixture_record("CPU A", config_hash=spec.config_hash)
    record.write(path)
    assert run_study.reused_record(spec, run_study.Reuse(tmp_path / "study1", "CPU A")) == (path, "CPU A")
    found, why = run_study.reused_record(spec, run_study.Reuse(tmp_path / "study1", "CPU B"))
    assert found is None and "this machine is 'CPU B'" in why
    assert run_study.reused_record(spec, None) == (None, None)


def test_the_driver_refuses_to_mix_cpu_models_in_one_study(tmp_path: Path):
    done = [run_study.PlannedRun("a", 0, tmp_path / "x.json", True, cpu="CPU A"),
            run_study.PlannedRun("b", 0, tmp_path / "y.json", False)]
    assert run_study.mixed_cpu(done, "CPU A") is None
    assert "mix CPU models" in run_study.mixed_cpu(done, "CPU B")
