"""One multi-task model: embeddings + numeric inputs -> shared trunk -> one head per task.

Heads output raw scores: a logit (binary), C logits (multiclass), or a value in
the standardised target space (regression). `ExportModule` maps regression
outputs back to original units for the ONNX graph.
"""

from __future__ import annotations

import torch
from torch import nn

from components.config import ModelSpec
from components.features import FeatureSpec


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


def head_width(target_type: str, n_classes: int) -> int:
    return n_classes if target_type == "multiclass" else 1


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


class MultiTaskModel(nn.Module):
    """Hard parameter sharing (`hps`): one trunk, one head per task."""

    def __init__(self, spec: FeatureSpec, cfg: ModelSpec) -> None:
        super().__init__()
        self.task_names = [t.name for t in spec.targets]
        self.embeddings, in_dim = make_embeddings(spec, cfg)
        self.trunk = MlpTrunk(in_dim, list(cfg.hidden), cfg.dropout)
        self.heads = make_heads(spec, cfg, self.trunk.out_dim)

    def encode(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """The shared representation Z."""
        return self.trunk(embed(self.embeddings, numeric, categorical))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor,
                tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Raw head outputs for `tasks` (default: all); other heads are not computed."""
        return self.predict_from(self.encode(numeric, categorical), tasks)

    def predict_from(self, z: torch.Tensor, tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The heads on a shared representation Z (Rep-MTL differentiates the losses w.r.t. Z)."""
        return {name: head_output(self.heads[name](z)) for name in tasks or self.task_names}


class ExportModule(nn.Module):
    """What the ONNX graph computes: one output per task, regression in original units."""

    def __init__(self, model: MultiTaskModel, spec: FeatureSpec) -> None:
        super().__init__()
        self.model = model
        self.task_names = model.task_names
        scale = [(t.std, t.mean) if t.type == "regression" else (1.0, 0.0) for t in spec.targets]
        self.register_buffer("scale", torch.tensor([s for s, _ in scale], dtype=torch.float32))
        self.register_buffer("shift", torch.tensor([m for _, m in scale], dtype=torch.float32))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(numeric, categorical)
        return tuple(out[name] * self.scale[i] + self.shift[i] for i, name in enumerate(self.task_names))
