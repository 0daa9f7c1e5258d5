"""FT-Top2: only the top two transformer blocks train (paper A.1)."""
from __future__ import annotations


from torch import nn

from baselines.full_ft import FullFT
from hizfo.registry import FTTop2Config
from hizfo.errors import ConfigError
from hizfo.core.models import decoder_layers


class FTTop2(FullFT):
    config_class = FTTop2Config

    def trainable_names(self, model: nn.Module) -> set[str]:
        layers = decoder_layers(model)
        k = self.cfg.top_blocks
        if not 1 <= k <= len(layers):
            raise ConfigError(f"method.top_blocks: must be in [1, {len(layers)}], got {k}")
        keep = {id(p) for block in list(layers)[-k:] for p in block.parameters()}
        return {name for name, p in model.named_parameters() if id(p) in keep}
