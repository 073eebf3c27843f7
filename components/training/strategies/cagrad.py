from __future__ import annotations

from torchjd.aggregation import Aggregator, CAGrad

from components.training.strategies.jacobian import JacobianWeighting


class CAGradWeighting(JacobianWeighting):
    """CAGrad (Liu et al., 2021): the mean gradient, moved within radius c towards the worst-off task."""

    def aggregator(self) -> Aggregator:
        return CAGrad(c=self.spec.cagrad_c)
