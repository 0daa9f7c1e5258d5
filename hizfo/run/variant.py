"""How one command-line override appears in a run's variant (the results folder between method and seed).

A path names where data lives, not what a run computes, and makes an unreadable folder name
(``task.data_files.eval=_home_me_data_gsm8k_test.jsonl,...``), so a path-valued override appears as its file name
and a short hash of the whole path: two files with the same name in different folders stay two variants. A variant
too long for one folder name (255 bytes on most file systems) keeps its start and ends in a hash of the whole name.
"""
from __future__ import annotations

import hashlib
import posixpath

# keys whose values are paths, by their last part (task.data_files.<split>, task.data_dir, model.path, ...)
PATH_KEYS = ("path", "data_dir", "gguf_file", "data_files")   # data_files={train: A, eval: B} as a whole
PATH_PARENTS = ("data_files",)
HASH_CHARS = 8
MAX_VARIANT_CHARS = 160      # well under NAME_MAX (255 bytes); the longest committed variant has 42


def is_path_valued(key: str, value: str) -> bool:
    """Whether the override ``key=value`` names a file or folder."""
    parts = key.split(".")
    return bool(value) and (parts[-1] in PATH_KEYS or (len(parts) > 1 and parts[-2] in PATH_PARENTS))


def short_variant_part(key: str, value: str) -> str:
    """``key=value``, or for a path ``key=<file name>-<first 8 hex of sha256(path as written)>``.

    Pure (no file system): the same file written as a relative and as an absolute path gives two variants.
    """
    if not is_path_valued(key, value):
        return f"{key}={value}"
    digest = hashlib.sha256(value.encode()).hexdigest()[:HASH_CHARS]
    if value.startswith(("{", "[")):                                # several paths at once: the hash alone
        return f"{key}={digest}"
    name = posixpath.basename(value.rstrip("/")) or "root"
    return f"{key}={name}-{digest}"


def short_variant(variant: str) -> str:
    """``variant`` itself when it has at most ``MAX_VARIANT_CHARS`` bytes, else its start, ``-`` and the first 8 hex
    of sha256(variant): distinct long variants stay distinct, and the folder name stays legal."""
    if len(variant.encode()) <= MAX_VARIANT_CHARS:
        return variant
    digest = hashlib.sha256(variant.encode()).hexdigest()[:HASH_CHARS]
    head = variant.encode()[:MAX_VARIANT_CHARS - HASH_CHARS - 1].decode(errors="ignore")
    return f"{head}-{digest}"
