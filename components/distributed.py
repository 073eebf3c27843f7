"""Data-parallel training under `torchrun` (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU.

Every rank draws the same shuffled batch and trains on its `rank::world` share of it; gradients are averaged
across ranks after the strategy's backward and before the optimizer step. The averaging is done here rather
than by `DistributedDataParallel`'s reducer because two strategies write gradients outside its view: torchjd's
aggregators set `.grad` from a Jacobian, and Rep-MTL differentiates through `torch.autograd.grad` with
`create_graph=True`, which DDP does not support. The result is the same synchronous update DDP makes.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device) -> tuple[int, int]:
    """(rank, world size); joins the process group started by torchrun when there is one."""
    world = world_size()
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def local_device(device: torch.device) -> torch.device:
    """cuda:LOCAL_RANK for a multi-GPU run, else `device`."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights."""
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """All-reduce the gradients that exist, as one flat buffer (one collective per step)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(synced)
