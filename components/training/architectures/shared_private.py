"""Task-shared + task-specific encoders (docs/methods.md, after Sui et al., arXiv 2505.24281).

Task t predicts from [E_s(x), E_t(x)]. Its head's first-layer weights over the shared factors are its
coefficients β_t. Product choice (the paper's exact regulariser is not public): the penalty
Σ_{t≠t'} a_tt'·‖β_t − β_t'‖² with a_tt' = max(0, cos(β_t, β_t')) detached, so similar tasks are pulled together
and dissimilar ones left apart; and alternating optimisation: even steps update the encoders, odd steps the
coefficients (the heads). Encoders of tasks that are not requested are not computed (MT2ST's switch). Z (Rep-MTL's
representation) = E_s(x), the shared encoder's output; the private encoders are each task's own."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from components.config.plugins import SharedPrivateSettings
from components.data.features import FeatureSpec
from components.training.architectures.base import SharedRepresentation
from components.training.architectures.layers import FeatureEmbedding, MlpTrunk, head_output, make_heads


class SharedPrivateModel(SharedRepresentation):
    settings: ClassVar[type[SharedPrivateSettings]] = SharedPrivateSettings
    def __init__(self, spec: FeatureSpec, cfg: SharedPrivateSettings) -> None:
        super().__init__()
        self.task_names = [t.name for t in spec.targets]
        self.inputs = FeatureEmbedding(spec, cfg)
        in_dim = self.inputs.out_dim
        self.shared = MlpTrunk(in_dim, list(cfg.hidden), cfg.dropout)
        self.private = nn.ModuleDict({name: MlpTrunk(in_dim, list(cfg.private_hidden), cfg.dropout)
                                      for name in self.task_names})
        self.shared_width = self.shared.out_dim
        self.heads = make_heads(spec, cfg, self.shared.out_dim + cfg.private_hidden[-1])
        self.penalty_weight = cfg.similarity_penalty

    def represent(self, numeric: torch.Tensor, categorical: torch.Tensor,
                  tasks: list[str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.inputs(numeric, categorical)
        z = self.shared(x)
        return z, {name: head_output(self.heads[name](torch.cat([z, self.private[name](x)], dim=1)))
                   for name in tasks or self.task_names}

    def coefficients(self, name: str) -> torch.Tensor:
        """β_t: the head's first-layer weights on the shared factors (mean over output units)."""
        first = self.heads[name] if isinstance(self.heads[name], nn.Linear) else self.heads[name][0]
        return first.weight[:, :self.shared_width].mean(dim=0)

    def penalty(self, tasks: list[str]) -> torch.Tensor:
        betas = torch.stack([self.coefficients(name) for name in tasks])  # [T, D_s]
        affinity = F.cosine_similarity(betas.unsqueeze(1), betas.unsqueeze(0), dim=2).clamp_min(0).detach()
        affinity = affinity - torch.diag_embed(affinity.diagonal())
        distance = (betas.unsqueeze(1) - betas.unsqueeze(0)).pow(2).sum(dim=2)
        return self.penalty_weight * (affinity * distance).sum()

    def alternating_groups(self) -> list[list[nn.Parameter]]:
        """Parameters updated on even steps (encoders: everything but the heads) and on odd steps (coefficients)."""
        heads = list(self.heads.parameters())
        head_ids = {id(p) for p in heads}
        return [[p for p in self.parameters() if id(p) not in head_ids], heads]
