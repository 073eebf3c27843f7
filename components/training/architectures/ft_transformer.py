"""Feature-token transformer trunk (FT-Transformer, Gorishniy et al., 2021) with one head per task.

Every numeric input column (values and null indicators) becomes a token x·w_i + b_i, every categorical feature a
token from its own embedding table, and a learned [CLS] token is prepended; pre-norm transformer blocks mix
them; heads read the [CLS] token. Z (Rep-MTL's representation) = the tokens entering the last block,
[B, 1 + F, D]: the heads read only [CLS], so on the last block's output every other token would have zero
saliency and [CLS]'s would be g·w_t, one scalar per sample and task (docs/methods.md, the audit)."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from components.config.plugins import FtTransformerSettings
from components.data.features import FeatureSpec
from components.training.architectures.base import SharedRepresentation
from components.training.architectures.layers import head_output, make_heads


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.ffn(self.norm2(x))


class FTTransformerModel(SharedRepresentation):
    settings: ClassVar[type[FtTransformerSettings]] = FtTransformerSettings
    def __init__(self, spec: FeatureSpec, cfg: FtTransformerSettings) -> None:
        super().__init__()
        dim = cfg.token_dim
        self.task_names = [t.name for t in spec.targets]
        self.numeric_weight = nn.Parameter(torch.randn(spec.numeric_width, dim) * 0.1)
        self.numeric_bias = nn.Parameter(torch.zeros(spec.numeric_width, dim))
        self.embeddings = nn.ModuleList(nn.Embedding(v.size, dim) for v in spec.categorical)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.blocks = nn.Sequential(*(Block(dim, cfg.attention_heads, cfg.dropout)
                                      for _ in range(cfg.attention_layers)))
        self.norm = nn.LayerNorm(dim)
        self.heads = make_heads(spec, cfg, dim)

    def _tokens_and_heads(self, numeric: torch.Tensor, categorical: torch.Tensor,
                          tasks: list[str] | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = [numeric.unsqueeze(2) * self.numeric_weight + self.numeric_bias]
        tokens += [emb(categorical[:, i]).unsqueeze(1) for i, emb in enumerate(self.embeddings)]
        z = self.blocks[:-1](torch.cat([self.cls.expand(numeric.shape[0], -1, -1), *tokens], dim=1))
        cls = self.norm(self.blocks[-1](z))[:, 0]
        return z, {name: head_output(self.heads[name](cls)) for name in tasks or self.task_names}

    def represent(self, numeric: torch.Tensor, categorical: torch.Tensor,
                  tasks: list[str] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Z: [B, 1 + F, D], the tokens entering the last block. Attention runs on the plain (math) kernel: the
        fused ones have no derivative of their backward, and Rep-MTL differentiates the saliencies again."""
        with sdpa_kernel(SDPBackend.MATH):
            return self._tokens_and_heads(numeric, categorical, tasks)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor,
                tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
        return self._tokens_and_heads(numeric, categorical, tasks)[1]
