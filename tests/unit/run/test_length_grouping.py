"""`task.group_by_length`: seeded length-grouped training batches, every example once an epoch, less padding;
evaluation batches sorted by prompt length with the predictions back in the examples' order."""
from __future__ import annotations

import random

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hizfo.run.evaluation import eval_loss, generate
from hizfo.run.batching import BatchStream
from hizfo.run.runspec import config_hash
from hizfo.tasks.base import Example
from tests.conftest import compose, tiny

PAD = 0


def skewed_rows(n: int = 401, seed: int = 5) -> list[dict[str, list[int]]]:
    """Rows whose first token is their index; lengths skewed as pydoc's under a 128-token prompt cap
    (SmolLM2 tokens: median 74, p90 142, max 164), a log-normal cut at 170."""
    rng = random.Random(seed)
    lengths = [int(min(170, 8 + rng.lognormvariate(4.1, 0.5))) for _ in range(n)]
    return [{"input_ids": [i + 1] + [7] * (n_tokens - 1), "labels": [i + 1] + [7] * (n_tokens - 1)}
            for i, n_tokens in enumerate(lengths)]


def epoch_batches(stream: BatchStream, epoch: int) -> list[list[int]]:
    """The example indices of each batch of one epoch, read back from the collated tensors."""
    return [[int(t) - 1 for t in batch["input_ids"][:, 0]] for batch in stream.epoch(epoch)]


def padding(stream: BatchStream, epoch: int) -> int:
    return sum(int((batch["attention_mask"] == 0).sum()) for batch in stream.epoch(epoch))


def stream(rows, seed: int, grouped: bool, batch_size: int = 4) -> BatchStream:
    return BatchStream(rows, batch_size, PAD, seed, torch.device("cpu"), group_by_length=grouped)


def test_grouped_batches_are_seeded_and_reshuffled_each_epoch():
    rows = skewed_rows()
    first = epoch_batches(stream(rows, 3, True), 0)
    assert first == epoch_batches(stream(rows, 3, True), 0)              # same seed: same batches, same order
    assert first != epoch_batches(stream(rows, 4, True), 0)              # another seed: other batches
    assert first != epoch_batches(stream(rows, 3, True), 1)              # another epoch: another order
    resumed = [[int(t) - 1 for t in b["input_ids"][:, 0]] for b in stream(rows, 3, True).epoch(0, start=10)]
    assert resumed == first[10:]                                          # exact resume mid-epoch


def test_grouped_epochs_hold_every_example_exactly_once():
    rows = skewed_rows()
    s = stream(rows, 11, True)
    for epoch in range(3):
        batches = epoch_batches(s, epoch)
        assert len(batches) == len(s) == 101                              # 401 rows, batches of 4
        assert sorted(i for b in batches for i in b) == list(range(len(rows)))
        assert sorted(len(b) for b in batches) == [1] + [4] * 100        # full batches, one short one


def test_grouping_cuts_padding_on_a_skewed_length_distribution():
    rows = skewed_rows()
    real = sum(len(r["input_ids"]) for r in rows)
    for seed in (0, 1, 2):
        random_pad, grouped_pad = padding(stream(rows, seed, False), 0), padding(stream(rows, seed, True), 0)
        assert grouped_pad < 0.25 * random_pad, (seed, grouped_pad, random_pad)
        assert random_pad > 0.3 * real                                    # the random batches really do pad a lot


def test_the_batch_order_is_shuffled_not_longest_first():
    """Sorted mega-batches alone would put the long batches at fixed places; the batch order is drawn again."""
    rows = skewed_rows()
    widths = [max(len(rows[i]["input_ids"]) for i in b) for b in epoch_batches(stream(rows, 0, True), 0)]
    assert widths != sorted(widths, reverse=True) and widths != sorted(widths)


def test_grouped_generation_and_eval_loss_keep_the_examples_order():
    loaded = tiny("tiny-opt")
    cfg = compose(["task.generation.max_new_tokens=5", "task.eval_batch_size=3"])
    task = instantiate(cfg.task, _convert_="all")
    rng = random.Random(0)
    words = task.examples("eval")[0].source.split()
    examples = [Example(source=" ".join(rng.choice(words) for _ in range(n)), target="x", references=["x"],
                        suffix=" TL;DR:") for n in (2, 30, 5, 41, 3, 17, 9)]
    # one at a time: no padding at all, so the reference for each example's own continuation
    task.cfg.eval_batch_size = 1
    alone = generate(loaded.model, loaded, task, examples, torch.device("cpu"))
    task.cfg.eval_batch_size = 3
    task.cfg.group_by_length = True
    assert generate(loaded.model, loaded, task, examples, torch.device("cpu")) == alone
    from hizfo.run.batching import encode_split
    task._cache["eval"] = examples
    encoded = encode_split(task, loaded, examples)
    grouped = eval_loss(loaded.model, encoded, task, loaded.tokenizer.pad_token_id, torch.device("cpu"))
    task.cfg.group_by_length = False
    plain = eval_loss(loaded.model, encoded, task, loaded.tokenizer.pad_token_id, torch.device("cpu"))
    assert abs(grouped - plain) < 1e-5 * abs(plain)


def test_group_by_length_is_part_of_the_computation():
    base = compose([])
    grouped = compose(["task.group_by_length=true"])
    assert base.task.group_by_length is False
    assert config_hash(OmegaConf.to_container(grouped, resolve=True)) != \
        config_hash(OmegaConf.to_container(base, resolve=True))
