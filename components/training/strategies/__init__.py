"""Loss-weighting strategies: one class per file, one registry line each, and the name in
`components.config.plugin_names.STRATEGY_NAMES` (what config validation accepts)."""

from __future__ import annotations

from components.config.schema import StrategySpec
from components.training.strategies.base import Weighting
from components.training.strategies.cagrad import CAGradWeighting
from components.training.strategies.dwa import DynamicWeightAverage
from components.training.strategies.ew import EqualWeighting
from components.training.strategies.mgda import MGDAWeighting
from components.training.strategies.pcgrad import PCGradWeighting
from components.training.strategies.static import StaticWeighting
from components.training.strategies.upgrad import UPGradWeighting
from components.training.strategies.uw import UncertaintyWeighting

STRATEGIES: dict[str, type[Weighting]] = {
    "ew": EqualWeighting,
    "static": StaticWeighting,
    "uw": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "pcgrad": PCGradWeighting,
    "upgrad": UPGradWeighting,
    "mgda": MGDAWeighting,
    "cagrad": CAGradWeighting,
}


def make_strategy(task_names: list[str], spec: StrategySpec) -> Weighting:
    return STRATEGIES[spec.name](task_names, spec)


__all__ = ["STRATEGIES", "Weighting", "make_strategy"]
