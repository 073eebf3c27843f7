from __future__ import annotations

from torchjd.aggregation import Aggregator, UPGrad

from components.training.strategies.jacobian import JacobianWeighting


class UPGradWeighting(JacobianWeighting):
    """UPGrad (Quinton & Rey, 2024): project onto the dual cone of the task gradients, then average."""

    def aggregator(self) -> Aggregator:
        return UPGrad()
