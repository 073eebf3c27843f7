from __future__ import annotations

from typing import ClassVar

import torch

from components.config.plugins import EqualWeightingSettings
from components.training.strategies.base import Weighting, weighted_backward


class EqualWeighting(Weighting):
    """EW: the plain sum of task losses."""

    settings: ClassVar[type[EqualWeightingSettings]] = EqualWeightingSettings

    def backward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        one = next(iter(losses.values())).new_ones(())
        return weighted_backward(losses, {name: one for name in losses})
