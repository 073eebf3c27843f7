"""What the trainer, the exporter and Rep-MTL need from an architecture (the counterpart of
`components.training.strategies.base.Weighting`).

Required: `task_names` (one head per task, in the feature spec's target order) and `forward(numeric,
categorical, tasks=None)`, which computes the requested heads only (MT2ST's switch asks for the primary
head alone) and returns their raw outputs by task name.

Optional hooks, with defaults that do nothing:
- `penalty(tasks)`: a regulariser the trainer adds to the step's loss (None: none);
- `alternating_groups()`: parameter groups updated in turn, one group per step (empty: all, every step).

`SharedRepresentation` architectures also return the shared representation Z with the heads computed from it
(`represent`): what Rep-MTL differentiates the task losses against.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from components.config.plugins import ModelSettings


class Architecture(nn.Module, ABC):
    task_names: list[str]
    settings: ClassVar[type[ModelSettings]]  # its own options (components/config/plugins.py)

    @abstractmethod
    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor,
                tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Raw head outputs for `tasks` (default: all); the other heads are not computed."""

    def penalty(self, tasks: list[str]) -> torch.Tensor | None:
        """A term added to the loss of a step that trains `tasks`; None when the architecture has none."""
        return None

    def alternating_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups of which step k updates group k % len(groups) only; empty: every parameter, every step."""
        return []


class SharedRepresentation(Architecture):
    """An architecture whose heads all read one shared representation Z (and, on `shared_private`, their own
    private encoders besides)."""

    @abstractmethod
    def represent(self, numeric: torch.Tensor, categorical: torch.Tensor,
                  tasks: list[str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(Z, the raw outputs of the heads for `tasks`, default all, computed from that Z): Z is [batch, width],
        or [batch, positions, channels] for a token or expert trunk."""

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor,
                tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
        return self.represent(numeric, categorical, tasks)[1]
