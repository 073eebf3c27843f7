"""Loss-weighting strategies: one class per file, `<name>.py`, each naming its settings class
(components/config/plugins.py, what config validation reads); the registry is read from the settings'
list there (`STRATEGY_SETTINGS`), so a new strategy is its file plus its settings and their line."""

from __future__ import annotations

from components.config.plugins import STRATEGY_FAMILY, StrategySettings, implementations
from components.training.strategies.base import Weighting

STRATEGIES: dict[str, type[Weighting]] = implementations(STRATEGY_FAMILY, __name__)


def make_strategy(task_names: list[str], spec: StrategySettings) -> Weighting:
    return STRATEGIES[spec.name](task_names, spec)


__all__ = ["STRATEGIES", "Weighting", "make_strategy"]
