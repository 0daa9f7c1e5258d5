"""The real-model study's writer: report.md (arms and paired differences), claims.md (verdicts and criteria), and
the plots (learning curves, the arms' scores, the ρ / r / α sweeps), each as PNG and PDF."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.figures import save_figure  # noqa: E402
from analysis.specs import METHOD_DISPLAY, SWEEP_SYMBOL, TASK_DISPLAY  # noqa: E402
from analysis.study.arms import (HIZFO, HIZFO_READINGS, SWEEP_KEYS, Arm, decimals,  # noqa: E402
                                 find_arm, interim_arms, paired, sweep_arms, task_metrics)
from analysis.study.budget import budget_section  # noqa: E402
from analysis.study.claims import Claim, Comparison  # noqa: E402
from analysis.study.stats import POWER, Interval, t_interval  # noqa: E402


def _md_row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def arm_table(arms: list[Arm], metrics: tuple[str, ...]) -> list[str]:
    """Markdown rows: one arm each, mean ± 95 % CI half-width over seeds, n, train time and peak memory."""
    lines = [_md_row(["method", "variant", "n", *metrics, f"seed s.d. {metrics[0]}", "train s", "s / epoch",
                      "peak GB", "memory kind"]),
             _md_row(["---"] * (len(metrics) + 8))]
    for arm in arms:
        kinds = sorted({k for k in arm.rows["memory_kind"] if isinstance(k, str)})
        sd = arm.interval(f"metric.{metrics[0]}").sd
        lines.append(_md_row([METHOD_DISPLAY.get(arm.method, arm.method), arm.variant, arm.seeds_shown,
                              *(arm.interval(f"metric.{m}").show(decimals(m)) for m in metrics),
                              "–" if sd is None else f"{sd:.{decimals(metrics[0])}f}",
                              arm.interval("train_seconds").show(1), arm.interval("seconds_per_epoch").show(1),
                              arm.interval("mem_gb").show(2), ", ".join(kinds) or "–"]))
    return lines


PAIRS = (("Hi-ZFO − Full FT", HIZFO, "default", "full_ft", "default"),
         ("Hi-ZFO − Hi-ZFO ZO off", HIZFO, "default", "hizfo_zo_off", "default"),
         ("Hi-ZFO − Hi-ZFO random dir.", HIZFO, "default", "hizfo_random_dir", "default"))


def pair_rows(arms: list[Arm], model: str, task: str, metrics: tuple[str, ...]) -> list[str]:
    """Markdown rows of the paired differences the issue asks for."""
    wanted = [(name, find_arm(arms, model, task, a, va), find_arm(arms, model, task, b, vb))
              for name, a, va, b, vb in PAIRS]
    for method in HIZFO_READINGS:
        sweep = sweep_arms(arms, model, task, method, "alpha")
        if sweep or method == HIZFO:
            wanted.append((f"α=0.1 − α=0 ({METHOD_DISPLAY.get(method, method)})", sweep.get(0.1), sweep.get(0.0)))
    columns = [f"metric.{m}" for m in metrics] + ["train_seconds", "mem_gb"]
    lines = [_md_row(["comparison", "n pairs", *metrics, "train s", "peak GB"]), _md_row(["---"] * (len(columns) + 2))]
    for name, a, b in wanted:
        if a is None or b is None:
            lines.append(_md_row([name, 0, *(["no records"] * len(columns))]))
            continue
        cells = []
        for column in columns:
            places = decimals(column[len("metric."):]) if column.startswith("metric.") else 1 if "seconds" in column else 2
            cells.append(paired(a, b, column)[0].show_ci(places))
        lines.append(_md_row([name, len(paired(a, b, columns[0])[1]), *cells]))
    return lines


def _selected_no_tensor(arm: Arm) -> bool:
    """True when every seed of a Hi-ZFO arm recorded a partition with zero first-order tensors (pure ZO)."""
    if arm.method not in HIZFO_READINGS or "partition" not in arm.rows.columns:
        return False
    parts = [p for p in arm.rows["partition"] if isinstance(p, dict) and "fo_tensors" in p]
    return bool(parts) and len(parts) == len(arm.rows) and all(p["fo_tensors"] == 0 and p.get("zo_tensors", 0) > 0
                                                               for p in parts)


def interim_banner(arms: list[Arm]) -> list[str]:
    """A paragraph for the top of report.md and claims.md while some arm lacks seeds its study planned."""
    short = interim_arms(arms)
    if not short:
        return []
    done = sum(len(a.seeds) for a in arms)
    missing = sum(a.planned_seeds - len(a.seeds) for a in short)
    listed = ", ".join(f"{a.label} ({TASK_DISPLAY.get(a.task, a.task)}) {a.seeds_shown}" for a in short)
    return [f"**Interim.** {len(short)} of the {len(arms)} arms with records have fewer seeds than their study "
            f"planned (`study_seeds`): {done} runs are here and at least {missing} more are planned. "
            f"Every number and verdict below will change as they arrive; none is the study's result yet. "
            f"Arms still short: {listed}.", ""]


def render_report(arms: list[Arm], shared: dict, notes: list[str], frame: pd.DataFrame,
                  pairs: Optional[str] = None) -> str:
    """report.md: per task the arms, and study 1's paired differences (``pairs``: a line said in their place, for a
    study whose comparisons are its own: study 2's are in its claims.md)."""
    lines = ["# Study report", "", *interim_banner(arms),
             "Mean ± 95 % t-interval half-width over seeds (t_{0.975, n-1} · s/√n); `–` where an arm has one seed "
             "(no interval can be given). *Seed s.d.* is the s.d. over an arm's seeds of the claims' metric: the "
             "noise floor. Paired differences are over the seeds both arms have: mean [95 % CI]; claims.md adds "
             + ("p values, Holm's adjustment and the smallest detectable difference." if pairs is None else
                "the pre-registered tests' p values and Holm's adjustment."), ""]
    for model, task in sorted({(a.model, a.task) for a in arms}):
        metrics = task_metrics(task, frame)
        these = [a for a in arms if (a.model, a.task) == (model, task)]
        lines += [f"## {TASK_DISPLAY.get(task, task)} ({model})", ""]
        if shared.get((model, task)):
            lines += [f"Settings every record of this task shares: `{', '.join(shared[(model, task)])}`.", ""]
        lines += arm_table(these, metrics) + [""]
        no_fo = [a.label for a in these if _selected_no_tensor(a)]
        if no_fo:
            lines += [f"Note: {', '.join(no_fo)}: the budget's selection put no tensor in the first-order set in any "
                      "seed (`partition.fo_tensors` = 0), so these arms trained every tensor by ZO alone, as MeZO does.", ""]
        single = [a.label for a in these if len(a.seeds) < 2]
        if single:
            lines += [f"Note: {', '.join(single)}: one seed, so no interval (`–`).", ""]
        lines += ([pairs, ""] if pairs else
                  ["Paired differences (same seeds):", ""] + pair_rows(arms, model, task, metrics) + [""])
    lines += budget_section(frame)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _p(value: Optional[float]) -> str:
    return "–" if value is None else "<0.001" if value < 0.001 else f"{value:.3f}"


def _headroom(c: Comparison) -> str:
    """An equivalence comparison's 90 % CI edge farthest from 0, as a share of its margin δ (100 % is the margin)."""
    if c.interval.lo is None or not c.margin:
        return ""
    return f", CI edge at {max(abs(c.interval.lo), abs(c.interval.hi)) / c.margin:.1%} of δ"


def _comparison_cell(c: Comparison) -> str:
    metric = c.column.replace("metric.", "")
    places = decimals(metric) if c.column.startswith("metric.") else 1 if "seconds" in c.column else 2
    level = "90 % CI" if c.kind == "equivalence" else "95 % CI"
    shown = "–" if c.min_detectable is None else f"{c.min_detectable:.{places}f}"
    detect = f", detectable ≥ {shown}" if c.kind != "equivalence" else _headroom(c)
    head = f"{c.what} ({metric}): {c.interval.show_ci(places)} {level}, n={len(c.seeds)}, p={_p(c.p)}"
    if not c.decides:
        return f"{head}{detect} → {c.verdict} (context: outside the verdict and Holm's family)"
    return f"{head}, p_Holm={_p(c.p_holm)}{detect} → {c.verdict} / Holm {c.holm_verdict}"


def render_claims(claims: list[Claim], margin: float, arms: Optional[list[Arm]] = None) -> str:
    families = sorted({(c.model, c.task, c.family_size) for c in claims})
    sizes = "; ".join(f"{TASK_DISPLAY.get(t, t)} ({m}): {k}" for m, t, k in families)
    lines = ["# The paper's claims on this study", "", *interim_banner(arms or []),
             "Each verdict comes from paired differences over seeds (same seed in both arms), oriented so that a "
             "positive difference is the paper's direction: *supported* when the 95 % t interval lies above 0 "
             "(two-sided paired t test, p < 0.05), *contradicted* when it lies below 0, *inconclusive* otherwise, "
             "including fewer than two paired seeds and missing arms (*inconclusive (no records)*). Paired differences "
             "that are all equal (s = 0) have no t interval: their p is the exact sign-flip test's, which cannot go "
             "below 2 / 2^n two-sided (0.25 for 3 seeds). That bound is the sign-flip test's, not the smallest p 3 "
             "seeds can give: differences that are not all equal take the t test's p, which can be far smaller "
             "((5, 5, 6)/81 gives p ≈ 0.004 where (5, 5, 5)/81 gives 0.25), so under this rule more consistent "
             "evidence can earn a weaker verdict. Scores are each "
             "task's first metric (ROUGE-1 ×100 for pydoc, pass@1 for humaneval_split, exact match % for "
             "wordnet_revdict).", "",
             f"Multiplicity: the comparisons behind the verdicts of one task are one family, Holm-adjusted "
             f"(step-down, family-wise 5 %); the verdict with Holm's p values is beside the raw one. Comparisons "
             f"per family: {sizes or 'none'}.", "",
             f"Detectable: the smallest true difference the achieved seeds would find with {POWER:.0%} power in the "
             f"same two-sided 5 % paired t test (unadjusted), given the observed s.d. of the differences "
             f"(noncentral t). A difference smaller than that is not ruled out by an inconclusive verdict.", "",
             f"Claim 5 is tested in the loss reading (alpha_mode=loss, α 0.1 against α 0): under the update "
             f"reading α = 0 is Hi-ZFO with ZO off, which claim 3 tests. Claim 7's stability is an equivalence test "
             f"(TOST at 90 %) with the margin δ = {margin:g} × the r = 0.1 mean, fixed before the study ran.", "",
             _md_row(["claim", "task", "comparisons: mean [CI] n, p, p_Holm, detectable", "verdict", "Holm verdict",
                      "note"]),
             _md_row(["---"] * 6)]
    for claim in claims:
        shown = "<br>".join(_comparison_cell(c) for c in claim.comparisons) or "–"
        lines.append(_md_row([claim.text, f"{TASK_DISPLAY.get(claim.task, claim.task)} ({claim.model})", shown,
                              f"**{claim.verdict}**", f"**{claim.holm_verdict}**", claim.note or ""]))
    lines += ["", "## Criteria", ""]
    seen = set()
    for claim in claims:
        if claim.text not in seen:
            seen.add(claim.text)
            lines.append(f"- {claim.text}: {claim.criterion}.")
    return "\n".join(lines) + "\n"


# -- plots -----------------------------------------------------------------------------------------------------
def read_curves(frame: pd.DataFrame) -> dict[str, dict]:
    """path -> record["curve"] for the records that have one."""
    curves = {}
    for path in frame["path"]:
        try:
            curve = json.loads(Path(path).read_text()).get("curve")
        except (OSError, ValueError):
            continue
        if isinstance(curve, dict) and curve.get("train_loss"):
            curves[path] = curve
    return curves


def _band(series: list[dict[float, float]]) -> tuple[list[float], list[float], list[float], list[float]]:
    """x, mean, low, high over the seeds' curves at the x every seed has (low = high = mean for one seed)."""
    xs = sorted(set.intersection(*(set(s) for s in series))) if series else []
    mean, low, high = [], [], []
    for x in xs:
        iv = t_interval([s[x] for s in series])
        mean.append(iv.mean)
        low.append(iv.lo if iv.lo is not None else iv.mean)
        high.append(iv.hi if iv.hi is not None else iv.mean)
    return xs, mean, low, high


def plot_curves(arms: list[Arm], curves: dict[str, dict], metric: str, out: Path, stem: str,
                notes: list[str]) -> list[Path]:
    """Learning curves against the step, mean over seeds with its 95 % band, one line per arm: the training loss,
    the epoch-end evaluation loss, and the epoch-end ``metric`` where the records hold it (hizfo.run.records.Curve)."""
    def eval_series(path: str, key: str) -> dict[float, float]:
        points = {}
        for entry in curves[path].get("eval") or []:
            value = entry.get(key) if key == "eval_loss" else (entry.get("metrics") or {}).get(key)
            if value is not None:
                points[float(entry["step"])] = float(value)
        return points

    def draw(ax, series: list[dict[float, float]], colour, label: Optional[str] = None, marker: Optional[str] = None):
        xs, mean, low, high = _band(series)
        ax.plot(xs, mean, color=colour, label=label, marker=marker)
        ax.fill_between(xs, low, high, color=colour, alpha=0.2, linewidth=0)

    with_curve = {a.label: [p for p in a.rows["path"] if p in curves] for a in arms}
    missing = [f"{a.label} ({len(a.rows) - len(with_curve[a.label])} of {len(a.rows)})" for a in arms
               if len(with_curve[a.label]) < len(a.rows)]
    if missing:
        notes.append(f"{stem}: records without a curve (record['curve']) left out: {', '.join(missing)}")
    drawn = [a for a in arms if with_curve[a.label]]
    if not drawn:
        return []
    panels = [("train loss", None), ("eval loss (teacher-forced)", "eval_loss")]
    if any(eval_series(p, metric) for a in drawn for p in with_curve[a.label]):
        panels.append((f"eval {metric}", metric))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), constrained_layout=True)
    colours = plt.get_cmap("tab10" if len(drawn) <= 10 else "tab20").colors
    for index, arm in enumerate(drawn):
        paths, colour = with_curve[arm.label], colours[index % len(colours)]
        draw(axes[0], [{float(s): float(v) for s, v in curves[p]["train_loss"]} for p in paths], colour,
             label=f"{arm.label} (n={len(paths)})")
        for ax, (_, key) in zip(axes[1:], panels[1:]):
            series = [eval_series(p, key) for p in paths]
            if all(series):
                draw(ax, series, colour, marker="o")
    for ax, (title, key) in zip(axes, panels):
        ax.set(xlabel="step", ylabel=title, title=f"{title}{'' if key is None else ' at epoch ends'}")
    figure.suptitle("mean over seeds, 95 % band")
    figure.legend(loc="outside right upper", fontsize="small", frameon=False)
    return save_figure(figure, out, stem)


def plot_scores(arms: list[Arm], metric: str, out: Path, stem: str) -> list[Path]:
    """Each arm's mean score with its 95 % interval (a bare point where an arm has one seed)."""
    column = f"metric.{metric}"
    shown = [(a, a.interval(column)) for a in arms if a.interval(column).mean is not None]
    if not shown:
        return []
    figure, ax = plt.subplots(figsize=(7, 0.35 * len(shown) + 1.2), constrained_layout=True)
    for y, (arm, iv) in enumerate(shown):
        err = None if iv.half is None else [[iv.half], [iv.half]]
        ax.errorbar([iv.mean], [y], xerr=err, fmt="o" if err else "x", color="C0" if err else "C3", capsize=3)
    ax.set_yticks(range(len(shown)), [f"{a.label} (n={iv.n})" for a, iv in shown])
    ax.invert_yaxis()
    ax.set(xlabel=f"{metric} (mean ± 95 % CI; × = one seed, no interval)", title=f"{shown[0][0].task}: arms")
    return save_figure(figure, out, stem)


def common_seeds(seed_sets: list[set[int]]) -> set[int]:
    """The seeds every set of two or more seeds has; every seed there is when no set has two, or when those sets
    share fewer than two seeds (then each point keeps its own seeds: nothing shared is left to compare on)."""
    several = [seeds for seeds in seed_sets if len(seeds) > 1]
    shared = set.intersection(*several) if several else set()
    return shared if len(shared) > 1 else set().union(*seed_sets)


def seed_list(seeds: set[int]) -> str:
    ordered = sorted(seeds)
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}–{ordered[-1]}"
    return ", ".join(map(str, ordered))


def sweep_points(sweep: dict[float, Arm], column: str) -> tuple[set[int], dict[float, Interval], list[float]]:
    """One sweep's points over the seeds its points share (common_seeds): the seeds, each value's interval, and
    the values that have one seed only (kept as they are)."""
    values = {x: arm.values(column) for x, arm in sweep.items()}
    shared = common_seeds([set(v) for v in values.values()])
    intervals = {x: t_interval([v[s] for s in sorted(set(v) & shared)] if len(v) > 1 else list(v.values()))
                 for x, v in values.items()}
    return shared, intervals, [x for x, v in values.items() if len(v) == 1]


def plot_sweeps(arms: list[Arm], model: str, task: str, metric: str, out: Path, stem: str) -> list[Path]:
    """Mean ± 95 % CI against ρ, r and α, one line per reading of α.

    Each line's points use the seeds that all its points with two or more seeds share (a point with one seed keeps
    it, drawn hollow): the default arm has more seeds than the sweep arms, and a mean over other seeds would show
    seed-to-seed differences as an effect of the swept value. The legend names the seeds."""
    column = f"metric.{metric}"
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    drawn = False
    for ax, name in zip(axes, SWEEP_KEYS):
        any_line = False
        for method in HIZFO_READINGS:
            sweep = sweep_arms(arms, model, task, method, name)
            if len(sweep) < 2:
                continue
            shared, ivs, single = sweep_points(sweep, column)
            xs = [x for x in ivs if ivs[x].mean is not None]
            line = ax.errorbar(xs, [ivs[x].mean for x in xs], yerr=[ivs[x].half or 0.0 for x in xs], marker="o",
                               capsize=3, label=f"{METHOD_DISPLAY.get(method, method)} (seeds {seed_list(shared)})")
            single = [x for x in single if x in xs]
            if single:
                ax.plot(single, [ivs[x].mean for x in single], "o", markerfacecolor="white", zorder=4,
                        color=line.lines[0].get_color(),
                        label=f"one seed: {SWEEP_SYMBOL[name]} = {', '.join(f'{x:g}' for x in single)}")
            any_line = drawn = True
        ax.set(xlabel=SWEEP_SYMBOL[name], ylabel=f"{metric} (mean ± 95 % CI)")
        if any_line:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no sweep records", ha="center", va="center", transform=ax.transAxes)
    if not drawn:
        plt.close(figure)
        return []
    figure.suptitle(f"{task}: sweeps")
    return save_figure(figure, out, stem)

