"""The loss-weighting interface (LibMTL's `AbsWeighting`, trimmed).

A strategy turns the per-task losses of one batch into a backward pass and
reports the weights it used. Strategies that learn (uncertainty weighting) or
look at history (DWA) keep their state here, so checkpoints can resume them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch

from components.config.plugins import StrategySettings


class Weighting(ABC):
    # one backward pass of one weighted sum of the losses: DistributedDataParallel can reduce its gradients
    single_backward: ClassVar[bool] = True
    settings: ClassVar[type[StrategySettings]]  # its own options (components/config/plugins.py)

    def __init__(self, task_names: list[str], spec: StrategySettings) -> None:
        self.task_names = task_names
        self.spec = spec

    @abstractmethod
    def backward(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Backpropagate the combined loss; return the (detached) weight per task."""

    def attach(self, model: torch.nn.Module) -> Weighting:
        """Called once by the trainer before the optimizer is built: strategies with learnable state move it to
        the model's device; Jacobian methods keep the parameters whose Jacobian they aggregate."""
        return self

    def data_parallel(self, average: Callable[[list[torch.Tensor]], None]) -> None:
        """Called when several ranks train together: `average` all-reduces tensors to their mean over the ranks
        (for a strategy that combines per-task gradients before they become the update)."""
        return None

    def epoch_end(self) -> None:
        """Called by the trainer after each epoch (strategies that look at epoch history)."""
        return None

    def parameters(self) -> list[torch.nn.Parameter]:
        """Learnable parameters of the strategy itself, optimised with the model."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


def weighted_backward(losses: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    total = sum(weights[name] * loss for name, loss in losses.items())
    total.backward()  # type: ignore[union-attr]
    return {name: w.detach() for name, w in weights.items() if name in losses}
