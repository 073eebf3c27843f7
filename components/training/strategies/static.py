from __future__ import annotations

from typing import ClassVar

import torch

from components.config.plugins import StaticWeightingSettings
from components.training.strategies.base import Weighting, weighted_backward


class StaticWeighting(Weighting):
    """Scalarization: fixed weights p on the simplex (Royer et al., 2023), times K
    so that equal weights reproduce EW's loss scale."""

    settings: ClassVar[type[StaticWeightingSettings]] = StaticWeightingSettings

    def __init__(self, task_names: list[str], spec: StaticWeightingSettings) -> None:
        super().__init__(task_names, spec)
        raw = {name: float((spec.weights or {}).get(name, 0.0)) for name in task_names}
        total = sum(raw.values())
        self.weights = {name: torch.tensor(len(task_names) * w / total) for name, w in raw.items()}

    def backward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device = next(iter(losses.values())).device
        return weighted_backward(losses, {name: self.weights[name].to(device) for name in losses})
