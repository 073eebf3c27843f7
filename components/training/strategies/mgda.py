from __future__ import annotations

from torchjd.aggregation import MGDA, Aggregator

from components.training.strategies.jacobian import JacobianWeighting


class MGDAWeighting(JacobianWeighting):
    """MGDA (Sener & Koltun, 2018): the min-norm point of the convex hull of the task gradients."""

    def aggregator(self) -> Aggregator:
        return MGDA()
