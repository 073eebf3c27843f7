"""Model architectures as plug-ins, like `components.training.strategies`: one class per file, each an `Architecture`
(`base.py`: the required interface and the optional hooks the trainer calls) naming its settings class
(components/config/plugins.py: its options, and whether its heads share a representation Rep-MTL can regularise),
one registry line each; the registry is keyed by the settings' name."""

from __future__ import annotations

from components.config.plugins import ModelSettings, plugin_name
from components.data.features import FeatureSpec
from components.training.architectures.base import Architecture, SharedRepresentation
from components.training.architectures.ft_transformer import FTTransformerModel
from components.training.architectures.hps import HardSharingModel
from components.training.architectures.mmoe import MMoEModel
from components.training.architectures.shared_private import SharedPrivateModel

ARCHITECTURES: dict[str, type[Architecture]] = {plugin_name(a.settings): a for a in (
    HardSharingModel, MMoEModel, SharedPrivateModel, FTTransformerModel,
)}


def build_model(spec: FeatureSpec, cfg: ModelSettings) -> Architecture:
    return ARCHITECTURES[cfg.architecture](spec, cfg)


__all__ = ["ARCHITECTURES", "Architecture", "SharedRepresentation", "build_model"]
