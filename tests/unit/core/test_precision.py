"""precision=fp32 | bf16-mixed | bf16 (hizfo/core/precision.py, hizfo/core/zo.py ZOParams): exact ZO perturbations on bf16
weights, FO updates that survive bf16, the ZO estimate under autocast, fp32 masters kept across a resume (bad values
and the weights' load dtype: tests/unit/core/test_precision_checks.py)."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hizfo.errors import ConfigError
from hizfo.run.batching import BatchStream, encode_split
from hizfo.run.loop import LoopOptions, train_and_evaluate
from hizfo.run.meters import Meters
from hizfo.core.methods import FirstOrderTrainer, causal_lm_loss, unique_named_parameters
from hizfo.core.models import load_model
from hizfo.core.precision import ChangeMonitor, Precision, active_precision, stochastic_round, use_precision
from hizfo.core.zo import ZOParams, draw_seed, perturb_
from tests.conftest import compose

CPU = torch.device("cpu")


def load(name: str = "tiny-opt", precision: str = "fp32", **arch):
    cfg = compose([f"model={name}"] + [f"model.arch.{k}={v}" for k, v in arch.items()])
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    kwargs.pop("_target_")
    loaded = load_model(**kwargs, seed=0, precision=precision)
    loaded.model.eval()
    return loaded


def toy(loaded, n_train: int = 64, batch_size: int = 8):
    cfg = compose(["task.options.n_train=%d" % n_train, "task.options.n_eval=4", f"task.batch_size={batch_size}",
                   "task.generation.max_new_tokens=4"])
    task = instantiate(cfg.task, _convert_="all")
    stream = BatchStream(encode_split(task, loaded, task.examples("train")), batch_size,
                         loaded.tokenizer.pad_token_id, 0, CPU)
    return task, stream


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k].view(torch.int16) if a[k].dtype == torch.bfloat16 else a[k],
                           b[k].view(torch.int16) if b[k].dtype == torch.bfloat16 else b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------
# exact perturbation of bf16 weights


@pytest.mark.slow
def test_1000_perturb_restore_cycles_leave_bf16_weights_bit_identical():
    loaded = load(precision="bf16")
    model = loaded.model
    assert next(model.parameters()).dtype == torch.bfloat16
    params = [p for _, p in unique_named_parameters(model)]
    _, stream = toy(loaded)
    batch = next(stream.epoch(0))
    before = snapshot(model)
    zo = ZOParams(params, model)
    assert zo.virtual
    seeds = torch.Generator().manual_seed(0)
    losses = set()
    for cycle in range(1000):
        seed = draw_seed(seeds)
        zo.perturb(seed, 1e-3)
        if cycle % 100 == 0:                             # the perturbation is real inside the forwards
            with torch.inference_mode():
                losses.add(float(causal_lm_loss(model, batch)))
        zo.perturb(seed, -2e-3)
        zo.restore()
    assert bit_identical(before, snapshot(model))
    assert len(losses) == 10                             # ten different perturbed losses were seen
    # the in-place route drifts on bf16: what the exact mode is there for
    drifting = [p.detach().clone() for p in params]
    for seed in range(20):
        perturb_(drifting, seed, 1e-3)
        perturb_(drifting, seed, -1e-3)
    assert any(not torch.equal(d, p) for d, p in zip(drifting, params))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-opt", "tiny-qwen2", "tiny-bloom"])
def test_virtual_perturbation_matches_an_in_place_one_in_losses_and_backprop(name):
    """Forced on fp32 weights: inside the forwards (and rebuilt in the backward) it is the same θ + εu."""
    loaded = load(name)
    model = loaded.model
    named = unique_named_parameters(model)
    fo = [p for n, p in named if "embed" in n or "word_embeddings" in n][:1]      # FO: gradient through all
    zo_params = [p for _, p in named if all(p is not q for q in fo)]
    for p in zo_params:
        p.requires_grad_(False)
    _, stream = toy(loaded)
    batch = next(stream.epoch(0))
    zo = ZOParams(zo_params, model, virtual=True)
    rebuilt = []
    unpack = zo._unpack
    zo._unpack = lambda saved: (rebuilt.append(type(saved).__name__), unpack(saved))[1]
    zo.perturb(1234, 1e-2)
    loss_virtual = causal_lm_loss(model, batch)
    loss_virtual.backward()
    grad_virtual = fo[0].grad.clone()
    fo[0].grad = None
    zo.restore()
    assert "_Saved" in rebuilt                           # perturbed weights were rebuilt, not kept, for backward
    before = snapshot(model)
    with torch.no_grad():
        for p, u in zip(zo_params, zo.noise(1234)):
            p.add_(u, alpha=1e-2)
    loss_in_place = causal_lm_loss(model, batch)
    loss_in_place.backward()
    torch.testing.assert_close(loss_virtual, loss_in_place, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_virtual, fo[0].grad, rtol=1e-5, atol=1e-7)
    model.load_state_dict(before)
    with torch.no_grad():
        unperturbed = float(causal_lm_loss(model, batch))
    assert abs(unperturbed - float(loss_virtual)) > 1e-4  # the perturbation did change the loss


def train_in_bf16(loaded, overrides: list[str]):
    """Train the method ``overrides`` compose on the toy task in precision=bf16: (method, result, logged rows)."""
    task, _ = toy(loaded)
    cfg = compose(overrides).method
    method = instantiate(cfg, _convert_="all")
    rows = []
    with use_precision("bf16"):
        result = train_and_evaluate(method, cfg, loaded, task, LoopOptions(CPU, seed=0), Meters(),
                                    lambda step, row: rows.append(row))
    return method, result, rows


@pytest.mark.slow
def test_mezo_with_lr_0_for_20_steps_in_bf16_leaves_the_weights_untrained():
    loaded = load(precision="bf16")
    before = snapshot(loaded.model)
    _, result, _ = train_in_bf16(loaded, ["method=mezo", "method.lr=0.0", "method.max_steps=20",
                                          "method.weight_decay=0.1"])
    assert len(result.zo_seeds) == 20
    assert bit_identical(before, snapshot(loaded.model))
    # and with a learning rate the (stochastically rounded) ZO updates do move bf16 weights
    train_in_bf16(loaded, ["method=mezo", "method.lr=1e-4", "method.max_steps=3"])
    assert not bit_identical(before, snapshot(loaded.model))


def test_stochastic_rounding_is_unbiased_and_keeps_grid_values():
    x = torch.full((200_000,), 1.0 + 2 ** -10)          # a quarter of bf16's spacing above 1
    rounded = stochastic_round(x, torch.Generator().manual_seed(0)).float()
    assert set(rounded.unique().tolist()) == {1.0, 1.0 + 2 ** -7}
    assert abs(float(rounded.mean()) - (1.0 + 2 ** -10)) < 2e-5
    grid = torch.randn(1000).to(torch.bfloat16).float()
    assert torch.equal(stochastic_round(grid).float(), grid)


# ---------------------------------------------------------------------------------------------------
# FO updates that bf16 would round away


def _fo_steps(precision: str, steps: int = 10, lr: float = 2e-5):
    loaded = load(precision=precision)
    model = loaded.model
    names = {n for n, _ in unique_named_parameters(model) if ".layers." in n}         # the blocks: Θ_FO
    for n, p in unique_named_parameters(model):
        p.requires_grad_(n in names)
    trainer = FirstOrderTrainer(model, names, lr, 0.0, "constant", steps)
    _, stream = toy(loaded)
    batches = stream.endless(1)
    start = [p.detach().float().clone() for p in trainer.params]
    fractions = []
    with use_precision(precision):
        for _ in range(steps):
            causal_lm_loss(model, next(batches)).backward()
            trainer.step()
            fractions.append(trainer.changed_fraction)
    stepped = trainer.masters.masters if trainer.masters else trainer.params
    changed = sum(int((s.detach() != p0).sum()) for s, p0 in zip(stepped, start))
    return changed / sum(p.numel() for p in start), fractions, trainer


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16"])
def test_10_adamw_steps_at_2e_5_change_at_least_99_percent_of_theta_fo(precision):
    share, fractions, trainer = _fo_steps(precision)
    assert share >= 0.99, share
    assert all(f is not None and f >= 0.99 for f in fractions), fractions      # what the step logs report
    assert (trainer.masters is not None) == (precision == "bf16")
    if trainer.masters:                                  # the model's bf16 tensors are the masters, rounded
        assert all(torch.equal(p.detach(), m.detach().to(torch.bfloat16))
                   for p, m in zip(trainer.params, trainer.masters.masters))


@pytest.mark.slow
def test_plain_adamw_on_bf16_weights_would_lose_most_updates():
    """Why bf16 needs masters: the same 10 steps straight on bf16 tensors leave most elements where they were."""
    loaded = load(precision="bf16")
    model = loaded.model
    params = [p for n, p in unique_named_parameters(model) if ".layers." in n]
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
    _, stream = toy(loaded)
    batches = stream.endless(1)
    for _ in range(10):
        causal_lm_loss(model, next(batches)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    changed = sum(int((p.detach() != s).sum()) for p, s in zip(params, start)) / sum(s.numel() for s in start)
    assert changed < 0.9, changed


# ---------------------------------------------------------------------------------------------------
# the active precision belongs to its block: two runs in one process never see each other's


@pytest.mark.slow
def test_two_runs_at_once_in_one_process_each_compute_in_their_own_precision():
    import threading
    loaded = load(precision="fp32")
    _, stream = toy(loaded)
    batch = next(stream.epoch(0))

    def loss() -> float:
        with torch.no_grad():
            return float(causal_lm_loss(loaded.model, batch))

    fp32_alone = loss()
    with use_precision("bf16-mixed"):
        mixed_alone = loss()
    assert mixed_alone != fp32_alone                               # the probe tells the two precisions apart
    both_inside, one_at_a_time = threading.Barrier(2), threading.Lock()
    seen: dict[str, object] = {}

    def run(name: str) -> None:
        with use_precision(name) as precision:
            both_inside.wait(timeout=60)                           # both blocks are open before either computes
            with one_at_a_time:
                seen[name] = (precision, active_precision(), loss())
            both_inside.wait(timeout=60)                           # and stay open until both have computed

    threads = [threading.Thread(target=run, args=(name,)) for name in ("bf16-mixed", "fp32")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert seen["bf16-mixed"] == (Precision("bf16-mixed"), Precision("bf16-mixed"), mixed_alone)
    assert seen["fp32"] == (Precision("fp32"), Precision("fp32"), fp32_alone)


def test_a_run_that_fails_leaves_no_precision_behind():
    with pytest.raises(RuntimeError):
        with use_precision("bf16-mixed"):
            with use_precision("bf16"):
                assert active_precision() == Precision("bf16")
            assert active_precision().weight_dtype == torch.float32 and active_precision().name == "bf16-mixed"
            raise RuntimeError("the run fails")
    assert active_precision() == Precision("fp32")
    with pytest.raises(ConfigError, match=r"precision: 'fp16' is not one of fp32, bf16-mixed, bf16"):
        with use_precision("fp16"):
            pass
    assert active_precision() == Precision("fp32")


# ---------------------------------------------------------------------------------------------------
# bf16-mixed: the ZO estimate under autocast


@pytest.mark.slow
def test_bf16_mixed_zo_estimate_agrees_with_autograd_in_direction():
    loaded = load(precision="bf16-mixed")
    model = loaded.model
    assert next(model.parameters()).dtype == torch.float32          # fp32 masters
    _, stream = toy(loaded)
    batch = next(stream.epoch(0))
    target = dict(model.named_parameters())["model.decoder.final_layer_norm.weight"]   # 128 elements
    for p in model.parameters():
        p.requires_grad_(p is target)
    with use_precision("bf16-mixed"):
        causal_lm_loss(model, batch).backward()
        true_grad = target.grad.clone()
        target.requires_grad_(False)
        zo = ZOParams([target], model)
        eps, estimate = 1e-3, torch.zeros_like(target)
        with torch.no_grad():
            base = float(causal_lm_loss(model, batch))
            for seed in range(300):
                zo.perturb(seed, eps)
                projected = (float(causal_lm_loss(model, batch)) - base) / eps
                zo.restore()
                estimate += projected * zo.noise(seed)[0]
    cosine = float(torch.nn.functional.cosine_similarity(estimate.flatten(), true_grad.flatten(), dim=0))
    assert cosine > 0.4, cosine


@pytest.mark.slow
def test_hizfo_trains_in_bf16_and_logs_how_much_of_theta_fo_moved():
    loaded = load(precision="bf16")
    before = snapshot(loaded.model)
    method, _, rows = train_in_bf16(loaded, ["method=hizfo", "method.max_steps=4", "method.lr=2e-5",
                                             "method.alpha_mode=loss"])
    assert method.zo.virtual and method.fo_trainer.masters is not None
    moved = [row["train/fo_changed_fraction"] for row in rows if "train/fo_changed_fraction" in row]
    assert len(moved) == 4 and min(moved) > 0.9, moved
    assert not bit_identical(before, snapshot(loaded.model))


# ---------------------------------------------------------------------------------------------------
# fp32 masters: a bf16 run's resume, the share of elements that moved, Bilevel-ZOFO's θ


@pytest.mark.slow
def test_bf16_fo_masters_resume_exactly_from_their_state_dict():
    """A checkpoint of a bf16 run must carry the fp32 masters: the bf16 weights alone cannot rebuild them."""
    import copy
    loaded = load(precision="bf16")
    model = loaded.model
    names = {n for n, _ in unique_named_parameters(model) if ".layers." in n}
    for n, p in unique_named_parameters(model):
        p.requires_grad_(n in names)
    _, stream = toy(loaded)
    batches = [b for _, b in zip(range(5), stream.endless(1))]

    def train(trainer, m, steps):
        for batch in steps:
            causal_lm_loss(m, batch).backward()
            trainer.step()

    trainer = FirstOrderTrainer(model, names, 2e-5, 0.0, "linear", 5)
    with use_precision("bf16"):
        train(trainer, model, batches[:3])
        state = copy.deepcopy(trainer.state_dict())
        resumed_model = copy.deepcopy(model)                 # what the checkpoint's bf16 weights restore
        resumed = FirstOrderTrainer(resumed_model, names, 2e-5, 0.0, "linear", 5)
        resumed.load_state_dict(state)
        train(trainer, model, batches[3:])
        train(resumed, resumed_model, batches[3:])
    assert "masters" in state
    assert bit_identical(snapshot(model), snapshot(resumed_model))
    assert all(torch.equal(a, b) for a, b in zip(trainer.masters.masters, resumed.masters.masters))


def test_change_monitor_weights_each_tensor_by_its_size():
    """ChangeMonitor.counts: the changed elements of all, each tensor's sampled share weighted by its size."""
    small, large = torch.zeros(10), torch.zeros(100)
    monitor = ChangeMonitor(sample=20)                   # small: every element; large: 20 sampled positions
    monitor.before([small, large])
    small[:3] = 1.0                                      # 3 of 10 changed
    large += 1.0                                         # all 100 changed
    changed, total = monitor.counts([small, large])
    assert total == 110 and changed / total == pytest.approx((3 + 100) / 110)
    monitor.before([small, large])
    assert monitor.counts([small, large]) == (0.0, 110.0)     # nothing moved
    monitor.before([torch.zeros(0)])
    assert monitor.counts([torch.zeros(0)]) == (0.0, 0.0)     # nothing to measure


@pytest.mark.slow
def test_bilevel_zofo_in_bf16_keeps_its_theta_updates_in_fp32_masters():
    """10 upper steps at 2e-5 (K = 1): the upper Adam steps fp32 masters of θ, so (almost) every element moves;
    the model's bf16 θ is each master stochastically rounded: one of its two bf16 neighbours."""
    loaded = load(precision="bf16")
    start = {id(p): p.detach().float().clone() for p in loaded.model.parameters()}
    method, result, _ = train_in_bf16(loaded, ["method=bilevel_zofo", "method.lower_steps=1", "method.max_steps=10",
                                               "method.upper_lr=2e-5"])
    assert len(result.zo_seeds) == 10
    pairs = [(p, m) for p, m in zip(method.backbone, method.theta_masters.masters) if id(p) in start]
    assert sum(p.numel() for p, _ in pairs) > 0.9 * sum(p.numel() for p in method.backbone)
    moved = sum(int((m.detach() != start[id(p)]).sum()) for p, m in pairs)
    assert moved / sum(p.numel() for p, _ in pairs) >= 0.99
    for p, m in pairs:
        below = m.detach().contiguous().view(torch.int32) & -65536            # the master truncated to bf16
        bits = p.detach().float().view(torch.int32)
        assert bool(((bits == below) | (bits == below + 65536)).all())
    # without masters (the same Adam straight on bf16 θ) most steps of 2e-5 round away: see the FO test below


def test_a_forward_without_grad_keeps_no_bf16_copies_of_the_weights():
    """bf16-mixed: a ZO loss (no grad) autocasts without autocast's weight-cast cache, which held a bf16 copy of every
    weight that requires grad to the end of the forward (MeZO at OPT-125m's shape: 236 MiB, benchmarks/
    RESULTS_planner.md); a forward with grad keeps it (its backward reuses the casts). The outputs are the same."""
    from hizfo.core.precision import Precision
    layer = torch.nn.Linear(64, 64)
    x = torch.randn(4, 64)
    mixed = Precision("bf16-mixed")
    with torch.no_grad(), mixed.compute_context(x.device):
        assert not torch.is_autocast_cache_enabled()
        without = layer(x)
    with mixed.compute_context(x.device):
        assert torch.is_autocast_cache_enabled()
        with_grad = layer(x)
    assert without.dtype == torch.bfloat16 and torch.equal(without, with_grad.detach())
