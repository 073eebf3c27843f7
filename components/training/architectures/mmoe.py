"""Multi-gate mixture of experts (Ma et al., KDD 2018), the common production MTL architecture.

E expert MLPs read the same input; each task mixes their outputs with its own softmax gate on the input, then
applies its head. Heads that are not requested are not computed, and neither are their gates. Z (Rep-MTL's
representation) = the experts' outputs, [B, E, D]: each expert is a position, its units the channels."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from components.config.plugins import MmoeSettings
from components.data.features import FeatureSpec
from components.training.architectures.base import SharedRepresentation
from components.training.architectures.layers import FeatureEmbedding, MlpTrunk, head_output, make_heads


class MMoEModel(SharedRepresentation):
    settings: ClassVar[type[MmoeSettings]] = MmoeSettings
    def __init__(self, spec: FeatureSpec, cfg: MmoeSettings) -> None:
        super().__init__()
        self.task_names = [t.name for t in spec.targets]
        self.inputs = FeatureEmbedding(spec, cfg)
        in_dim = self.inputs.out_dim
        self.experts = nn.ModuleList(MlpTrunk(in_dim, list(cfg.hidden), cfg.dropout) for _ in range(cfg.experts))
        self.gates = nn.ModuleDict({name: nn.Linear(in_dim, cfg.experts) for name in self.task_names})
        self.heads = make_heads(spec, cfg, self.experts[0].out_dim)

    def represent(self, numeric: torch.Tensor, categorical: torch.Tensor,
                  tasks: list[str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.inputs(numeric, categorical)
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, D]
        out = {}
        for name in tasks or self.task_names:
            gate = torch.softmax(self.gates[name](x), dim=1)  # [B, E]
            out[name] = head_output(self.heads[name]((gate.unsqueeze(2) * experts).sum(dim=1)))
        return experts, out
