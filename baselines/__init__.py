"""One module per baseline; importing the package registers every baseline's config schema."""
from baselines import full_ft, ft_top2, greentrainer  # noqa: F401
from baselines import bilevel_zofo, lora, mezo, prefix, zero_shot  # noqa: F401
