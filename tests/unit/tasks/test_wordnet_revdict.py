"""`task=wordnet_revdict`: the committed WordNet snapshot, its rule, its template and exact-match score, and a
damaged snapshot failing in one line (shared with `pydoc`: hizfo/tasks/snapshot.py)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from hizfo.errors import ConfigError
from tests.conftest import ROOT
from tests.unit.tasks.test_real_tasks import make_task, run_cli

SNAPSHOT = ROOT / "data" / "wordnet_revdict"
REGENERATE = "python scripts/make_wordnet_revdict_snapshot.py"
WORDNET = Path("/usr/share/wordnet")


def rows(split: str, folder: Path = SNAPSHOT) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def script():
    spec = importlib.util.spec_from_file_location("make_wordnet_revdict_snapshot",
                                                  ROOT / "scripts" / "make_wordnet_revdict_snapshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_snapshot_matches_its_manifest_and_carries_the_licence():
    manifest = json.loads((SNAPSHOT / "MANIFEST.json").read_text())
    from hizfo.tasks.wordnet_revdict import verify_snapshot
    assert verify_snapshot(SNAPSHOT) == manifest
    for split in ("train", "eval"):
        data = (SNAPSHOT / f"{split}.jsonl").read_bytes()
        assert manifest["files"][f"{split}.jsonl"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert manifest["files"][f"{split}.jsonl"]["rows"] == len(rows(split)) == manifest["counts"][split]
    assert manifest["counts"]["eval"] >= 200 and manifest["counts"]["train"] + manifest["counts"]["eval"] <= 3000
    licence = (SNAPSHOT / "LICENSE").read_text()
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in licence and "AS IS" in licence


def test_rows_follow_the_rule_and_the_splits_are_disjoint():
    train, evaluation = rows("train"), rows("eval")
    words = [r["word"] for r in train + evaluation]
    assert len(words) == len(set(words))                                  # each word once, in one split
    assert len({r["offset"] for r in train + evaluation}) == len(words)   # one row per synset
    module = script()
    for row in train + evaluation:
        assert re.fullmatch(r"[a-z]{3,14}", row["word"]) and row["tag_count"] >= 1
        assert 3 <= len(row["gloss"].split()) <= 25 and '"' not in row["gloss"]
        assert not any(module.leaks(w, row["gloss"]) for w in [row["word"], *row["synonyms"]])   # no answer shown
        assert module.split_of(row["word"]) == ("eval" if row in evaluation else "train")
    order = [hashlib.sha256(("wordnet-revdict:" + r["word"]).encode()).hexdigest() for r in evaluation]
    assert order == sorted(order)                                         # the first N are a spread-out sample


@pytest.mark.skipif(not (WORDNET / "data.noun").is_file(), reason="needs WordNet 3.0 (apt-get install wordnet-base)")
def test_a_rebuild_from_wordnet_gives_the_committed_files():
    module = script()
    splits, counts = module.build(WORDNET)
    for split in ("train", "eval"):
        assert module.jsonl_bytes(splits[split]) == (SNAPSHOT / f"{split}.jsonl").read_bytes()
    assert module.license_text(WORDNET) == (SNAPSHOT / "LICENSE").read_text()


def test_examples_use_the_template_and_exact_match_accepts_synonyms():
    task = make_task("wordnet_revdict", "task.limit=20")
    examples = task.examples("eval")
    first = rows("eval")[0]
    assert examples[0].prompt == f"Which English word has this meaning?\nMeaning: {first['gloss']}\nWord:"
    assert examples[0].target == first["word"] and examples[0].references == [first["word"], *first["synonyms"]]
    assert task.score([e.target for e in examples], examples) == {"exact_match": 100.0, "exact_match_word": 100.0}
    with_synonyms = [i for i, e in enumerate(examples) if len(e.references) > 1]
    predictions = [f" {e.references[-1].upper()}." for e in examples]   # a synonym, other case, a full stop
    score = task.score(predictions, examples)
    assert score["exact_match"] == 100.0
    assert score["exact_match_word"] == pytest.approx(100.0 * (len(examples) - len(with_synonyms)) / len(examples))
    assert task.postprocess(" bagpipe\nWhich English word") == "bagpipe"
    assert task.postprocess(" bagpipe, a wind instrument") == "bagpipe"


@pytest.mark.parametrize("damage", ["modified", "missing"])
def test_a_damaged_snapshot_fails_in_one_line_naming_the_file_and_the_command(tmp_path, damage):
    folder = tmp_path / "wordnet_revdict"
    shutil.copytree(SNAPSHOT, folder)
    target = folder / "train.jsonl"
    if damage == "modified":
        data = bytearray(target.read_bytes())
        data[10] = ord("X") if data[10] != ord("X") else ord("Y")
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(ConfigError) as info:
        make_task("wordnet_revdict", f"task.data_dir={folder}")
    message = str(info.value)
    assert "\n" not in message and str(target) in message and REGENERATE in message and "wordnet-base" in message
    assert ("is missing" if damage == "missing" else "does not match the sha256") in message


@pytest.mark.subprocess
@pytest.mark.slow
def test_run_py_exits_2_on_a_modified_snapshot_before_the_model_loads(tmp_path):
    folder = tmp_path / "wordnet_revdict"
    shutil.copytree(SNAPSHOT, folder)
    with open(folder / "eval.jsonl", "a") as handle:
        handle.write("\n")
    proc = run_cli("model=tiny-opt", "task=wordnet_revdict", "logger=none", f"task.data_dir={folder}",
                   f"results_dir={tmp_path / 'results'}")
    assert proc.returncode == 2, proc.stderr[-1500:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: task wordnet_revdict:") and "eval.jsonl" in last and REGENERATE in last
    assert "Traceback" not in proc.stderr and not list((tmp_path / "results").rglob("*.json"))


def test_the_check_verifies_the_hashes_even_without_wordnet(tmp_path, capsys):
    module = script()
    assert module.main(["--check", "--wordnet", str(tmp_path / "none")]) == 0
    assert "not rebuilt" in capsys.readouterr().out
    folder = tmp_path / "copy"
    shutil.copytree(SNAPSHOT, folder)
    (folder / "eval.jsonl").write_text("")
    assert module.main(["--check", "--out", str(folder), "--wordnet", str(tmp_path / "none")]) == 1
    assert module.main(["--out", str(tmp_path / "new"), "--wordnet", str(tmp_path / "none")]) == 2   # no source
    assert "apt-get install wordnet-base" in capsys.readouterr().err
