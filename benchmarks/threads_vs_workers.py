"""Two one-thread runs side by side, or one two-thread run after another: which finishes a study slice sooner?

    python -m benchmarks.threads_vs_workers [--steps 6] [--generate 2] [--cores 2]

One "job" is a small piece of a study run on SmolLM2-135M-Instruct under bf16 autocast (the study's precision):
``--steps`` Full FT training steps (AdamW, batch 4 × 128 tokens) and ``--generate`` greedy generation batches
(8 prompts × 32 new tokens), after the model is loaded. Two jobs are timed both ways, in fresh processes:

* **side by side**: ``--cores`` processes at one torch thread each, started together (the study's default,
  ``scripts/run_study.py --workers 2 --threads 1``);
* **one after another**: one process at ``--cores`` threads doing the same jobs in turn
  (``--workers 1 --threads 2``).

Prints one row per layout (wall-clock of the two jobs, seconds per training step and per generation batch) and last
the line ``side_by_side_over_sequential=…`` (< 1: side by side finishes first). Model load time is left out of both.
Run it on a quiet machine: anything else running takes cores from one layout and not the other.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _job(model, tokenizer, steps: int, generate: int) -> tuple[float, float]:
    """Seconds per training step and per generation batch of one job (bf16 autocast, fp32 masters)."""
    import torch
    torch.manual_seed(0)
    vocab = model.config.vocab_size
    batch = torch.randint(0, vocab, (4, 128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    start = time.perf_counter()
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    per_step = (time.perf_counter() - start) / max(steps, 1)
    del optimizer
    prompts = torch.randint(0, vocab, (8, 64))
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(generate):
            model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=32,
                           min_new_tokens=32, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    per_batch = (time.perf_counter() - start) / max(generate, 1)
    return per_step, per_batch


def worker(threads: int, jobs: int, steps: int, generate: int) -> None:
    """Load the model, then run ``jobs`` jobs in turn; print one JSON line of timings."""
    import torch
    torch.set_num_threads(threads)
    from omegaconf import OmegaConf
    from hizfo.core.models import load_model
    from hizfo.run.session import compose
    # the model config as run.py composes it (the one composer), not conf/model/*.yaml read raw
    kwargs = OmegaConf.to_container(compose(["model=smollm2-135m"]).model, resolve=True)
    kwargs.pop("_target_")
    loaded = load_model(**kwargs, precision="bf16-mixed")
    model, tokenizer = loaded.model, loaded.tokenizer
    model.train()
    print("ready", flush=True)
    sys.stdin.readline()                                   # start together: the parent says go
    start = time.perf_counter()
    timings = [_job(model, tokenizer, steps, generate) for _ in range(jobs)]
    print(json.dumps({"wall": time.perf_counter() - start, "step": sum(t[0] for t in timings) / jobs,
                      "generate": sum(t[1] for t in timings) / jobs}), flush=True)


def layout(processes: int, threads: int, jobs_each: int, args: argparse.Namespace) -> dict[str, float]:
    """Start ``processes`` workers, wait until each has loaded the model, start them together, time them."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, __file__, "--worker", str(threads), "--jobs", str(jobs_each),
               "--steps", str(args.steps), "--generate", str(args.generate)]
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(processes)]
    for p in procs:
        while (line := p.stdout.readline()) and line.strip() != "ready":
            pass
    start = time.perf_counter()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.stdout.readlines()[-1]) for p in procs]
    wall = time.perf_counter() - start
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("threads_vs_workers: a worker failed")
    return {"wall": wall, "step": sum(r["step"] for r in results) / processes,
            "generate": sum(r["generate"] for r in results) / processes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="Full FT steps per job (default 6)")
    parser.add_argument("--generate", type=int, default=2, help="generation batches per job (default 2)")
    parser.add_argument("--cores", type=int, default=2, help="cores to share (default 2)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.jobs, args.steps, args.generate)
        return 0
    if args.steps < 1 or args.generate < 0 or args.cores < 2:
        parser.error("--steps must be >= 1, --generate >= 0 and --cores >= 2")
    side = layout(args.cores, 1, 1, args)
    sequential = layout(1, args.cores, args.cores, args)
    print(f"{'layout':<36}{'wall s':>9}{'s/step':>9}{'s/gen batch':>13}")
    for name, r in ((f"side by side ({args.cores} x 1 thread)", side),
                    (f"one after another (1 x {args.cores} threads)", sequential)):
        print(f"{name:<36}{r['wall']:>9.1f}{r['step']:>9.2f}{r['generate']:>13.2f}")
    print(f"side_by_side_over_sequential={side['wall'] / sequential['wall']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
