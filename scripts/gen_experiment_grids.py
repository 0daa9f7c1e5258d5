"""Write each paper preset's grid into its yaml from analysis/paper/experiments.py, the grids' one owner.

    python scripts/gen_experiment_grids.py            # rewrite hydra.sweeper.params of conf/experiment/<name>(_cpu).yaml
    python scripts/gen_experiment_grids.py --check    # exit 1, naming the files, when one differs (tests/unit/test_presets.py)

Only the ``params:`` block that ends each preset is written (``analysis.paper.experiments.sweeper_params``); the rest of the
yaml (comments, per-preset settings, the sweep directory) is kept as it is. The study presets list study arms, not a
paper grid, and are not touched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]

from analysis.paper.experiments import EXPERIMENTS, sweeper_params

PARAMS_LINE = "    params:"
HEADER = f"{PARAMS_LINE}   # written by scripts/gen_experiment_grids.py from analysis/paper/experiments.py: edit the grid there\n"


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


def presets(conf: Path) -> dict[Path, dict[str, str]]:
    """Every paper preset and CPU twin, with the sweeper params of its grid."""
    return {conf / f"{spec.name}{suffix}.yaml": sweeper_params(grid) for spec in EXPERIMENTS.values()
            for suffix, grid in (("", spec.paper), ("_cpu", spec.cpu))}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a yaml differs")
    parser.add_argument("--conf", type=Path, default=REPO / "conf" / "experiment", help="the presets' folder")
    args = parser.parse_args(argv)
    stale = []
    try:
        for path, params in presets(args.conf).items():
            if not path.is_file():
                raise ValueError(f"{shown(path)}: no such preset")
            text = path.read_text()
            wanted = render(text, params, shown(path))
            if wanted != text:
                stale.append(shown(path))
                if not args.check:
                    path.write_text(wanted)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(f"not what analysis/paper/experiments.py writes (run python scripts/gen_experiment_grids.py): {', '.join(stale)}",
              file=sys.stderr)
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
