"""The first real-model study's arms (experiment=smollm2_study on a GPU, smollm2_study_cpu on the 2-core CPU), the
one owner of their arm files.

``scripts/gen_study1_arms.py`` writes from here each arm's ``conf/study_arm/<name>.yaml`` and each preset's
``+study_arm`` list; ``--check`` (tests/unit/apps/test_study_arms.py) fails when a file differs. The arms are study 2's
shape (``ArmSpec`` in analysis/study/study2_spec.py, whose rules file stays as it was committed), so an arm is its
task, method, seeds and method keys, and its variant is derived from the keys. The CPU study's runs are frozen
(tests/unit/apps/test_study_cpu_preset.py): an arm here composes to exactly the config its records hold.
"""
from __future__ import annotations

from analysis.study.study2_spec import ArmSpec, check_arms

PRESETS = ("smollm2_study", "smollm2_study_cpu")


def _pd(name: str, method: str, seeds: int, *keys: tuple[str, object], why: str = "") -> ArmSpec:
    return ArmSpec(f"pd_{name}", "pydoc", method, seeds, tuple(keys), why=why)


def _he(name: str, method: str, seeds: int = 3, *keys: tuple[str, object], why: str = "") -> ArmSpec:
    return ArmSpec(f"he_{name}", "humaneval_split", method, seeds, tuple(keys), why=why)


LOSS = ("alpha_mode", "loss")
ARMS: tuple[ArmSpec, ...] = (
    # pydoc: every method, both readings of α, the controls, and the sweeps of ρ, r and α
    _pd("zero_shot", "zero_shot", 1, why="deterministic: one seed"),
    _pd("full_ft", "full_ft", 8),
    _pd("hizfo", "hizfo", 8),
    _pd("hizfo_zo_off", "hizfo_zo_off", 8),
    _pd("hizfo_random_dir", "hizfo_random_dir", 8),
    _pd("mezo", "mezo", 5),
    _pd("hizfo_alpha_loss", "hizfo", 5, LOSS, why="α in the loss (Algorithm 1 line 10)"),
    _pd("hizfo_alpha_loss0.0", "hizfo", 5, LOSS, ("alpha", 0.0),
        why="claim 5's baseline: the ZO update stays, the coupling goes"),
    _pd("hizfo_alpha0.0", "hizfo", 1, ("alpha", 0.0), why="computes what ZO-off computes: one seed"),
    _pd("hizfo_alpha0.4", "hizfo", 3, ("alpha", 0.4)),
    *(_pd(f"hizfo_rho{rho}", "hizfo", 3, ("rho", rho)) for rho in (0.2, 0.4, 0.8)),
    _pd("hizfo_r0.3", "hizfo", 3, ("lr_ratio", 0.3)),
    _pd("hizfo_r0.5", "hizfo", 3, ("lr_ratio", 0.5), why="claim 7: r stable over [0.1, 0.5]"),
    _pd("hizfo_r0.7", "hizfo", 3, ("lr_ratio", 0.7)),
    _pd("lora", "lora", 3),
    _pd("greentrainer", "greentrainer", 3, why="GT-0.7"),
    # humaneval_split: 3 seeds each
    _he("zero_shot", "zero_shot", 1, why="deterministic: one seed"),
    _he("full_ft", "full_ft"),
    _he("hizfo", "hizfo"),
    _he("hizfo_zo_off", "hizfo_zo_off"),
    _he("hizfo_random_dir", "hizfo_random_dir"),
    _he("mezo", "mezo"),
    _he("hizfo_alpha_loss", "hizfo", 3, LOSS, why="α in the loss (Algorithm 1 line 10)"),
    _he("lora", "lora"),
    _he("greentrainer", "greentrainer", why="GT-0.7"),
)

# each preset's +study_arm list, in its sweep order: the GPU study runs every arm; the CPU study leaves out three
# humaneval_split arms (claims 1-4 and 8 only there)
_CPU_LEFT_OUT = ("he_hizfo_alpha_loss", "he_lora", "he_greentrainer")
PRESET_ARMS: dict[str, tuple[str, ...]] = {
    "smollm2_study": tuple(sorted((a.name for a in ARMS if a.task == "pydoc")))
    + tuple(sorted(a.name for a in ARMS if a.task == "humaneval_split")),
    "smollm2_study_cpu": tuple(a.name for a in ARMS if a.name not in _CPU_LEFT_OUT),
}


def arm_yaml(arm: ArmSpec) -> str:
    """The arm file scripts/gen_study1_arms.py writes (study 2's shape, study 1's header)."""
    why = f" ({arm.why})" if arm.why else ""
    lines = ["# @package _global_",
             f"# study arm: {arm.method} on {arm.task}{why} (conf/experiment/smollm2_study.yaml, "
             f"smollm2_study_cpu.yaml; written by scripts/gen_study1_arms.py from analysis/study/study1_spec.py)",
             "defaults:", f"  - override /task: {arm.task}", f"  - override /method: {arm.method}", "",
             f"variant: {arm.variant}", f"study_seeds: {arm.seeds}"]
    if arm.keys:
        lines += ["method:"] + [f"  {k}: {v}" for k, v in arm.keys]
    return "\n".join(lines) + "\n"


def problems() -> list[str]:
    """Why the spec is not a study: study 2's checks on the arms, and a preset naming an arm the spec lacks."""
    names = {a.name for a in ARMS}
    return check_arms(ARMS) + [f"{preset}: lists {name}, which is no arm here" for preset, listed in
                               PRESET_ARMS.items() for name in listed if name not in names]
