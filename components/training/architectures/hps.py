"""Hard parameter sharing (`hps`): embeddings + numeric inputs -> one shared MLP trunk -> one head per task.

Heads output raw scores: a logit (binary), C logits (multiclass), or a value in the standardised target
space (regression); `components.artifacts.export.ExportModule` maps regression outputs back to original units for
the ONNX graph.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from components.config.plugins import HardSharingSettings
from components.data.features import FeatureSpec
from components.training.architectures.base import SharedRepresentation
from components.training.architectures.layers import FeatureEmbedding, MlpTrunk, head_output, make_heads


class HardSharingModel(SharedRepresentation):
    settings: ClassVar[type[HardSharingSettings]] = HardSharingSettings
    def __init__(self, spec: FeatureSpec, cfg: HardSharingSettings) -> None:
        super().__init__()
        self.task_names = [t.name for t in spec.targets]
        self.inputs = FeatureEmbedding(spec, cfg)
        self.trunk = MlpTrunk(self.inputs.out_dim, list(cfg.hidden), cfg.dropout)
        self.heads = make_heads(spec, cfg, self.trunk.out_dim)

    def represent(self, numeric: torch.Tensor, categorical: torch.Tensor,
                  tasks: list[str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Z: the trunk's output, [batch, hidden[-1]] (Rep-MTL: each unit is a position)."""
        z = self.trunk(self.inputs(numeric, categorical))
        return z, {name: head_output(self.heads[name](z)) for name in tasks or self.task_names}
