"""FT-Top2: only the top two transformer blocks train (paper A.1)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from baselines.full_ft import FullFT
from hizfo.config import MethodConfig, register_method_schema
from hizfo.errors import ConfigError
from hizfo.core.models import decoder_layers


@register_method_schema("ft_top2")
@dataclass
class FTTop2Config(MethodConfig):
    _target_: str = "baselines.ft_top2.FTTop2"
    name: str = "ft_top2"
    top_blocks: int = 2


class FTTop2(FullFT):
    config_class = FTTop2Config

    def trainable_names(self, model: nn.Module) -> set[str]:
        layers = decoder_layers(model)
        k = self.cfg.top_blocks
        if not 1 <= k <= len(layers):
            raise ConfigError(f"method.top_blocks: must be in [1, {len(layers)}], got {k}")
        keep = {id(p) for block in list(layers)[-k:] for p in block.parameters()}
        return {name for name, p in model.named_parameters() if id(p) in keep}
