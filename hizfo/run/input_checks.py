"""Value checks of a composed run config that its schemas cannot express, one line each (ConfigError), all before the
model loads (``hizfo.run.validation.validate_run_config`` calls :func:`check_values`).

* every float anywhere in the config is finite (``method.alpha=inf``, ``method.weight_decay=nan``);
* ``model.arch``: each key a setting of the family's transformers config, of its type, sizes >= 1, at least one
  layer, attention heads dividing the hidden size (and key/value heads dividing the heads);
* ``task.options``: each key an option the task reads (``options_schema`` on its class), of its type and range;
* ``task.data_files``: each key a split of the task (``train``, ``eval``, or the hub's own split names);
* a key given twice on the command line: one warning line, and the last wins (``hizfo.run.runspec``);
* ``seed`` within torch's generator range, ``results_dir`` / ``checkpoint_dir`` not empty, ``curve_every`` and
  ``logger.log_every`` >= 1, ``task.generation.repetition_penalty`` > 0 (a method's own values: its schema,
  hizfo/registry.py, when the method is built).

Adding no config key (a key changes every record's config_hash): these only check values.
"""
from __future__ import annotations

import math
import re
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from hizfo.errors import ConfigError, one_line

MAX_SEED = 2**63 - 1          # torch.manual_seed's signed 64-bit range (NumPy takes the seed modulo 2**32)
ARCH_CONFIGS = {"opt": "OPTConfig", "bloom": "BloomConfig", "qwen2": "Qwen2Config", "llama": "LlamaConfig"}
_SIZE = re.compile(r"(^num_|^n_|_size$|_dim$|_positions$|_embeddings$|heads$|layers?$)")
_PROBABILITY = re.compile(r"(dropout$|_pdrop$|^layerdrop$)")   # torch refuses these past [0, 1] only at the load


def check_finite(node: Any, where: str = "") -> None:
    """Every float in the (resolved) config is a finite number."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_finite(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            check_finite(value, f"{where}[{index}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{where}: must be a finite number, got {node}")


def _of_type(key: str, value: Any, default: Any) -> None:
    """``value`` has the type of the transformers default ``default`` (any type where the default is None)."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "text"
    else:
        return
    if not ok:
        raise ConfigError(f"{key}: must be {kind}, got {value!r}")
    if kind == "a whole number" and _SIZE.search(key.rsplit(".", 1)[-1]) and value < 1:
        raise ConfigError(f"{key}: must be >= 1, got {value}")
    if kind == "a number" and _PROBABILITY.search(key.rsplit(".", 1)[-1]) and not 0 <= value <= 1:
        raise ConfigError(f"{key}: must be a probability from 0 to 1, got {value}")


def check_arch(model: Any) -> None:
    """``model.arch`` (a tiny model's transformers config kwargs): known keys, their types, a model that can exist."""
    arch = model.get("arch")
    if arch is None:
        return
    arch = OmegaConf.to_container(arch, resolve=True) if isinstance(arch, DictConfig) else dict(arch)
    family = str(model.get("family"))
    if family not in ARCH_CONFIGS:
        raise ConfigError(f"model.family: '{family}' is not one of {', '.join(ARCH_CONFIGS)}")
    import transformers
    cls = getattr(transformers, ARCH_CONFIGS[family])
    defaults = cls()
    known = set(vars(defaults)) | set(getattr(cls, "attribute_map", {}))
    for key, value in arch.items():
        if key not in known or key.startswith("_"):
            raise ConfigError(f"model.arch.{key}: not a setting of {family} models ({cls.__name__}); see "
                              f"transformers' {cls.__name__} for the settings")
        _of_type(f"model.arch.{key}", value, getattr(defaults, key, None))
    try:
        config = cls(**arch)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.arch: {one_line(exc)}") from None
    hidden, heads, layers = config.hidden_size, config.num_attention_heads, config.num_hidden_layers
    if layers < 1:
        raise ConfigError(f"model.arch.num_hidden_layers: a model needs at least 1 layer, got {layers}")
    if hidden % heads:
        raise ConfigError(f"model.arch.num_attention_heads: {heads} heads do not divide the hidden size {hidden}")
    kv_heads = getattr(config, "num_key_value_heads", None)
    if isinstance(kv_heads, int) and (kv_heads < 1 or heads % kv_heads):
        raise ConfigError(f"model.arch.num_key_value_heads: {kv_heads} must divide the {heads} attention heads")


def _option_ok(kind: str, value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    checks = {"int": isinstance(value, int) and not isinstance(value, bool),
              "int>=1": isinstance(value, int) and not isinstance(value, bool) and value >= 1,
              "float>0": number and math.isfinite(value) and value > 0,
              "str": isinstance(value, str), "dict": isinstance(value, dict),
              "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value)}
    return any(value is None if part == "null" else checks[part] for part in kind.split("|"))


_KINDS = {"int": "a whole number", "int>=1": "a whole number >= 1", "float>0": "a finite number > 0", "str": "text",
          "dict": "a mapping", "list[str]": "a list of strings", "null": "null"}


def check_options(task_name: str, options: dict[str, Any], schema: dict[str, str]) -> None:
    """Each ``task.options`` key is one the task reads, its value of the kind ``schema`` gives."""
    for key, value in options.items():
        if key not in schema:
            raise ConfigError(f"task.options.{key}: not an option of task {task_name} (its options: "
                              f"{', '.join(sorted(schema)) or 'none'})")
        if not _option_ok(schema[key], value):
            kind = " or ".join(_KINDS[part] for part in schema[key].split("|"))
            raise ConfigError(f"task.options.{key}: must be {kind}, got {value!r}")


def check_data_file_keys(task_name: str, files: Optional[dict[str, Any]], splits: set[str]) -> None:
    """Each ``task.data_files`` key names a split the task reads (a file under another key would be ignored)."""
    for key, value in (files or {}).items():
        if key not in splits and value:
            raise ConfigError(f"task.data_files.{key}: task {task_name} reads no split '{key}' (its splits: "
                              f"{', '.join(sorted(splits))}); the file would be ignored")


def check_task(task: Any) -> None:
    """``task.options`` and ``task.data_files`` against what the task's class reads."""
    from hydra.utils import get_class
    try:
        cls = get_class(str(task.get("_target_")))
    except Exception:                         # an unknown target fails in one line where Hydra instantiates it
        return
    options = OmegaConf.to_container(task.options, resolve=True) if task.get("options") is not None else {}
    schema = getattr(cls, "options_schema", None)
    if schema is not None:
        check_options(str(task.name), options, schema)
    sources = getattr(cls, "sources", None)
    if sources:
        hub = options.get("hub") or {}
        splits = {"train", "eval"} | {s.split for s in sources.values()} \
            | {str(o["split"]) for o in hub.values() if isinstance(o, dict) and o.get("split")}
        files = task.get("data_files")
        check_data_file_keys(str(task.name), OmegaConf.to_container(files) if files is not None else None, splits)


def check_values(cfg: Any) -> None:
    """Every check of this module, on the composed config (module docstring)."""
    check_finite(OmegaConf.to_container(cfg, resolve=True))
    if cfg.seed > MAX_SEED:
        raise ConfigError(f"seed: must be >= 0 and <= {MAX_SEED} (torch's generator range), got {cfg.seed}")
    for key, folder in {"results_dir": cfg.results_dir, "checkpoint_dir": cfg.get("checkpoint_dir")}.items():
        if folder is not None and not str(folder).strip():
            raise ConfigError(f"{key}: must name a folder, got an empty string (it would write into the current "
                              f"directory)")
    for key, value in {"curve_every": cfg.curve_every, "logger.log_every": cfg.logger.log_every}.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1 (steps between points), got {value}")
    if not cfg.task.generation.repetition_penalty > 0:
        raise ConfigError(f"task.generation.repetition_penalty: must be > 0 (1: none), "
                          f"got {cfg.task.generation.repetition_penalty}")
    check_arch(cfg.model)
    check_task(cfg.task)
