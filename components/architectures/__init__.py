"""Model architectures as plug-ins, like `components.strategies`: one class per file, each an `Architecture`
(`base.py`: the required interface and the optional hooks the trainer calls), one registry line each, and the
name in `components.plugin_names.ARCHITECTURE_NAMES` (what config validation accepts; also
`SHARED_REPRESENTATION_ARCHITECTURES` for a `SharedRepresentation` one, which Rep-MTL can regularise)."""

from __future__ import annotations

from components.architectures.base import Architecture, SharedRepresentation
from components.architectures.ft_transformer import FTTransformerModel
from components.architectures.hps import HardSharingModel
from components.architectures.mmoe import MMoEModel
from components.architectures.shared_private import SharedPrivateModel
from components.config import ModelSpec
from components.features import FeatureSpec

ARCHITECTURES: dict[str, type[Architecture]] = {
    "hps": HardSharingModel,
    "mmoe": MMoEModel,
    "shared_private": SharedPrivateModel,
    "ft_transformer": FTTransformerModel,
}


def build_model(spec: FeatureSpec, cfg: ModelSpec) -> Architecture:
    return ARCHITECTURES[cfg.architecture](spec, cfg)


__all__ = ["ARCHITECTURES", "Architecture", "SharedRepresentation", "build_model"]
