"""Building blocks the architectures share: embeddings of the categorical features, an MLP trunk, one head
per task."""

from __future__ import annotations

import math

import torch
from torch import nn

from components.config.plugins import ModelSettings
from components.config.tasks import head_width
from components.data.features import FeatureSpec


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


class PeriodicEmbedding(nn.Module):
    """Numeric features as periodic embeddings ("PLR(lite)", Gorishniy et al., "On Embeddings for Numerical
    Features in Tabular Deep Learning", 2022): each feature x_i becomes ReLU(W·[sin 2πc_i x_i, cos 2πc_i x_i] + b)
    with k learned frequencies c_i ~ N(0, σ²) per feature and one linear map W shared by the features. An MLP
    on raw standardised inputs fits smooth functions of each feature; the frequencies let it fit the sharp,
    multi-modal ones (departure hour, distance bands) that trees find with a split."""

    def __init__(self, features: int, frequencies: int, dim: int, sigma: float) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(features, frequencies) * sigma)
        self.linear = nn.Linear(2 * frequencies, dim)
        self.out_dim = features * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angle = 2 * math.pi * x.unsqueeze(2) * self.frequencies  # [B, features, k]
        periodic = torch.cat([torch.sin(angle), torch.cos(angle)], dim=2)
        return torch.relu(self.linear(periodic)).flatten(1)


class FeatureEmbedding(nn.Module):
    """[numeric, categorical] as one vector: the numeric features through `model.numeric_embedding` (as they are
    when `none`), then one embedding per categorical feature. `out_dim` is its width."""

    def __init__(self, spec: FeatureSpec, cfg: ModelSettings) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(v.size, embedding_dim(v.size, cfg.max_embedding_dim)) for v in spec.categorical
        )
        self.numeric: nn.Module = nn.Identity()
        numeric_width = spec.numeric_width
        if cfg.numeric_embedding == "periodic":
            periodic = PeriodicEmbedding(spec.numeric_width, cfg.numeric_frequencies, cfg.numeric_embedding_dim,
                                         cfg.numeric_sigma)
            self.numeric, numeric_width = periodic, periodic.out_dim
        self.out_dim = numeric_width + sum(e.embedding_dim for e in self.embeddings)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.numeric(numeric)] + [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)],
                         dim=1)


def make_heads(spec: FeatureSpec, cfg: ModelSettings, in_dim: int) -> nn.ModuleDict:
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
