"""Bilevel-ZOFO on tiny models: it learns at the reference's cadence of upper steps, keeps its dev split out of
training, computes its upper objective term by term, and gives the backbone the projected gradient times z."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny
from hizfo.run.loop import LoopOptions, train_and_evaluate
from hizfo.run.meters import Meters
from hizfo.tasks.base import encode_train
from hizfo.core.methods import causal_lm_loss
from hizfo.core.zo import noise_like
from tests.unit.baselines.test_baselines import (LORA_COUNTS, assert_clear_decrease, build, losses, make_context, method_cfg, run_loop,
                            toy_task)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------
# Bilevel-ZOFO


def reference_upper_steps(n_batches: int, k: int) -> list[int]:
    """The batches an upper step follows in Peiran225/bilevel_ZOFO d2a89bd, bilevel_minimax_trainer2.py
    ``_inner_training_loop``: ``global_step`` rises after a lower step unless it is a nonzero multiple of K, and
    an upper step follows (and raises it) whenever it is one."""
    global_step, after = 0, []
    for batch in range(1, n_batches + 1):
        if not global_step % k == 0 or global_step == 0:
            global_step += 1
        if global_step % k == 0 and global_step != 0:
            after.append(batch)
            global_step += 1
    return after


@pytest.mark.slow
def test_bilevel_zofo_lowers_the_loss_and_counts_its_passes():
    method, result, meters, _ = run_loop("bilevel_zofo", upper_lr=1e-2, lower_lr=1e-2, backbone_lr=1e-4,
                                         lower_steps=3, max_steps=30)
    assert_clear_decrease(losses(result), window=8, min_drop=0.2)
    # the reference's cadence: one lower step per batch, an upper step after batches K, 2K-1, 3K-2, ...
    upper_at = [step for step, row in enumerate(result.history, start=1) if "train/upper_objective" in row]
    assert upper_at == reference_upper_steps(30, 3) == list(range(3, 31, 2))
    n_upper = len(upper_at)
    assert meters.n_forward == 30 * 1 + n_upper * 6 and meters.n_backward == 30 * 1 + n_upper * 2
    assert len(result.zo_seeds) == n_upper
    summary = result.summary.partition
    assert summary["zo_params"] == sum(p.numel() for p in method.backbone) > 0
    assert summary["fo_params"] == 2 * LORA_COUNTS["tiny-opt"]          # p_L and p_U
    assert reference_upper_steps(10, 1) == list(range(1, 11))            # K = 1: after every batch


@pytest.mark.slow
def test_bilevel_zofo_trains_on_no_dev_example_and_records_how_many_it_held_out():
    cfg = method_cfg("bilevel_zofo", lower_steps=2)
    method = build(cfg)
    loaded = tiny("tiny-opt")
    task = toy_task(n_train=80)
    prompts = [e.prompt for e in task.examples("train")]
    assert len(set(prompts)) == len(prompts)              # distinct examples, so a row names its example
    seen: list[tuple[int, ...]] = []
    step = method.train_step

    def recording_step(batch):
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            seen.append(tuple(ids[mask.bool()].tolist()))
        return step(batch)

    method.train_step = recording_step
    steps_per_epoch = (80 - 8) // task.cfg.batch_size + bool((80 - 8) % task.cfg.batch_size)
    cfg.max_steps = steps_per_epoch                       # one epoch
    result = train_and_evaluate(method, cfg, loaded, task, LoopOptions(torch.device("cpu"), seed=0), Meters())
    encode = lambda e: tuple(encode_train(e, loaded.tokenizer, task.cfg.max_input_length,   # noqa: E731
                                          task.cfg.max_target_length)["input_ids"])
    dev = {encode(e) for e in task.examples("train")[-8:]}
    train = sorted(encode(e) for e in task.examples("train")[:-8])
    assert not dev & set(seen)                            # no dev example in any training batch of the epoch
    assert sorted(seen) == train                          # and every other example exactly once
    assert result.summary.details["n_dev"] == 8 and result.summary.details["n_train"] == 72


@pytest.mark.subprocess
@pytest.mark.slow
def test_bilevel_zofo_with_too_few_training_examples_for_its_dev_split_fails_in_one_line(tmp_path):
    from tests.unit.run.test_foundation import run_cli
    proc = run_cli("method=bilevel_zofo", f"results_dir={tmp_path}", "logger=none", "task.options.n_train=16",
                   "task.batch_size=16")
    assert proc.returncode == 2, proc.stderr[-1500:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "task.train_limit" in lines[0] and "at least 17" in lines[0], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("*.json"))


def randomise_adapters(peft_model, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


@pytest.mark.slow
def test_bilevel_upper_loss_equals_its_three_terms_computed_separately():
    loaded = tiny("tiny-opt")
    lam = 0.7
    method = build(method_cfg("bilevel_zofo", upper_lr=0.0, lower_lr=0.0, backbone_lr=0.0, lam=lam, lower_steps=1))
    task = toy_task()
    ctx = make_context(loaded, task)
    method.setup(ctx)
    randomise_adapters(method.peft_model, torch.Generator().manual_seed(3))   # p_U ≠ p_L, so every term counts
    train = next(make_context(loaded, task).train_batches())
    result = method.train_step(train)                  # all rates 0: nothing moves beyond rounding
    dev = next(ctx.dev_batches())                      # a fresh stream: the dev batch that step drew
    model = method.peft_model
    with torch.no_grad():
        model.set_adapter("upper")
        dev_upper = float(causal_lm_loss(model, dev))
        train_upper = float(causal_lm_loss(model, train))
        model.set_adapter("lower")
        train_lower = float(causal_lm_loss(model, train))
        model.set_adapter("upper")
    expected = dev_upper + lam * (train_upper - train_lower)
    assert abs(train_upper - train_lower) > 5e-3 and abs(dev_upper - train_upper) > 5e-3   # far above the 1e-5 tolerance
    assert result.logs["upper_objective"] == pytest.approx(expected, rel=1e-5)
    assert result.logs["dev_loss"] == pytest.approx(dev_upper, rel=1e-5)
    assert result.logs["lower_train_loss"] == pytest.approx(train_lower, rel=1e-5)
    assert result.logs["upper_train_loss"] == pytest.approx(train_upper, rel=1e-5)
    assert result.loss == pytest.approx(train_lower, rel=1e-5)       # the step's loss: the lower step's, on its batch
    terms = method.upper_objective(dev, train)
    assert terms.total == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_bilevel_backbone_grad_is_the_projected_grad_times_z_and_p_upper_gets_backprop():
    loaded = tiny("tiny-opt")
    method = build(method_cfg("bilevel_zofo", lower_steps=1))
    task = toy_task()
    ctx = make_context(loaded, task)
    method.setup(ctx)
    method.materialise_backbone_grad_(seed=1234, projected_grad=-0.37)
    for p, z in zip(method.backbone, noise_like(method.backbone, 1234)):
        torch.testing.assert_close(p.grad, -0.37 * z)
    method.upper.zero_grad(set_to_none=True)
    # backprop reaches p_U only: p_L and θ get no autograd gradient
    randomise_adapters(method.peft_model, torch.Generator().manual_seed(5))
    batch = next(ctx.train_batches())
    method.upper_objective(next(ctx.dev_batches()), batch, backprop_upper=True)
    for name, p in method.peft_model.named_parameters():
        has_grad = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert has_grad == (".upper." in name and "lora_" in name), name
