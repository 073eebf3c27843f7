"""Loss-weighting strategies: one class per file, each naming its settings class (components/config/plugins.py,
what config validation reads), one registry line each; the registry is keyed by the settings' name."""

from __future__ import annotations

from components.config.plugins import StrategySettings, plugin_name
from components.training.strategies.base import Weighting
from components.training.strategies.cagrad import CAGradWeighting
from components.training.strategies.dwa import DynamicWeightAverage
from components.training.strategies.ew import EqualWeighting
from components.training.strategies.mgda import MGDAWeighting
from components.training.strategies.pcgrad import PCGradWeighting
from components.training.strategies.static import StaticWeighting
from components.training.strategies.upgrad import UPGradWeighting
from components.training.strategies.uw import UncertaintyWeighting

STRATEGIES: dict[str, type[Weighting]] = {plugin_name(s.settings): s for s in (
    EqualWeighting, StaticWeighting, UncertaintyWeighting, DynamicWeightAverage, PCGradWeighting, UPGradWeighting,
    MGDAWeighting, CAGradWeighting,
)}


def make_strategy(task_names: list[str], spec: StrategySettings) -> Weighting:
    return STRATEGIES[spec.name](task_names, spec)


__all__ = ["STRATEGIES", "Weighting", "make_strategy"]
