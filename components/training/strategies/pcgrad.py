from __future__ import annotations

from torchjd.aggregation import Aggregator, PCGrad

from components.training.strategies.jacobian import JacobianWeighting


class PCGradWeighting(JacobianWeighting):
    """PCGrad (Yu et al., 2020): project each task gradient off the others it conflicts with."""

    def aggregator(self) -> Aggregator:
        return PCGrad()
