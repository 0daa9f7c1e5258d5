"""One training run through the shared loop, in one process or under ``torchrun``, writing what the equality tests
compare: rank 0's final parameters, every step's loss, the ZO step seeds and the metrics.

    python -m tests.distributed.worker OUT [overrides...]
    torchrun --nproc_per_node 2 -m tests.distributed.worker OUT [overrides...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main(out: Path, overrides: list[str]) -> None:
    from hizfo.core import distributed
    from hizfo.run.loop import LoopOptions, train_and_evaluate
    from hizfo.run.meters import Meters
    from hizfo.run.session import RunInputs, compose, load, prepare

    torch.set_num_threads(1)
    cfg = compose(overrides)
    prepared = prepare(cfg, RunInputs(overrides=tuple(overrides)))
    world = distributed.init(prepared.backend)
    try:
        device = torch.device("cpu")
        loaded, _ = load(cfg, prepared.method, prepared.task, device)
        result = train_and_evaluate(prepared.method, cfg.method, loaded, prepared.task,
                                    LoopOptions.from_run_config(cfg, device), Meters())
        if world.is_main:
            out.mkdir(parents=True, exist_ok=True)
            model = prepared.method.eval_model()
            torch.save({n: p.detach().clone() for n, p in model.state_dict().items()}, out / "params.pt")
            (out / "result.json").write_text(json.dumps({
                "world_size": world.size, "losses": result.losses, "zo_seeds": result.zo_seeds,
                "metrics": result.metrics, "predictions": result.predictions}))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
