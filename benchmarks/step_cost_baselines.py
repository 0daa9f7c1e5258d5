"""Step cost of every method at a real model's shape, in one table.

    python -m benchmarks.step_cost_baselines [--shape opt-125m|opt-1.3b|qwen2-0.5b] [--layers N --hidden H --ffn F]
                                             [--precision fp32|bf16-mixed|bf16] [--batch 4] [--tokens 128]
                                             [--steps 3] [--rows forward,full_ft,...]

Rows:
  forward         one inference-only forward: MeZO's memory yardstick
  full_ft         AdamW on every tensor: the ratios' denominator
  hizfo           Hi-ZFO (profiling counted in its set-up, not in the step)
  profiling       Hi-ZFO's profiling alone, timed like a step (it restores the weights, so it repeats)
  ft_top2, greentrainer, lora, prefix, bilevel_zofo   the FO / PEFT / bilevel baselines with their defaults
  mezo            baselines.mezo.MeZO (three in-place noise passes through hizfo.core.zo)
  mezo_reference  MeZO's reference step pattern: torch.manual_seed(s), then four allocating torch.normal draws
                  per step, each applied as p.data = p.data + scale·z

The last line is ``hizfo_step_over_fullft=… profiling_over_fullft_step=… hizfo_peak_over_fullft=…``.
How time and peak are measured: benchmarks/harness.py.
"""
from __future__ import annotations



from benchmarks.harness import main_for

ROWS = ("forward", "full_ft", "hizfo", "profiling", "ft_top2", "greentrainer", "lora", "prefix", "mezo",
        "mezo_reference", "bilevel_zofo")

if __name__ == "__main__":
    main_for(__file__, __doc__, ROWS)
