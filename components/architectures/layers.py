"""Building blocks the architectures share: embeddings of the categorical features, an MLP trunk, one head
per task."""

from __future__ import annotations

import torch
from torch import nn

from components.config import ModelSpec
from components.features import FeatureSpec
from components.tasks import head_width


def embedding_dim(cardinality: int, cap: int) -> int:
    """fastai's rule of thumb, capped."""
    return max(2, min(cap, round(1.6 * cardinality**0.56)))


class MlpTrunk(nn.Module):
    def __init__(self, in_dim: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
            in_dim = width
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_embeddings(spec: FeatureSpec, cfg: ModelSpec) -> tuple[nn.ModuleList, int]:
    """One embedding per categorical feature, and the width of [numeric, embeddings]."""
    embeddings = nn.ModuleList(
        nn.Embedding(v.size, embedding_dim(v.size, cfg.max_embedding_dim)) for v in spec.categorical
    )
    return embeddings, spec.numeric_width + sum(e.embedding_dim for e in embeddings)


def embed(embeddings: nn.ModuleList, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
    return torch.cat([numeric] + [emb(categorical[:, i]) for i, emb in enumerate(embeddings)], dim=1)


def make_heads(spec: FeatureSpec, cfg: ModelSpec, in_dim: int) -> nn.ModuleDict:
    heads = nn.ModuleDict()
    for t in spec.targets:
        width = head_width(t.type, len(t.classes))
        if cfg.head_hidden:
            heads[t.name] = nn.Sequential(nn.Linear(in_dim, cfg.head_hidden), nn.ReLU(),
                                          nn.Linear(cfg.head_hidden, width))
        else:
            heads[t.name] = nn.Linear(in_dim, width)
    return heads


def head_output(y: torch.Tensor) -> torch.Tensor:
    return y if y.shape[1] > 1 else y.squeeze(1)
