"""Profiling (hizfo/core/profiling.py): the hook-based importance equals the old full-copy computation, restores the
weights bit for bit, and never sets the peak memory of a Hi-ZFO run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from hizfo.run.batching import BatchStream, encode_split
from hizfo.core.methods import adamw, causal_lm_loss, unique_named_parameters
from hizfo.core.profiling import tensor_importance
from tests.conftest import compose, tiny

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[3]


def _reference_importance(model, named_params, batch, lr, weight_decay=0.0) -> np.ndarray:
    """The previous implementation (a w0 copy, all gradients at once, a temporary AdamW per tensor), kept here only
    as the reference the hook-based one must agree with."""
    params = [p for _, p in named_params]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    w0 = [p.detach().to("cpu", copy=True) for p in params]
    try:
        causal_lm_loss(model, batch).backward()
        for name, p in named_params:
            optimizer = adamw([(name, p)], lr, weight_decay)
            optimizer.step()
            p.grad = None
        causal_lm_loss(model, batch).backward()
        with torch.no_grad():
            importance = np.array([-float(torch.dot((p.detach() - before).view(-1), p.grad.view(-1)))
                                   for p, before in zip(params, w0)])
    finally:
        with torch.no_grad():
            for p, before, flag in zip(params, w0, flags):
                p.copy_(before)
                p.grad = None
                p.requires_grad_(flag)
    return importance / np.abs(importance).max()


def _batch(loaded, batch_size: int = 8):
    cfg = compose(["task.options.n_train=32", "task.options.n_eval=8", f"task.batch_size={batch_size}"])
    task = instantiate(cfg.task, _convert_="all")
    stream = BatchStream(encode_split(task, loaded, task.examples("train")), batch_size,
                         loaded.tokenizer.pad_token_id, 0, CPU)
    return next(stream.epoch(0))


@pytest.mark.slow
@pytest.mark.parametrize("model,lr,weight_decay", [("tiny-opt", 1e-3, 0.0), ("tiny-opt", 2e-5, 0.1),
                                                   ("tiny-qwen2", 2e-5, 0.0), ("tiny-bloom", 1e-3, 0.1)])
def test_importance_equals_the_full_copy_reference(model, lr, weight_decay):
    loaded = tiny(model)
    loaded.model.eval()
    named = unique_named_parameters(loaded.model)
    batch = _batch(loaded)
    expected = _reference_importance(loaded.model, named, batch, lr, weight_decay)
    got = tensor_importance(loaded.model, named, batch, lr, weight_decay)
    # Δw/η is stored as an int8 code (1/254 of the code's full scale; stochastically rounded where λ > 0) and each
    # Δw already carries the fp32 rounding of w0 + Δw
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-4)
    # the ranking the selection sees is the same wherever two tensors are not within that tolerance
    assert np.argmax(np.abs(got)) == np.argmax(np.abs(expected))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_come_back_bit_for_bit_and_no_state_is_left(dtype):
    loaded = tiny("tiny-opt")
    model = loaded.model.to(dtype).eval()
    named = unique_named_parameters(model)
    named[-1][1].requires_grad_(False)                   # a frozen tensor is profiled and left frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    importance = tensor_importance(model, named, _batch(loaded), lr=2e-5, weight_decay=0.1)
    assert all(torch.equal(before[k], v) and before[k].dtype == v.dtype for k, v in model.state_dict().items())
    assert all(p.grad is None for _, p in named)
    assert not named[-1][1].requires_grad and all(p.requires_grad for _, p in named[:-1])
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight   # still tied
    assert importance.shape == (len(named),) and np.abs(importance).max() == pytest.approx(1.0)
    # bf16 cannot hold w0 + 2e-5 for most weights; stochastic rounding keeps the step there on average,
    # so importance stays informative instead of collapsing to zeros
    assert np.count_nonzero(importance) > len(named) // 2


def _shared_and_checkpointed(loaded, checkpointing: bool):
    """The tiny OPT with one module (fc1) shared by both layers and no dropout; with ``checkpointing``, reentrant
    activation checkpointing on its layers, so the shared weight's gradient lands in two parts."""
    model = loaded.model
    layers = model.model.decoder.layers
    layers[1].fc1 = layers[0].fc1
    for module in model.modules():
        for attr in ("dropout", "activation_dropout", "layerdrop"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    model.train()                                        # transformers checkpoints in train mode only
    return model


@pytest.mark.slow
@pytest.mark.parametrize("detect", ["up front", "by the second part"])
def test_a_gradient_landing_in_parts_is_accumulated_and_undone_once(detect, monkeypatch):
    import hizfo.core.profiling as profiling
    plain = _shared_and_checkpointed(tiny("tiny-opt"), checkpointing=False)
    loaded = tiny("tiny-opt")
    model = _shared_and_checkpointed(loaded, checkpointing=True)
    batch = _batch(loaded)
    named = unique_named_parameters(model)
    shared = model.model.decoder.layers[0].fc1.weight
    fires = []
    handle = shared.register_post_accumulate_grad_hook(lambda p: fires.append(1))
    causal_lm_loss(model, batch).backward()
    handle.remove()
    assert len(fires) == 2                               # the premise: two parts in one backward
    for _, p in named:
        p.grad = None
    if detect == "by the second part":                   # the lean first try meets the second part and starts over
        monkeypatch.setattr(profiling, "_checkpointed", lambda m: False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = tensor_importance(model, named, batch, lr=1e-3, weight_decay=0.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())    # bit for bit
    assert all(p.grad is None for _, p in named)
    expected = tensor_importance(plain, unique_named_parameters(plain), batch, lr=1e-3, weight_decay=0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_with_weight_decay_the_code_is_unbiased_where_rounding_to_nearest_is_not():
    """λ > 0: every element's code before rounding is −50.3; rounding to nearest makes each −50, the same 0.3 of a
    unit off every time (a bias in d, hence in I_k); the dithered code averages to −50.3."""
    from hizfo.core.probe_step import encode
    n, decay = 200_000, 0.1
    top = torch.tensor(1.0 + decay * 1.0)
    target = (50 + 0.3) * float(top) / 127                        # −Δw/η, in units of η: 50.3 code units
    g0 = torch.full((n,), 1e3)                                    # |g0| ≫ eps: g0/(|g0| + eps) ≈ 1
    w0 = torch.full((n,), (target - 1e3 / (1e3 + 1e-8)) / decay)   # λ·w0 makes up the rest
    exact = -127.0 * (g0 / (g0.abs() + 1e-8) + decay * w0) / top  # the code before rounding
    nearest, dithered = torch.empty(n, dtype=torch.int8), torch.empty(n, dtype=torch.int8)
    encode(nearest, torch.empty(n), w0, g0, decay, top)
    encode(dithered, torch.empty(n), w0, g0, decay, top, torch.Generator().manual_seed(0))
    bias_nearest = float((nearest.float() - exact).mean())
    bias_dithered = float((dithered.float() - exact).mean())
    assert abs(bias_nearest - 0.3) < 1e-3                          # the bias the dither removes
    assert abs(bias_dithered) < 5e-3                               # 0.46/√n ≈ 1e-3 standard error
    assert set(dithered.unique().tolist()) == {-51, -50}           # one code unit either side at most


@pytest.mark.slow
def test_a_failure_mid_profiling_still_restores_the_weights():
    loaded = tiny("tiny-opt")
    model = loaded.model.eval()
    named = unique_named_parameters(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _batch(loaded)
    calls = {"n": 0}

    def fail_in_the_second_forward(module, args, output):
        calls["n"] += 1
        if calls["n"] == 2:                              # every tensor is at w1 by now
            raise RuntimeError("second forward fails")

    handle = model.get_input_embeddings().register_forward_hook(fail_in_the_second_forward)
    try:
        with pytest.raises(RuntimeError, match="second forward fails"):
            tensor_importance(model, named, batch, lr=1e-3)
    finally:
        handle.remove()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for _, p in named)


@pytest.mark.slow
def test_untied_head_and_the_plain_loss_agree_with_the_reference(monkeypatch):
    from omegaconf import OmegaConf
    from hizfo.core.models import load_model
    import hizfo.core.profiling as profiling
    kwargs = OmegaConf.to_container(compose(["model=tiny-qwen2", "model.arch.tie_word_embeddings=false"]).model,
                                    resolve=True)
    kwargs.pop("_target_")
    loaded = load_model(**kwargs, seed=0)
    model = loaded.model.eval()
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    named = unique_named_parameters(model)
    batch = _batch(loaded)
    expected = _reference_importance(model, named, batch, 1e-3, 0.1)
    np.testing.assert_allclose(tensor_importance(model, named, batch, 1e-3, 0.1), expected, rtol=2e-3, atol=2e-4)
    monkeypatch.setattr(profiling, "HEAD_FAMILIES", ())  # an unsupported head: the model's own loss, per-tensor hooks
    np.testing.assert_allclose(tensor_importance(model, named, batch, 1e-3, 0.1), expected, rtol=2e-3, atol=2e-4)


# ---------------------------------------------------------------------------------------------------
# peak memory, with the project's meter, in a fresh process

_PEAK_SCRIPT = textwrap.dedent("""
    import ctypes, json, sys
    import torch
    from transformers import OPTConfig, OPTForCausalLM
    from hizfo.core.hybrid import HiZFO
    from hizfo.run.meters import Meters
    from hizfo.core.methods import TrainContext, causal_lm_loss
    from hizfo.core.models import LoadedModel

    torch.manual_seed(0)
    # OPT-125M's proportions (the blocks hold ~70 % of the weights) at a third of its width, and a few sequences:
    # weights outweigh a batch's activations, as in the paper's runs
    model = OPTForCausalLM(OPTConfig(vocab_size=16384, hidden_size=384, ffn_dim=1536, num_hidden_layers=8,
                                     num_attention_heads=6, word_embed_proj_dim=384, dropout=0.0)).eval()
    ids = torch.randint(4, 16384, (4, 64), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :32] = -100                                # the prompt half carries no loss
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    ctx = TrainContext(loaded=LoadedModel(model, None, "probe", "opt", []), task=None, device=torch.device("cpu"),
                       total_steps=10, steps_per_epoch=10, zo_seeds=torch.Generator().manual_seed(0),
                       train_batches=lambda: iter(lambda: batch, None), dev_batches=lambda: iter(lambda: batch, None))
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    causal_lm_loss(model, batch).backward()              # first-call allocations (thread pools, kernels' caches)
    model.zero_grad(set_to_none=True)                    # land before either measurement
    method = HiZFO(lr=2e-5, rho=0.6)
    meters = Meters(); trim(0); meters.reset_peak(torch.device("cpu"))
    method.setup(ctx)                                    # profiling, selection, partition
    setup_peak = meters.read_peak(torch.device("cpu"))
    method.train_step(batch)                             # the first step creates AdamW's state
    step_peaks = []
    for _ in range(2):
        meters = Meters(); trim(0); meters.reset_peak(torch.device("cpu"))
        method.train_step(batch)
        step_peaks.append(meters.read_peak(torch.device("cpu")))
    print(json.dumps({"setup": setup_peak, "step": max(step_peaks), "kind": meters.memory_kind,
                      "fo_share": sum(method.partition.numel[n] for n in method.partition.fo) /
                                  sum(method.partition.numel.values())}))
""")


@pytest.mark.subprocess
@pytest.mark.slow
def test_profiling_peak_is_below_the_training_steps_peak():
    # fixed mmap threshold: freed tensors go back to the OS, so the resident peak follows live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    peaks = json.loads(out.stdout.strip().splitlines()[-1])
    if peaks["kind"] != "cpu_peak_rss":
        pytest.skip("this kernel does not let the meter reset the resident peak (no /proc/self/clear_refs)")
    assert peaks["setup"] <= peaks["step"], peaks
