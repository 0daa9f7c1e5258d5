"""Run a study preset to completion in resumable slices: every arm at its own number of seeds, N runs side by side.

    python scripts/run_study.py smollm2_study_cpu --hours 2          # one slice of at most ~2 h, two workers
    python scripts/run_study.py smollm2_study_cpu --dry-run          # the plan: what is done, what is left

A study with a task that scores generated code (humaneval_split) needs ``--allow-code-execution``, the driver's
form of run.py's ``task.allow_code_execution=true`` opt-in; without it those runs stop at once with that one line.

The arms are the preset's ``+study_arm`` sweep list; each arm's seed count is its ``study_seeds`` (a reporting key
set in the arm's yaml; the preset's default otherwise). Runs go seed by seed, so a stopped study has whole seeds of
every arm first. A run whose ok record exists with today's config hash is skipped before any process starts (the
record path and hash come from hizfo.run.runspec.RunSpec, as run.py computes them). Each run is one
``python run.py experiment=P +study_arm=A seed=S num_threads=T`` process with its log under
``<results_dir>/../logs/``. At the deadline no run is started; runs still going get ``--grace`` minutes, then
SIGTERM, which makes run.py checkpoint and exit, so the next slice resumes them from their checkpoint.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


@dataclass
class PlannedRun:
    arm: str
    seed: int
    path: Path
    done: bool
    reused: Optional[Path] = None        # another study's record that stands in for this run (--reuse)
    cpu: Optional[str] = None            # the CPU model of the done run's record, where it has one

    @property
    def name(self) -> str:
        return f"{self.arm}/seed{self.seed}"


def _compose(overrides: list[str]):
    from omegaconf import OmegaConf
    from hizfo.run.session import compose
    return OmegaConf.to_container(compose(overrides), resolve=True)


def arms_of(preset: str) -> list[str]:
    """The preset's ``+study_arm`` sweep list, in its order."""
    from omegaconf import OmegaConf
    raw = OmegaConf.load(REPO / "conf" / "experiment" / f"{preset}.yaml")
    listed = OmegaConf.select(raw, "hydra.sweeper.params", default={}) or {}
    arms = listed.get("+study_arm")
    if not arms:
        raise SystemExit(f"experiment={preset}: its hydra.sweeper.params has no '+study_arm' list")
    return [a.strip() for a in str(arms).split(",") if a.strip()]


@dataclass
class Reuse:
    """--reuse: another study's records stand in for runs with the same config_hash made on this CPU model."""
    results_dir: Path
    here_cpu: str
    legacy_cpu: Optional[str] = None


def reused_record(spec, reuse: Optional[Reuse]) -> tuple[Optional[Path], Optional[str]]:
    """The other study's record of ``spec``'s run when it may stand in (hizfo.run.records.reuse_refusal), and its
    CPU model; (None, why not) otherwise."""
    from hizfo.run.records import RunRecord, reuse_refusal
    if reuse is None:
        return None, None
    path = reuse.results_dir / spec.folder.with_suffix(".json")
    record = RunRecord.read(path)
    refusal = reuse_refusal(record, spec.config_hash, reuse.here_cpu, reuse.legacy_cpu)
    if refusal is not None:
        return None, refusal
    return path, (record.provenance or {}).get("cpu_model") or reuse.legacy_cpu


def mixed_cpu(runs: list[PlannedRun], here_cpu: str) -> Optional[str]:
    """One line when a done run of this study ran on another CPU model than this machine's: its paired comparisons
    would mix CPU models, so the study must not go on here (None when every recorded model is this one)."""
    other = sorted({r.cpu for r in runs if r.done and r.cpu and r.cpu != here_cpu})
    if not other:
        return None
    return (f"this study's records ran on CPU model {', '.join(map(repr, other))} and this machine is {here_cpu!r}: "
            f"runs here would mix CPU models within paired comparisons; run the study on that CPU model, or start "
            f"a new preset")


def plan(preset: str, only: Optional[set[str]] = None, reuse: Optional[Reuse] = None) -> list[PlannedRun]:
    """Every run of the study, seeds slowest, with whether its ok record (today's hash) exists, here or (--reuse)
    in another study's results on this CPU model."""
    from hizfo.run.records import RunRecord
    from hizfo.run.runspec import RunSpec, config_hash
    per_arm: dict[str, int] = {}
    for arm in arms_of(preset):
        if only and arm not in only:
            continue
        config = _compose([f"experiment={preset}", f"+study_arm={arm}"])
        per_arm[arm] = int(config.get("study_seeds") or 1)
    runs = []
    for seed in range(max(per_arm.values(), default=0)):
        for arm, n in per_arm.items():
            if seed >= n:
                continue
            overrides = [f"experiment={preset}", f"+study_arm={arm}", f"seed={seed}"]
            spec = RunSpec.build(_compose(overrides), overrides)
            record = RunRecord.read(spec.path)
            done = bool(record and record.status == "ok" and spec.same_run(config_hash(record.config)))
            cpu = (record.provenance or {}).get("cpu_model") if done else None
            reused, reused_cpu = (None, None) if done else reused_record(spec, reuse)
            if reused is not None:
                done, cpu = True, reused_cpu
            runs.append(PlannedRun(arm, seed, spec.path, done, reused, cpu))
    return runs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset", help="an experiment preset with a '+study_arm' sweep (e.g. smollm2_study_cpu)")
    parser.add_argument("--hours", type=float, default=2.0, help="start no run after this many hours (default 2)")
    parser.add_argument("--grace", type=float, default=20.0,
                        help="minutes a run still going at the deadline may finish before SIGTERM (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    parser.add_argument("--only", default="", help="comma-separated arms to run (default: all)")
    parser.add_argument("--allow-code-execution", action="store_true",
                        help="pass task.allow_code_execution=true to every run: the opt-in that tasks scoring "
                             "generated code (humaneval_split) need; the code runs in hizfo.eval.sandbox")
    parser.add_argument("--reuse", type=Path, default=None,
                        help="another study's results_dir whose ok records with the same config_hash, made on this "
                             "machine's CPU model (provenance cpu_model), count as done (e.g. results/smollm2_cpu/runs)")
    parser.add_argument("--legacy-cpu-model", default=None,
                        help="with --reuse: the CPU model that records without a provenance cpu_model ran on, as the "
                             "person running the study states it; without it such records are not reused")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return parser


def _print_plan(runs: list[PlannedRun]) -> None:
    for run in runs:
        where = run.reused or run.path
        print(f"  {'reused' if run.reused else 'done' if run.done else 'todo'}  {run.name}  "
              f"{where.relative_to(REPO) if where.is_relative_to(REPO) else where}")


def _start(run: PlannedRun, args: argparse.Namespace, logs: Path, env: dict[str, str]) -> subprocess.Popen:
    """One run.py process for ``run``, its output appended to its log."""
    log = open(logs / f"{run.arm}_seed{run.seed}.log", "a")
    cmd = [sys.executable, str(REPO / "run.py"), f"experiment={args.preset}", f"+study_arm={run.arm}",
           f"seed={run.seed}", f"num_threads={args.threads}"]
    if args.allow_code_execution:                          # a reporting key: the run's config_hash is unchanged
        cmd.append("task.allow_code_execution=true")
    print(f"start {run.name}", flush=True)
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)


def run_slice(todo: list[PlannedRun], args: argparse.Namespace, logs: Path) -> int:
    """Run ``todo`` with ``args.workers`` side by side until the deadline, then give the runs still going
    ``args.grace`` minutes and SIGTERM (they checkpoint). The number that exited non-zero."""
    deadline = time.monotonic() + args.hours * 3600
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    running: dict[subprocess.Popen, tuple[PlannedRun, float]] = {}
    failures, queue, stopping_at = 0, list(todo), None
    while queue or running:
        now = time.monotonic()
        while queue and len(running) < args.workers and now < deadline:
            run = queue.pop(0)
            running[_start(run, args, logs, env)] = (run, now)
        if now >= deadline and queue:
            print(f"deadline: {len(queue)} runs left for the next slice", flush=True)
            queue.clear()
        if now >= deadline and running and stopping_at is None:
            stopping_at = now + args.grace * 60
        if stopping_at is not None and now >= stopping_at:
            for proc in running:
                proc.send_signal(signal.SIGTERM)          # run.py checkpoints and exits; the next slice resumes
            stopping_at = float("inf")
        for proc in [p for p in running if p.poll() is not None]:
            run, started = running.pop(proc)
            failures += proc.returncode != 0
            print(f"{'done' if proc.returncode == 0 else f'exit {proc.returncode}'} {run.name} "
                  f"({(time.monotonic() - started) / 60:.1f} min)", flush=True)
        time.sleep(2)
    return failures


def main(argv: Optional[list[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    from hizfo.run.records import cpu_model
    here = cpu_model()
    reuse = Reuse(args.reuse if args.reuse.is_absolute() else REPO / args.reuse, here,
                  args.legacy_cpu_model) if args.reuse else None
    if args.workers < 1 or args.threads < 1 or args.hours <= 0:
        parser.error("--workers and --threads must be >= 1 and --hours > 0")
    if not (REPO / "conf" / "experiment" / f"{args.preset}.yaml").is_file():
        print(f"experiment={args.preset}: no such preset under conf/experiment/", file=sys.stderr)
        return 2
    only = {a for a in args.only.split(",") if a} or None
    runs = plan(args.preset, only, reuse)
    todo = [r for r in runs if not r.done]
    print(f"{args.preset}: {len(runs)} runs planned, {len(runs) - len(todo)} done "
          f"({sum(r.reused is not None for r in runs)} reused from {args.reuse}), {len(todo)} to run; CPU {here!r}")
    if mixed_cpu(runs, here):
        print(f"experiment={args.preset}: {mixed_cpu(runs, here)}", file=sys.stderr)
        return 2
    if args.dry_run:
        _print_plan(runs)
        return 0
    if not todo:
        return 0
    # <results_dir>/<model>/<task>/<method>/<variant>/seed<S>.json -> <results_dir>/../logs
    record = todo[0].path if todo[0].path.is_absolute() else REPO / todo[0].path
    logs = record.parents[5] / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    failures = run_slice(todo, args, logs)
    left = sum(not r.done for r in plan(args.preset, only, reuse))
    print(f"{args.preset}: slice over; {left} runs left, {failures} exited non-zero (their logs: {logs})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
