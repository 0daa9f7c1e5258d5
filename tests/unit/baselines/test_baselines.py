"""MeZO, LoRA, Prefix-Tuning and zero-shot on tiny models: they learn, count truthfully; every new method composes
and refuses bad input (Bilevel-ZOFO's steps: tests/unit/baselines/test_baselines_bilevel.py)."""
from __future__ import annotations

import statistics
from typing import Any

import pytest
import torch
from hydra.utils import instantiate

from conftest import compose, tiny
from hizfo.errors import ConfigError
from hizfo.run.batching import BatchStream, encode_split
from hizfo.run.loop import LoopOptions, LoopResult, train_and_evaluate
from hizfo.run.meters import Meters
from hizfo.core.methods import TrainContext, causal_lm_loss, check_common, unique_named_parameters
from hizfo.core.zo import noise_like

NEW_METHODS = ("mezo", "lora", "prefix", "bilevel_zofo", "zero_shot")


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_task(n_train: int = 800, n_eval: int = 4):
    cfg = compose([f"task.options.n_train={n_train}", f"task.options.n_eval={n_eval}",
                   "task.generation.max_new_tokens=4"])
    return instantiate(cfg.task, _convert_="all")


def method_cfg(name: str, **values: Any):
    """The composed method config (its yaml and the toy tuning file) with ``values`` overridden."""
    overrides = [f"method={name}"] + [f"method.{k}={'null' if v is None else v}" for k, v in values.items()]
    return compose(overrides).method


def build(cfg) -> Any:
    return instantiate(cfg, _convert_="all")


def run_loop(name: str, model: str = "tiny-opt", n_train: int = 800, loaded=None, **values: Any
             ) -> tuple[Any, LoopResult, Meters, Any]:
    """Train ``name`` in the shared loop and evaluate (4 examples); returns method, result, meters, loaded."""
    cfg = method_cfg(name, **values)
    method = build(cfg)
    loaded = loaded or tiny(model)
    meters = Meters()
    result = train_and_evaluate(method, cfg, loaded, toy_task(n_train), LoopOptions(torch.device("cpu"), seed=0),
                                meters)
    return method, result, meters, loaded


def make_context(loaded, task, total_steps: int = 10) -> TrainContext:
    """The context the loop would build (same streams, train_dropout off), for driving a method step by step."""
    device = torch.device("cpu")
    loaded.model.train(False)
    pad = loaded.tokenizer.pad_token_id
    train_examples, dev_examples = task.train_dev_split()
    train = BatchStream(encode_split(task, loaded, train_examples), task.cfg.batch_size, pad, 0, device)
    dev = BatchStream(encode_split(task, loaded, dev_examples), task.cfg.batch_size, pad, 7, device)
    return TrainContext(loaded=loaded, task=task, device=device, total_steps=total_steps,
                        steps_per_epoch=len(train), zo_seeds=torch.Generator().manual_seed(424242),
                        train_batches=lambda: train.endless(salt=101), dev_batches=lambda: dev.endless(salt=202),
                        n_train=len(train_examples), n_dev=len(dev_examples))


def losses(result: LoopResult) -> list[float]:
    return [row["train/loss"] for row in result.history]


def assert_clear_decrease(values: list[float], window: int, min_drop: float) -> None:
    """Mean of the last ``window`` losses below the first ``window``'s by ``min_drop`` and by 6 standard errors."""
    first, last = values[:window], values[-window:]
    drop = statistics.mean(first) - statistics.mean(last)
    stderr = ((statistics.pvariance(first) + statistics.pvariance(last)) / window) ** 0.5
    assert drop > min_drop and drop > 6 * stderr, (
        f"loss {statistics.mean(first):.3f} -> {statistics.mean(last):.3f} (drop {drop:.3f}, stderr {stderr:.3f})")


# ---------------------------------------------------------------------------------------------------
# configs


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_METHODS)
def test_each_method_composes_and_builds_from_its_yaml(name):
    cfg = compose([f"method={name}"])
    method = build(cfg.method)
    assert cfg.method.name == name
    assert type(method).__module__ == f"baselines.{name}"


def test_method_schemas_refuse_a_typo_at_composition():
    with pytest.raises(Exception, match="epz"):
        compose(["method=mezo", "method.epz=1e-3"])


def test_bilevel_lr_mirrors_upper_lr_and_refuses_a_different_one():
    assert compose(["method=bilevel_zofo", "method.upper_lr=0.003"]).method.lr == pytest.approx(0.003)
    from baselines.bilevel_zofo import BilevelZOFO
    with pytest.raises(ConfigError, match="method.lr"):
        BilevelZOFO(name="bilevel_zofo", lr=1e-3, upper_lr=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_METHODS)
def test_toy_tuning_file_applies(name):
    from omegaconf import OmegaConf
    from conftest import ROOT
    tuning = OmegaConf.load(ROOT / "conf" / "tuning" / f"toy_{name}.yaml").method
    composed = compose([f"method={name}"]).method          # task=toy is the default
    for key, value in tuning.items():
        assert composed[key] == value, key


# ---------------------------------------------------------------------------------------------------
# MeZO


def only_trainable(loaded, prefix: str) -> None:
    for name, p in loaded.model.named_parameters():
        p.requires_grad_(name.startswith(prefix))


@pytest.mark.slow
def test_mezo_lowers_the_training_loss_on_few_trainable_tensors():
    # 256 ZO coordinates (the final layer norm): SPSA's variance grows with the dimension, so a few hundred
    # steps make clear progress here; the full-model run lives in conf/tuning/toy_mezo.yaml
    loaded = tiny("tiny-opt")
    only_trainable(loaded, "model.decoder.final_layer_norm.")
    method, result, meters, _ = run_loop("mezo", n_train=1600, loaded=loaded, lr=1.0, max_steps=300)
    assert_clear_decrease(losses(result), window=50, min_drop=0.3)
    assert meters.n_forward == 2 * 300 and meters.n_backward == 0
    assert len(result.zo_seeds) == 300 and len(set(result.zo_seeds)) == 300
    assert result.summary.partition["zo_params"] == 256 and result.summary.trainable_params == 256


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-opt", "tiny-qwen2", "tiny-bloom"])
def test_mezo_step_with_zero_lr_restores_the_parameters_within_rounding(model):
    loaded = tiny(model)
    method = build(method_cfg("mezo", lr=0.0, eps=1e-3))
    method.setup(make_context(loaded, toy_task()))
    before = [p.detach().clone() for _, p in unique_named_parameters(loaded.model)]
    batch = next(make_context(loaded, toy_task()).train_batches())
    result = method.train_step(batch)
    z = noise_like(before, int(result.logs["zo_seed"]))
    tiny_float = torch.finfo(torch.float32).eps
    for (name, p), p0, zk in zip(unique_named_parameters(loaded.model), before, z):
        bound = 4 * tiny_float * (p0.abs() + 2e-3 * zk.abs()) + 1e-30   # three rounded adds of ±εz
        assert ((p.detach() - p0).abs() <= bound).all(), name
    assert result.n_forward == 2 and result.n_backward == 0


@pytest.mark.slow
def test_mezo_step_is_spsa_with_decay_after_the_fused_update(monkeypatch):
    import hizfo.core.zo as zo                                 # MeZO's passes go through ZOParams → zo.perturb_
    passes = []
    real = zo.perturb_
    monkeypatch.setattr(zo, "perturb_", lambda params, seed, scale: (passes.append(scale), real(params, seed, scale)))
    loaded = tiny("tiny-opt")
    lr, eps, wd = 1e-3, 1e-3, 0.1
    method = build(method_cfg("mezo", lr=lr, eps=eps, weight_decay=wd))
    ctx = make_context(loaded, toy_task())
    method.setup(ctx)
    named = unique_named_parameters(loaded.model)
    before = [p.detach().clone() for _, p in named]
    batch = next(ctx.train_batches())
    # the two losses MeZO must see: L(θ ± εz)
    seed_probe = torch.Generator().manual_seed(424242)
    from hizfo.core.zo import draw_seed, perturb_
    seed = draw_seed(seed_probe)
    params = [p for _, p in named]
    with torch.inference_mode():
        perturb_(params, seed, eps)
        loss_plus = float(causal_lm_loss(loaded.model.eval(), batch))
        perturb_(params, seed, -2 * eps)
        loss_minus = float(causal_lm_loss(loaded.model, batch))
        perturb_(params, seed, eps)
    for p, p0 in zip(params, before):
        p.data.copy_(p0)
    passes.clear()                                        # only MeZO's own passes from here
    result = method.train_step(batch)
    assert int(result.logs["zo_seed"]) == seed
    g = (loss_plus - loss_minus) / (2 * eps)
    assert result.logs["projected_grad"] == pytest.approx(g, rel=1e-4, abs=1e-3)
    assert result.loss == pytest.approx((loss_plus + loss_minus) / 2, rel=1e-6)
    assert len(passes) == 3 and passes[:2] == [eps, -2 * eps]            # three noise draws per step, fused last
    z = noise_like(before, seed)
    g = result.logs["projected_grad"]
    for (name, p), p0, zk in zip(named, before, z):
        decay = 1.0 if (p.ndim < 2 or "norm" in name or "bias" in name) else 1.0 - lr * wd
        expected = decay * (p0 - lr * g * zk)        # θ1 = (1 − ηλ)(θ0 − ηgz): MeZO's update up to η²λgz
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------------
# LoRA and Prefix-Tuning


LORA_COUNTS = {  # r·(in + out) per adapted linear, 2 blocks, r = 8
    "tiny-opt": 2 * 2 * 8 * (128 + 128),            # q_proj, v_proj: 128 -> 128
    "tiny-qwen2": 2 * 8 * ((128 + 128) + (128 + 64)),  # q_proj 128 -> 128, v_proj 128 -> 64 (2 k/v heads)
    "tiny-bloom": 2 * 8 * (128 + 384),              # query_key_value: 128 -> 384
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(LORA_COUNTS))
def test_lora_trainable_count_matches_peft_and_the_formula(model):
    loaded = tiny(model)
    method = build(method_cfg("lora"))
    method.setup(make_context(loaded, toy_task()))
    peft_trainable, peft_total = method.peft_model.get_nb_trainable_parameters()
    summary = method.summary()
    assert summary.trainable_params == peft_trainable == LORA_COUNTS[model]
    assert summary.total_params == peft_total
    assert sum(p.numel() for p in method.trainer.params) == peft_trainable
    assert all("lora_" in n for n, p in method.peft_model.named_parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize("model,kv_width", [("tiny-opt", 128), ("tiny-qwen2", 64), ("tiny-bloom", 128)])
def test_prefix_trainable_count_matches_peft_and_the_formula(model, kv_width):
    loaded = tiny(model)
    method = build(method_cfg("prefix", num_virtual_tokens=7))
    method.setup(make_context(loaded, toy_task()))
    peft_trainable, _ = method.peft_model.get_nb_trainable_parameters()
    assert method.summary().trainable_params == peft_trainable == 7 * 2 * 2 * kv_width   # T·layers·(k, v)·width


@pytest.mark.slow
def test_lora_lowers_the_loss_and_evaluates_through_the_adapter():
    from peft import PeftModel
    method, result, meters, loaded = run_loop("lora", lr=1e-2, max_steps=60)
    assert_clear_decrease(losses(result), window=10, min_drop=0.3)
    assert meters.n_forward == meters.n_backward == 60
    assert isinstance(method.eval_model(), PeftModel)
    assert "rouge1" in result.metrics


@pytest.mark.slow
def test_prefix_lowers_the_loss_and_evaluates_through_the_adapter():
    from peft import PeftModel
    method, result, meters, _ = run_loop("prefix", lr=3e-2, max_steps=60, num_virtual_tokens=8)
    assert_clear_decrease(losses(result), window=10, min_drop=0.2)
    assert meters.n_forward == meters.n_backward == 60
    assert isinstance(method.eval_model(), PeftModel)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-opt", "tiny-qwen2", "tiny-bloom"])
def test_prefix_generation_with_left_padding_matches_each_prompt_alone(model):
    """A left-padded batch through the prefix model scores each next token as the prompt alone does."""
    from hizfo.tasks.base import encode_prompts
    loaded = tiny(model)
    method = build(method_cfg("prefix", num_virtual_tokens=5))
    task = toy_task()
    method.setup(make_context(loaded, task))
    peft_model = method.eval_model().eval()
    with torch.no_grad():
        for p in peft_model.prompt_encoder.parameters():
            p.normal_(0.0, 1.0)                    # a prefix that matters
    examples = task.examples("eval")[:3]
    examples[1].source = " ".join(examples[1].source.split()[:4])      # prompts of different lengths
    examples[2].source = " ".join(examples[2].source.split()[:1])

    def scores(rows):
        batch = encode_prompts(rows, loaded.tokenizer, 64)
        out = peft_model.generate(**batch, max_new_tokens=3, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True, pad_token_id=loaded.tokenizer.pad_token_id)
        return torch.stack(out.scores, 1)            # [B, new, V]

    batched = scores(examples)
    for row, example in enumerate(examples):
        torch.testing.assert_close(batched[row], scores([example])[0], rtol=1e-4, atol=1e-4)
    # and the first generated step equals the training-time forward at the prompt's last position
    alone = encode_prompts(examples[2:], loaded.tokenizer, 64)
    with torch.no_grad():
        forward_logits = peft_model(**alone).logits[0, -1]
    torch.testing.assert_close(scores(examples[2:])[0, 0], forward_logits, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------
# zero-shot


def test_zero_shot_trains_nothing_and_still_evaluates():
    loaded = tiny("tiny-opt")
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    method, result, meters, _ = run_loop("zero_shot", loaded=loaded)
    assert result.history == [] and meters.steps == 0
    assert meters.n_forward == 0 and meters.n_backward == 0
    assert set(result.metrics) >= {"rouge1", "rouge2", "rougeL"}
    assert result.summary.trainable_params == 0
    for n, p in loaded.model.named_parameters():
        assert torch.equal(p, before[n]), n


# ---------------------------------------------------------------------------------------------------
# bad input: a clear ConfigError naming the key, before any training step


@pytest.mark.slow
def test_lora_target_module_missing_from_the_model_is_refused_naming_the_key():
    loaded = tiny("tiny-bloom")
    method = build(method_cfg("lora", target_modules="[q_proj,v_proj]"))
    with pytest.raises(ConfigError, match=r"method\.target_modules: q_proj, v_proj matches no module"):
        method.setup(make_context(loaded, toy_task()))
    loaded = tiny("tiny-opt")
    loaded.lora_target_modules = ["query_key_value"]
    with pytest.raises(ConfigError, match=r"model\.lora_target_modules: query_key_value"):
        build(method_cfg("lora")).setup(make_context(loaded, toy_task()))


@pytest.mark.parametrize("name,values,key", [
    ("prefix", {"num_virtual_tokens": 0}, "method.num_virtual_tokens"),
    ("prefix", {"num_virtual_tokens": -3}, "method.num_virtual_tokens"),
    ("bilevel_zofo", {"lower_steps": 0}, "method.lower_steps"),
    ("bilevel_zofo", {"lam": -1.0}, "method.lam"),
    ("lora", {"rank": 0}, "method.rank"),
    ("lora", {"lora_dropout": 1.0}, "method.lora_dropout"),
    ("mezo", {"eps": 0.0}, "method.eps"),
    ("mezo", {"max_steps": -1}, "method.max_steps"),
    ("zero_shot", {"max_steps": 5}, "method.max_steps"),
])
def test_bad_values_are_refused_at_construction_naming_the_key(name, values, key):
    import importlib
    module = importlib.import_module(f"baselines.{name}")
    cls = {"mezo": "MeZO", "lora": "LoRA", "prefix": "PrefixTuning", "bilevel_zofo": "BilevelZOFO",
           "zero_shot": "ZeroShot"}[name]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        getattr(module, cls)(name=name, **values)


def test_max_steps_zero_is_allowed_for_every_method_and_negative_is_not():
    cfg = method_cfg("full_ft", max_steps=0)
    check_common(cfg)
    cfg.max_steps = -1
    with pytest.raises(ConfigError, match=r"method\.max_steps"):
        check_common(cfg)
