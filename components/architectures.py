"""Model architectures: one class each, one registry line each (and the name in
`components.plugin_names.ARCHITECTURE_NAMES`, what config validation accepts). All take (FeatureSpec, ModelSpec), expose
`task_names`, and compute `forward(numeric, categorical, tasks=None)` for the requested heads only. Optional
hooks the trainer uses: `penalty(tasks)` (added to the loss) and `alternating_groups()` (parameter groups
updated in turn, one per step)."""

from __future__ import annotations

from torch import nn

from components.config import ModelSpec
from components.features import FeatureSpec
from components.ft_transformer import FTTransformerModel
from components.mmoe import MMoEModel
from components.model import MultiTaskModel
from components.shared_private import SharedPrivateModel

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "hps": MultiTaskModel,
    "mmoe": MMoEModel,
    "shared_private": SharedPrivateModel,
    "ft_transformer": FTTransformerModel,
}


def build_model(spec: FeatureSpec, cfg: ModelSpec) -> nn.Module:
    return ARCHITECTURES[cfg.architecture](spec, cfg)
