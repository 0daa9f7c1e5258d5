"""Precision settings refused before a load (a bad value, bf16 on a CPU without it) and the dtype the starting weights
are read and kept in (model.dtype against precision)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from hizfo.errors import ConfigError
from hizfo.core.models import load_model
from hizfo.core.precision import check_precision
from tests.unit.core.test_precision import CPU
from tests.conftest import ROOT, compose


# ---------------------------------------------------------------------------------------------------
# bad input


def test_bad_precision_values_are_one_clear_error():
    with pytest.raises(ConfigError, match=r"precision: 'fp16' is not one of fp32, bf16-mixed, bf16"):
        check_precision("fp16", CPU)
    if not torch.cuda.is_available():                    # a device without bf16 (here: no CUDA at all)
        with pytest.raises(ConfigError, match=r"precision: bf16-mixed needs bf16 support"):
            check_precision("bf16-mixed", torch.device("cuda"))
    check_precision("bf16", CPU)


@pytest.mark.subprocess
@pytest.mark.slow
def test_run_py_refuses_a_bad_precision_with_exit_2_before_loading(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, "run.py", "precision=fp8", "logger=none", f"results_dir={tmp_path}",
                          f"hydra.run.dir={tmp_path}/hydra"], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: precision: 'fp8' is not one of fp32, bf16-mixed, bf16"], out.stderr[-2000:]
    assert not list(tmp_path.rglob("*.json"))            # no record: it stopped before the model and the run


def test_bf16_on_a_cpu_without_native_bf16_is_refused_in_one_line(monkeypatch, tmp_path):
    """precision=bf16-mixed on a CPU whose flags lack avx512_bf16 / amx_bf16 / bf16: one ConfigError line, unless
    HIZFO_ALLOW_EMULATED_BF16=1; the flags are read from /proc/cpuinfo's ``flags`` (x86) or ``Features`` (Arm)."""
    from hizfo.core import precision
    from hizfo.errors import ConfigError
    x86 = tmp_path / "cpuinfo"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert precision.cpu_flags(x86) == {"fpu", "sse", "avx2", "avx512f", "avx512bw"}
    assert not precision.cpu_has_native_bf16(precision.cpu_flags(x86))
    assert precision.cpu_has_native_bf16({"avx512f", "avx512_bf16"}) and precision.cpu_has_native_bf16({"bf16"})
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda flags=None: False)
    monkeypatch.delenv(precision.ALLOW_EMULATED_BF16, raising=False)
    with pytest.raises(ConfigError) as refused:
        precision.check_precision("bf16-mixed", torch.device("cpu"))
    assert "\n" not in str(refused.value) and "precision=fp32" in str(refused.value)
    precision.check_precision("fp32", torch.device("cpu"))                     # fp32 needs nothing
    monkeypatch.setenv(precision.ALLOW_EMULATED_BF16, "1")
    precision.check_precision("bf16-mixed", torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------
# the dtype the starting weights are read in


def _weights(name: str = "tiny-opt", precision=None, dtype: str = "float32") -> dict[str, torch.Tensor]:
    cfg = compose([f"model={name}", f"model.dtype={dtype}"])
    kwargs = OmegaConf.to_container(cfg.model, resolve=True)
    kwargs.pop("_target_")
    model = load_model(**kwargs, seed=0, precision=precision).model
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_model_dtype_is_the_precision_the_starting_weights_are_taken_at():
    full = _weights(precision="fp32", dtype="float32")
    rounded = _weights(precision="fp32", dtype="bfloat16")      # read as bf16, trained in fp32 masters
    assert all(w.dtype == torch.float32 for w in rounded.values())
    assert all(torch.equal(rounded[n], full[n].bfloat16().float()) for n in full)
    assert any(not torch.equal(rounded[n], full[n]) for n in full)       # the key changed the starting point
    in_bf16 = _weights(precision="bf16", dtype="float32")       # trained in bf16: the fp32 init rounded once
    assert all(torch.equal(in_bf16[n], full[n].bfloat16()) for n in full)
    as_given = _weights(precision=None, dtype="bfloat16")       # no precision: the weights stay in model.dtype
    assert all(w.dtype == torch.bfloat16 for w in as_given.values())


def test_weights_are_read_in_the_narrower_dtype_and_qwen2_7b_is_read_in_bf16():
    from hizfo.core.models import load_dtype
    from hizfo.core.precision import weight_dtype
    assert load_dtype(torch.float32, torch.bfloat16) == torch.bfloat16    # no fp32 copy of a model trained in bf16
    assert load_dtype(torch.bfloat16, torch.float32) == torch.bfloat16    # exact values, then fp32 masters
    assert load_dtype(torch.float16, torch.bfloat16) == torch.float16     # fp16's values, rounded to bf16 once
    cfg = compose(["model=qwen2-7b", "precision=bf16-mixed"])            # Table 2's model and precision
    assert cfg.model.dtype == "bfloat16"
    assert load_dtype(getattr(torch, cfg.model.dtype), weight_dtype(cfg.precision)) == torch.bfloat16
