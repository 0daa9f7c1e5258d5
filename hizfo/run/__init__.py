"""One run's infrastructure: identity and paths (runspec, variant), records and predictions, checkpoints,
signals, locks, meters, tracking, thread counts, config validation, the CLI wrapper, the shared loop, the SLURM
pre-flight. Builds on core, tasks and eval; never imports baselines.
"""
