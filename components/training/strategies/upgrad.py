from __future__ import annotations

from typing import ClassVar

from torchjd.aggregation import Aggregator, UPGrad

from components.config.plugins import UpgradSettings
from components.training.strategies.jacobian import JacobianWeighting


class UPGradWeighting(JacobianWeighting):
    """UPGrad (Quinton & Rey, 2024): project onto the dual cone of the task gradients, then average."""

    settings: ClassVar[type[UpgradSettings]] = UpgradSettings

    def aggregator(self) -> Aggregator:
        return UPGrad()
