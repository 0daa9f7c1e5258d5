"""The second CPU study's arms (experiment=smollm2_study2_cpu), the one owner of its arm files.

``scripts/gen_study2_arms.py`` writes from here each new arm's ``conf/study_arm/<name>.yaml``, the preset's
``+study_arm`` list and the per-task sizing files; ``--check`` (tests/unit/test_study2_preset.py) fails when a file
differs. Arms whose config is study 1's (``reused``) keep study 1's arm file, so their runs have study 1's
config_hash and scripts/run_study.py --reuse can count study 1's records for them, on the same CPU model only.

An arm that restates another arm's task, method and keys is refused (``check_arms``): two names for one computation
(study 1's ρ 0.2 and 0.4 were one computation in the end, which only the records showed).
"""
from __future__ import annotations

from dataclasses import dataclass

PRESET = "smollm2_study2_cpu"
RESULTS_DIR = "results/smollm2_cpu_study2/runs"
STUDY1_PRESET = "smollm2_study_cpu"
ADAMW = ("zo_optimizer", "adamw")


@dataclass(frozen=True)
class ArmSpec:
    """One arm: its task, method, the method keys it sets (its variant), and its seeds."""
    name: str
    task: str
    method: str
    seeds: int
    keys: tuple[tuple[str, object], ...] = ()
    reused: bool = False                 # study 1's arm file, unchanged: the same config_hash
    why: str = ""

    @property
    def variant(self) -> str:
        return ",".join(f"method.{k}={v}" for k, v in sorted(self.keys)) or "default"


def _wn(name: str, method: str, seeds: int, *keys: tuple[str, object], why: str = "") -> ArmSpec:
    return ArmSpec(f"s2_wn_{name}", "wordnet_revdict", method, seeds, tuple(keys), why=why)


ARMS: tuple[ArmSpec, ...] = (
    # pydoc: study 1's task settings; Full FT and ZO-off are study 1's arms (ZO-off computes no ZO update, so the
    # ZO optimizer does not reach it: the same computation under either reading)
    ArmSpec("pd_full_ft", "pydoc", "full_ft", 8, reused=True, why="claim 2's baseline"),
    ArmSpec("pd_hizfo_zo_off", "pydoc", "hizfo_zo_off", 8, reused=True, why="claim 3's control"),
    ArmSpec("s2_pd_hizfo_adamw", "pydoc", "hizfo", 8, (ADAMW,), why="Hi-ZFO with the paper's ZO AdamW (§4.2)"),
    ArmSpec("s2_pd_hizfo_random_dir_adamw", "pydoc", "hizfo_random_dir", 8, (ADAMW,),
            why="claim 4's control under AdamW"),
    *(ArmSpec(f"s2_pd_hizfo_adamw_r{r}", "pydoc", "hizfo", 3, (ADAMW, ("lr_ratio", r)),
              why="claim 7 where the ZO step is not inert") for r in (0.3, 0.5, 0.7)),
    # wordnet_revdict: the short-answer task (the paper's WebQuestions role)
    _wn("zero_shot", "zero_shot", 1, why="deterministic: one seed"),
    _wn("full_ft", "full_ft", 8),
    _wn("hizfo", "hizfo", 8, why="the SGD reading (eq. 3)"),
    _wn("hizfo_adamw", "hizfo", 8, ADAMW, why="the AdamW reading (§4.2)"),
    _wn("hizfo_zo_off", "hizfo_zo_off", 8, why="one control for both readings"),
    _wn("hizfo_random_dir", "hizfo_random_dir", 8),
    _wn("hizfo_random_dir_adamw", "hizfo_random_dir", 8, ADAMW),
    _wn("mezo", "mezo", 5),
    _wn("lora", "lora", 3),
    _wn("greentrainer", "greentrainer", 3, why="GT-0.7"),
)

# Per-task sizing files (conf/study_task/<preset>_<task>.yaml): pydoc's is study 1's, byte for byte below its
# first line, so the reused arms compute what study 1's did.
SIZING_HEADER = {
    "pydoc": "# pydoc's sizing in experiment=smollm2_study2_cpu: study 1's (conf/study_task/smollm2_study_cpu_pydoc.yaml),\n"
             "# unchanged, so arms with study 1's config have its config_hash (written by scripts/gen_study2_arms.py)\n",
    "wordnet_revdict": "# wordnet_revdict's sizing in experiment=smollm2_study2_cpu (written by scripts/gen_study2_arms.py),\n"
                       "# set from the committed pilot (results/smollm2_cpu_study2/pilots/README.md: AMD EPYC Zen 4 with\n"
                       "# AVX512-BF16, one seed each) by the preset's time rule, at most ~9 min a run on average (256 rows\n"
                       "# projected 10.2 min, 192 rows 8.1): 192 of 1493 training rows; all 311 evaluation rows; the task's\n"
                       "# prompt cap and greedy decoding.\n",
}
WORDNET_SIZING = ("task:\n"
                  "  train_limit: 192          # the first 192 rows of the hash-ordered snapshot (1493): 48 batches of 4 an epoch\n")


def check_arms(arms: tuple[ArmSpec, ...] = ARMS) -> list[str]:
    """Why the arms are not a study: a name twice, or two arms that restate one computation (same task, method and
    keys). Empty when they are."""
    problems, seen_names, seen = [], set(), {}
    for arm in arms:
        if arm.name in seen_names:
            problems.append(f"{arm.name}: named twice")
        seen_names.add(arm.name)
        key = (arm.task, arm.method, tuple(sorted(arm.keys)))
        if key in seen:
            problems.append(f"{arm.name}: restates {seen[key]} (task {arm.task}, method {arm.method}, "
                            f"variant {arm.variant})")
        seen.setdefault(key, arm.name)
        if arm.seeds < 1:
            problems.append(f"{arm.name}: seeds must be >= 1, got {arm.seeds}")
    return problems


def arm_yaml(arm: ArmSpec) -> str:
    """The arm file scripts/gen_study2_arms.py writes (study 1's arm files have the same shape)."""
    lines = ["# @package _global_",
             f"# study arm: {arm.method} on {arm.task}"
             f"{' (' + arm.why + ')' if arm.why else ''} (conf/experiment/{PRESET}.yaml; written by "
             f"scripts/gen_study2_arms.py from analysis/study/study2_spec.py)",
             "defaults:", f"  - override /task: {arm.task}", f"  - override /method: {arm.method}", "",
             f"variant: {arm.variant}", f"study_seeds: {arm.seeds}"]
    if arm.keys:
        lines += ["method:"] + [f"  {k}: {v}" for k, v in arm.keys]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ComparisonSpec:
    """One deciding comparison of a claim: ``better`` − ``worse`` (the paper's direction is > 0) on ``measure``, by
    the pre-registered test of its ``kind`` (analysis/study/prereg.py)."""
    claim: str
    task: str
    better: str
    worse: str
    kind: str = "difference"            # difference | equivalence
    measure: str = "score"              # score (per example) | train_seconds | peak_memory_gb | seconds_per_epoch
    reading: str = "adamw"              # the ZO optimizer of the Hi-ZFO arm: sgd | adamw | "" (none)


def _both_readings(claim: str, worse_sgd: str, worse_adamw: str) -> tuple[ComparisonSpec, ...]:
    return (ComparisonSpec(claim, "wordnet_revdict", "s2_wn_hizfo", worse_sgd, reading="sgd"),
            ComparisonSpec(claim, "wordnet_revdict", "s2_wn_hizfo_adamw", worse_adamw))


# The Holm family of a task is every comparison listed for it. wordnet_revdict has no arms for claims 5-7 in the
# issue's list: they read "no records" there. Claim 8 is tested as the paper ran it (3 epochs against 5) on time
# and memory, and per epoch as an equivalence within ±10 % (analysis.study.prereg.PER_EPOCH_MARGIN).
COMPARISONS: tuple[ComparisonSpec, ...] = (
    ComparisonSpec("2", "pydoc", "s2_pd_hizfo_adamw", "pd_full_ft"),
    ComparisonSpec("3", "pydoc", "s2_pd_hizfo_adamw", "pd_hizfo_zo_off"),
    ComparisonSpec("4", "pydoc", "s2_pd_hizfo_adamw", "s2_pd_hizfo_random_dir_adamw"),
    ComparisonSpec("7", "pydoc", "s2_pd_hizfo_adamw", "s2_pd_hizfo_adamw_r0.7"),
    ComparisonSpec("7", "pydoc", "s2_pd_hizfo_adamw_r0.3", "s2_pd_hizfo_adamw", kind="equivalence"),
    ComparisonSpec("7", "pydoc", "s2_pd_hizfo_adamw_r0.5", "s2_pd_hizfo_adamw", kind="equivalence"),
    ComparisonSpec("1", "wordnet_revdict", "s2_wn_full_ft", "s2_wn_mezo", reading=""),
    *_both_readings("2", "s2_wn_full_ft", "s2_wn_full_ft"),
    *_both_readings("3", "s2_wn_hizfo_zo_off", "s2_wn_hizfo_zo_off"),
    *_both_readings("4", "s2_wn_hizfo_random_dir", "s2_wn_hizfo_random_dir_adamw"),
    *(ComparisonSpec("8", "wordnet_revdict", "s2_wn_full_ft", hizfo, measure=measure, reading=reading)
      for hizfo, reading in (("s2_wn_hizfo", "sgd"), ("s2_wn_hizfo_adamw", "adamw"))
      for measure in ("train_seconds", "peak_memory_gb")),
    *(ComparisonSpec("8", "wordnet_revdict", "s2_wn_full_ft", hizfo, kind="equivalence",
                     measure="seconds_per_epoch", reading=reading)
      for hizfo, reading in (("s2_wn_hizfo", "sgd"), ("s2_wn_hizfo_adamw", "adamw"))),
)
