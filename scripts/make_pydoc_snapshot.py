#!/usr/bin/env python
"""Build (or check) the `task=pydoc` snapshot: Python standard-library functions and their one-line summaries.

    python scripts/make_pydoc_snapshot.py            # (re)write data/pydoc/{train,eval}.jsonl and MANIFEST.json
    python scripts/make_pydoc_snapshot.py --check    # verify the files against the manifest and, when this
                                                     # interpreter's version is the manifest's, against a rebuild

Source: the standard library of the running interpreter (``sysconfig.get_paths()["stdlib"]``), so the rows
depend on the Python version, which the manifest records. The rule, step by step (docs/tasks.md, `pydoc`):

1. Files: every ``*.py`` under the stdlib folder, in sorted module-name order, except the folders in
   ``EXCLUDED_TOP`` (tests, GUI and demo code, vendored or deprecated packages, generated data) and any path
   with a ``test`` / ``tests`` / ``idle_test`` component.
2. Functions: every ``def`` / ``async def`` at module level or inside classes (also under ``if`` / ``try``
   blocks), not functions nested in functions. ``qualname`` is ``Class.method``. Only the documented API:
   no part of the qualname starts with ``_`` (private helpers and dunder methods are left out).
3. Target: the first sentence of the docstring's first paragraph (``ast.get_docstring``, whitespace collapsed,
   cut after the first ``.``, ``!`` or ``?`` followed by a space, except after ``e.g`` / ``i.e`` / ``etc``);
   kept when it has 4-30 words, ends with ``.`` (a whole sentence) and does not look like a signature (no ``>>>``, does not start with ``name(``).
4. Input: the function's own source text (``ast`` positions, so comments and layout are kept) from its first
   decorator to its last line, with the docstring's lines removed, dedented. Skipped when the docstring shares
   a line with code, when nothing but ``pass`` / ``...`` / ``raise NotImplementedError`` remains, or when the
   result is longer than ``MAX_SOURCE_CHARS`` characters (a tokenizer-free cap; docs/tasks.md gives the
   SmolLM2 token counts it implies).
5. Deduplication, in file order: a row is dropped when its whitespace-collapsed source, or its lower-cased
   whitespace-collapsed target, was already seen.
6. Split by package, so no module (nor its siblings) is in both splits: a row is in ``eval`` when
   ``sha256("pydoc-split:" + top-level package)`` read as an integer is 0 modulo ``EVAL_MODULUS``.
7. Order: each split is sorted by ``sha256("module:qualname:lineno")``, so the first N rows
   (``task.limit`` / ``task.train_limit``) are a spread-out sample rather than the alphabetically first modules.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import platform
import re
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any, Iterator, Optional

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT_DIR = REPO / "data" / "pydoc"
EXCLUDED_TOP = ("__phello__", "__pycache__", "distutils", "ensurepip", "idlelib", "lib-dynload", "lib2to3",
                "pydoc_data", "site-packages", "test", "tkinter", "turtledemo")
EXCLUDED_PARTS = ("test", "tests", "idle_test")
MAX_SOURCE_CHARS = 1500
MIN_WORDS, MAX_WORDS = 4, 30
EVAL_MODULUS = 8
SPLIT_SALT = "pydoc-split:"
# a sentence ends at . ! or ? before a space or the end, but not in "e.g." / "i.e." / "etc."
_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)(?<!etc)[.!?](?=\s|$)")
_STUB_BODIES = ("pass", "...", "raise NotImplementedError", "raise NotImplementedError()")


def module_name(relative: Path) -> str:
    """``email/mime/text.py`` -> ``email.mime.text``; ``json/__init__.py`` -> ``json``."""
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stdlib_files(stdlib: Path, modules: Optional[list[str]] = None) -> list[tuple[str, Path]]:
    """(module name, file) for every stdlib file the rule keeps, sorted by module name."""
    found = []
    for path in stdlib.rglob("*.py"):
        relative = path.relative_to(stdlib)
        top = relative.parts[0]
        if top in EXCLUDED_TOP or top.startswith("config-") or top.startswith("_sysconfigdata"):
            continue
        if any(part in EXCLUDED_PARTS for part in relative.parts[:-1]):
            continue
        name = module_name(relative)
        if modules is None or name in modules:
            found.append((name, path))
    return sorted(found)


def first_sentence(docstring: str) -> str:
    """The first sentence of the first paragraph, whitespace collapsed."""
    paragraph = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    end = _SENTENCE_END.search(text)
    return text[: end.end()] if end else text


def _functions(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """(qualname, node) of the functions defined in ``body``, descending into classes and compound statements."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    yield from _functions([c for c in children if isinstance(c, ast.AST)], prefix)


def function_source(lines: list[str], node: ast.AST) -> Optional[str]:
    """The function's text, docstring lines removed and dedented; None when the rule skips it."""
    doc = node.body[0]
    if doc.lineno == node.lineno or len(node.body) == 1:
        return None                                    # docstring on the def line, or nothing but a docstring
    if lines[doc.lineno - 1][: doc.col_offset].strip() or lines[doc.end_lineno - 1][doc.end_col_offset:].strip():
        return None                                    # the docstring shares a line with code
    rest = node.body[1:]
    if len(rest) == 1 and ast.unparse(rest[0]) in _STUB_BODIES:
        return None
    start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
    kept = lines[start: doc.lineno - 1] + lines[doc.end_lineno: node.end_lineno]
    return textwrap.dedent("\n".join(kept)).strip("\n")


def keep_summary(summary: str, name: str) -> bool:
    """Step 3's test: a whole sentence of 4-30 words, not a signature line."""
    words = len(summary.split())
    return (MIN_WORDS <= words <= MAX_WORDS and summary.endswith(".") and ">>>" not in summary
            and not summary.startswith(f"{name}("))


def module_rows(module: str, path: Path) -> list[dict[str, Any]]:
    """The candidate rows of one file (steps 2-4 of the rule), in file order."""
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    lines = text.splitlines()
    rows = []
    for qualname, node in _functions(tree.body):
        if any(part.startswith("_") for part in qualname.split(".")):
            continue                                   # private helpers and dunders: not the documented API
        docstring = ast.get_docstring(node, clean=True)
        if not docstring:
            continue
        summary = first_sentence(docstring)
        if not keep_summary(summary, node.name):
            continue
        source = function_source(lines, node)
        if source is None or len(source) > MAX_SOURCE_CHARS:
            continue
        rows.append({"module": module, "qualname": qualname, "lineno": node.lineno, "source": source,
                     "summary": summary})
    return rows


def dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step 5: drop a row whose normalised source or target was already seen (first occurrence kept)."""
    seen_sources, seen_targets, kept = set(), set(), []
    for row in rows:
        source_key = " ".join(row["source"].split())
        target_key = " ".join(row["summary"].lower().split())
        if source_key in seen_sources or target_key in seen_targets:
            continue
        seen_sources.add(source_key)
        seen_targets.add(target_key)
        kept.append(row)
    return kept


def split_of(module: str) -> str:
    """Step 6: ``eval`` or ``train``, from the module's top-level package only."""
    package = module.split(".")[0]
    digest = int(hashlib.sha256((SPLIT_SALT + package).encode()).hexdigest(), 16)
    return "eval" if digest % EVAL_MODULUS == 0 else "train"


def row_order(row: dict[str, Any]) -> str:
    """Step 7's sort key."""
    return hashlib.sha256(f"{row['module']}:{row['qualname']}:{row['lineno']}".encode()).hexdigest()


def build(stdlib: Path, modules: Optional[list[str]] = None) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """The rows of each split and the counts at each step, for the whole stdlib or the named modules."""
    files = stdlib_files(stdlib, modules)
    candidates = [row for module, path in files for row in module_rows(module, path)]
    rows = dedupe(candidates)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    for row in rows:
        splits[split_of(row["module"])].append(row)
    for split_rows in splits.values():
        split_rows.sort(key=row_order)
    counts = {"files": len(files), "candidates": len(candidates), "duplicates_dropped": len(candidates) - len(rows),
              "train": len(splits["train"]), "eval": len(splits["eval"])}
    return splits, counts


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows).encode("utf-8")


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def manifest(files: dict[str, bytes], counts: dict[str, int]) -> dict[str, Any]:
    return {
        "python": python_version(),
        "source": "the standard library of the interpreter that ran the script: sysconfig.get_paths()['stdlib']",
        "script": "scripts/make_pydoc_snapshot.py",
        "regenerate": "python scripts/make_pydoc_snapshot.py",
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "rows": data.count(b"\n")}
                  for name, data in files.items()},
        "counts": counts,
        "rule": {
            "excluded_top_level": list(EXCLUDED_TOP) + ["config-*", "_sysconfigdata*"],
            "excluded_path_parts": list(EXCLUDED_PARTS),
            "functions": ("def / async def at module level or in classes (not nested in functions), no qualname "
                          "part starting with '_'"),
            "target": (f"first sentence of the docstring's first paragraph, {MIN_WORDS}-{MAX_WORDS} words, "
                       f"ending with '.'"),
            "input": (f"the function's source lines (ast positions; decorators and comments kept) without the "
                      f"docstring lines, dedented, at most {MAX_SOURCE_CHARS} characters"),
            "dedupe": "first occurrence of each whitespace-collapsed source and lower-cased target",
            "split": f"eval iff int(sha256('{SPLIT_SALT}' + top-level package)) % {EVAL_MODULUS} == 0",
            "order": "each split sorted by sha256('module:qualname:lineno')",
        },
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the snapshot instead of writing it")
    parser.add_argument("--out", type=Path, default=SNAPSHOT_DIR, help="snapshot folder (default data/pydoc)")
    args = parser.parse_args(argv)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if args.check:
        from hizfo.errors import ConfigError
        from hizfo.tasks.pydoc import read_manifest, verify_snapshot
        try:
            verify_snapshot(args.out)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        recorded = read_manifest(args.out)["python"]
        if recorded != python_version():
            print(f"ok: the files match MANIFEST.json; not rebuilt, since they came from {recorded} and this is "
                  f"{python_version()}")
            return 0
        splits, _ = build(stdlib)
        for split, rows in splits.items():
            if (args.out / f"{split}.jsonl").read_bytes() != jsonl_bytes(rows):
                print(f"error: {args.out / f'{split}.jsonl'} differs from a rebuild from {stdlib}", file=sys.stderr)
                return 1
        print(f"ok: the files match MANIFEST.json and a rebuild from {stdlib} ({python_version()})")
        return 0
    splits, counts = build(stdlib)
    files = {f"{split}.jsonl": jsonl_bytes(rows) for split, rows in splits.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest(files, counts), indent=2) + "\n")
    print(f"wrote {args.out}: {counts['train']} train, {counts['eval']} eval rows from {counts['files']} files "
          f"({python_version()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
