from __future__ import annotations

import math
from typing import ClassVar

import torch

from components.config.plugins import DwaSettings
from components.training.strategies.base import Weighting, weighted_backward


class DynamicWeightAverage(Weighting):
    """DWA (Liu et al., 2019): w_t = K·softmax(r_t / T), r_t = L_t(e−1) / L_t(e−2) from mean epoch losses;
    equal weights for the first two epochs."""

    settings: ClassVar[type[DwaSettings]] = DwaSettings

    def __init__(self, task_names: list[str], spec: DwaSettings) -> None:
        super().__init__(task_names, spec)
        self.history: list[dict[str, float]] = []  # mean train loss per task, one entry per finished epoch
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._weights = self.current_weights()

    def current_weights(self) -> dict[str, float]:
        weights = dict.fromkeys(self.task_names, 1.0)
        if len(self.history) < 2:
            return weights
        last, before = self.history[-1], self.history[-2]
        ratios = {n: last[n] / max(before[n], 1e-12) for n in last if n in before}
        exp = {n: math.exp(r / self.spec.temperature) for n, r in ratios.items()}
        total = sum(exp.values())
        return weights | {n: len(exp) * e / total for n, e in exp.items()}

    def backward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name, loss in losses.items():  # accumulated on device: no host sync per step
            self._sums[name] = self._sums.get(name, 0) + loss.detach()
            self._counts[name] = self._counts.get(name, 0) + 1
        one = next(iter(losses.values())).new_ones(())
        return weighted_backward(losses, {name: one * self._weights[name] for name in losses})

    def epoch_end(self) -> None:
        self.history.append({n: float(s) / self._counts[n] for n, s in self._sums.items()})
        self._sums, self._counts = {}, {}
        self._weights = self.current_weights()

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])
        self._weights = self.current_weights()
