"""The paper's algorithm and what it runs on (imports hizfo's root, eval and tasks only; never run or baselines).

precision (compute dtypes, fp32 masters), device, models (loading), tokenizer, methods (the Method protocol every
method implements, shared losses and optimisers), zo (the ZO kernels Hi-ZFO, MeZO and Bilevel-ZOFO share),
costs (t_fp, t_dw, t_dy), profiling (importance, eq. 7), selection (the DP), partition (Θ_FO / Θ_ZO / frozen),
hybrid (Hi-ZFO's step, Algorithm 1).
"""
