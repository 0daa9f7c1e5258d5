"""Trace one training step of each method with torch's MemTracker under FakeTensorMode, for the planner's check.

    nice -n 10 python benchmarks/planner_traces.py --shape tiny-opt --out benchmarks/planner_traces.json

Each cell builds the model on fake tensors (hizfo.core.shapes.build_fake: shapes only, no memory), builds the real
method object from hizfo/registry.py, sets it up as the loop would, runs one warm-up step (so AdamW state and fp32
masters exist), and traces the next step with ``torch.distributed._tools.mem_tracker.MemTracker``. The peak snapshot
splits into Parameter, Gradient, Optstate (everything made inside optimizer.step, its temporaries too), Activation
(made in a forward, or outside any module), Temp (made in a backward) and Other (tensors passed to track_external:
here the fp32 masters and zo.py's noise chunk cached by the warm-up; before 2026-12-08 that chunk was not
tracked, and a step that did not allocate it again, a Bilevel-ZOFO lower step or Hi-ZFO's FO backward, missed it).

What the harness changes, and why: a fake tensor has no value, so ``float()`` / ``.item()`` of one return 1.0 (the
losses and the ZO step seed); Hi-ZFO's and GreenTrainer's selection comes from the planner's cost-only worst case
(profiling reads values, e.g. ``torch.unique``, so it cannot run on fake tensors); Bilevel-ZOFO warms up past its
first upper step (the traced step is then a lower step with the upper AdamW's state alive); peft's adapter move
(``Module.to``) is skipped as in the planner, and the adapters' new modules are put in eval mode as
hizfo/run/loop.py does after setup (until 2026-12-08 LoRA's dropout ran in train mode in the traces); MemTracker
refuses a second forward of the root module in one step, so a subclass lets Hi-ZFO's and MeZO's second forward
through. Noise chunks made in hizfo/core/zo.py's worker threads are invisible to MemTracker (dispatch modes are
thread-local).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hizfo.core.memory import Setting                      
from hizfo.core.memory_trace import _fo_zo                 
from hizfo.core.precision import use_precision             
from hizfo.core.shapes import KNOWN_SHAPES, ModelShape, build_fake, model_shape 

METHODS = ("full_ft", "ft_top2", "lora", "prefix", "greentrainer", "mezo", "bilevel_zofo", "hizfo")
PRECISIONS = ("fp32", "bf16-mixed", "bf16")
SHAPES = {"tiny-opt": ("conf/model/tiny-opt.yaml", 16, 80), "opt-125m": ("facebook/opt-125m", 4, 128),
          "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", 4, 128)}


def tracker_class() -> type:
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class StepTracker(MemTracker):
        """MemTracker that lets the root module run more than one forward in the traced step, and puts its
        gradient hooks only on tensors that require a gradient (it would refuse a frozen one)."""

        def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True
                                             ) -> tuple[int, int]:
            sizes = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            for p in module.parameters() if install_grad_hooks else ():
                if p.requires_grad and self._param_to_grad_hook_handles.get(p, None) is None:
                    def hook(grad: torch.Tensor) -> None:
                        self._update_and_maybe_create_winfos(grad, _MemRefType.GRAD)
                    self._param_to_grad_hook_handles[p] = (
                        p.register_hook(hook), p.register_post_accumulate_grad_hook(lambda q, h=hook: h(q.grad)))
            return sizes

        def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
            name = self._mod_tracker.get_known_fqn(module)
            if module in self.memory_tracking and not self._mod_tracker.is_bw and \
                    set(self._mod_tracker.parents) - {name} == {"Global"}:
                del self.memory_tracking[module]
            super()._pre_fw_hook(module, inputs)
    return StepTracker


def shape_of(name: str) -> ModelShape:
    from omegaconf import OmegaConf
    where = SHAPES[name][0]
    if where.endswith(".yaml"):
        return model_shape(OmegaConf.load(where))
    return model_shape(OmegaConf.create({"name": name, "family": KNOWN_SHAPES[where]["family"], "hub_id": where}))


def _batches(fm: Any, batch: int, seq_len: int):
    with fm.mode:
        ids = torch.ones(batch, seq_len, dtype=torch.long)
        one = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    def stream():
        while True:
            yield one
    return one, stream


def build_method(name: str, fm: Any, s: Setting, batch: dict, stream: Any) -> Any:
    """The registry's method object, set up on the fake model as the loop would (selection: cost-only)."""
    from hizfo.core.methods import TrainContext, set_trainable
    from hizfo.core.models import LoadedModel
    from hizfo.registry import implementation
    from hizfo.core.partition import Partition
    method = implementation(name)(**({"name": name}))
    loaded = LoadedModel(model=fm.model, tokenizer=None, name="fake", family="opt",
                         lora_target_modules=list(s.lora_targets))
    ctx = TrainContext(loaded=loaded, task=None, device=torch.device("cpu"), total_steps=10, steps_per_epoch=10,
                       zo_seeds=torch.Generator().manual_seed(0), train_batches=stream, dev_batches=stream,
                       n_train=40, n_dev=4)
    if name in ("hizfo", "greentrainer"):
        fo, zo, _ = _fo_zo(fm.model, s)
        order = [n for n, _ in fm.model.named_parameters()]
        part = Partition(fo=sorted(fo), zo=sorted(zo), frozen=[], order=order, numel={}, importance={}, budget=0,
                         spent=0, total_backward=0, backward_flops_share=0.0, profiling_seconds=0.0,
                         selection_seconds=0.0)
        if name == "hizfo":
            method.model, method.device, method.total_steps, method.zo_seeds = fm.model, ctx.device, 10, ctx.zo_seeds
            method.partition = part
            method._apply_partition()
        else:
            method.setup(ctx)
            set_trainable(fm.model, set(part.fo))
        return method
    move = nn.Module.to
    nn.Module.to = lambda self, *a, **k: self                 # as the planner: peft's adapter move on fake tensors
    try:
        method.setup(ctx)
    finally:
        nn.Module.to = move
    method.eval_model().train(False)      # as hizfo/run/loop.py: peft's new modules (LoRA's dropout) follow the mode
    return method


def _externals(method: Any) -> tuple[list, list]:
    """(optimizers, fp32 master tensors) a method holds."""
    optims, masters = [], []
    for attr in ("trainer", "fo_trainer", "lower"):
        t = getattr(method, attr, None)
        if t is not None:
            optims.append(t.optimizer)
            if t.masters:
                masters += t.masters.masters
    if getattr(method, "upper", None) is not None:
        optims.append(method.upper)
    for attr in ("theta_masters", "upper_masters"):
        m = getattr(method, attr, None)
        if m is not None:
            masters += m.masters
    return optims, masters


def _cached_chunks(mode: Any) -> list:
    """hizfo/core/zo.py's noise chunks this cell's warm-up left cached in the main thread (made before the traced
    step, so MemTracker would see one only if the step allocated it again: Other, as the masters)."""
    from hizfo.core import zo
    return [b for k, b in getattr(zo._local, "bufs", {}).items() if k[2] is mode]


def trace_cell(shape: ModelShape, name: str, precision: str, batch: int, seq_len: int) -> dict[str, Any]:
    from torch._subclasses.fake_tensor import FakeTensor
    s = Setting(method=name, method_cfg=(), precision=precision, batch=batch, seq_len=seq_len, device="cpu")
    fm = build_fake(shape, torch.bfloat16 if precision == "bf16" else torch.float32)
    fm.model.eval()                                           # train_dropout=false: eval-mode training forwards
    one, stream = _batches(fm, batch, seq_len)
    saved = {k: getattr(FakeTensor, k, None) for k in ("__float__", "item", "__int__")}
    FakeTensor.__float__ = lambda self: 1.0                   # a fake tensor has no value (module docstring)
    FakeTensor.item = lambda self: 1
    FakeTensor.__int__ = lambda self: 1
    start = time.perf_counter()
    try:
        with fm.mode, use_precision(precision):
            method = build_method(name, fm, s, one, stream)
            # warm-up: AdamW state and masters now exist; Bilevel-ZOFO's upper step (and its upper AdamW's state
            # over the backbone, kept from then on) comes after lower_steps batches: warm up past it
            for _ in range(int(method.cfg.lower_steps) if name == "bilevel_zofo" else 1):
                method.train_step(one)
            optims, masters = _externals(method)
            tracker = tracker_class()()
            tracker.track_external(fm.model, *optims, *masters, *_cached_chunks(fm.mode))
            with tracker:
                method.train_step(one)
            peak = tracker.get_tracker_snapshot("peak")
    finally:
        for k, v in saved.items():
            setattr(FakeTensor, k, v) if v is not None else delattr(FakeTensor, k)
    snap = next(iter(peak.values()))
    return {"method": name, "precision": precision, "batch": batch, "seq_len": seq_len,
            "peak": {str(k).split(".")[-1]: int(v) for k, v in snap.items()},
            "trace_seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append", required=True)
    parser.add_argument("--method", choices=METHODS, action="append")
    parser.add_argument("--precision", choices=PRECISIONS, action="append")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = json.loads(args.out.read_text()) if args.out.exists() else {"cells": []}
    for shape_name in args.shape:
        _, batch, seq_len = SHAPES[shape_name]
        shape = shape_of(shape_name)
        for name in args.method or METHODS:
            for precision in args.precision or PRECISIONS:
                cell = {"shape": shape_name, **trace_cell(shape, name, precision, batch, seq_len)}
                print(json.dumps(cell), flush=True)
                results["cells"] = [c for c in results["cells"] if (c["shape"], c["method"], c["precision"]) !=
                                    (shape_name, name, precision)] + [cell]
                args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
