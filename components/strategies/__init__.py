"""Loss-weighting strategies: one class per file, one registry line each, and the name in
`components.plugin_names.STRATEGY_NAMES` (what config validation accepts)."""

from __future__ import annotations

from components.config import StrategySpec
from components.strategies.base import Weighting
from components.strategies.cagrad import CAGradWeighting
from components.strategies.dwa import DynamicWeightAverage
from components.strategies.ew import EqualWeighting
from components.strategies.mgda import MGDAWeighting
from components.strategies.pcgrad import PCGradWeighting
from components.strategies.static import StaticWeighting
from components.strategies.upgrad import UPGradWeighting
from components.strategies.uw import UncertaintyWeighting

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
