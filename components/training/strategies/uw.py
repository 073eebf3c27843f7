from __future__ import annotations

from typing import ClassVar

import torch

from components.config.plugins import UncertaintyWeightingSettings
from components.training.strategies.base import Weighting


class UncertaintyWeighting(Weighting):
    """UW (Kendall et al., 2018): a learned log-variance s_t per task, loss Σ_t L_t·e^{−s_t}/2 + s_t/2."""

    settings: ClassVar[type[UncertaintyWeightingSettings]] = UncertaintyWeightingSettings

    def __init__(self, task_names: list[str], spec: UncertaintyWeightingSettings) -> None:
        super().__init__(task_names, spec)
        self.log_vars = torch.nn.Parameter(torch.zeros(len(task_names)))

    def attach(self, model: torch.nn.Module) -> UncertaintyWeighting:
        device = next(model.parameters()).device
        self.log_vars = torch.nn.Parameter(self.log_vars.detach().to(device))
        return self

    def backward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        total = torch.zeros((), device=self.log_vars.device)
        weights = {}
        for name, loss in losses.items():
            s = self.log_vars[self.task_names.index(name)]
            weights[name] = torch.exp(-s) / 2
            total = total + weights[name] * loss + s / 2
        total.backward()
        return {name: w.detach() for name, w in weights.items()}

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.log_vars]

    def state_dict(self) -> dict:
        return {"log_vars": self.log_vars.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.log_vars.copy_(state["log_vars"])
