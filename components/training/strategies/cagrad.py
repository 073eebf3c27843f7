from __future__ import annotations

from typing import ClassVar

from torchjd.aggregation import Aggregator, CAGrad

from components.config.plugins import CagradSettings
from components.training.strategies.jacobian import JacobianWeighting


class CAGradWeighting(JacobianWeighting):
    """CAGrad (Liu et al., 2021): the mean gradient, moved within radius c towards the worst-off task."""

    settings: ClassVar[type[CagradSettings]] = CagradSettings

    def aggregator(self) -> Aggregator:
        return CAGrad(c=self.spec.cagrad_c)
