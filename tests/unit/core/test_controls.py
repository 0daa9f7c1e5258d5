"""The protocols and controls that make a comparison mean something.

α's two readings, the ZO-off and random-direction controls, one dropout setting for every method, GreenTrainer's
reference choice for summaries, and divergence detection.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose, tiny
from hizfo.core.hybrid import HiZFO, random_sign
from hizfo.run.loop import LoopOptions, train_and_evaluate
from hizfo.run.meters import Meters
from hizfo.core.methods import unique_named_parameters
from hizfo.tasks.base import Example
from tests.unit.run.test_foundation import SMALL, run_cli
from tests.unit.core.test_hizfo import context, toy_setup


pytestmark = pytest.mark.usefixtures("one_thread")


def hizfo_from_yaml(method: str = "hizfo", **values: Any) -> HiZFO:
    """A Hi-ZFO-family method from its yaml (no toy tuning), with ``values`` overridden."""
    cfg = compose([f"method={method}", "task=scitldr"]).method      # task=scitldr: no toy tuning file applies
    return instantiate(cfg, _convert_="all", **values)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unique_named_parameters(model)}


def train_steps(method: HiZFO, steps: int, seed: int = 0, model_seed: int = 0):
    """``steps`` Hi-ZFO steps on a fresh tiny OPT; returns (initial params, final params, method)."""
    _, loaded, task, stream = toy_setup(seed=model_seed)
    method.setup(context(loaded, task, stream, total_steps=steps, seed=seed))
    initial = snapshot(loaded.model)
    batches = stream.epoch(0)
    for _ in range(steps):
        method.train_step(next(batches))
    return initial, snapshot(loaded.model), method


# -- α's two readings and the ZO-off control ---------------------------------------------------------------------

@pytest.mark.slow
def test_update_reading_with_alpha_zero_is_bit_identical_to_the_zo_off_control():
    common = dict(lr=1e-3, rho=0.5)
    initial, update0, method = train_steps(hizfo_from_yaml("hizfo", alpha=0.0, alpha_mode="update", **common), 6)
    _, zo_off, control = train_steps(hizfo_from_yaml("hizfo_zo_off", **common), 6)
    assert method.partition.fo == control.partition.fo and method.partition.zo
    assert update0.keys() == zo_off.keys()
    assert all(torch.equal(update0[n], zo_off[n]) for n in update0)
    assert all(torch.equal(update0[n], initial[n]) for n in method.partition.zo)       # Θ_ZO never moved
    assert any(not torch.equal(update0[n], initial[n]) for n in method.partition.fo)   # Θ_FO did


def zo_displacement(method: HiZFO, seed: int = 0) -> tuple[torch.Tensor, HiZFO]:
    """Θ_ZO after one step minus before it, flattened (float64), with Θ_FO frozen (lr 0)."""
    initial, final, method = train_steps(method, 1, seed=seed)
    names = method.partition.zo
    return torch.cat([(final[n].double() - initial[n].double()).view(-1) for n in names]), method


@pytest.mark.slow
def test_update_reading_scales_the_zo_step_by_alpha():
    # η_ZO large enough that the step is far above fp32 rounding of the weights
    step_one, m1 = zo_displacement(hizfo_from_yaml(lr=0.0, zo_lr=1e-2, alpha=1.0, alpha_mode="update", rho=0.5))
    step_half, _ = zo_displacement(hizfo_from_yaml(lr=0.0, zo_lr=1e-2, alpha=0.5, alpha_mode="update", rho=0.5))
    assert step_one.norm() > 1e-3
    torch.testing.assert_close(step_half, 0.5 * step_one, rtol=0, atol=2e-6)


@pytest.mark.slow
def test_loss_reading_barely_moves_the_adamw_update():
    """docs/design.md's claim, checked: under AdamW, adding α·L_ZO to L_FO leaves Θ_FO's update almost unchanged."""
    def fo_update(alpha: float) -> torch.Tensor:
        initial, final, method = train_steps(hizfo_from_yaml(lr=1e-3, alpha=alpha, alpha_mode="loss", rho=0.5,
                                                             zo_lr=0.0), 4)
        return torch.cat([(final[n] - initial[n]).view(-1) for n in method.partition.fo])
    with_zo, without = fo_update(0.1), fo_update(0.0)
    cosine = float(torch.nn.functional.cosine_similarity(with_zo, without, dim=0))
    assert 0.99 < cosine < 1.0, cosine      # < 1: the α·L_ZO gradient did reach Θ_FO


@pytest.mark.slow
def test_random_direction_moves_by_the_same_norm_along_plus_or_minus_the_same_u():
    cosines = []
    for seed in range(8):
        values = dict(lr=0.0, zo_lr=1e-2, alpha=1.0, rho=0.5)
        estimate, _ = zo_displacement(hizfo_from_yaml("hizfo", **values), seed=seed)
        random_dir, _ = zo_displacement(hizfo_from_yaml("hizfo_random_dir", **values), seed=seed)
        torch.testing.assert_close(random_dir.norm(), estimate.norm(), rtol=1e-4, atol=0)
        cosines.append(float(torch.nn.functional.cosine_similarity(random_dir, estimate, dim=0)))
    assert all(abs(abs(c) - 1) < 1e-4 for c in cosines), cosines
    # the sign carries no information: on some seeds it points the other way from the estimate
    assert any(c < 0 for c in cosines) and any(c > 0 for c in cosines), cosines


def test_random_sign_is_a_fair_coin_of_the_seed():
    signs = [random_sign(seed) for seed in range(2000)]
    assert set(signs) == {1.0, -1.0}
    assert abs(sum(signs)) < 150                        # 2000 fair flips: |sum| < 150 has probability > 0.999


@pytest.mark.parametrize("key,value", [("alpha_mode", "both"), ("zo_update", "sometimes")])
def test_bad_hizfo_modes_name_the_key_and_the_allowed_values(key, value):
    from hizfo.errors import ConfigError
    with pytest.raises(ConfigError, match=rf"method\.{key}: '{value}' is not one of"):
        HiZFO(**{key: value})


# -- one dropout setting for every method ------------------------------------------------------------------------

TRAINED = ("full_ft", "ft_top2", "lora", "prefix", "greentrainer", "mezo", "bilevel_zofo", "hizfo", "hizfo_zo_off",
           "hizfo_random_dir")


@pytest.mark.slow
@pytest.mark.parametrize("train_dropout", [False, True])
@pytest.mark.parametrize("name", TRAINED)
def test_every_method_trains_in_the_mode_train_dropout_sets(name, train_dropout):
    cfg = compose([f"method={name}", "task.options.n_train=16", "task.options.n_eval=2", "task.batch_size=4",
                   "task.generation.max_new_tokens=2", "method.max_steps=3", "eval_before_training=false",
                   *(["method.lower_steps=1"] if name == "bilevel_zofo" else [])])
    method = instantiate(cfg.method, _convert_="all")
    loaded = tiny("tiny-opt")
    modes: list[bool] = []
    training = {"now": False}
    from torch._subclasses.fake_tensor import FakeTensor

    def record_mode(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if training["now"] and not isinstance(ids, FakeTensor):    # the cost model's shape trace is no forward
            modes.append(module.training)
    loaded.model.register_forward_pre_hook(record_mode, with_kwargs=True)
    for hook_name in ("setup", "train_step"):          # every training forward, profiling included
        inner = getattr(method, hook_name)

        def wrapped(*args, _inner=inner):
            training["now"] = True
            try:
                return _inner(*args)
            finally:
                training["now"] = False
        setattr(method, hook_name, wrapped)
    task = instantiate(cfg.task, _convert_="all")
    train_and_evaluate(method, cfg.method, loaded, task,
                       LoopOptions(torch.device("cpu"), seed=0, train_dropout=train_dropout), Meters())
    assert modes and set(modes) == {train_dropout}, (name, modes)


# -- GreenTrainer's evaluation protocol --------------------------------------------------------------------------

@pytest.mark.slow
def test_summaries_score_against_the_first_reference_by_default():
    prediction = "we propose a sparse attention method"
    example = Example(source="abstract", target="a new optimiser for transformers",
                      references=["a new optimiser for transformers", prediction])
    scores = {}
    for mode in ("first", "all"):
        cfg = compose(["task=scitldr", f"task.references={mode}"])
        scores[mode] = instantiate(cfg.task, _convert_="all").score([prediction], [example])["rouge1"]
    assert compose(["task=scitldr"]).task.references == "first"
    assert scores["first"] < 30 and scores["all"] == pytest.approx(100.0)


# GreenTrainer's evaluation settings, read from pittisl/GreenTrainer (commit 7b7a9fe): generation in
# decoder_lm/utils.py `generate_response` (summaries) and decoder_lm/train_qa.py `_runtime_evaluate` (QA): beam 4,
# repetition penalty 2.5, length penalty 1.0, early stopping, max_new_tokens=--max_output_length, no stop strings;
# --max_output_length from the run scripts: opt_scitldr.sh / bloom_scitldr.sh 64, opt_dialogsum.sh /
# bloom_dialogsum.sh 128, opt_webquestions.sh 64; QA scored by evaluate's exact_match on .strip()ped strings.
GREENTRAINER = {"scitldr": (64, "rouge"), "dialogsum": (128, "rouge"), "webquestions": (64, "exact")}


@pytest.mark.parametrize("name", sorted(GREENTRAINER))
def test_paper_nlp_tasks_evaluate_as_greentrainers_scripts_by_default(name):
    cfg = compose([f"task={name}"]).task
    generation = cfg.generation
    max_new_tokens, scorer = GREENTRAINER[name]
    assert cfg.protocol == "greentrainer"
    assert (generation.num_beams, generation.repetition_penalty, generation.length_penalty,
            generation.early_stopping, generation.max_new_tokens, list(generation.stop)) == \
        (4, 2.5, 1.0, True, max_new_tokens, [])
    task = instantiate(cfg, _convert_="all")
    assert task.postprocess("  a answer\nwith a second line  ") == "a answer\nwith a second line"   # no cut
    if scorer == "exact":
        assert task.protocol_settings()["answer_match"] == "exact"


@pytest.mark.slow
def test_normalized_protocol_keeps_the_projects_earlier_settings():
    expected = {"scitldr": (128, ["\n"]), "dialogsum": (128, ["\n"]), "webquestions": (32, ["</s>", "\n"])}
    for name, (max_new_tokens, stop) in expected.items():
        generation = compose([f"task={name}", "task.protocol=normalized"]).task.generation
        assert (generation.max_new_tokens, list(generation.stop)) == (max_new_tokens, stop)
    override = compose(["task=scitldr", "task.generation.max_new_tokens=7"]).task.generation   # overrides still win
    assert override.max_new_tokens == 7


def test_greentrainer_exact_match_differs_where_normalisation_changes_the_answer():
    pairs = [("The Beatles", "beatles"), ("paris.", "Paris"), ("  Oslo \n", "Oslo"), ("an apple", "apple"),
             ("Norway", "Norway")]
    references = [[gold, "other"] for _, gold in pairs]
    predictions = [p for p, _ in pairs]
    webq = {p: instantiate(compose(["task=webquestions", f"task.protocol={p}"]).task, _convert_="all")
            for p in ("greentrainer", "normalized")}
    from hizfo.tasks.base import Example
    examples = [Example(source="q", target=r[0], references=r) for r in references]
    # GreenTrainer: strip, then equality; only "  Oslo \n" and "Norway" match
    assert webq["greentrainer"].score(predictions, examples)["exact_match"] == pytest.approx(100 * 2 / 5)
    assert webq["normalized"].score(predictions, examples)["exact_match"] == pytest.approx(100.0)


# -- divergence and bad input ------------------------------------------------------------------------------------

@pytest.mark.subprocess
@pytest.mark.slow
def test_unknown_task_protocol_fails_in_one_line_before_the_model_loads(tmp_path):
    proc = run_cli("method=hizfo", f"results_dir={tmp_path}", "logger=none", "task=webquestions", "task.protocol=squad")
    assert proc.returncode == 2, proc.stderr[-1500:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "task.protocol: 'squad' is not one of greentrainer, normalized" in lines[0]
    assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("*.json"))


@pytest.mark.subprocess
@pytest.mark.slow
def test_mezo_with_a_huge_learning_rate_ends_failed_as_diverged(tmp_path):
    proc = run_cli("method=mezo", f"results_dir={tmp_path}", *SMALL, "method.lr=1e3", "method.max_steps=40",
                   "divergence_patience=3")
    assert proc.returncode != 0
    (path,) = tmp_path.rglob("seed0.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and "diverged" in record["error"], record["error"]
    assert f"step {record['failed_step']}" in record["error"]
    assert "diverged" in proc.stderr


def test_a_slowly_rising_loss_is_stopped_by_the_factor_and_patience():
    from hizfo.errors import TrainingDiverged
    from hizfo.run.divergence import DivergenceWatch
    watch = DivergenceWatch(factor=10.0, patience=3)
    for step, loss in enumerate([2.0, 5.0, 25.0, 30.0, 3.0, 21.0, 22.0]):   # a dip resets the count
        watch.check(step, loss)
    with pytest.raises(TrainingDiverged, match="step 7 stayed above 10 x the first loss"):
        watch.check(7, 40.0)
    off = DivergenceWatch(factor=0.0, patience=1)
    off.check(0, 1.0)
    off.check(1, 1e9)                                   # factor 0: only non-finite losses stop a run
    with pytest.raises(TrainingDiverged, match="diverged"):
        off.check(2, float("nan"))


def test_a_resumed_watch_stops_at_the_step_an_uninterrupted_one_stops():
    """A run resumed after step k replays its k losses (LoopState.losses) into a fresh watch: it keeps the first
    loss and the count of steps above, so it stops where the uninterrupted run would (a count restarted at 0 gave
    a resumed run up to `patience` more steps)."""
    from hizfo.errors import TrainingDiverged
    from hizfo.run.divergence import DivergenceWatch
    losses = [2.0, 3.0, 25.0, 30.0, 21.0, 22.0, 40.0]                  # above 20 from step 3: stops at step 7
    for k in range(len(losses)):
        watch = DivergenceWatch(factor=10.0, patience=5)
        watch.replay(losses[:k])
        assert watch.first_loss == (losses[0] if k else None)
        for step in range(k + 1, len(losses)):
            watch.check(step, losses[step - 1])
        with pytest.raises(TrainingDiverged, match="step 7 stayed above"):
            watch.check(7, losses[6])


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("override,key", [
    ("method.alpha_mode=both", "method.alpha_mode"),
    ("divergence_factor=-1", "divergence_factor"),
    ("task.references=best", "task.references"),
    ("task.protocol=greentrainer", "task.protocol"),        # toy has one protocol
])
def test_protocol_bad_input_fails_in_one_line(tmp_path, override, key):
    proc = run_cli("method=hizfo", f"results_dir={tmp_path}", *SMALL, override)
    assert proc.returncode == 2, proc.stderr[-1500:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and key in lines[0], proc.stderr[-1500:]
    assert not any(json.loads(p.read_text()).get("status") == "ok" for p in tmp_path.rglob("*.json"))
