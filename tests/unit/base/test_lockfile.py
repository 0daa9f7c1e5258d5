"""The locked environment: the lock covers pyproject.toml, stale or edited locks are refused, records carry the flag."""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from packaging.requirements import Requirement

from analysis.loading import Report, environment_label, warn_mixed_environments
from hizfo import lockfile
from hizfo.run import records

REPO = Path(__file__).resolve().parents[3]


def _names(requirements: list[str]) -> set[str]:
    return {lockfile._normalise(Requirement(r).name) for r in requirements}


def test_the_lock_covers_every_dependency_pyproject_names_dev_extras_included():
    data = lockfile._load_toml(REPO / "pyproject.toml")["project"]
    wanted = _names(data["dependencies"]) | _names(sum(data["optional-dependencies"].values(), []))
    facts, body = lockfile.split(lockfile.LOCK.read_text())
    locked = {lockfile._normalise(line.split("==")[0]) for line in body.splitlines()
              if "==" in line and not line.startswith((" ", "#"))}
    assert "torch" in wanted and facts["torch"] == "2.13.0"          # torch: the header's pin, not the body
    assert "pytest" in wanted
    missing = wanted - locked - {"torch"}
    assert not missing, f"requirements.lock lacks {sorted(missing)}; refresh it: bash scripts/update_lock.sh"
    assert "torch" not in locked and not any(name.startswith("nvidia-") for name in locked)
    entries = re.split(r"\n(?=[A-Za-z0-9])", body.split("\n", 2)[2])      # one chunk per pinned package
    n_pins = sum(1 for line in body.splitlines() if "==" in line and not line.startswith((" ", "#")))
    assert len(entries) == n_pins and all("--hash=sha256:" in entry for entry in entries)


def test_the_committed_lock_is_sound_for_this_pyproject():
    assert lockfile.problem() is None


def _copy(tmp_path: Path) -> tuple[Path, Path]:
    lock, pyproject = tmp_path / "requirements.lock", tmp_path / "pyproject.toml"
    shutil.copy(lockfile.LOCK, lock)
    shutil.copy(REPO / "pyproject.toml", pyproject)
    return lock, pyproject


def test_a_stale_lock_is_refused_in_one_line_naming_the_refresh_command(tmp_path):
    lock, pyproject = _copy(tmp_path)
    pyproject.write_text(pyproject.read_text().replace('"numpy>=1.24",', '"numpy>=1.25",'))
    message = lockfile.problem(lock, pyproject)
    assert message and "stale" in message and "bash scripts/update_lock.sh" in message and "\n" not in message
    # a change outside the dependencies (a description, pytest's options) does not make it stale
    _, pyproject = _copy(tmp_path)
    pyproject.write_text(pyproject.read_text().replace('addopts = "-ra"', 'addopts = "-ra -q"'))
    assert lockfile.problem(lock, pyproject) is None


def test_a_hand_edited_lock_is_refused(tmp_path):
    lock, pyproject = _copy(tmp_path)
    text = lock.read_text()
    lock.write_text(text.replace("\npeft==", "\npeft==0.0.1\n# was peft==", 1))
    message = lockfile.problem(lock, pyproject)
    assert message and "edited by hand" in message


@pytest.mark.subprocess
def test_setup_check_exits_1_on_a_bad_lock_and_warns_without_one(tmp_path):
    lock, _ = _copy(tmp_path)
    lock.write_text(lock.read_text() + "extra==1.0\n")
    script = str(REPO / "hizfo" / "lockfile.py")
    bad = subprocess.run([sys.executable, script, "check", str(lock)], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "update_lock.sh" in bad.stderr
    none = subprocess.run([sys.executable, script, "check", str(tmp_path / "absent.lock")],
                          capture_output=True, text=True)
    assert none.returncode == 3 and none.stderr.startswith("warning: no absent.lock")


def _lock_with(tmp_path: Path, replace: tuple[str, str]) -> Path:
    """A sealed lock whose body pins one package differently from what is installed."""
    _, body = lockfile.split((REPO / "requirements.lock").read_text())
    assert replace[0] in body
    body = body.replace(*replace)
    facts, _ = lockfile.split((REPO / "requirements.lock").read_text())
    path = tmp_path / "requirements.lock"
    path.write_text(f"# torch=={facts['torch']}\n# inputs-sha256: {facts['inputs-sha256']}\n"
                    f"# body-sha256: {hashlib.sha256(body.encode()).hexdigest()}\n{lockfile.HEADER_END}\n{body}")
    return path


def test_a_record_written_outside_the_locked_versions_carries_the_flag(tmp_path, monkeypatch):
    from importlib import metadata
    installed = metadata.version("tqdm")
    monkeypatch.setattr(lockfile, "LOCK", _lock_with(tmp_path, (f"\ntqdm=={installed}", "\ntqdm==0.0.1")))
    seen = records.provenance(torch.device("cpu"))
    assert seen["env_matches_lock"] is False
    assert seen["lock_differences"] == [f"tqdm: installed {installed}, lock 0.0.1"]
    assert len(seen["lock_sha256"]) == 16
    # and with the lock's own versions there is no flag
    monkeypatch.setattr(lockfile, "LOCK", _lock_with(tmp_path, (f"\ntqdm=={installed}", f"\ntqdm=={installed}")))
    assert not any(d.startswith("tqdm") for d in lockfile.environment_status()["lock_differences"])


def test_no_lock_means_no_claim(tmp_path, monkeypatch):
    monkeypatch.setattr(lockfile, "LOCK", tmp_path / "absent.lock")
    assert lockfile.environment_status() == {"lock_sha256": None, "env_matches_lock": None, "lock_differences": []}


def test_markers_pick_the_pin_for_this_python():
    body = ("numpy==1.0.0 ; python_full_version < '3.0' \\\n    --hash=sha256:aa\n"
            "numpy==2.0.0 ; python_full_version >= '3.0' \\\n    --hash=sha256:bb\n"
            "peft==0.21.2 \\\n    --hash=sha256:cc\n")
    assert lockfile.pins(body) == {"numpy": ("2.0.0", "python_full_version >= '3.0'"), "peft": ("0.21.2", None)}


def test_analysis_warns_when_records_come_from_different_environments():
    locked = {"lock_sha256": "abc", "env_matches_lock": True, "packages": {}}
    drifted = {"lock_sha256": "abc", "env_matches_lock": False, "packages": {}}
    old = {"packages": {"torch": "2.13.0", "transformers": "5.23.0", "peft": "0.21.2"}}
    labels = [environment_label(p) for p in (locked, drifted, old, {"source": "paper"})]
    assert labels == ["lock abc", "lock abc (installed versions differed)",
                      "unlocked: torch 2.13.0, transformers 5.23.0, peft 0.21.2", None]
    report = Report(quiet=True)
    warn_mixed_environments(pd.DataFrame({"environment": labels[:1] * 3}), report, "table1")
    assert report.warnings == []
    warn_mixed_environments(pd.DataFrame({"environment": labels}), report, "table1")
    assert len(report.warnings) == 1 and "3 software environments" in report.warnings[0]


@pytest.mark.subprocess
@pytest.mark.parametrize("script", ["setup.sh", "update_lock.sh", "test.sh"])
def test_the_install_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / script)]).returncode == 0
