"""Write each paper preset's grid into its yaml from analysis/paper/experiments.py, the grids' one owner.

    python scripts/gen_experiment_grids.py          # write hydra.sweeper.params of conf/experiment/<name>(_cpu).yaml
    python scripts/gen_experiment_grids.py --check  # exit 1, naming the files, when one differs or is missing

Only the ``params:`` block that ends each preset is written (``analysis.paper.experiments.sweeper_params``); the
rest of the yaml (comments, per-preset settings, the sweep directory) is kept as it is. A spec without its presets
gets them created (``skeleton``: header, name, the CPU twin's ``cpu_scale`` defaults, sweep directory, params);
settings of its own (a batch size, a precision) go above ``hydra:`` by hand and are kept from then on. The study
presets list study arms, not a paper grid, and are not touched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from analysis.paper.experiments import EXPERIMENTS, ExperimentSpec, sweeper_params

REPO = Path(__file__).resolve().parents[1]
PARAMS_LINE = "    params:"
HEADER = (f"{PARAMS_LINE}   # written by scripts/gen_experiment_grids.py from analysis/paper/experiments.py: "
          "edit the grid there\n")


def shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def render(text: str, params: dict[str, str], where: str) -> str:
    """``text`` with the ``hydra.sweeper.params`` block that ends it replaced by ``params``."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.split("#")[0].rstrip() == PARAMS_LINE]
    if len(starts) != 1:
        raise ValueError(f"{where}: expected one '{PARAMS_LINE.strip()}' line under hydra.sweeper, found {len(starts)}")
    if not all(line.startswith(" " * 6) for line in lines[starts[0] + 1:]):
        raise ValueError(f"{where}: hydra.sweeper.params must be the last block of the file")
    return "".join(lines[:starts[0]]) + HEADER + "".join(f"      {key}: {value}\n" for key, value in params.items())


def skeleton(spec: ExperimentSpec, scale: str) -> str:
    """A new preset for ``spec`` at ``scale`` (paper | cpu), its params block still empty (``render`` fills it)."""
    preset = spec.name if scale == "paper" else f"{spec.name}_cpu"
    grid = spec.paper if scale == "paper" else spec.cpu
    what = spec.title if scale == "paper" else f"CPU twin of {spec.title}"
    lines = ["# @package _global_", f"# python run.py -m experiment={preset}", f"# {what} = {len(grid)} runs."]
    lines += ["defaults:", "  - cpu_scale", ""] if scale == "cpu" else []
    lines += [f"experiment: {preset}", "hydra:", "  sweep:", f"    dir: multirun/{preset}/${{now:%Y-%m-%d_%H-%M-%S}}",
              "  sweeper:", PARAMS_LINE]
    return "\n".join(lines) + "\n"


def presets(conf: Path) -> dict[Path, tuple[ExperimentSpec, str]]:
    """Every paper preset and CPU twin: its spec and scale."""
    return {conf / f"{spec.name}{suffix}.yaml": (spec, scale) for spec in EXPERIMENTS.values()
            for suffix, scale in (("", "paper"), ("_cpu", "cpu"))}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a yaml differs or is missing")
    parser.add_argument("--conf", type=Path, default=REPO / "conf" / "experiment", help="the presets' folder")
    args = parser.parse_args(argv)
    stale = []
    try:
        for path, (spec, scale) in presets(args.conf).items():
            text = path.read_text() if path.is_file() else None
            base = skeleton(spec, scale) if text is None else text
            wanted = render(base, sweeper_params(getattr(spec, scale)), shown(path))
            if wanted != text:
                stale.append(shown(path) + ("" if text is not None else " (missing)"))
                if not args.check:
                    path.write_text(wanted)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(f"not what analysis/paper/experiments.py writes (run python scripts/gen_experiment_grids.py): "
              f"{', '.join(stale)}", file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
