"""Write the first CPU study's arm files from analysis/study/study1_spec.py, their one owner.

    python -m scripts.gen_study1_arms            # write conf/study_arm/{pd,he}_*.yaml and both presets' arm lists
    python -m scripts.gen_study1_arms --check    # write nothing; exit 1 naming each file that differs

Written: each arm's ``conf/study_arm/<name>.yaml`` and the ``+study_arm:`` line of ``conf/experiment/smollm2_study.yaml``
and ``smollm2_study_cpu.yaml`` (the rest of each preset is hand-written and kept). A spec that is not a study (an
arm twice, two arms of one computation, a preset naming no arm) is refused: exit 2 with one line.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from analysis.study.study1_spec import ARMS, PRESET_ARMS, arm_yaml, problems
from scripts.gen_study2_arms import ARM_LINE, run_generator

def preset_text(text: str, names: tuple[str, ...], where: str) -> str:
    """The preset with its one ``+study_arm:`` line listing ``names``."""
    lines = text.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if line.startswith(ARM_LINE)]
    if len(found) != 1:
        raise ValueError(f"{where}: expected one '{ARM_LINE.strip()}' line, found {len(found)}")
    lines[found[0]] = ARM_LINE + ",".join(names) + "\n"
    return "".join(lines)


def wanted_files(conf: Path) -> dict[Path, str]:
    """Every file the spec writes, with its text."""
    found = problems()
    if found:
        raise ValueError("; ".join(found))
    files = {conf / "study_arm" / f"{a.name}.yaml": arm_yaml(a) for a in ARMS}
    for preset, names in PRESET_ARMS.items():
        path = conf / "experiment" / f"{preset}.yaml"
        if not path.is_file():
            raise ValueError(f"{path}: no such preset (its hand-written part comes first)")
        files[path] = preset_text(path.read_text(), names, str(path))
    return files


def main(argv: Optional[list[str]] = None) -> int:
    return run_generator(argv, __doc__, wanted_files, "analysis/study/study1_spec.py",
                         "python -m scripts.gen_study1_arms")


if __name__ == "__main__":
    sys.exit(main())
