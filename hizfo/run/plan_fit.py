"""Will one run fit its device? The planner's verdict for one config (hizfo/core/memory.py's prediction), as the
run's own pre-load check (hizfo/run/session.py, on CUDA), the Slurm pre-flight (hizfo/run/plan_slurm.py) and the
report (``python -m hizfo.run.plan``, hizfo/run/plan.py) ask it. Imports no composer, so the run may ask it."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from typing import Any, Optional

from hizfo.core.memory import GiB, Prediction, Setting, predict, smallest_world_size
from hizfo.core.shapes import ModelShape, model_shape
from hizfo.errors import ConfigError
from hizfo.run.plan_gpu import Gpu, spread_of


@dataclass(frozen=True)
class PlanOptions:
    gpu_gb: float = 80.0
    world_size: int = 1
    fsdp: Optional[bool] = None
    device: str = "cuda"
    threads: int = 1
    enforce: bool = True
    tflops: float = 100.0              # the rough time estimate's sustained throughput per device
    train_examples: Optional[int] = None

    def gpu(self) -> Gpu:
        """The GPU ``gpu_gb`` names: a vendor's size (80: H100 80GB), as torch would report it (plan_gpu.py)."""
        return Gpu.of_size(self.gpu_gb)

    def check(self) -> None:
        if not self.gpu_gb > 0:
            raise ConfigError(f"plan.gpu_gb: must be > 0, got {self.gpu_gb:g}")
        if self.threads <= 0:
            raise ConfigError(f"plan.threads: must be >= 1, got {self.threads}")
        if not self.tflops > 0:
            raise ConfigError(f"plan.tflops: must be > 0, got {self.tflops:g}")
        if self.train_examples is not None and self.train_examples <= 0:
            raise ConfigError(f"plan.train_examples: must be >= 1, got {self.train_examples}")
        if self.world_size <= 0:
            raise ConfigError(f"plan.world_size: must be >= 1, got {self.world_size}")


def setting_of(cfg: Any, options: PlanOptions, selection: Optional[tuple[str, ...]] = None) -> Setting:
    """A run config's cell as the memory model reads it."""
    from omegaconf import OmegaConf
    task, method = cfg.task, OmegaConf.to_container(cfg.method, resolve=True)
    gen = task.generation
    fsdp = options.fsdp if options.fsdp is not None else options.world_size > 1
    return Setting(method=str(method["name"]), method_cfg=tuple(sorted((k, v if not isinstance(v, list) else tuple(v))
                                                                        for k, v in method.items())),
                   precision=str(cfg.precision), batch=int(task.batch_size),
                   seq_len=int(task.max_input_length) + int(task.max_target_length),
                   eval_batch=int(task.eval_batch_size), prompt_len=int(task.max_input_length),
                   new_tokens=int(gen.max_new_tokens), beams=int(gen.num_beams), world_size=options.world_size,
                   fsdp=fsdp, device=options.device, threads=options.threads, train_dropout=bool(cfg.train_dropout),
                   lora_targets=tuple(cfg.model.lora_target_modules), selection=selection,
                   profile_shards=bool(cfg.profile_shards))


def stored_selection(cfg: Any) -> Optional[tuple[str, ...]]:
    """Θ_FO from this run's ok record, if one exists (hizfo/run/records.py's ``partition.fo_names``)."""
    try:
        from hizfo.run.records import RunRecord
        from hizfo.run.runspec import RunSpec
        from omegaconf import OmegaConf
        spec = RunSpec.build(OmegaConf.to_container(cfg, resolve=True), ())
        record = RunRecord.read(spec.path)
    except Exception:                               # no record (or an unreadable one): the stated assumption
        return None
    names = (record.partition or {}).get("fo_names") if record is not None and record.status == "ok" else None
    return tuple(names) if names else None


def plan_config(cfg: Any, options: PlanOptions) -> tuple[ModelShape, Setting, Prediction]:
    shape = model_shape(cfg.model)
    s = setting_of(cfg, options, stored_selection(cfg))
    return shape, s, predict(shape, s)


def fits_with_shard_profile(shape: ModelShape, s: Setting, gpu_bytes: int, whole: Optional[int]) -> Optional[int]:
    """The least FSDP2 world size that fits with ``profile_shards=true``, where only that helps: Hi-ZFO or
    GreenTrainer profiling the whole model, and fewer processes than ``whole`` (the world size that fits without it,
    None: none) needs."""
    if s.method not in ("hizfo", "greentrainer") or s.profile_shards or whole == 1:
        return None
    m = smallest_world_size(shape, replace(s, world_size=1, profile_shards=True), gpu_bytes, fsdp=True)
    return m if m and (whole is None or m < whole) else None


def fits_line(pred: Prediction, s: Setting, gpu: Gpu, shape: ModelShape, what: str,
              override: str = "HIZFO_PLAN_ENFORCE=0 to run anyway") -> Optional[str]:
    """None when the peak fits ``gpu`` (hizfo/run/plan_gpu.py: its usable memory, over its device_map=auto
    spread); else one line naming the prediction, the GPU memory, what would fit and how to go on anyway
    (``override``). The planner, the Slurm pre-flight and the CUDA run all decide here."""
    if gpu.fits(pred.peak):
        return None
    usable = gpu.usable_bytes
    if gpu.spread > 1:                          # one process over device_map=auto's GPUs: FSDP2 sizes do not apply
        low = s.precision == "fp32" and gpu.fits(predict(shape, replace(s, precision="bf16")).peak)
        return (f"{what}: predicted peak {gpu.per_gpu(pred.peak) / GiB:.2f} GiB per GPU ({pred.peak / GiB:.2f} GiB "
                f"over device_map=auto's {gpu.spread} GPUs; {pred.peak_phase}) exceeds {gpu.text()}; "
                f"{'precision=bf16 fits; ' if low else ''}more GPUs a node or tasks_per_node with FSDP2 "
                f"(python -m hizfo.run.plan names the world size) ({override})")
    n = smallest_world_size(shape, replace(s, world_size=1), usable, fsdp=True)
    fix = f"world size {n} with FSDP2 fits" if n else "no world size dividing the batch fits"
    m = fits_with_shard_profile(shape, s, usable, n)          # the whole-model profile may set the peak
    if m:
        fix += f"; world size {m} with FSDP2 and profile_shards=true fits"
    if s.precision == "fp32":
        low = predict(shape, replace(s, precision="bf16"))
        if low.peak <= usable:
            fix += "; precision=bf16 fits on one"
    return (f"{what}: predicted peak {pred.peak / GiB:.2f} GiB per GPU ({pred.peak_phase}) exceeds "
            f"{gpu.text()}; {fix} ({override})")


def check_memory_fits(cfg: Any, device: Any, world_size: int = 1, total_bytes: Optional[int] = None,
                      device_count: Optional[int] = None) -> int:
    """Refuse (ConfigError) a CUDA run whose predicted per-GPU peak at ``world_size`` processes (FSDP2 when more
    than one; one process with model.device_map=auto: over the ``device_count`` GPUs it sees) exceeds the usable
    memory of the device (``total_bytes``, else the device's own, less plan_gpu.HEADROOM_GIB). HIZFO_PLAN_ENFORCE=0
    turns the refusal into a warning. Returns the per-GPU prediction of what the record's measured peak covers,
    training and profiling (``check_memory_phases`` adds generation's)."""
    return check_memory_phases(cfg, device, world_size, total_bytes, device_count)["planned_peak_bytes"]


def check_memory_phases(cfg: Any, device: Any, world_size: int = 1, total_bytes: Optional[int] = None,
                        device_count: Optional[int] = None) -> dict[str, int]:
    """``check_memory_fits``'s check; returns ``planned_phases`` per GPU, for a record's provenance."""
    import torch
    options = PlanOptions(device="cuda", world_size=world_size)
    shape, s, pred = plan_config(cfg, options)
    total = total_bytes if total_bytes is not None else torch.cuda.get_device_properties(device).total_memory
    gpus = device_count if device_count is not None else torch.cuda.device_count()
    gpu = Gpu(int(total), spread_of(cfg, world_size, gpus))
    line = fits_line(pred, s, gpu, shape, f"model {shape.name} method {s.method} on {world_size} GPU(s)")
    if line and os.environ.get("HIZFO_PLAN_ENFORCE", "1").lower() not in ("0", "false"):
        raise ConfigError(line)
    if line:
        print(f"warning: {line}", file=sys.stderr)
    return {key: gpu.per_gpu(value) for key, value in planned_phases(pred).items()}


def measured_like(pred: Prediction) -> int:
    """The prediction a record's measured peak is compared with: training and profiling. The measured peak is
    read when training ends and before each epoch's evaluation (hizfo/run/loop.py), never over the evaluation's
    generation, which the prediction's ``peak`` includes (``planned_phases`` keeps it apart)."""
    return max(pred.training_peak, pred.profiling)


def planned_phases(pred: Prediction) -> dict[str, int]:
    """What a record can keep of the prediction, like for like: ``planned_peak_bytes`` (training and profiling,
    ``measured_like``) and ``planned_generation_bytes`` (evaluation's, not in the measured peak)."""
    return {"planned_peak_bytes": measured_like(pred), "planned_generation_bytes": int(pred.generation)}


# a CPU run asks the planner only for a model of at least this many parameters (about 1 s of its time): a real
# model's load takes far longer, and the tiny models of tests and toy runs do not pay it
CPU_PLAN_MIN_PARAMS = 50_000_000


def approximate_parameters(shape: ModelShape) -> Optional[int]:
    """12·L·H² + V·H from the shape's config keys (OPT, BLOOM, Llama-like names); None when they are not there."""
    kw = dict(shape.kwargs)
    hidden = kw.get("hidden_size") or kw.get("n_embd")
    layers = kw.get("num_hidden_layers") or kw.get("n_layer")
    if not (hidden and layers):
        return None
    return 12 * int(layers) * int(hidden) ** 2 + int(kw.get("vocab_size", 0)) * int(hidden)


def warn_over_free_ram(cfg: Any, processes: int = 1, free: Optional[int] = None) -> Optional[str]:
    """On CPU: the warning line (also printed) when the predicted peak of the ``processes`` runs on this machine
    exceeds its free RAM (``free``, else /proc/meminfo's MemAvailable); None when it fits, when the model is under
    ``CPU_PLAN_MIN_PARAMS`` or when the free RAM is unknown. A warning, not a refusal: RSS and swap make CPU memory
    softer than a GPU's."""
    shape = model_shape(cfg.model)
    size = approximate_parameters(shape)
    free = free if free is not None else _free_ram()
    if free is None or (size is not None and size < CPU_PLAN_MIN_PARAMS):
        return None
    _, s, pred = plan_config(cfg, PlanOptions(device="cpu", world_size=processes, fsdp=processes > 1))
    if pred.peak * processes <= free:
        return None
    each = f" ({processes} processes, {pred.peak / GiB:.1f} GiB each)" if processes > 1 else ""
    line = (f"warning: model {shape.name} method {s.method}: predicted peak {pred.peak * processes / GiB:.1f} GiB"
            f"{each} ({pred.peak_phase}) exceeds the {free / GiB:.1f} GiB of free RAM; the run may be killed for "
            f"memory (python -m hizfo.run.plan plan.device=cpu ... shows the breakdown)")
    print(line, file=sys.stderr)
    return line


def _free_ram() -> Optional[int]:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
