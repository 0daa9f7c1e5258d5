#!/usr/bin/env python
"""Build (or check) the `task=wordnet_revdict` snapshot: a reverse dictionary from WordNet 3.0 (gloss -> word).

    apt-get install wordnet-base                          # Debian / Ubuntu: WordNet 3.0's database files
    python scripts/make_wordnet_revdict_snapshot.py       # (re)write data/wordnet_revdict/{train,eval}.jsonl,
                                                          # MANIFEST.json and LICENSE
    python scripts/make_wordnet_revdict_snapshot.py --check   # verify the files against the manifest and a rebuild

Source: WordNet 3.0's database files (``index.*``, ``data.noun``, ``cntlist.rev``) in ``--wordnet``
(default ``/usr/share/wordnet``, where Debian's ``wordnet-base`` puts them). Licence: the WordNet 3.0 licence
(Princeton University), a permissive licence whose notice must go with every copy: the script copies it, from
the header of ``data.noun``, into the snapshot's LICENSE. The rule, step by step (docs/tasks.md,
`wordnet_revdict`):

1. Words: noun lemmas that are one lower-case word of 3-14 ASCII letters (no phrases, hyphens or capitals, so no
   proper nouns).
2. Unambiguous: the lemma has exactly one sense in all of WordNet (one synset over the noun, verb, adjective and
   adverb indexes). Its synset's other one-word lower-case lemmas (``synonyms``) are right answers too: the
   gloss defines all of them, and exact match accepts any (the target trains on the lemma).
3. Familiar: the sense occurs in the SemCor sense-tagged corpus (its tag count in ``cntlist.rev`` is at least
   ``MIN_TAG_COUNT``), which keeps everyday words and leaves out the rare ones a small model cannot know.
4. One row per synset: its lemma with the highest tag count (ties by lemma) is the target.
   Gloss: the synset's definition, without its quoted examples (the gloss up to the first ``; "``), of
   ``MIN_WORDS``-``MAX_WORDS`` words, that does not contain the lemma, a synonym, or a word sharing the first
   five letters of either (the answer must not be in the question).
5. Size: the ``MAX_ROWS`` rows with the highest tag counts (ties by lemma).
6. Split: a row is in ``eval`` when ``sha256("wordnet-revdict-split:" + lemma)`` read as an integer is 0 modulo
   ``EVAL_MODULUS``.
7. Order: each split is sorted by ``sha256("wordnet-revdict:" + lemma)``, so the first N rows (``task.limit`` /
   ``task.train_limit``) are a spread-out sample rather than the most frequent words.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT_DIR = REPO / "data" / "wordnet_revdict"
WORDNET_DIR = Path("/usr/share/wordnet")
POS_FILES = ("noun", "verb", "adj", "adv")
WORD = re.compile(r"^[a-z]{3,14}$")
MIN_TAG_COUNT = 1
MIN_WORDS, MAX_WORDS = 3, 25
MAX_ROWS = 3000
EVAL_MODULUS = 6
SPLIT_SALT = "wordnet-revdict-split:"
ORDER_SALT = "wordnet-revdict:"
LICENSE_LINES = 29                   # data.noun opens with the licence, one numbered line each


def sense_counts(wordnet: Path) -> dict[str, int]:
    """lemma -> its number of synsets over all four parts of speech (index.*: field 3, synset_cnt)."""
    counts: dict[str, int] = {}
    for pos in POS_FILES:
        for line in (wordnet / f"index.{pos}").read_text(encoding="utf-8").splitlines():
            if line.startswith(" "):
                continue                                      # the licence header
            fields = line.split()
            counts[fields[0]] = counts.get(fields[0], 0) + int(fields[2])
    return counts


def noun_offsets(wordnet: Path) -> dict[str, str]:
    """lemma -> the offset of its noun synset, for lemmas with one noun sense (index.noun: the last field)."""
    found = {}
    for line in (wordnet / "index.noun").read_text(encoding="utf-8").splitlines():
        if not line.startswith(" "):
            fields = line.split()
            if int(fields[2]) == 1:
                found[fields[0]] = fields[-1]
    return found


def tag_counts(wordnet: Path) -> dict[str, int]:
    """lemma -> the SemCor tag count of its noun sense (cntlist.rev: ``sense_key sense_number tag_cnt``)."""
    counts: dict[str, int] = {}
    for line in (wordnet / "cntlist.rev").read_text(encoding="utf-8").splitlines():
        key, _, count = line.split()
        lemma, _, lexsn = key.partition("%")
        if lexsn.startswith("1:"):                            # ss_type 1: a noun
            counts[lemma] = counts.get(lemma, 0) + int(count)
    return counts


def synsets(wordnet: Path) -> dict[str, tuple[list[str], str]]:
    """offset -> (the synset's words, its gloss) from data.noun."""
    found = {}
    for line in (wordnet / "data.noun").read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):
            continue
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        n_words = int(fields[3], 16)
        words = [fields[4 + 2 * i] for i in range(n_words)]
        found[fields[0]] = (words, gloss.strip())
    return found


def definition(gloss: str) -> str:
    """The gloss without its quoted examples: the text before the first ``; "`` (or a leading quote)."""
    text = gloss.split('; "')[0].split('"')[0]
    return " ".join(text.strip().rstrip(";").split())


def leaks(lemma: str, text: str) -> bool:
    """Whether the definition holds the lemma, or a word sharing its first five letters."""
    stem = lemma[:5]
    return any(w == lemma or (len(stem) == 5 and w.startswith(stem)) or lemma in w
               for w in re.findall(r"[a-z]+", text.lower()))


def split_of(lemma: str) -> str:
    digest = int(hashlib.sha256((SPLIT_SALT + lemma).encode()).hexdigest(), 16)
    return "eval" if digest % EVAL_MODULUS == 0 else "train"


def build(wordnet: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """The rows of both splits, and the counts of each step (module docstring)."""
    senses, offsets, tags, sets = sense_counts(wordnet), noun_offsets(wordnet), tag_counts(wordnet), synsets(wordnet)
    counts = {"noun_lemmas": len(offsets)}
    words = [w for w in offsets if WORD.match(w) and w in sets[offsets[w]][0]]   # as written: no capitals
    counts["one_word"] = len(words)
    words = [w for w in words if senses.get(w) == 1]
    counts["unambiguous"] = len(words)
    words = [w for w in words if tags.get(w, 0) >= MIN_TAG_COUNT]
    counts["familiar"] = len(words)
    best: dict[str, str] = {}                         # one row per synset: its most frequent such word
    for w in sorted(words, key=lambda w: (-tags[w], w)):
        best.setdefault(offsets[w], w)
    rows = []
    for offset, w in best.items():
        synonyms = sorted(x for x in sets[offset][0] if WORD.match(x) and x != w)
        text = definition(sets[offset][1])
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS and not any(leaks(x, text) for x in [w, *synonyms]):
            rows.append({"word": w, "synonyms": synonyms, "gloss": text, "offset": offset, "tag_count": tags[w]})
    counts["gloss_kept"] = len(rows)
    rows = sorted(rows, key=lambda r: (-r["tag_count"], r["word"]))[:MAX_ROWS]
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    for row in rows:
        splits[split_of(row["word"])].append(row)
    for split in splits:
        splits[split].sort(key=lambda r: hashlib.sha256((ORDER_SALT + r["word"]).encode()).hexdigest())
        counts[split] = len(splits[split])
    return splits, counts


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode("utf-8")


def license_text(wordnet: Path) -> str:
    """The WordNet 3.0 licence, from data.noun's header (each line ``  N text``)."""
    lines = (wordnet / "data.noun").read_text(encoding="utf-8").splitlines()[:LICENSE_LINES]
    return "\n".join(re.sub(r"^\s+\d+ ?", "", line).rstrip() for line in lines) + "\n"


def wordnet_package() -> str:
    """``wordnet-base <version>`` from dpkg where it is installed, else ``WordNet 3.0``."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "wordnet-base"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "WordNet 3.0"
    return f"WordNet 3.0 (Debian wordnet-base {out.stdout.strip()})" if out.returncode == 0 else "WordNet 3.0"


def manifest(files: dict[str, bytes], counts: dict[str, int], wordnet: Path) -> dict[str, Any]:
    return {
        "wordnet": wordnet_package(),
        "source": f"WordNet 3.0 database files (index.*, data.noun, cntlist.rev) in {wordnet}",
        "license": "WordNet 3.0 licence (Princeton University); the notice is in LICENSE",
        "script": "scripts/make_wordnet_revdict_snapshot.py",
        "regenerate": "python scripts/make_wordnet_revdict_snapshot.py",
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "rows": data.count(b"\n")}
                  for name, data in files.items()},
        "counts": counts,
        "rule": {
            "words": f"noun lemmas matching {WORD.pattern}",
            "unambiguous": ("one synset over all parts of speech; the synset's other one-word lower-case lemmas are "
                            "accepted answers (synonyms); one row per synset, its most frequent such lemma"),
            "familiar": f"SemCor tag count (cntlist.rev) >= {MIN_TAG_COUNT}",
            "gloss": (f"the definition before the first '; \"', {MIN_WORDS}-{MAX_WORDS} words, without the lemma "
                      f"or a word sharing its first five letters"),
            "size": f"the {MAX_ROWS} rows with the highest tag counts (ties by lemma)",
            "split": f"eval iff int(sha256('{SPLIT_SALT}' + lemma)) % {EVAL_MODULUS} == 0",
            "order": f"each split sorted by sha256('{ORDER_SALT}' + lemma)",
        },
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the snapshot instead of writing it")
    parser.add_argument("--out", type=Path, default=SNAPSHOT_DIR, help="snapshot folder (default data/wordnet_revdict)")
    parser.add_argument("--wordnet", type=Path, default=WORDNET_DIR,
                        help="WordNet 3.0's database folder (default /usr/share/wordnet: apt-get install wordnet-base)")
    args = parser.parse_args(argv)
    have_wordnet = (args.wordnet / "data.noun").is_file()
    missing = (f"no WordNet database in {args.wordnet} (data.noun); install it with `apt-get install wordnet-base` "
               f"or pass --wordnet DIR")
    if args.check:
        from hizfo.errors import ConfigError
        from hizfo.tasks.wordnet_revdict import verify_snapshot
        try:
            verify_snapshot(args.out)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if not have_wordnet:
            print(f"ok: the files match MANIFEST.json; not rebuilt: {missing}")
            return 0
        splits, _ = build(args.wordnet)
        for split, rows in splits.items():
            if (args.out / f"{split}.jsonl").read_bytes() != jsonl_bytes(rows):
                print(f"error: {args.out / f'{split}.jsonl'} differs from a rebuild from {args.wordnet}",
                      file=sys.stderr)
                return 1
        print(f"ok: the files match MANIFEST.json and a rebuild from {args.wordnet}")
        return 0
    if not have_wordnet:
        print(f"error: --wordnet: {missing}", file=sys.stderr)
        return 2
    splits, counts = build(args.wordnet)
    files = {f"{split}.jsonl": jsonl_bytes(rows) for split, rows in splits.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest(files, counts, args.wordnet), indent=2) + "\n")
    (args.out / "LICENSE").write_text(license_text(args.wordnet))
    print(f"wrote {args.out}: {counts['train']} train, {counts['eval']} eval rows ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
