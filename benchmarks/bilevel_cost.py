"""Bilevel-ZOFO's cost per training batch against a Full FT step, in one process.

    python -m benchmarks.bilevel_cost [--shape opt-125m|...] [--precision ...] [--batch 4] [--tokens 128]
                                      [--steps 3]

Under the reference's loop (one lower step a batch; an upper step after batches K, 2K-1, 3K-2, ..., so every K-1
batches once the first has passed) the batches of a cycle cost different amounts, so a median step
(step_cost_baselines.py) shows only the lower step. This times whole cycles, each ending with its upper step
(K = ``BilevelZOFOConfig.lower_steps``, the method's default), and reports the mean per batch, each cycle between
two Full FT steps so load drift hits both alike.
Measured 2026-11-23 on the 2-core CPU (OPT-125M shape, 4 x 128, fp32, load ~5), when an upper step followed every
K-th batch: Full FT 18.4 s a step, Bilevel-ZOFO 20.5 s a batch, ratio 1.11; 1.6 forwards and 1.2 backwards per
batch (1 + 6/K, 1 + 2/K). The reference's cadence, K-1 batches a cycle, adds 6/(K-1) - 6/K forwards a batch (0.07
at K = 10); not re-measured. Before the reference loop (K lower steps every batch): 9.09.
"""
from __future__ import annotations

import argparse
import statistics
import time


from baselines.bilevel_zofo import BilevelZOFOConfig
from benchmarks.harness import add_arguments, describe, prepare


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, ("full_ft", "bilevel_zofo"))
    args = parser.parse_args()
    k = BilevelZOFOConfig().lower_steps
    step_ft, _ = prepare("full_ft", args)
    step_bl, _ = prepare("bilevel_zofo", args)
    passes = [0, 0]                                       # forwards, backwards

    def cycle() -> int:                                   # lower steps until one is followed by an upper step
        n = 0
        while True:
            f, b = step_bl()
            n += 1
            passes[0], passes[1] = passes[0] + f, passes[1] + b
            if b > 1:                                     # the batch's upper step ran
                return n

    step_ft()
    cycle()                                               # warm-up: AdamW state, one whole K-cycle
    passes[:] = [0, 0]
    ft, bl = [seconds(step_ft)], []
    batches = 0
    for _ in range(args.steps):                           # Full FT, cycle, Full FT, cycle, ..., Full FT
        start = time.perf_counter()
        n = cycle()
        bl.append((time.perf_counter() - start) / n)
        batches += n
        ft.append(seconds(step_ft))
    print(describe(args))
    print(f"full_ft step {statistics.median(ft):.3f} s; bilevel_zofo per batch (mean over cycles, K = {k}) "
          f"{statistics.mean(bl):.3f} s; ratio {statistics.mean(bl) / statistics.median(ft):.2f}; "
          f"passes per batch {passes[0] / batches:.1f} forward / {passes[1] / batches:.1f} backward")

if __name__ == "__main__":
    main()
