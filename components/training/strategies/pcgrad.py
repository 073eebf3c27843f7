from __future__ import annotations

from typing import ClassVar

from torchjd.aggregation import Aggregator, PCGrad

from components.config.plugins import PcgradSettings
from components.training.strategies.jacobian import JacobianWeighting


class PCGradWeighting(JacobianWeighting):
    """PCGrad (Yu et al., 2020): project each task gradient off the others it conflicts with."""

    settings: ClassVar[type[PcgradSettings]] = PcgradSettings

    def aggregator(self) -> Aggregator:
        return PCGrad()
