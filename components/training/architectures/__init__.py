"""Model architectures as plug-ins, like `components.training.strategies`: one class per file, `<name>.py`, each
an `Architecture` (`base.py`: the required interface and the optional hooks the trainer calls) naming its
settings class (components/config/plugins.py: its options, and whether its heads share a representation
Rep-MTL can regularise); the registry is read from the settings' list there (`ARCHITECTURE_SETTINGS`)."""

from __future__ import annotations

from components.config.plugins import ARCHITECTURE_FAMILY, ModelSettings, implementations
from components.data.features import FeatureSpec
from components.training.architectures.base import Architecture, SharedRepresentation

ARCHITECTURES: dict[str, type[Architecture]] = implementations(ARCHITECTURE_FAMILY, __name__)


def build_model(spec: FeatureSpec, cfg: ModelSettings) -> Architecture:
    return ARCHITECTURES[cfg.architecture](spec, cfg)


__all__ = ["ARCHITECTURES", "Architecture", "SharedRepresentation", "build_model"]
