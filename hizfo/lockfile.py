"""The locked environment: ``requirements.lock`` at the repository root, and whether this process runs in it.

The lock is written by ``scripts/update_lock.sh`` (``uv pip compile`` over pyproject.toml's ranges, with hashes) and
installed by ``scripts/setup.sh``. Its header carries three facts this module reads:

    # torch==2.13.0            the torch pin (torch is installed apart: its build depends on the machine)
    # inputs-sha256: <hex>     inputs_hash() of pyproject.toml when the lock was made (stale when it differs)
    # body-sha256: <hex>       sha256 of the lines after the header (hand-edited when it differs)

Standard library only at import, so ``python hizfo/lockfile.py check`` runs before anything is installed
(scripts/setup.sh). ``environment_status`` compares the installed versions with the lock for a record's provenance.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
HEADER_END = "# --- end of header ---"
REFRESH = "bash scripts/update_lock.sh"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib                                   # Python >= 3.11
    except ImportError:                                  # Python 3.10: the copy pip vendors
        from pip._vendor import tomli as tomllib         # type: ignore[no-redef]
    return tomllib.loads(path.read_text())


def inputs_hash(pyproject: Path = REPO / "pyproject.toml") -> str:
    """sha256 of what the lock is resolved from: requires-python, the dependencies, the extras and [tool.uv]."""
    data = _load_toml(pyproject)
    project = data.get("project", {})
    payload = {"requires-python": project.get("requires-python"), "dependencies": project.get("dependencies"),
               "optional-dependencies": project.get("optional-dependencies"), "uv": data.get("tool", {}).get("uv")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def split(text: str) -> tuple[dict[str, str], str]:
    """The header's ``key: value`` facts (and ``torch``), and the body after the header."""
    head, sep, body = text.partition(HEADER_END + "\n")
    if not sep:
        return {}, text
    facts: dict[str, str] = {}
    for line in head.splitlines():
        line = line.lstrip("# ").strip()
        if line.startswith("torch=="):
            facts["torch"] = line.split("==", 1)[1].split()[0]
        elif ": " in line:
            key, value = line.split(": ", 1)
            facts[key.strip()] = value.strip()
    return facts, body


def problem(lock: Path = LOCK, pyproject: Path = REPO / "pyproject.toml") -> Optional[str]:
    """One line saying why the lock cannot be installed as is, or None when it is sound."""
    if not lock.is_file():
        return None
    facts, body = split(lock.read_text())
    if "inputs-sha256" not in facts or "body-sha256" not in facts or "torch" not in facts:
        return f"{lock.name}: the header is incomplete (torch pin, inputs-sha256, body-sha256); refresh it: {REFRESH}"
    if hashlib.sha256(body.encode()).hexdigest() != facts["body-sha256"]:
        return f"{lock.name}: edited by hand (its body-sha256 does not match); refresh it: {REFRESH}"
    if facts["inputs-sha256"] != inputs_hash(pyproject):
        return (f"{lock.name}: stale, pyproject.toml's dependencies changed since it was made; refresh it: "
                f"{REFRESH}")
    return None


def pins(body: str) -> dict[str, tuple[str, Optional[str]]]:
    """``name -> [(version, marker)]`` flattened to the pin whose marker holds here (name normalised)."""
    out: dict[str, tuple[str, Optional[str]]] = {}
    for line in body.splitlines():
        match = _PIN.match(line.strip())
        if not match:
            continue
        name, version, marker = match.group(1), match.group(2), match.group(3)
        if marker and not _marker_holds(marker):
            continue
        out[_normalise(name)] = (version, marker)
    return out


def _marker_holds(marker: str) -> bool:
    from packaging.markers import Marker            # installed with every environment the lock describes
    return Marker(marker).evaluate()


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(name: str) -> Optional[str]:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_status(lock: Optional[Path] = None, limit: int = 10) -> dict[str, Any]:
    """For a record's provenance: the lock's sha256, whether the installed versions equal it, and the differences.

    ``env_matches_lock`` is None when there is no lock. torch is compared without its local build label (2.13.0
    and 2.13.0+cpu are the same release), since its build is chosen per machine.
    """
    lock = lock or LOCK
    if not lock.is_file():
        return {"lock_sha256": None, "env_matches_lock": None, "lock_differences": []}
    text = lock.read_text()
    facts, body = split(text)
    wanted = {name: version for name, (version, _) in pins(body).items()}
    if "torch" in facts:
        wanted["torch"] = facts["torch"]
    differences = []
    for name, version in sorted(wanted.items()):
        have = _installed(name)
        have_release = have.split("+")[0] if (have and name == "torch") else have
        if have_release != version:
            differences.append(f"{name}: installed {have or 'none'}, lock {version}")
    return {"lock_sha256": hashlib.sha256(text.encode()).hexdigest()[:16], "env_matches_lock": not differences,
            "lock_differences": differences[:limit]}


def _main(argv: list[str]) -> int:
    lock = Path(argv[1]) if len(argv) == 2 else LOCK
    if argv[:1] == ["check"] and len(argv) <= 2:
        if not lock.is_file():
            print(f"warning: no {lock.name}: installing from pyproject.toml's ranges (versions may differ from "
                  f"CI's); make one with {REFRESH}", file=sys.stderr)
            return 3
        message = problem(lock)
        if message:
            print(message, file=sys.stderr)
            return 1
        return 0
    if argv[:1] == ["torch"] and len(argv) <= 2:
        facts, _ = split(lock.read_text())
        print(facts.get("torch", ""))
        return 0
    if argv == ["inputs-hash"]:
        print(inputs_hash())
        return 0
    if len(argv) == 2 and argv[0] == "seal":             # write the header over a compiled lock body
        path = Path(argv[1])
        _, body = split(path.read_text())
        torch_pin = _torch_pin_from_pyproject()
        header = (f"# The locked environment of hizfo: exact versions with hashes, made by {REFRESH} "
                  f"(uv pip compile, universal over Python >= 3.10) from pyproject.toml's ranges.\n"
                  f"# torch is not in the body: scripts/setup.sh installs this release first; a GPU user installs "
                  f"the CUDA build of it (docs/environment.md, 'torch on a GPU machine').\n"
                  f"# torch=={torch_pin}\n"
                  f"# inputs-sha256: {inputs_hash()}\n"
                  f"# body-sha256: {hashlib.sha256(body.encode()).hexdigest()}\n"
                  f"{HEADER_END}\n")
        path.write_text(header + body)
        return 0
    print("usage: python hizfo/lockfile.py check [LOCK] | torch [LOCK] | inputs-hash | seal FILE", file=sys.stderr)
    return 2


def _torch_pin_from_pyproject() -> str:
    """The release in [[tool.uv.dependency-metadata]] for torch: the one the lock was resolved against."""
    for entry in _load_toml(REPO / "pyproject.toml").get("tool", {}).get("uv", {}).get("dependency-metadata", []):
        if entry.get("name") == "torch":
            return entry["version"]
    raise SystemExit("pyproject.toml: [[tool.uv.dependency-metadata]] has no torch entry (the lock's torch pin)")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
