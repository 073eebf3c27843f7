from __future__ import annotations

from typing import ClassVar

from torchjd.aggregation import MGDA, Aggregator

from components.config.plugins import MgdaSettings
from components.training.strategies.jacobian import JacobianWeighting


class MGDAWeighting(JacobianWeighting):
    """MGDA (Sener & Koltun, 2018): the min-norm point of the convex hull of the task gradients."""

    settings: ClassVar[type[MgdaSettings]] = MgdaSettings

    def aggregator(self) -> Aggregator:
        return MGDA()
