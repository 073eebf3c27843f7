"""Jacobian descent through `torchjd`: the gradient aggregators are the library's, not re-implemented here."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable

import torch
from torchjd.aggregation import Aggregator
from torchjd.autojac import backward as jacobian_backward
from torchjd.autojac import jac_to_grad

from components.training.strategies.base import Weighting


class JacobianWeighting(Weighting):
    """Computes the Jacobian of the task losses w.r.t. all model parameters (one row per task) and lets a
    torchjd aggregator turn it into the update. Costs one backward pass per task."""

    params: list[torch.nn.Parameter]
    single_backward = False
    _average: Callable[[list[torch.Tensor]], None] | None = None

    @abstractmethod
    def aggregator(self) -> Aggregator:
        """The torchjd aggregator, built once."""

    def attach(self, model: torch.nn.Module) -> JacobianWeighting:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._aggregator = self.aggregator()
        return self

    def data_parallel(self, average: Callable[[list[torch.Tensor]], None]) -> None:
        self._average = average

    def backward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = list(losses)
        if len(names) == 1:  # nothing to aggregate (e.g. after an MT2ST switch)
            losses[names[0]].backward()
            return {names[0]: losses[names[0]].new_ones(()).detach()}
        used = [p for p in self.params if p.requires_grad]
        jacobian_backward([losses[n] for n in names], inputs=used)
        if self._average is not None:  # the whole batch's Jacobian on every rank, before it is aggregated
            self._average([p.jac for p in used if getattr(p, "jac", None) is not None])  # type: ignore[attr-defined]
        weights = jac_to_grad(used, self._aggregator)
        if weights is None:
            return {n: losses[n].new_ones(()).detach() for n in names}
        return {n: weights[i].detach() for i, n in enumerate(names)}
