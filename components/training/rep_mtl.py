"""Rep-MTL (docs/methods.md): regularise the shared representation Z through the tasks' saliencies S_t = ∂L_t/∂Z.

Z is [B, P, C] (positions × channels: feature tokens × width for a token trunk, experts × units for MMoE) or
[B, D] (an MLP trunk: each unit is a position with one channel). The saliencies are computed with
`create_graph=True`, so the regulariser's gradient reaches the trunk (double backprop).

- TSR: Ŝ_{b,p,t} = the channel-mean |saliency|, divided by task t's mean of it over the batch and positions, then
  P_{b,p,t} = Ŝ_{b,p,t} / Σ_k Ŝ_{b,p,k}; the mean entropy −Σ_t P log P over samples and positions is penalised,
  so each position serves specific tasks. The per-task scale is the project's (docs/methods.md, the audit and
  issue 36): on raw magnitudes P is set by how large each task's loss gradient is, so the entropy falls when one
  task fits *worse* everywhere; dividing each (sample, task) by its own sum instead also divides out the
  sample's residual, which on piecewise-linear heads is the saliency's only path to Z, and TSR then moved the
  heads alone. A batch-wide scale per task removes the first and keeps the second.
- CSA (product choice where the paper is not explicit): each (sample, task) saliency, flattened and
  L2-normalised, is an anchor; the other tasks' saliencies of the same sample are its positives, the same
  task's saliencies of the other samples its negatives; InfoNCE with cosine similarity and temperature τ. Being
  a cosine, it does not see the residual either: on ReLU towers its gradient reaches the heads (and MMoE's
  gates) but not Z; on the transformer it reaches Z through the last block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from components.config.schema import RepMtlSpec

EPS = 1e-12


def saliencies(losses: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """[T, B, P, C] task saliencies, differentiable (double backprop)."""
    grads = [torch.autograd.grad(loss, z, create_graph=True)[0] for loss in losses.values()]
    s = torch.stack(grads)
    return s.unsqueeze(-1) if z.dim() == 2 else s


def tsr_loss(s: torch.Tensor) -> torch.Tensor:
    magnitude = s.abs().mean(dim=-1)  # [T, B, P]
    where = magnitude / (magnitude.mean(dim=(1, 2), keepdim=True) + EPS)  # each task on its own batch scale
    p = where / (where.sum(dim=0, keepdim=True) + EPS)
    return -(p * torch.log(p + EPS)).sum(dim=0).mean()


def csa_loss(s: torch.Tensor, tau: float, samples: int) -> torch.Tensor:
    if s.shape[0] < 2 or min(s.shape[1], samples) < 2:
        return s.new_zeros(())
    u = F.normalize(s[:, :samples].flatten(2), dim=-1)  # [T, B', P·C]
    anchors = u.transpose(0, 1)  # [B', T, ·]
    positives = torch.exp(anchors @ anchors.transpose(1, 2) / tau)  # [B', T, T]: same sample, all tasks
    pos = positives.sum(dim=2) - positives.diagonal(dim1=1, dim2=2)  # drop the anchor itself
    same_task = torch.exp(u @ u.transpose(1, 2) / tau)  # [T, B', B']: same task, all samples
    neg = (same_task.sum(dim=2) - same_task.diagonal(dim1=1, dim2=2)).transpose(0, 1)  # [B', T]
    return -torch.log(pos / (pos + neg) + EPS).mean()


def rep_mtl_loss(losses: dict[str, torch.Tensor], z: torch.Tensor, spec: RepMtlSpec) -> torch.Tensor:
    """λ_tsr·L_tsr + λ_csa·L_csa on this batch; zero with fewer than two tasks (after an MT2ST switch)."""
    if len(losses) < 2:
        return z.new_zeros(())
    s = saliencies(losses, z)
    return spec.lambda_tsr * tsr_loss(s) + spec.lambda_csa * csa_loss(s, spec.tau, spec.csa_samples)


# a loss term on the shared representation Z, given the step's task losses: what the trainer adds (None: nothing)
RepresentationTerm = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor | None]


class RepMtlTerm:
    """Rep-MTL as the trainer's representation term: `rep_mtl_loss` on steps that train two tasks or more."""

    def __init__(self, spec: RepMtlSpec) -> None:
        self.spec = spec

    def __call__(self, losses: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor | None:
        return rep_mtl_loss(losses, z, self.spec) if len(losses) > 1 else None
