"""Loss-weighting strategies: one class per file, one registry line each."""

from __future__ import annotations

from components.config import StrategySpec
from components.strategies.base import Weighting
from components.strategies.ew import EqualWeighting
from components.strategies.static import StaticWeighting

STRATEGIES: dict[str, type[Weighting]] = {
    "ew": EqualWeighting,
    "static": StaticWeighting,
}


def make_strategy(task_names: list[str], spec: StrategySpec) -> Weighting:
    return STRATEGIES[spec.name](task_names, spec)


__all__ = ["STRATEGIES", "Weighting", "make_strategy"]
