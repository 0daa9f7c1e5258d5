"""Checkpoints for exact resume, and what makes Slurm jobs survive preemption and time limits.

A checkpoint is one directory ``step-<N>/`` under the run's checkpoint folder, written to a temp directory and
renamed into place, so a reader sees a whole checkpoint or none:

    params.safetensors   every unique parameter tensor of the model (ZO methods change tensors without
                         requires_grad, so all of them are saved, not only the trainable ones)
    method.pt            ``method.state_dict()`` (optimizer / scheduler / method state); read back with
                         ``torch.load(weights_only=True)``, never an unrestricted unpickle
    rng.pt               torch CPU and CUDA RNG states, the ZO seed generator, numpy's key (tensors only)
    state.json           format, config hash, loop position (epoch, batch, step, losses, ZO seeds used),
                         meters, python's and numpy's RNG scalars, why it was written

Signals: SIGTERM (Slurm preemption, scancel, the time limit itself) and SIGUSR1 / SIGUSR2 (the warning Slurm
sends ``signal_delay_s`` before the time limit; submitit 1.5 asks for USR2, older versions USR1) are held until
the current step ends, a checkpoint is written, and then the signal goes on to whoever handled it before: under
submitit that is its handler, which calls the launcher's ``checkpoint`` and requeues the job with
``scontrol requeue``; outside submitit the default action ends the process. See docs/slurm.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from hizfo.errors import ConfigError

FORMAT_VERSION = 1
PREEMPTION_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
_REQUEUE_SIGNALS = (signal.SIGUSR2, signal.SIGUSR1)   # submitit's own handler sits on one of these
_STEP_PREFIX = "step-"
_TMP_PREFIX = ".tmp-"


# ---------------------------------------------------------------------------------------------------
# parameters


def unique_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter tensor once (tied weights under their first name), detached."""
    return {name: p.detach() for name, p in model.named_parameters(remove_duplicate=True)}


def params_sha256(model: nn.Module) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every unique parameter (equal iff bit-identical)."""
    digest = hashlib.sha256()
    for name, tensor in unique_parameters(model).items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        flat = tensor.reshape(-1).contiguous().cpu()
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _save_parameters(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file
    save_file({name: t.contiguous() for name, t in unique_parameters(model).items()}, str(path))


@torch.no_grad()
def _load_parameters(model: nn.Module, path: Path) -> None:
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
# where checkpoints live


def checkpoint_root(results_dir: str | Path, checkpoint_dir: Optional[str | Path]) -> Path:
    """``checkpoint_dir``, or ``<results_dir>/../checkpoints`` (results/runs -> results/checkpoints)."""
    if checkpoint_dir:
        return Path(checkpoint_dir)
    return Path(results_dir).parent / "checkpoints"


def checkpoint_folder(record_path: str | Path, results_dir: str | Path, checkpoint_dir: Optional[str | Path]) -> Path:
    """The run's folder: the record's path relative to ``results_dir``, without ``.json``, under the root."""
    record_path, results_dir = Path(record_path), Path(results_dir)
    try:
        relative = record_path.relative_to(results_dir)
    except ValueError:
        relative = Path(*record_path.parts[-5:])
    return checkpoint_root(results_dir, checkpoint_dir) / relative.with_suffix("")


def _fsync_dir(path: Path) -> None:
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


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------------------
# signal relay: one set of handlers per process, pointing at the run that is active


_previous_handlers: dict[int, Any] = {}
_active: Optional["Checkpointer"] = None


def _install_handlers() -> bool:
    """Put our handler on the preemption signals, remembering the ones before (submitit's, or the default)."""
    if _previous_handlers:
        return True
    try:
        for sig in PREEMPTION_SIGNALS:
            _previous_handlers[int(sig)] = signal.getsignal(sig)
            signal.signal(sig, _on_signal)
    except ValueError:          # not the main thread: no signal handling, periodic checkpoints still work
        for sig, handler in _previous_handlers.items():
            signal.signal(sig, handler)
        _previous_handlers.clear()
        return False
    return True


def _uninstall_handlers() -> None:
    for sig, handler in _previous_handlers.items():
        try:
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        except ValueError:
            pass
    _previous_handlers.clear()


def _pass_on(signum: int, frame: Optional[FrameType]) -> None:
    """Hand a signal to whoever handled it before us: submitit requeues; the default action ends the process."""
    handler = _previous_handlers.get(signum, signal.SIG_DFL)
    if signum in _REQUEUE_SIGNALS and not callable(handler):
        # Slurm's time-limit warning comes as USR1 or USR2 depending on the submitit version: both requeue
        for other in _REQUEUE_SIGNALS:
            if callable(_previous_handlers.get(int(other))):
                handler = _previous_handlers[int(other)]
                break
    if callable(handler):
        handler(signum, frame)
        return
    if handler == signal.SIG_IGN:
        return
    _uninstall_handlers()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _on_signal(signum: int, frame: Optional[FrameType]) -> None:
    run = _active
    if run is None:
        _pass_on(signum, frame)
        return
    run._on_signal(signum, frame)


# ---------------------------------------------------------------------------------------------------


class Checkpointer:
    """One run's checkpoints: periodic and on preemption signals; exact restore; refuses another config's."""

    def __init__(self, folder: Path, config_hash: str, every_steps: int = 0,
                 every_minutes: Optional[float] = None, handle_signals: bool = True) -> None:
        if every_steps < 0:
            raise ConfigError(f"checkpoint_every: must be >= 0 (0: only on preemption signals), got {every_steps}")
        if every_minutes is not None and not every_minutes > 0:
            raise ConfigError(f"checkpoint_minutes: must be > 0 or null, got {every_minutes}")
        self.folder = Path(folder)
        self.config_hash = config_hash
        self.every_steps = every_steps
        self.every_minutes = every_minutes
        self.handle_signals = handle_signals
        self.restored_from: Optional[Path] = None
        self._saved_step: Optional[int] = None
        self._last_save = time.monotonic()
        self._live: Optional[tuple[Any, Any, Any, Optional[torch.Generator]]] = None
        self._in_training = False
        self._saving = False
        self._pending: Optional[tuple[int, Optional[FrameType]]] = None
        self._closed = False

    @classmethod
    def for_run(cls, cfg: Any, config: dict, record_path: Any) -> "Checkpointer":
        """The run's checkpointer: its folder follows the record path; its config hash is the record's."""
        from hizfo.records import config_hash
        folder = checkpoint_folder(record_path, cfg.results_dir, cfg.get("checkpoint_dir"))
        return cls(folder, config_hash(config), every_steps=int(cfg.get("checkpoint_every") or 0),
                   every_minutes=_checkpoint_minutes_from_hydra())

    # -- where --------------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        """The checkpoint resumed from, else the run's checkpoint folder."""
        return self.restored_from or self.folder

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint (renamed into place, so complete by construction), if any."""
        if not self.folder.is_dir():
            return None
        done = [p for p in self.folder.iterdir()
                if p.is_dir() and p.name.startswith(_STEP_PREFIX) and (p / "state.json").is_file()]
        return max(done, key=lambda p: int(p.name[len(_STEP_PREFIX):]), default=None)

    # -- the loop's hooks ---------------------------------------------------------------------------------
    def restore(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator]) -> bool:
        """Called once after ``method.setup``: load the newest checkpoint if there is one. True if resumed."""
        self._activate()
        self._live = (method, state, meters, zo_seeds)
        self._in_training = True
        self._last_save = time.monotonic()
        self._remove_partial()
        latest = self.latest()
        if latest is None:
            return False
        info = json.loads((latest / "state.json").read_text())
        if info.get("format") != FORMAT_VERSION:
            raise ConfigError(f"checkpoint: {latest} has format {info.get('format')}, this code reads "
                              f"{FORMAT_VERSION}; remove it (rm -r {self.folder}) to start the run afresh")
        if info.get("config_hash") != self.config_hash:
            raise ConfigError(
                f"checkpoint: {latest} was written by a run with config hash {info.get('config_hash')}, "
                f"this run's is {self.config_hash}: a different config under the same record path. "
                f"It will not be resumed. Remove it (rm -r {self.folder}) to start afresh, or pass variant=NAME "
                f"to keep both")
        _load_parameters(method.eval_model(), latest / "params.safetensors")
        method.load_state_dict(torch.load(latest / "method.pt", map_location="cpu", weights_only=True))
        rng_tensors = torch.load(latest / "rng.pt", map_location="cpu", weights_only=True)
        restore_rng(rng_tensors, info["rng"], zo_seeds)
        meters.load_state_dict(info["meters"])
        for name, value in info["loop"].items():
            current = getattr(state, name)
            if isinstance(current, list):
                current[:] = value              # in place: the loop may hold this list under another name
            else:
                setattr(state, name, value)
        self.restored_from = latest
        self._saved_step = state.step
        return True

    def maybe_save(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator]) -> Optional[Path]:
        """After each step: save when ``checkpoint_every`` steps or ``checkpoint_minutes`` have passed, or a
        preemption signal is waiting (which is then passed on)."""
        self._live = (method, state, meters, zo_seeds)
        due = ((self.every_steps and state.step % self.every_steps == 0)
               or (self.every_minutes is not None and time.monotonic() - self._last_save >= self.every_minutes * 60))
        written = None
        if due or self._pending is not None:
            written = self.save(method, state, meters, zo_seeds,
                                reason="periodic" if self._pending is None else _signal_name(self._pending[0]))
        self._deliver_pending()
        return written

    def training_finished(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator]) -> None:
        """After the last step: from now on a signal is answered at once (parameters no longer change)."""
        self._live = (method, state, meters, zo_seeds)
        self._in_training = False
        if self._pending is not None:
            self.save(method, state, meters, zo_seeds, reason=_signal_name(self._pending[0]))
            self._deliver_pending()

    def save(self, method: Any, state: Any, meters: Any, zo_seeds: Optional[torch.Generator],
             reason: str = "periodic") -> Path:
        """Write ``step-<N>/`` atomically (temp dir, fsync, rename) and drop older checkpoints."""
        final = self.folder / f"{_STEP_PREFIX}{state.step:08d}"
        if self._saved_step == state.step and final.is_dir():
            return final
        self._saving = True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=f"{_TMP_PREFIX}{final.name}-"))
            try:
                _save_parameters(method.eval_model(), tmp / "params.safetensors")
                torch.save(method.state_dict(), tmp / "method.pt")
                rng_tensors, rng_scalars = capture_rng(zo_seeds)
                torch.save(rng_tensors, tmp / "rng.pt")
                info = {"format": FORMAT_VERSION, "config_hash": self.config_hash, "step": state.step,
                        "reason": reason, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "loop": dataclasses.asdict(state), "meters": meters.state_dict(), "rng": rng_scalars}
                (tmp / "state.json").write_text(json.dumps(info))
                for item in tmp.iterdir():
                    _fsync_file(item)
                _fsync_dir(tmp)
                if final.exists():      # same step written before (a resume right after a checkpoint)
                    shutil.rmtree(final)
                os.rename(tmp, final)
                _fsync_dir(self.folder)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            for old in self.folder.iterdir():
                if old.name.startswith(_STEP_PREFIX) and old != final:
                    shutil.rmtree(old, ignore_errors=True)
            self._saved_step = state.step
            self._last_save = time.monotonic()
            return final
        finally:
            self._saving = False

    def discard(self) -> None:
        """The run's record is written: its checkpoints are no longer needed."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        parent = self.folder.parent
        root = self.folder
        for _ in range(4):              # prune empty <variant>/<method>/... folders left behind
            try:
                parent.rmdir()
            except OSError:
                break
            root, parent = parent, parent.parent

    def close(self) -> None:
        """Stop answering signals for this run; one that is still waiting is passed on now."""
        global _active
        if self._closed:
            return
        self._closed = True
        self._in_training = False
        pending, self._pending = self._pending, None
        if _active is self:
            _active = None
            _uninstall_handlers()
        if pending is not None:             # a signal came while a step was running and no step followed
            signum, frame = pending
            if _previous_handlers:
                _pass_on(signum, frame)
            else:                           # handlers already given back: let the one in place act
                signal.raise_signal(signum)

    # -- internals ----------------------------------------------------------------------------------------
    def _activate(self) -> None:
        global _active
        previous, _active = _active, self
        if previous is not None and previous is not self and previous._pending is not None:
            signum, frame = previous._pending      # an earlier run in this process stopped with a signal waiting
            previous._pending = None
            _pass_on(signum, frame)
        if self.handle_signals:
            _install_handlers()

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if self._pending is None:
            self._pending = (signum, frame)
        if self._in_training or self._saving:
            print(f"checkpoint: {_signal_name(signum)} received; checkpointing after this step",
                  file=sys.stderr, flush=True)
            return
        if self._live is not None:
            self.save(*self._live, reason=_signal_name(signum))
        self._deliver_pending()

    def _deliver_pending(self) -> None:
        if self._pending is None:
            return
        signum, frame = self._pending
        self._pending = None
        where = f" ({self.folder})" if self._saved_step is not None else ""
        print(f"checkpoint: saved step {self._saved_step}{where} on {_signal_name(signum)}; passing the signal on",
              file=sys.stderr, flush=True)
        _pass_on(signum, frame)

    def _remove_partial(self) -> None:
        """Temp directories left by a save that was killed half way."""
        if self.folder.is_dir():
            for item in self.folder.iterdir():
                if item.name.startswith(_TMP_PREFIX):
                    shutil.rmtree(item, ignore_errors=True)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _checkpoint_minutes_from_hydra() -> Optional[float]:
    """``hydra.callbacks.slurm_preflight.checkpoint_minutes`` when launcher=slurm set it, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf
        if not HydraConfig.initialized():
            return None
        value = OmegaConf.select(HydraConfig.get(), "callbacks.slurm_preflight.checkpoint_minutes", default=None)
    except Exception:   # no Hydra context (a library caller): no time-based checkpoints
        return None
    return float(value) if value is not None else None


# ---------------------------------------------------------------------------------------------------
# before submission


def slurm_partitions() -> list[str]:
    """The partitions ``sinfo`` lists on this cluster."""
    if shutil.which("sinfo") is None:
        raise ConfigError("launcher=slurm: `sinfo` is not on PATH, so this is not a Slurm login node "
                          "(use launcher=submitit_local or launcher=local here)")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError("launcher=slurm: `sinfo` did not answer in 60 s; is slurmctld up?") from exc
    if out.returncode != 0:
        raise ConfigError(f"launcher=slurm: `sinfo` failed: {out.stderr.strip() or out.stdout.strip()}")
    return sorted({line.strip() for line in out.stdout.splitlines() if line.strip()})


def check_partition(partition: Optional[str], gpus_per_node: Optional[int] = None) -> None:
    """A named partition (or each of a comma-separated list) must exist, and have GPUs when GPUs are asked for:
    sbatch would refuse the job array later, with a less helpful message."""
    available = slurm_partitions()
    names = [p.strip() for p in str(partition).split(",")] if partition is not None else []
    unknown = [p for p in names if p not in available]
    if unknown:
        raise ConfigError(f"hydra.launcher.partition: '{','.join(unknown)}' does not exist on this cluster; "
                          f"partitions: {', '.join(available) or '(none)'}. Set it in conf/launcher/site.yaml "
                          f"or on the command line (hydra.launcher.partition=NAME)")
    if gpus_per_node:
        query = ["sinfo", "-h", "-o", "%G"] + (["-p", ",".join(names)] if names else [])
        gres = subprocess.run(query, capture_output=True, text=True, timeout=60).stdout.split()
        if gres and all("gpu" not in g for g in gres):
            raise ConfigError(f"hydra.launcher.gpus_per_node={gpus_per_node}: partition "
                              f"'{partition or 'default'}' has no GPUs (sinfo %G: {' '.join(sorted(set(gres)))}); "
                              f"pick a GPU partition or set hydra.launcher.gpus_per_node=null")


def check_timeout(timeout_min: float, signal_delay_s: float, checkpoint_minutes: Optional[float]) -> None:
    """A job must reach a periodic checkpoint before Slurm's time-limit warning, or a requeued job could
    start over from the same checkpoint every time (a signal is not guaranteed: node failure, OOM kill)."""
    if not timeout_min > 0:
        raise ConfigError(f"hydra.launcher.timeout_min: must be > 0, got {timeout_min}")
    usable_s = timeout_min * 60 - signal_delay_s
    if usable_s <= 0:
        raise ConfigError(f"hydra.launcher.timeout_min={timeout_min:g} is not longer than "
                          f"hydra.launcher.signal_delay_s={signal_delay_s:g} s: the time-limit signal would come "
                          f"before the job starts")
    if checkpoint_minutes is not None and checkpoint_minutes * 60 > usable_s:
        raise ConfigError(
            f"hydra.launcher.timeout_min={timeout_min:g} leaves {usable_s / 60:.1f} min before Slurm's time-limit "
            f"signal (signal_delay_s={signal_delay_s:g}), shorter than the checkpoint interval "
            f"hydra.callbacks.slurm_preflight.checkpoint_minutes={checkpoint_minutes:g}: a job could end before "
            f"its first checkpoint and every requeue would start from the same place. Raise timeout_min or "
            f"lower checkpoint_minutes")


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:      # pragma: no cover (hydra-core is a dependency)
    _HydraCallback = object  # type: ignore[assignment,misc]


class SlurmPreflight(_HydraCallback):
    """Hydra callback (conf/launcher/slurm.yaml): refuses a bad partition or too short timeout before sbatch."""

    def __init__(self, checkpoint_minutes: Optional[float] = None) -> None:
        if checkpoint_minutes is not None and not checkpoint_minutes > 0:
            raise ConfigError(f"hydra.callbacks.slurm_preflight.checkpoint_minutes: must be > 0 or null, "
                              f"got {checkpoint_minutes}")
        self.checkpoint_minutes = checkpoint_minutes

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Runs on the submitting machine before any job is submitted."""
        launcher = config.hydra.launcher
        if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
            return
        try:
            check_timeout(float(launcher.timeout_min), float(launcher.get("signal_delay_s", 0) or 0),
                          self.checkpoint_minutes)
            check_partition(launcher.get("partition"), launcher.get("gpus_per_node"))
        except ConfigError as exc:
            # Hydra turns a callback's Exception into a warning and submits anyway: stop the sweep here
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from exc
