"""Stop strings that work with any tokenizer: one place decides where an answer ends, for generation and scoring.

transformers' ``stop_strings`` (``StopStringCriteria``) precomputes, for every vocabulary entry, how its text
overlaps each stop string; it fails with ``ValueError: substring not found`` on tokenizers whose tokens do not
decode to pieces of the text, such as the tiny models' word-level tokenizer (hizfo/core/tokenizer.py). Here the new
tokens are decoded the way the task's ``postprocess`` sees them and searched as text, so generation stops exactly
where the answer will be cut, whatever the tokenizer.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from transformers import StoppingCriteria


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> Optional[int]:
    """Index of the earliest occurrence of any non-empty stop string in ``text[start:]``; None when none occurs."""
    hits = [i for i in (text.find(stop, start) for stop in stops if stop) if i >= 0]
    return min(hits) if hits else None


def cut_at(text: str, index: Optional[int]) -> str:
    """``text`` up to ``index`` (all of it when ``index`` is None)."""
    return text if index is None else text[:index]


class StopOnText(StoppingCriteria):
    """Stop each row once ``stop_index`` finds the end of its answer in the decoded new tokens.

    ``prompt_width`` is the (left-padded) prompt length, so ``input_ids[:, prompt_width:]`` are the new tokens.
    Decoding uses ``skip_special_tokens=True``, as hizfo.run.evaluation.generate does before ``postprocess``.
    """

    def __init__(self, tokenizer, prompt_width: int, stop_index: Callable[[str], Optional[int]]) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.stop_index = stop_index

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        new_tokens = input_ids[:, self.prompt_width:].tolist()                  # [B, N_new]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return torch.tensor([self.stop_index(text) is not None for text in texts], dtype=torch.bool,
                            device=input_ids.device)
