"""Model architectures: one class each, one registry line each. All take (FeatureSpec, ModelSpec), expose
`task_names`, and compute `forward(numeric, categorical, tasks=None)` for the requested heads only."""

from __future__ import annotations

from torch import nn

from components.config import ModelSpec
from components.features import FeatureSpec
from components.mmoe import MMoEModel
from components.model import MultiTaskModel

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "hps": MultiTaskModel,
    "mmoe": MMoEModel,
}


def build_model(spec: FeatureSpec, cfg: ModelSpec) -> nn.Module:
    return ARCHITECTURES[cfg.architecture](spec, cfg)
