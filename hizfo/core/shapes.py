"""A model's shape without its weights: the config a planner needs, and the model built on fake tensors.

Where a shape comes from, in order: ``model.arch`` (tiny models: the config in the yaml, with the vocabulary of the
tokenizer), ``model.path`` (a local folder's config.json), the local Hugging Face cache (``local_files_only``: never
a download), and last the table below (the published config.json of each model this project names, copied here so a
plan works on a machine that has never seen the model). Weights are never read: the model is built under
``FakeTensorMode`` (shapes and dtypes only, no memory), which is also how hizfo/core/costs.py traces it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from hizfo.errors import ConfigError

# config.json of the published checkpoints (huggingface.co/<hub_id>/blob/main/config.json)
_OPT = dict(family="opt", vocab_size=50272, max_position_embeddings=2048, do_layer_norm_before=True)
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "facebook/opt-125m": {**_OPT, "hidden_size": 768, "word_embed_proj_dim": 768, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "ffn_dim": 3072},
    "facebook/opt-350m": {**_OPT, "hidden_size": 1024, "word_embed_proj_dim": 512, "num_hidden_layers": 24,
                          "num_attention_heads": 16, "ffn_dim": 4096, "do_layer_norm_before": False},
    "facebook/opt-1.3b": {**_OPT, "hidden_size": 2048, "word_embed_proj_dim": 2048, "num_hidden_layers": 24,
                          "num_attention_heads": 32, "ffn_dim": 8192},
    "facebook/opt-2.7b": {**_OPT, "hidden_size": 2560, "word_embed_proj_dim": 2560, "num_hidden_layers": 32,
                          "num_attention_heads": 32, "ffn_dim": 10240},
    "facebook/opt-6.7b": {**_OPT, "hidden_size": 4096, "word_embed_proj_dim": 4096, "num_hidden_layers": 32,
                          "num_attention_heads": 32, "ffn_dim": 16384},
    "facebook/opt-13b": {**_OPT, "hidden_size": 5120, "word_embed_proj_dim": 5120, "num_hidden_layers": 40,
                         "num_attention_heads": 40, "ffn_dim": 20480},
    "bigscience/bloomz-3b": {"family": "bloom", "vocab_size": 250880, "hidden_size": 2560, "n_layer": 30,
                             "n_head": 32},
    "Qwen/Qwen2.5-3B-Instruct": {"family": "qwen2", "vocab_size": 151936, "hidden_size": 2048,
                                 "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                                 "num_key_value_heads": 2, "max_position_embeddings": 32768,
                                 "tie_word_embeddings": True},
    "Qwen/Qwen2-7B": {"family": "qwen2", "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
                      "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                      "max_position_embeddings": 131072, "tie_word_embeddings": False},
    "HuggingFaceTB/SmolLM2-135M-Instruct": {"family": "llama", "vocab_size": 49152, "hidden_size": 576,
                                            "intermediate_size": 1536, "num_hidden_layers": 30,
                                            "num_attention_heads": 9, "num_key_value_heads": 3,
                                            "max_position_embeddings": 8192, "tie_word_embeddings": True},
}
_CONFIG_CLASSES = {"opt": "OPTConfig", "bloom": "BloomConfig", "qwen2": "Qwen2Config", "llama": "LlamaConfig"}


@dataclass(frozen=True)
class ModelShape:
    """A model's family and transformers config kwargs, and where they were read."""
    name: str
    family: str
    kwargs: tuple[tuple[str, Any], ...]
    source: str

    def config(self) -> Any:
        import transformers
        config = getattr(transformers, _CONFIG_CLASSES[self.family])(**dict(self.kwargs))
        # what from_pretrained / from_config pick in this torch (BLOOM has no sdpa path: eager)
        config._attn_implementation = "eager" if self.family == "bloom" else "sdpa"
        return config


def _frozen(values: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in values.items()))


def _from_config_json(name: str, family: str, where: str, local_only: bool) -> Optional[ModelShape]:
    from transformers import AutoConfig
    try:
        config = AutoConfig.from_pretrained(where, local_files_only=local_only)
    except (OSError, ValueError):
        return None
    values = {k: v for k, v in config.to_diff_dict().items() if not k.startswith("_") and k not in
              ("architectures", "transformers_version", "torch_dtype", "dtype", "model_type", "auto_map")}
    return ModelShape(name, family, _frozen(values), f"config.json at {where}")


def model_shape(model_cfg: Any) -> ModelShape:
    """The shape of the model a ``conf/model/*.yaml`` names, without loading (or downloading) its weights."""
    name, family = str(model_cfg.get("name")), str(model_cfg.get("family"))
    if family not in _CONFIG_CLASSES:
        raise ConfigError(f"model.family: '{family}' is not one of {', '.join(_CONFIG_CLASSES)}")
    arch = model_cfg.get("arch")
    if arch is not None:
        if str(model_cfg.get("tokenizer", "word")) != "word":
            raise ConfigError(f"model.tokenizer: the planner knows only the word tokenizer's vocabulary for a model "
                              f"built from model.arch ('{name}')")
        from hizfo.core.tokenizer import build_word_tokenizer
        tok = build_word_tokenizer()
        values = {**dict(arch), "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                  "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
        return ModelShape(name, family, _frozen(values), "model.arch")
    path, hub_id = model_cfg.get("path"), model_cfg.get("hub_id")
    if path is not None:
        shape = _from_config_json(name, family, str(path), local_only=True)
        if shape is None:
            raise ConfigError(f"model.path: no config.json readable at '{path}' (model '{name}')")
        return shape
    if hub_id is not None:
        shape = _from_config_json(name, family, str(hub_id), local_only=True)
        if shape is not None:
            return shape
        if hub_id in KNOWN_SHAPES:
            values = {k: v for k, v in KNOWN_SHAPES[hub_id].items() if k != "family"}
            return ModelShape(name, family, _frozen(values), f"hizfo/core/shapes.py (published {hub_id} config)")
    raise ConfigError(f"model '{name}': its shape is not known offline (no config.json in the local Hugging Face "
                      f"cache for hub_id '{hub_id}', and not in hizfo/core/shapes.py); the planner never downloads: "
                      f"pass model.path=DIR holding its config.json")


@dataclass
class FakeModel:
    """A model built on fake tensors and the FakeTensorMode that owns them (re-entered for every trace)."""
    model: nn.Module
    mode: Any
    shape: ModelShape
    dtype: torch.dtype


def build_fake(shape: ModelShape, dtype: torch.dtype) -> FakeModel:
    """A fresh fake model of ``shape`` in ``dtype`` (CPU fake tensors: sdpa takes its flash-style kernel, which saves
    the output and log-sum-exp, as CUDA's flash / memory-efficient kernels do)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import AutoModelForCausalLM
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        model = AutoModelForCausalLM.from_config(shape.config(), dtype=dtype)
    return FakeModel(model=model, mode=mode, shape=shape, dtype=dtype)


@functools.lru_cache(maxsize=4)
def cached_fake(shape: ModelShape, dtype: torch.dtype) -> FakeModel:
    """``build_fake``, kept for the next cell of the same model (a grid plans many cells per model)."""
    return build_fake(shape, dtype)
