"""Every study arm file is written from a spec: study 1's from analysis/study/study1_spec.py
(scripts/gen_study1_arms.py), study 2's from analysis/study/study2_spec.py (scripts/gen_study2_arms.py). A
hand-written or hand-edited arm fails here; the arms' frozen config hashes are their presets' tests."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from analysis.study import study1_spec, study2_spec
from conftest import ROOT
from scripts import gen_study1_arms


def test_the_files_are_what_the_spec_writes():
    assert gen_study1_arms.main(["--check"]) == 0
    assert study1_spec.problems() == []


def test_every_arm_file_has_a_spec():
    written = {a.name for a in study1_spec.ARMS} | {a.name for a in study2_spec.ARMS if not a.reused}
    assert {p.stem for p in (ROOT / "conf" / "study_arm").glob("*.yaml")} == written
    assert not {a.name for a in study1_spec.ARMS} & {a.name for a in study2_spec.ARMS if not a.reused}


def test_the_arms_study_2_reuses_are_study_1s():
    study1 = {a.name: a for a in study1_spec.ARMS}
    for arm in (a for a in study2_spec.ARMS if a.reused):
        mine = study1[arm.name]
        assert (mine.task, mine.method, sorted(mine.keys)) == (arm.task, arm.method, sorted(arm.keys))


def test_a_hand_edited_arm_and_a_bad_spec_are_caught(tmp_path: Path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "study_arm").mkdir(parents=True)
    shutil.copytree(ROOT / "conf" / "experiment", conf / "experiment")
    assert gen_study1_arms.main(["--conf", str(conf)]) == 0
    assert gen_study1_arms.main(["--check", "--conf", str(conf)]) == 0
    edited = conf / "study_arm" / "pd_hizfo_rho0.2.yaml"
    edited.write_text(edited.read_text().replace("rho: 0.2", "rho: 0.25"))
    assert gen_study1_arms.main(["--check", "--conf", str(conf)]) == 1
    twin = replace(study1_spec.ARMS[3], name="pd_hizfo_zo_off_again")
    monkeypatch.setattr(study1_spec, "ARMS", study1_spec.ARMS + (twin,))
    assert study1_spec.problems() == ["pd_hizfo_zo_off_again: restates pd_hizfo_zo_off (task pydoc, method "
                                      "hizfo_zo_off, variant default)"]
    monkeypatch.setattr(study1_spec, "PRESET_ARMS", {"smollm2_study": ("pd_nothing",)})
    assert "smollm2_study: lists pd_nothing, which is no arm here" in study1_spec.problems()
