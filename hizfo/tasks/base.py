"""What every task shares: an Example, the Task base class, tokenisation with source truncation, batching."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from hizfo.config import GenerationConfig, ProtocolConfig, TaskConfig, resolve_protocol
from hizfo.errors import ConfigError
from hizfo.eval.stopping import cut_at, find_stop

IGNORE_INDEX = -100
REFERENCE_MODES = ("first", "all")       # task.references: which gold references a summary is scored against


@dataclass
class Example:
    """One example. The prompt is ``prefix + source + suffix``; only ``source`` is ever truncated."""
    source: str
    target: str
    references: list[str]
    prefix: str = ""
    suffix: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return f"{self.prefix}{self.source}{self.suffix}"


class Task:
    """Base class: subclasses implement ``load_split`` and ``score``."""

    splits: dict[str, str] = {"train": "train", "eval": "test"}
    # the task.options it reads, and their kinds (hizfo.run.input_checks.check_options): checked before any load
    options_schema: dict[str, str] = {"protocols": "dict"}

    def __init__(self, **settings: Any) -> None:
        settings.pop("_target_", None)
        generation = settings.pop("generation", None) or {}
        if isinstance(generation, DictConfig):
            generation = OmegaConf.to_container(generation, resolve=True)
        for key in ("data_files", "options"):
            if isinstance(settings.get(key), DictConfig):
                settings[key] = OmegaConf.to_container(settings[key], resolve=True)
        self.protocol: Optional[ProtocolConfig] = resolve_protocol(settings.get("name", "?"), settings.get("protocol"),
                                                                   settings.get("options"))
        self.cfg = TaskConfig(**settings, generation=GenerationConfig(**generation))
        self.name = self.cfg.name
        for key in ("batch_size", "eval_batch_size", "max_input_length", "max_target_length"):
            if getattr(self.cfg, key) < 1:
                raise ConfigError(f"task.{key}: must be >= 1, got {getattr(self.cfg, key)}")
        if self.cfg.references not in REFERENCE_MODES:
            raise ConfigError(f"task.references: '{self.cfg.references}' is not one of {', '.join(REFERENCE_MODES)}")
        if self.cfg.generation.max_new_tokens < 1:
            raise ConfigError(f"task.generation.max_new_tokens: must be >= 1, got {self.cfg.generation.max_new_tokens}")
        if self.cfg.generation.num_beams < 1:
            raise ConfigError(f"task.generation.num_beams: must be >= 1 (1: greedy decoding), "
                              f"got {self.cfg.generation.num_beams}")
        self._cache: dict[str, list[Example]] = {}

    def protocol_settings(self) -> dict[str, Any]:
        """The settings ``task.protocol`` picks (hizfo.config.resolve_protocol; empty for a task with one)."""
        return self.protocol.as_config() if self.protocol else {}

    # -- data -------------------------------------------------------------------------------------------
    def load_split(self, split: str) -> list[Example]:
        raise NotImplementedError

    def examples(self, split: str) -> list[Example]:
        """The examples of ``train`` or ``eval``, capped by ``train_limit`` / ``limit``."""
        if split not in self._cache:
            rows = self.load_split(split)
            if not rows:
                raise ConfigError(f"task {self.name}: the {split} split is empty")
            cap = self.cfg.train_limit if split == "train" else self.cfg.limit
            self._cache[split] = rows[:cap] if cap else rows
        return self._cache[split]

    def train_dev_split(self, batch_size: Optional[int] = None) -> tuple[list[Example], list[Example]]:
        """The training examples less a dev split, and the dev split, for methods that hold one out
        (Bilevel-ZOFO): the last 10 % (at least 1) of the training split, taken off it as the reference's
        run_bilevel.py takes its ``num_dev`` dev samples off its training samples.

        With ``batch_size``, fails in one line unless at least one full batch of training examples is left.
        """
        train = self.examples("train")
        n_dev = max(1, len(train) // 10)
        if batch_size is not None and len(train) - n_dev < batch_size:
            raise ConfigError(f"task.train_limit: this method holds out {n_dev} of the training examples as its dev "
                              f"split and needs a full batch ({batch_size}) of the rest; the train split has "
                              f"{len(train)}, so it needs at least {n_dev + batch_size} (raise task.train_limit "
                              f"or use a larger training split, or lower task.batch_size)")
        return train[:-n_dev], train[-n_dev:]

    # -- scoring ----------------------------------------------------------------------------------------
    def score(self, predictions: list[str], examples: list[Example]) -> dict[str, float]:
        raise NotImplementedError

    def stop_index(self, text: str) -> Optional[int]:
        """Where the answer in a generated continuation ends: its first stop sequence (None: it has not ended).

        Generation stops as soon as this finds an end (hizfo.eval.stopping.StopOnText), and ``postprocess`` cuts there.
        """
        return find_stop(text, self.cfg.generation.stop)

    def postprocess(self, text: str) -> str:
        """Cut a generated continuation where its answer ends (``stop_index``)."""
        return cut_at(text, self.stop_index(text)).strip()


def _fit_prompt(example: Example, tokenizer, max_input_length: int) -> list[int]:
    """Token ids of the prompt, with the source cut (from its end) until the prompt fits."""
    ids = tokenizer(example.prompt).input_ids
    if len(ids) <= max_input_length:
        return ids
    frame = len(tokenizer(example.prefix + example.suffix).input_ids)
    if frame >= max_input_length:
        raise ConfigError(f"task.max_input_length: {max_input_length} tokens cannot hold even the prompt "
                          f"template without its source ({frame} tokens)")
    source_ids = tokenizer(example.source, add_special_tokens=False).input_ids
    keep = max_input_length - frame
    while keep > 0:
        source = tokenizer.decode(source_ids[:keep], skip_special_tokens=True)
        ids = tokenizer(f"{example.prefix}{source}{example.suffix}").input_ids
        if len(ids) <= max_input_length:
            return ids
        keep -= max(1, len(ids) - max_input_length)
    return tokenizer(example.prefix + example.suffix).input_ids


def encode_train(example: Example, tokenizer, max_input_length: int, max_target_length: int) -> dict[str, list[int]]:
    """Prompt + target + EOS; labels are IGNORE_INDEX on the prompt (paper A.3 templates)."""
    prompt_ids = _fit_prompt(example, tokenizer, max_input_length)
    target_ids = tokenizer(" " + example.target, add_special_tokens=False).input_ids[:max_target_length]
    target_ids = target_ids + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + target_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids}


def collate_train(encoded: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded examples; labels are IGNORE_INDEX on padding."""
    width = max(len(e["input_ids"]) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_token_id, dtype=torch.long)   # [B, N]
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)     # [B, N]
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)          # [B, N]
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        input_ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encode_prompts(examples: list[Example], tokenizer, max_input_length: int) -> dict[str, torch.Tensor]:
    """Left-padded prompt batch for generation."""
    ids = [_fit_prompt(e, tokenizer, max_input_length) for e in examples]
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)  # [B, N]
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x):] = torch.tensor(x)
        attention_mask[row, width - len(x):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def check_fits(task: Task, tokenizer, split: str = "train", sample: Optional[int] = 64) -> None:
    """Fail before training when the template cannot fit ``max_input_length``."""
    for example in task.examples(split)[:sample]:
        _fit_prompt(example, tokenizer, task.cfg.max_input_length)
