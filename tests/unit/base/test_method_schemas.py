"""Method value checks live in the schema dataclasses (hizfo/config.py, hizfo/registry.py: ``__post_init__``, the
enumerated values as ``Literal`` aliases), torch-free, so a config is checked wherever it is built: a run, analysis,
a benchmark. A method's constructor adds only checks that need the model; the scan below fails on a new one."""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import fields

import pytest

from hizfo.errors import ConfigError
from hizfo.registry import METHODS
from tests.conftest import ROOT

# (method, bad values, the start of the one line it gives); the messages the run's tests assert too
BAD = [
    ("hizfo", {"rho": 0.0}, "method.rho: must be in (0, 1], got 0.0"),
    ("hizfo", {"eps": 0.0}, "method.eps: must be > 0, got 0.0"),
    ("hizfo", {"alpha": -0.1}, "method.alpha: must be >= 0, got -0.1"),
    ("hizfo", {"lr_ratio": -0.1}, "method.lr_ratio: must be a finite number >= 0, got -0.1"),
    ("hizfo", {"alpha_mode": "both"}, "method.alpha_mode: 'both' is not one of update, loss"),
    ("hizfo", {"zo_update": "sometimes"}, "method.zo_update: 'sometimes' is not one of estimate, random_direction, "),
    ("hizfo", {"zo_optimizer": "lion"}, "method.zo_optimizer: 'lion' is not one of sgd, adamw"),
    ("hizfo", {"zo_scope": "bogus"}, "method.zo_scope: 'bogus' is not one of all, below"),
    ("hizfo", {"buckets": 0}, "method.buckets: must be >= 1"),
    ("full_ft", {"epochs": 0}, "method.epochs: must be >= 1, got 0"),
    ("full_ft", {"lr": -1.0}, "method.lr: must be a finite number >= 0"),
    ("full_ft", {"schedule": "cosine"}, "method.schedule: 'cosine' is not one of linear, constant"),
    ("full_ft", {"grad_clip": 0.0}, "method.grad_clip: must be a finite number > 0 (the gradient-norm cap) or null"),
    ("full_ft", {"weight_decay": -1.0}, "method.weight_decay: must be >= 0"),
    ("ft_top2", {"top_blocks": 0}, "method.top_blocks: must be >= 1, got 0"),
    ("lora", {"rank": 0}, "method.rank: must be >= 1, got 0"),
    ("lora", {"lora_dropout": 1.0}, "method.lora_dropout: must be in [0, 1), got 1.0"),
    ("lora", {"target_modules": []}, "method.target_modules: empty list (use null for the model's defaults)"),
    ("prefix", {"num_virtual_tokens": 0}, "method.num_virtual_tokens: the prefix length must be >= 1, got 0"),
    ("prefix", {"encoder_hidden_size": 0}, "method.encoder_hidden_size: must be >= 1 or null, got 0"),
    ("greentrainer", {"interval": 0}, "method.interval: must be >= 1, got 0"),
    ("greentrainer", {"rho": 1.5}, "method.rho: must be in (0, 1], got 1.5"),
    ("mezo", {"eps": 0.0}, "method.eps: must be > 0, got 0.0"),
    ("mezo", {"max_steps": -1}, "method.max_steps: must be >= 0 (0: evaluation only) or null, got -1"),
    ("bilevel_zofo", {"lr": 1e-3}, "method.lr: Bilevel-ZOFO takes its rates from method.upper_lr"),
    ("bilevel_zofo", {"lower_steps": 0}, "method.lower_steps: must be >= 1, got 0"),
    ("bilevel_zofo", {"lam": -1.0}, "method.lam: must be >= 0, got -1.0"),
    ("bilevel_zofo", {"rank": 0}, "method.rank: must be >= 1, got 0"),
    ("zero_shot", {"max_steps": 5}, "method.max_steps: zero_shot trains nothing and needs 0, got 5"),
]
# checks a constructor still makes, and why: (path, key)
CONSTRUCTOR_CHECKS: dict[tuple[str, str], str] = {
    ("baselines/ft_top2.py", "top_blocks"): "the model's depth caps it, known only in setup",
    ("hizfo/core/hybrid.py", "zo_optimizer"): "adamw with bf16 weights needs the run's precision",
}
SCHEMA_KEYS = {f.name for cls in METHODS.values() for f in fields(cls)} - {"_target_", "name"}


@pytest.mark.parametrize("method,values,message", BAD, ids=[f"{m}-{next(iter(v))}" for m, v, _ in BAD])
def test_a_schema_refuses_a_bad_value_in_one_line_naming_the_key(method, values, message):
    with pytest.raises(ConfigError) as caught:
        METHODS[method](**values)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.subprocess
def test_every_schemas_defaults_pass_and_the_checks_load_no_torch():
    code = ("import sys; from hizfo.registry import METHODS, HiZFOConfig; [cls() for cls in METHODS.values()]\n"
            "try:\n    HiZFOConfig(rho=2.0)\nexcept ValueError as e:\n    print(e)\n"
            "print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == ["method.rho: must be in (0, 1], got 2.0", "[]"], out.stderr


def test_a_constructor_refuses_through_its_schema():
    from hizfo.core.hybrid import HiZFO
    with pytest.raises(ConfigError, match=r"^method\.alpha_mode: 'both' is not one of update, loss$"):
        HiZFO(alpha_mode="both")


def method_checks(source: str) -> list[str]:
    """The schema keys a ``raise ConfigError("method.<key>: ...")`` in ``source`` checks."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            first = node.exc.args[0]
            text = first.values[0] if isinstance(first, ast.JoinedStr) and first.values else first
            if isinstance(text, ast.Constant) and isinstance(text.value, str) and text.value.startswith("method."):
                key = text.value[len("method."):].split(":")[0].split(" ")[0]
                if key in SCHEMA_KEYS:
                    found.append(key)
    return found


def test_the_scan_finds_a_check_in_a_constructor():
    source = 'def f(c):\n    if c.eps <= 0:\n        raise ConfigError(f"method.eps: must be > 0, got {c.eps}")\n'
    assert method_checks(source) == ["eps"]
    assert method_checks('raise ConfigError("method: peft refused it")\n') == []


def test_method_value_checks_live_in_the_schemas():
    found = {(str(p.relative_to(ROOT)), key) for folder in ("baselines", "hizfo/core", "hizfo/run")
             for p in sorted((ROOT / folder).rglob("*.py")) for key in method_checks(p.read_text())}
    assert found - set(CONSTRUCTOR_CHECKS) == set(), "move these checks into the method's schema __post_init__"
    assert set(CONSTRUCTOR_CHECKS) - found == set(), "gone: remove them from CONSTRUCTOR_CHECKS"
