"""Evaluation: batched generation with the task's settings and stop rules, the task's metrics on what was
generated, and the teacher-forced loss on the evaluation split. The loop (hizfo/run/loop.py) calls these at the
end of training and, for the learning curve, at every epoch's end; none of them draws a random number."""
from __future__ import annotations

from typing import Any

import torch
from transformers import StoppingCriteriaList

from hizfo.core import distributed
from hizfo.core.methods import Method, causal_lm_loss
from hizfo.core.models import LoadedModel
from hizfo.eval.stopping import StopOnText
from hizfo.run.progress import progress
from hizfo.tasks.base import Example, Task, collate_train, encode_prompts


def input_device(model: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where a (possibly sharded) model wants its inputs."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return fallback


@torch.no_grad()
def generate(model: torch.nn.Module, loaded: LoadedModel, task: Task, examples: list[Example],
             device: torch.device, desc: str = "eval") -> list[str]:
    """Batched, left-padded generation with the task's settings; returns the cut continuations."""
    tokenizer = loaded.tokenizer
    gen = task.cfg.generation
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    batch_size = task.cfg.eval_batch_size
    kwargs: dict[str, Any] = dict(max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams,
                                  repetition_penalty=gen.repetition_penalty, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if gen.num_beams > 1:
        kwargs.update(length_penalty=gen.length_penalty, early_stopping=gen.early_stopping)
    target = input_device(model, device)
    order = list(range(len(examples)))
    if task.cfg.group_by_length:                 # longest prompts first, so a batch's left padding is small
        lengths = [len(tokenizer(e.prompt).input_ids) for e in examples]
        order.sort(key=lambda i: -lengths[i])
    # several processes: rank r generates the one-process batches r, r + N, ... (the same batches, so the same
    # tokens), and rank 0 gathers them; one process: every batch. A sharded model runs in lockstep: transformers'
    # synced_gpus keeps every rank stepping until all have finished (an all-reduce per new token), and a rank
    # with fewer batches takes its extra turns on a stand-in batch whose output it drops
    split = distributed.current()              # every rank takes a share
    together = distributed.lockstep(model)
    starts = distributed.my_share(list(range(0, len(examples), batch_size)), split, even=together)
    # counts examples (not batches), so its rate and ETA are per example; leave=True: the bar ends its line
    bar = progress(total=sum(len(order[s:s + batch_size]) for s in starts if s is not None), desc=desc, unit="ex",
                   leave=True, disable=True if not distributed.current().is_main else None)   # rank 0's bar only
    for start in starts:
        stand_in = start is None
        start = 0 if stand_in else start
        chunk = [examples[i] for i in order[start:start + batch_size]]
        batch = {k: v.to(target) for k, v in encode_prompts(chunk, tokenizer, task.cfg.max_input_length).items()}
        # stop where task.postprocess will cut, with any tokenizer (transformers' stop_strings cannot take all)
        stop = StoppingCriteriaList([StopOnText(tokenizer, batch["input_ids"].shape[1], task.stop_index)])
        generated = model.generate(**batch, **kwargs, stopping_criteria=stop,
                                   synced_gpus=together)        # [B, N_prompt + N_new]
        if stand_in:
            continue
        new_tokens = generated[:, batch["input_ids"].shape[1]:]
        texts = [task.postprocess(row) for row in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        outputs.extend(zip(order[start:start + batch_size], texts))
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    everyone = distributed.gather_to_main(outputs, split)       # rank 0: every rank's; other ranks: []
    in_order = [""] * len(examples) if everyone else []
    for index, text in everyone:                                # back to the examples' own order
        in_order[index] = text
    return in_order


def evaluate(method: Method, loaded: LoadedModel, task: Task,
             device: torch.device) -> tuple[dict[str, float], list[str]]:
    examples = task.examples("eval")
    predictions = generate(method.eval_model(), loaded, task, examples, device)
    if not distributed.current().is_main:                       # rank 0 scores (and runs any sandbox) alone
        return {}, []
    return task.score(predictions, examples), predictions


@torch.no_grad()
def eval_loss(model: torch.nn.Module, encoded: list[dict[str, list[int]]], task: Task, pad_token_id: int,
              device: torch.device) -> float:
    """Teacher-forced mean token loss on the evaluation split's targets (eval mode; draws no random numbers)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    size = task.cfg.eval_batch_size
    if task.cfg.group_by_length:                 # a sum over tokens: the order only changes the padding
        encoded = sorted(encoded, key=lambda e: -len(e["input_ids"]))
    split = distributed.current()              # every rank takes a share
    together = distributed.lockstep(model)            # a sharded model: every rank as many forwards (stand-ins)
    for start in distributed.my_share(list(range(0, len(encoded), size)), split, even=together):
        batch = {k: v.to(device) for k, v in collate_train(encoded[start or 0:(start or 0) + size],
                                                           pad_token_id).items()}
        loss = float(causal_lm_loss(model, batch))
        if start is None:                             # a stand-in turn: its loss is not counted
            continue
        count = int((batch["labels"][:, 1:] != -100).sum())        # the tokens the shifted loss averages over
        total += loss * count
        tokens += count
    model.train(was_training)
    if split.size > 1:
        return distributed.global_means([total], tokens, split)[0]
    return total / max(1, tokens)


def evaluate_model_only(loaded: LoadedModel, task: Task, device: torch.device) -> tuple[dict[str, float], list[str]]:
    """Score the model as it is (used for the untrained baseline)."""
    examples = task.examples("eval")
    predictions = generate(loaded.model, loaded, task, examples, device, desc="eval (before)")
    if not distributed.current().is_main:
        return {}, []
    return task.score(predictions, examples), predictions
