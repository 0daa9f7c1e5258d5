"""`task=wordnet_revdict`: a reverse dictionary from WordNet 3.0: a noun's definition -> the word; exact match, %
(a short-answer task with exact match, the role WebQuestions has in the paper, §4.1, built from data that installs
offline).

The rows are a committed snapshot, ``data/wordnet_revdict/{train,eval}.jsonl``, built from Debian's
``wordnet-base`` by ``scripts/make_wordnet_revdict_snapshot.py`` (its docstring states the selection and split
rule: single-word lower-case nouns with one sense in all of WordNet, attested in SemCor); ``MANIFEST.json``
records the source and each file's sha256, checked when the task is built (hizfo.tasks.snapshot), and ``LICENSE``
carries the WordNet 3.0 licence the data is under.

Template (zero-shot readable, so an instruct model can answer before training)::

    Which English word has this meaning?
    Meaning: {gloss}
    Word: {word}<EOS>

Scores: ``exact_match``, % of predictions equal (SQuAD normalisation: case, punctuation, articles) to the word or
one of its synset's one-word synonyms, all of which the gloss defines; ``exact_match_word``, against the word only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from hizfo.eval.metrics import exact_match
from hizfo.tasks import snapshot
from hizfo.tasks.base import Example
from hizfo.tasks.snapshot import REPO, SnapshotTask

SNAPSHOT_DIR = REPO / "data" / "wordnet_revdict"
REGENERATE = "python scripts/make_wordnet_revdict_snapshot.py"
PREFIX, SUFFIX = "Which English word has this meaning?\nMeaning: ", "\nWord:"


def verify_snapshot(folder: Path = SNAPSHOT_DIR) -> dict[str, Any]:
    """Check both split files against the manifest's sha256; returns the manifest (hizfo.tasks.snapshot)."""
    return snapshot.verify_snapshot(folder, "wordnet_revdict", REGENERATE, "wordnet")


def revdict_example(row: dict[str, Any]) -> Example:
    """The gloss is the source; the word is the target and the first reference, its synonyms the others."""
    return Example(source=row["gloss"], target=row["word"], references=[row["word"], *row["synonyms"]],
                   prefix=PREFIX, suffix=SUFFIX, meta={"offset": row["offset"]})


class WordnetRevdictTask(SnapshotTask):
    """WordNet gloss -> word (the committed snapshot in ``data/wordnet_revdict``)."""

    snapshot_dir = SNAPSHOT_DIR
    regenerate = REGENERATE
    origin_key = "wordnet"

    def to_example(self, row: dict[str, Any]) -> Example:
        return revdict_example(row)

    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        references = [e.references for e in examples]
        return {"exact_match": exact_match(predictions, references),
                "exact_match_word": exact_match(predictions, references, first_only=True)}
