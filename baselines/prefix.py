"""Prefix-Tuning (Li & Liang, 2021) through peft: trainable key/value prefixes in every attention layer.

Defaults follow GreenTrainer's prefix baseline (paper A.2; docs/design.md, "Baselines"): 20 virtual tokens, no
reparameterisation MLP, AdamW 2e-5 with linear decay, 5 epochs.

Generation with left padding: a left-padded batch gives the same next-token scores as each prompt alone, and those
equal the training-time forward's last-position logits (peft prepends the prefix's attention mask and the models
derive positions from it); tests/unit/baselines/test_baselines.py checks it for tiny OPT, Qwen2 and BLOOM.

transformers 5.24 renamed generate()'s cache argument from ``past_key_values`` to ``cache`` (the old name is
deprecated until 5.40). peft 0.21.2's ``PeftModelForCausalLM.prepare_inputs_for_generation`` still injects the
prefix as ``past_key_values``; the model then takes generate()'s own empty ``cache`` and drops the prefix, while the
attention mask keeps the prefix's columns, so every generated token is scored without the trained prefix (855 of
858 scores off by up to 0.70 in the test above). ``_keep_prefix_in_generate_cache`` hands the prefix over under the
new name at the prefill step; on transformers < 5.24 it does nothing.
"""
from __future__ import annotations

import functools
from typing import Any

from torch import nn

from baselines.lora import PeftAdapterMethod
from hizfo.registry import PrefixConfig
from hizfo.core.models import LoadedModel


class PrefixTuning(PeftAdapterMethod):
    """Prefix key/values trained with AdamW; the backbone is frozen."""

    config_class = PrefixConfig
    adapter_state_on_shards = False     # peft runs the prompt encoder to save it: on an FSDP2 shard, it fails

    @property
    def reserved_positions(self) -> int:
        """The virtual tokens take model positions before every prompt (Method protocol)."""
        return self.cfg.num_virtual_tokens

    def peft_config(self, loaded: LoadedModel) -> Any:
        from peft import PrefixTuningConfig
        extra = {}
        if self.cfg.prefix_projection:
            extra["encoder_hidden_size"] = self.cfg.encoder_hidden_size or loaded.model.config.hidden_size
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=self.cfg.num_virtual_tokens,
                                  prefix_projection=self.cfg.prefix_projection, **extra)

    def eval_model(self) -> nn.Module:
        _keep_prefix_in_generate_cache(self.peft_model)
        return self.peft_model


def _keep_prefix_in_generate_cache(peft_model: nn.Module) -> None:
    """Make peft's prefix reach the model in generate() on transformers >= 5.24 (see the module docstring).

    Wraps the instance's ``prepare_inputs_for_generation`` once: when transformers names the cache ``cache`` and
    peft put the prefix under ``past_key_values``, the prefix becomes the cache while generate()'s cache is still
    empty (the prefill step); later steps keep generate()'s cache, which then holds the prefix and the prompt.
    """
    if getattr(peft_model, "_hizfo_prefix_cache_kept", False):
        return
    prepare = peft_model.prepare_inputs_for_generation

    @functools.wraps(prepare)                  # generate() validates its kwargs against this signature
    def prepare_with_prefix(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = prepare(*args, **kwargs)
        if "cache" in inputs and "past_key_values" in inputs:
            prefix = inputs.pop("past_key_values")
            cache = inputs["cache"]
            if cache is None or cache.get_seq_length() == 0:
                inputs["cache"] = prefix
        return inputs

    peft_model.prepare_inputs_for_generation = prepare_with_prefix
    peft_model._hizfo_prefix_cache_kept = True
