"""The checkpoint file format: what one ``step-<N>/`` directory holds, how it is written and checked on the way back.

    params.safetensors   every unique parameter tensor of the model (ZO methods change tensors without
                         requires_grad, so all of them are saved, not only the trainable ones)
    method.pt            ``method.state_dict()`` (optimizer / scheduler / method state); read back with
                         ``torch.load(weights_only=True)``, never an unrestricted unpickle
    rng.pt               torch CPU and CUDA RNG states, the ZO seed generator, numpy's key (tensors only)
    state.json           format, config hash, loop position (epoch, batch, step, losses, ZO seeds used),
                         meters, python's and numpy's RNG scalars, why it was written
    manifest.json        size and sha256 of each file above; written last (temp file, fsync, rename), so a
                         checkpoint without a valid manifest is incomplete

That is the ``single`` layout, one process's. Several processes write the ``distributed`` layout
(``hizfo.run.checkpoint_dist``): ``dcp/`` (torch.distributed.checkpoint's files, every rank its shard),
``rank-<r>.pt`` (rank r's RNG states and meters) and ``state.json``, under the same manifest, which names its layout.

Where checkpoints live, when they are written, which are kept, and who may write them is the checkpointer's
policy (``hizfo.run.checkpoint``); this module knows one checkpoint's files only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn

from hizfo.errors import ConfigError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
CHECKPOINT_FILES = ("params.safetensors", "method.pt", "rng.pt", "state.json")
# each layout's files: those a checkpoint must have, and the pattern every file its manifest lists must match
LAYOUTS: dict[str, tuple[tuple[str, ...], re.Pattern]] = {
    "single": (CHECKPOINT_FILES, re.compile("|".join(re.escape(name) for name in CHECKPOINT_FILES))),
    "distributed": (("state.json", "method.pt", "dcp/.metadata", "rank-0.pt"),
                    re.compile(r"state\.json|method\.pt|rank-\d+\.pt|dcp/(\.metadata|__\d+_\d+\.distcp)")),
}
_HASH_CHUNK = 8 << 20
TMP_PREFIX = ".tmp-"      # a name being written; whoever finds one left over may remove it


# ---------------------------------------------------------------------------------------------------
# parameters


def unique_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter tensor once (tied weights under their first name), detached."""
    return {name: p.detach() for name, p in model.named_parameters(remove_duplicate=True)}


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every unique parameter (equal iff bit-identical)."""
    return tensors_sha256(unique_parameters(model))


def tensors_sha256(tensors: Union[Mapping[str, torch.Tensor], Iterable[tuple[str, torch.Tensor]]]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of named tensors, in order (``params_sha256``'s digest): a
    mapping, or (name, tensor) pairs, each dropped before the next is drawn (``distributed.whole_parameters``)."""
    digest = hashlib.sha256()
    for name, tensor in (tensors.items() if isinstance(tensors, Mapping) else tensors):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.reshape(-1).contiguous().cpu()
        digest.update(flat.view(torch.uint8).numpy().tobytes())
        del tensor, flat
    return digest.hexdigest()


def save_parameters(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file
    save_file({name: t.contiguous() for name, t in unique_parameters(model).items()}, str(path))
    os.chmod(path, 0o666 & ~_umask())       # safetensors (0.8) writes a temp file 0600 and renames it


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@torch.no_grad()
def load_parameters(model: nn.Module, path: Path) -> None:
    """Copy saved tensors into the model in place (each onto its own device: works for sharded models)."""
    from safetensors import safe_open
    live = unique_parameters(model)
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        saved = set(handle.keys())
        if saved != set(live):
            missing, extra = sorted(set(live) - saved), sorted(saved - set(live))
            raise ConfigError(f"checkpoint: {path} holds other tensors than this model "
                              f"(missing {missing[:3]}, unexpected {extra[:3]})")
        for name, tensor in live.items():
            value = handle.get_tensor(name)
            if value.shape != tensor.shape or value.dtype != tensor.dtype:
                raise ConfigError(f"checkpoint: {name} is {tuple(value.shape)} {value.dtype} in {path}, "
                                  f"{tuple(tensor.shape)} {tensor.dtype} in this model")
            tensor.copy_(value)


# ---------------------------------------------------------------------------------------------------
# RNG states


def capture_rng(zo_seeds: Optional[torch.Generator]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every RNG the run draws from: (tensors for rng.pt, JSON scalars for state.json)."""
    np_state = np.random.get_state()
    tensors: dict[str, Any] = {"torch_cpu": torch.get_rng_state(),
                               "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    if zo_seeds is not None:
        tensors["zo_seeds"] = zo_seeds.get_state()
    version, internal, gauss = random.getstate()
    scalars = {"python": [version, list(internal), gauss],
               "numpy": {"kind": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                         "cached_gaussian": float(np_state[4])}}
    return tensors, scalars


def restore_rng(tensors: dict[str, Any], scalars: dict[str, Any], zo_seeds: Optional[torch.Generator]) -> None:
    """Put back what ``capture_rng`` returned."""
    torch.set_rng_state(tensors["torch_cpu"])
    if "cuda" in tensors and torch.cuda.is_available():
        states = tensors["cuda"]
        if len(states) != torch.cuda.device_count():
            raise ConfigError(f"checkpoint: saved with {len(states)} CUDA devices, this job has "
                              f"{torch.cuda.device_count()}; an exact resume needs the same count")
        torch.cuda.set_rng_state_all(states)
    if zo_seeds is not None:
        if "zo_seeds" not in tensors:
            raise ConfigError("checkpoint: it has no ZO seed generator state")
        zo_seeds.set_state(tensors["zo_seeds"])
    numpy = scalars["numpy"]
    np.random.set_state((numpy["kind"], tensors["numpy_keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    version, internal, gauss = scalars["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------------------------------
# writing whole files, and checking them on the way back


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path, fsync: bool = False) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file; ``fsync``: also flush it to disk (one pass over a fresh file)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(handle.fileno())
    return digest.hexdigest(), size


def write_manifest(folder: Path, files: dict[str, dict[str, Any]], layout: str = "single") -> None:
    """``manifest.json`` written atomically: a temp file (mode from the umask), fsync, rename."""
    tmp = folder / f"{TMP_PREFIX}{MANIFEST}"
    with open(tmp, "w") as handle:
        json.dump({"format": MANIFEST_FORMAT, "layout": layout, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / MANIFEST)


def manifest_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``folder`` (names relative to it), read back from disk and flushed: the
    checksums cover what was written."""
    files = {}
    for item in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha, size = sha256_file(item, fsync=True)
        files[item.relative_to(folder).as_posix()] = {"bytes": size, "sha256": sha}
    return files


def verify_checkpoint(path: Path) -> Optional[str]:
    """None if every file of checkpoint ``path`` matches its manifest; else what is wrong, naming the file."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')}")
        required, allowed = LAYOUTS[manifest.get("layout", "single")]
    except FileNotFoundError:
        return f"{path} has no {MANIFEST}: it is incomplete (or was written before checkpoints carried checksums)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{path / MANIFEST} is unreadable ({type(exc).__name__}: {exc}): the checkpoint is incomplete"
    missing = [name for name in required if name not in files]
    if missing:
        return f"{path / MANIFEST} lists no {', '.join(missing)}: the checkpoint is incomplete"
    for name, expected in files.items():     # every entry {"bytes": int, "sha256": str}, of a file it should have
        if (not isinstance(name, str) or not allowed.fullmatch(name) or not isinstance(expected, dict)
                or not isinstance(expected.get("bytes"), int) or not isinstance(expected.get("sha256"), str)):
            return (f"{path / MANIFEST} is malformed (its entry {name!r} is not one of "
                    f"{', '.join(required)} with bytes and sha256): the checkpoint is damaged")
    for name, expected in files.items():
        item = path / name
        try:
            if item.is_symlink():
                return f"{item} is a symbolic link, not a file this code wrote"
            size = item.stat().st_size
        except FileNotFoundError:
            return f"{item} is missing"
        if size != expected.get("bytes"):
            return f"{item} is truncated or damaged: {size} bytes, {MANIFEST} says {expected.get('bytes')}"
        sha, _ = sha256_file(item)
        if sha != expected.get("sha256"):
            stored = str(expected.get("sha256"))[:12]
            return f"{item} is corrupt: its sha256 {sha[:12]}… differs from {MANIFEST}'s {stored}…"
    return None


# ---------------------------------------------------------------------------------------------------
# one checkpoint's files, written and read back


def write_checkpoint(folder: Path, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator],
                     config_hash: str, reason: str) -> None:
    """Every file of one checkpoint into ``folder`` (a fresh temp directory), the manifest last."""
    save_parameters(method.eval_model(), folder / "params.safetensors")
    torch.save(method.state_dict(), folder / "method.pt")
    rng_tensors, rng_scalars = capture_rng(zo_seeds)
    torch.save(rng_tensors, folder / "rng.pt")
    info = {"format": FORMAT_VERSION, "config_hash": config_hash, "step": state.step,
            "reason": reason, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "loop": dataclasses.asdict(state), "meters": meters.state_dict(), "rng": rng_scalars}
    (folder / "state.json").write_text(json.dumps(info))
    write_manifest(folder, manifest_files(folder))      # last: a checkpoint without it is incomplete
    fsync_dir(folder)


@dataclasses.dataclass
class Parsed:
    """A single-layout checkpoint read into memory and checked, before anything of the run is touched."""
    path: Path
    info: dict[str, Any]
    method_state: dict[str, Any]
    rng_tensors: dict[str, Any]


def parse_checkpoint(path: Path, config_hash: str, run_folder: Path) -> Parsed:
    """Every file of the checkpoint at ``path`` parsed (the parameters' header and names checked, not their bytes
    read): any error here leaves the run untouched, so the checkpointer can fall back to an older one. One line
    (``ConfigError``) if it is another format's or another config's."""
    info = checked_state(path, config_hash, run_folder)
    for key in ("loop", "meters", "rng"):
        if not isinstance(info.get(key), dict):
            raise ValueError(f"state.json has no '{key}' object")
    from safetensors import safe_open
    with safe_open(str(path / "params.safetensors"), framework="pt", device="cpu") as handle:
        list(handle.keys())
    return Parsed(path, info, torch.load(path / "method.pt", map_location="cpu", weights_only=True),
                  torch.load(path / "rng.pt", map_location="cpu", weights_only=True))


def apply_checkpoint(parsed: Parsed, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator]) -> None:
    """Restore the method, the loop position, the meters and every RNG from a parsed checkpoint."""
    load_parameters(method.eval_model(), parsed.path / "params.safetensors")
    method.load_state_dict(parsed.method_state)
    restore_rng(parsed.rng_tensors, parsed.info["rng"], zo_seeds)
    meters.load_state_dict(parsed.info["meters"])
    restore_loop(state, parsed.info["loop"])


def read_checkpoint(path: Path, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator],
                    config_hash: str, run_folder: Path) -> None:
    """Restore the method, the loop position, the meters and every RNG from the checkpoint at ``path``; one
    line (``ConfigError``) if it is another format's or another config's."""
    apply_checkpoint(parse_checkpoint(path, config_hash, run_folder), method, state, meters, zo_seeds)


def checked_state(path: Path, config_hash: str, run_folder: Path) -> dict[str, Any]:
    """``state.json`` of the checkpoint at ``path``; one line (``ConfigError``) if it is another format's or
    another config's."""
    info = json.loads((path / "state.json").read_text())
    if not isinstance(info, dict):
        raise ValueError("state.json is not a JSON object")
    if info.get("format") != FORMAT_VERSION:
        raise ConfigError(f"checkpoint: {path} has format {info.get('format')}, this code reads "
                          f"{FORMAT_VERSION}; remove it (rm -r {run_folder}) to start the run afresh")
    if info.get("config_hash") != config_hash:
        raise ConfigError(
            f"checkpoint: {path} was written by a run with config hash {info.get('config_hash')}, "
            f"this run's is {config_hash}: a different config under the same record path. "
            f"It will not be resumed. Remove it (rm -r {run_folder}) to start afresh, or pass variant=NAME "
            f"to keep both")
    return info


def restore_loop(state: Any, loop: dict[str, Any]) -> None:
    """The loop's position (``LoopState``'s fields) as a checkpoint's ``state.json`` holds it."""
    for name, value in loop.items():
        current = getattr(state, name)
        if isinstance(current, list):
            current[:] = value              # in place: the loop may hold this list under another name
        else:
            setattr(state, name, value)
