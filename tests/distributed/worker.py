"""Training runs through the shared loop, in one process or under ``torchrun``, writing what the equality tests
compare: rank 0's final parameters (whole), every step's loss and log row, the ZO step seeds, the metrics, and each
rank's bytes of parameters, gradients and optimizer state (counted from the local shards, not RSS).

    python -m tests.distributed.worker OUT RUNS_JSON                 # RUNS_JSON: {"name": [overrides...], ...}
    torchrun --nproc_per_node 2 -m tests.distributed.worker OUT RUNS_JSON

Several runs share one interpreter and one process group (most of a tiny run's time is the start of Python).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


def local_bytes(method: Any) -> dict[str, int]:
    """This rank's bytes of parameters, of the gradients the trained ones take, and of optimizer state."""
    from hizfo.core.distributed import local
    model = method.eval_model()
    params = [local(p) for p in model.parameters()]
    trained = [local(p) for p in model.parameters() if p.requires_grad]
    from hizfo.run.checkpoint_dist import torch_optimizers          # on the method or its trainers
    state = [v for o in torch_optimizers(method) for s in o.state.values() for v in s.values()
             if isinstance(v, torch.Tensor) and v.dim() > 0]
    size = lambda ts: sum(t.numel() * t.element_size() for t in ts)       # noqa: E731
    return {"params": size(params), "grads": size(trained), "optimizer": size(local(t) for t in state)}


def method_state(method: Any) -> dict[str, torch.Tensor]:
    """This rank's part of every tensor of ``method.state_dict()`` (what a checkpoint holds besides weights)."""
    from hizfo.core.distributed import local
    from hizfo.run.checkpoint_dist import split_tensors
    return {key: local(t).clone() for key, t in split_tensors(method.state_dict())[1].items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def zero_method_state(method: Any) -> dict[str, torch.Tensor]:
    """The method's state tensors as they are, then every one of them zeroed through ``load_state_dict``; refuses
    a state that zeroing left as it was (the comparison after the restore would prove nothing)."""
    from hizfo.run.checkpoint_dist import join_tensors, split_tensors
    before = method_state(method)
    skeleton, tensors = split_tensors(method.state_dict())
    method.load_state_dict(join_tensors(skeleton, {k: torch.zeros_like(t) for k, t in tensors.items()}))
    assert not any(t.any() for t in method_state(method).values()), "the method's state did not take the zeros"
    return before


def all_ranks(flag: bool) -> bool:
    """``flag`` on every rank (one process: itself)."""
    if not torch.distributed.is_initialized():
        return flag
    both = torch.tensor([int(flag)])
    torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MIN)
    return bool(both.item())


def one_run(out: Path, overrides: list[str]) -> None:
    from hizfo.core import distributed
    from hizfo.run.checkpoint import Checkpointer
    from hizfo.run.loop import LoopOptions, LoopState, train_and_evaluate
    from hizfo.run.meters import Meters
    from hizfo.run.session import RunInputs, compose, load, prepare

    overrides = [*overrides, f"results_dir={out / 'runs'}"]            # the checkpoints' folder: beside the results
    cfg = compose(overrides)
    prepared = prepare(cfg, RunInputs(overrides=tuple(overrides)))
    world = distributed.init(prepared.backend)
    device = torch.device("cpu")
    loaded, _ = load(cfg, prepared.method, prepared.task, device)
    # as run.py: the end-of-training checkpoint (every_steps past the run's end: that one only, at any world size),
    # which asks the method for its state_dict() with the model sharded
    checkpointer = Checkpointer.for_run(prepared.spec, every_steps=10**6, world=world)
    try:
        result = train_and_evaluate(prepared.method, cfg.method, loaded, prepared.task,
                                    LoopOptions.from_run_config(cfg, device), Meters(), checkpoint=checkpointer)
        saved = [p.name for p in checkpointer.checkpoints()]
        # and loads it back, as a resume does, into the method, its weights and its state (optimizer moments, fp32
        # masters) zeroed first: they must come back bit for bit, on every rank
        model = prepared.method.eval_model()
        trained = {name: t.clone() for name, t in distributed.whole_parameters(model)}
        state = zero_method_state(prepared.method)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        restored = checkpointer.restore(prepared.method, LoopState(), Meters(), None)
        back = distributed.full_parameters(prepared.method.eval_model())
        restored_exactly = restored and same(trained, back) and all_ranks(same(state, method_state(prepared.method)))
        if world.is_main:
            checkpointer.discard()
    finally:
        checkpointer.close()
    memory: list[Any] = [None] * world.size
    mine = local_bytes(prepared.method)
    if world.size > 1:
        torch.distributed.all_gather_object(memory, mine)
    else:
        memory = [mine]
    params = distributed.full_parameters(prepared.method.eval_model())      # every rank gathers
    # every rank's whole model, hashed: the replicated tensors (ZO's Θ, updated in place on each rank from the
    # all-reduced losses) must not drift apart, which rank 0's copy alone cannot show
    hashes: list[Any] = [None] * world.size
    from hizfo.run.checkpoint_files import tensors_sha256
    mine_hash = tensors_sha256(dict(sorted(params.items())))
    if world.size > 1:
        torch.distributed.all_gather_object(hashes, mine_hash)
    else:
        hashes = [mine_hash]
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({n: p.clone() for n, p in params.items()}, out / "params.pt")
        (out / "result.json").write_text(json.dumps({
            "world_size": world.size, "losses": result.losses, "zo_seeds": result.zo_seeds,
            "metrics": result.metrics, "predictions": result.predictions, "history": result.history,
            "rank_bytes": memory, "fo_names": result.summary.partition.get("fo_names"),
            "selections": result.summary.details.get("selections"), "checkpoints": saved,
            "restored_exactly": restored_exactly, "state_tensors": len(state), "rank_param_hashes": hashes}))


def main(out: Path, runs: dict[str, list[str]]) -> None:
    from hizfo.core import distributed
    torch.set_num_threads(1)
    finished = False
    try:
        for name, overrides in runs.items():
            one_run(out / name, overrides)
        finished = True
    finally:
        distributed.end_run(finished)                 # as a run ends (hizfo/run/session.py)
        distributed.leave()                           # as the process exits


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
