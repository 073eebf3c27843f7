"""Model architectures as plug-ins, like `components.training.strategies`: one class per file, each an `Architecture`
(`base.py`: the required interface and the optional hooks the trainer calls), one registry line each, and the
name in `components.config.plugin_names.ARCHITECTURE_NAMES` (what config validation accepts; also
`SHARED_REPRESENTATION_ARCHITECTURES` for a `SharedRepresentation` one, which Rep-MTL can regularise)."""

from __future__ import annotations

from components.config.schema import ModelSpec
from components.data.features import FeatureSpec
from components.training.architectures.base import Architecture, SharedRepresentation
from components.training.architectures.ft_transformer import FTTransformerModel
from components.training.architectures.hps import HardSharingModel
from components.training.architectures.mmoe import MMoEModel
from components.training.architectures.shared_private import SharedPrivateModel

ARCHITECTURES: dict[str, type[Architecture]] = {
    "hps": HardSharingModel,
    "mmoe": MMoEModel,
    "shared_private": SharedPrivateModel,
    "ft_transformer": FTTransformerModel,
}


def build_model(spec: FeatureSpec, cfg: ModelSpec) -> Architecture:
    return ARCHITECTURES[cfg.architecture](spec, cfg)


__all__ = ["ARCHITECTURES", "Architecture", "SharedRepresentation", "build_model"]
