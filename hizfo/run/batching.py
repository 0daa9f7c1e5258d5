"""Training batches: the seeded order of every epoch (optionally grouped by length), the encoded splits, and the
run's ``Streams`` (train and dev batches, encoded on first use)."""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch

from hizfo.core.distributed import World, rank_slice
from hizfo.core.methods import Batch, Method, method_traits
from hizfo.core.models import LoadedModel
from hizfo.errors import ConfigError
from hizfo.tasks.base import Example, Task, check_fits, collate_train, encode_train

DEV_SEED_OFFSET = 7          # the dev stream's order: seed + 7
TRAIN_ENDLESS_SALT = 101     # the endless streams methods draw extra batches from (TrainContext)
DEV_ENDLESS_SALT = 202


def length_grouped_batches(lengths: list[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Seeded batches of examples of similar length, in a seeded order; every index in exactly one batch.

    The grouping is transformers' ``get_length_grouped_indices`` (trainer_pt_utils.py, the Trainer's
    ``group_by_length``): a random permutation cut into mega-batches of up to 50 batches, each sorted by length.
    The batches are then put in a second seeded random order, so the long batches do not all come first (the
    one short batch, when the split does not divide evenly, goes anywhere in the epoch).
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices
    grouped = get_length_grouped_indices(lengths, batch_size, generator=generator)
    batches = [grouped[i:i + batch_size] for i in range(0, len(grouped), batch_size)]
    return [batches[b] for b in torch.randperm(len(batches), generator=generator).tolist()]


class BatchStream:
    """Training batches in a seeded order: epoch e uses permutation randperm(n, seed=(seed, e)).

    ``group_by_length``: the epoch's batches are :func:`length_grouped_batches` from the same seeded generator,
    so a batch holds sequences of similar length and carries little padding. ``batch_size`` is the global batch:
    under several processes each rank collates only its slice of it (``rank_slice``), in the one-process order.
    """

    def __init__(self, encoded: list[dict[str, list[int]]], batch_size: int, pad_token_id: int, seed: int,
                 device: torch.device, group_by_length: bool = False, world: World = World()) -> None:
        self.encoded = encoded
        self.world = world
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.device = device
        self.group_by_length = group_by_length

    def __len__(self) -> int:
        return math.ceil(len(self.encoded) / self.batch_size)

    def batches(self, epoch: int) -> list[list[int]]:
        """The example indices of each batch of one epoch, in order (each index exactly once)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.group_by_length:
            return length_grouped_batches([len(e["input_ids"]) for e in self.encoded], self.batch_size, generator)
        order = torch.randperm(len(self.encoded), generator=generator).tolist()
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of one epoch, from batch index ``start`` on (exact resume)."""
        for indices in self.batches(epoch)[start:]:
            rows = [self.encoded[i] for i in rank_slice(indices, self.world)]
            yield {k: v.to(self.device) for k, v in collate_train(rows, self.pad_token_id).items()}

    def endless(self, salt: int) -> Iterator[Batch]:
        """An endless stream (for methods that draw extra batches), in its own seeded order."""
        epoch = 0
        while True:
            yield from BatchStream(self.encoded, self.batch_size, self.pad_token_id, self.seed + salt,
                                   self.device, self.group_by_length, self.world).epoch(epoch)
            epoch += 1


def encode_split(task: Task, loaded: LoadedModel, examples: list[Example]) -> list[dict[str, list[int]]]:
    """Each example tokenized for training (prompt and target, cut to the task's length limits)."""
    return [encode_train(e, loaded.tokenizer, task.cfg.max_input_length, task.cfg.max_target_length)
            for e in examples]


def training_examples(method: Method, task: Task, trains: bool = True) -> tuple[list[Example], list[Example]]:
    """The examples the training stream draws from, and the dev split a method with ``holds_out_dev`` draws
    its dev batches from (taken out of the training stream; one line if too few are left for a batch when the run
    trains: an evaluation-only run needs no full batch)."""
    if method_traits(method).holds_out_dev:
        return task.train_dev_split(batch_size=task.cfg.batch_size if trains else None)
    return task.examples("train"), []


class Streams:
    """A run's train and dev batches, encoded on first use: an evaluation-only run (max_steps 0) reads training
    data only if its method's set-up asks for it (Hi-ZFO's and GreenTrainer's profiling batch, Bilevel-ZOFO's
    streams), so zero-shot needs none. A method that holds out a dev split trains without it; any other method's
    dev stream is the task's validation examples."""

    def __init__(self, method: Method, task: Task, loaded: LoadedModel, seed: int, device: torch.device,
                 trains: bool, world: World = World()) -> None:
        self.method, self.task, self.loaded = method, task, loaded
        self.seed, self.device, self.trains, self.world = seed, device, trains, world
        self._rows: Optional[tuple[list[Example], list[Example]]] = None
        self._streams: dict[str, BatchStream] = {}

    def rows(self) -> tuple[list[Example], list[Example]]:
        """The training examples and the held-out dev examples (empty unless the method holds one out)."""
        if self._rows is None:
            self._rows = training_examples(self.method, self.task, self.trains)
        return self._rows

    def sizes(self) -> tuple[int, int]:
        """How many training and held-out dev examples have been read so far (0, 0 before any)."""
        return (len(self._rows[0]), len(self._rows[1])) if self._rows is not None else (0, 0)

    def holds_dev(self) -> bool:
        return bool(self.rows()[1])

    def get(self, split: str) -> BatchStream:
        """The ``train`` or ``dev`` stream, encoded the first time it is asked for."""
        if split not in self._streams:
            check_fits(self.task, self.loaded.tokenizer, "train")
            train, dev = self.rows()
            rows = train if split == "train" else (dev or self.task.validation_examples())
            seed = self.seed if split == "train" else self.seed + DEV_SEED_OFFSET
            stream = BatchStream(encode_split(self.task, self.loaded, rows), self.task.cfg.batch_size,
                                 self.loaded.tokenizer.pad_token_id, seed, self.device, self.task.cfg.group_by_length,
                                 self.world)
            check_every_rank_has_rows(stream, split)
            self._streams[split] = stream
        return self._streams[split]

    def endless(self, split: str, whole: bool = False) -> Iterator[Batch]:
        """The endless stream a method draws extra batches from (its own seeded order per split); ``whole``: every
        global batch uncut (the same on every rank; one process: the same stream)."""
        stream = self.get(split)
        if whole and stream.world.size > 1:
            stream = BatchStream(stream.encoded, stream.batch_size, stream.pad_token_id, stream.seed, stream.device,
                                 stream.group_by_length)
        return stream.endless(salt=TRAIN_ENDLESS_SALT if split == "train" else DEV_ENDLESS_SALT)


def check_every_rank_has_rows(stream: BatchStream, split: str) -> None:
    """Under several processes every rank needs at least one row of every global batch, the short last one too."""
    world = stream.world
    if world.size == 1 or not stream.encoded:
        return
    smallest = min(len(b) for b in stream.batches(0))
    if not rank_slice(range(smallest), World(rank=world.size - 1, size=world.size)):
        per = -(-smallest // world.size)
        raise ConfigError(f"task.batch_size: the {split} split's last global batch has {smallest} example(s); "
                          f"each of {world.size} processes takes {per} row(s) of it, which leaves the last none; "
                          f"choose a batch size or a number of examples whose last batch is a multiple of "
                          f"{world.size}")
