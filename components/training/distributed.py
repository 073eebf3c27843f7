"""Data-parallel training under `torchrun` (WORLD_SIZE > 1) through torch's `DistributedDataParallel`: NCCL on
GPUs, gloo on CPU.

Every rank draws the same shuffled batch and trains on its `rank::world` share of it. DDP starts every rank from
rank 0's weights and, for a strategy that makes one backward pass of one weighted sum (`ew`, `static`, `uw`,
`dwa`), all-reduces the model's gradients during that pass, bucket by bucket, overlapping the backward. A step it
cannot see runs the bare model (DDP's reducer only waits for a backward after its own forward) and its gradients
are averaged here after the strategy's backward, as one flat buffer:

- Jacobian methods (`pcgrad`, `upgrad`, `mgda`, `cagrad`) differentiate each task's loss on its own
  (`torch.autograd.grad`, which DDP's reducer does not see). Their per-task gradients (the Jacobian) are
  averaged across ranks *before* the aggregator combines them, so every rank aggregates the Jacobian of the
  whole batch — averaging the aggregated updates instead would not be the same (the aggregators are not linear).
- Rep-MTL differentiates through `torch.autograd.grad(create_graph=True)`, and an architecture `penalty`
  (`shared_private`) is a second backward pass: both need gradients averaged after all passes.

A strategy's own parameters (`uw`'s log-variances) live outside the model and are averaged here too.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.parallel import DistributedDataParallel

from components.training.architectures import Architecture
from components.training.strategies import Weighting


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


def average(tensors: list[torch.Tensor]) -> None:
    """All-reduce `tensors` in place to their mean over the ranks, as one flat buffer (one collective)."""
    if not tensors:
        return
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for tensor, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors), strict=True):
        tensor.copy_(synced)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients that exist."""
    average([p.grad for p in params if p.grad is not None])


class DataParallel:
    """The model under `DistributedDataParallel` and how one step's gradients reach every rank (see above)."""

    def __init__(self, model: Architecture, strategy: Weighting, device: torch.device, rep_mtl: bool,
                 subsets: bool) -> None:
        self.world = dist.get_world_size()
        # heads left out of a step (MT2ST's single-task phase) get no gradient: DDP must look for them
        self.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                           find_unused_parameters=subsets)
        self.ddp_reduces = strategy.single_backward and not rep_mtl and model.penalty(model.task_names) is None
        self.sync = "ddp" if self.ddp_reduces else "after backward"
        # DDP's forward prepares its reducer for one backward pass; the other steps run the bare model
        self.forward_model: torch.nn.Module = self.ddp if self.ddp_reduces else model
        strategy.data_parallel(average)

    def finish(self, model_params: list[torch.nn.Parameter], strategy_params: list[torch.nn.Parameter]) -> None:
        """After the strategy's backward: average what DDP did not."""
        average_gradients(strategy_params if self.ddp_reduces else [*model_params, *strategy_params])
