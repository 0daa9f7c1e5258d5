"""Write the second CPU study's files from analysis/study/study2_spec.py, their one owner.

    python scripts/gen_study2_arms.py            # write conf/study_arm/s2_*.yaml, the sizing files, the arm list
    python scripts/gen_study2_arms.py --check    # write nothing; exit 1 naming each file that differs

Written: each new arm's ``conf/study_arm/<name>.yaml``; ``conf/study_task/smollm2_study2_cpu_<task>.yaml`` (pydoc's
is study 1's below its header, so reused arms keep study 1's config_hash); and the ``+study_arm:`` line of
``conf/experiment/smollm2_study2_cpu.yaml`` (the rest of the preset is hand-written and kept). Arms that restate
one computation are refused (analysis.study.study2_spec.check_arms): exit 2 with one line each.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

from analysis.study.study2_spec import (ARMS, PRESET, SIZING_HEADER, STUDY1_PRESET, WORDNET_SIZING, ArmSpec, arm_yaml,
                                  check_arms)

REPO = Path(__file__).resolve().parents[1]
ARM_LINE = "      +study_arm: "


def sizing_files(conf: Path) -> dict[Path, str]:
    """The per-task sizing files of the preset, from study 1's pydoc file and the spec."""
    study1 = (conf / "study_task" / f"{STUDY1_PRESET}_pydoc.yaml").read_text().splitlines(keepends=True)
    if not study1 or study1[0].strip() != "# @package _global_":
        raise ValueError(f"{STUDY1_PRESET}_pydoc.yaml: its first line is not '# @package _global_'")
    body = "".join(line for line in study1[1:] if not line.startswith("# "))
    return {conf / "study_task" / f"{PRESET}_pydoc.yaml": "# @package _global_\n" + SIZING_HEADER["pydoc"] + body,
            conf / "study_task" / f"{PRESET}_wordnet_revdict.yaml":
                "# @package _global_\n" + SIZING_HEADER["wordnet_revdict"] + WORDNET_SIZING}


def preset_text(text: str, arms: tuple[ArmSpec, ...], where: str) -> str:
    """The preset with its one ``+study_arm:`` line listing ``arms`` in the spec's order."""
    lines = text.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if line.startswith(ARM_LINE)]
    if len(found) != 1:
        raise ValueError(f"{where}: expected one '{ARM_LINE.strip()}' line, found {len(found)}")
    lines[found[0]] = ARM_LINE + ",".join(a.name for a in arms) + "\n"
    return "".join(lines)


def wanted_files(conf: Path, arms: tuple[ArmSpec, ...] = ARMS) -> dict[Path, str]:
    """Every file the spec writes, with its text."""
    problems = check_arms(arms)
    if problems:
        raise ValueError("; ".join(problems))
    files = {conf / "study_arm" / f"{a.name}.yaml": arm_yaml(a) for a in arms if not a.reused}
    files.update(sizing_files(conf))
    preset = conf / "experiment" / f"{PRESET}.yaml"
    if not preset.is_file():
        raise ValueError(f"{preset}: no such preset (its hand-written part comes first)")
    files[preset] = preset_text(preset.read_text(), arms, str(preset))
    return files


def run_generator(argv: Optional[list[str]], doc: str, wanted: Callable[[Path], dict[Path, str]], owner: str,
                  command: str) -> int:
    """A spec's generator: write the files ``wanted(conf)`` gives that differ, or with ``--check`` write nothing and
    exit 1 naming them; a spec that ``wanted`` refuses (ValueError) or a missing file: exit 2, one line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    parser.add_argument("--conf", type=Path, default=REPO / "conf", help="the config folder")
    args = parser.parse_args(argv)
    try:
        files = wanted(args.conf)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        if stale:
            print(f"not what {owner} writes (run {command}): {', '.join(str(p) for p in stale)}", file=sys.stderr)
            return 1
        return 0
    for path in stale:
        path.write_text(files[path])
        print(f"wrote {path}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    return run_generator(argv, __doc__, wanted_files, "analysis/study/study2_spec.py",
                         "python scripts/gen_study2_arms.py")


if __name__ == "__main__":
    sys.exit(main())
