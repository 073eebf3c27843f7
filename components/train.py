"""The training loop: in-memory tensor batches, masked per-task losses, a weighting
strategy, AdamW, early stopping on the primary task, a checkpoint every epoch.

Reads top to bottom: tensors -> model -> for each epoch: shuffle, step, validate,
checkpoint -> best weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.flop_counter import FlopCounterMode

from components import distributed
from components.architectures import Architecture, SharedRepresentation, build_model
from components.config import ProjectConfig, RepMtlSpec, TaskSpec, config_to_yaml, load_config
from components.features import SPEC_FILE, FeatureSpec, TargetSpec
from components.metrics import is_better, task_metrics
from components.mt2st import Mt2stSchedule
from components.rep_mtl import rep_mtl_loss
from components.strategies import Weighting, make_strategy

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.pt"
SPEC = SPEC_FILE
CONFIG = "config.yaml"
SUMMARY = "train_summary.json"


@dataclass
class TensorData:
    numeric: torch.Tensor
    categorical: torch.Tensor
    targets: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return self.numeric.shape[0]

    def to(self, device: torch.device) -> TensorData:
        pin = device.type == "cuda"

        def move(t: torch.Tensor) -> torch.Tensor:
            return (t.pin_memory() if pin else t).to(device, non_blocking=pin)

        return TensorData(move(self.numeric), move(self.categorical), {k: move(v) for k, v in self.targets.items()})


def to_tensors(df: pd.DataFrame, spec: FeatureSpec) -> TensorData:
    cat, _ = spec.transform_categorical(df)
    return TensorData(
        torch.from_numpy(spec.transform_numeric(df)),
        torch.from_numpy(cat),
        {k: torch.from_numpy(v) for k, v in spec.transform_targets(df).items()},
    )


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def masked_loss(task: TaskSpec, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean loss over the rows that have a label for this task."""
    mask = ~torch.isnan(y)
    y0 = torch.where(mask, y, torch.zeros_like(y))
    pred = pred.float()
    if task.loss == "bce":
        loss = F.binary_cross_entropy_with_logits(pred, y0, reduction="none")
    elif task.loss == "cross_entropy":
        loss = F.cross_entropy(pred, y0.long(), reduction="none")
    elif task.loss == "huber":
        loss = F.huber_loss(pred, y0, reduction="none", delta=1.0)
    elif task.loss == "l1":
        loss = F.l1_loss(pred, y0, reduction="none")
    else:
        loss = F.mse_loss(pred, y0, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1)


@torch.no_grad()
def predict_raw(model: Architecture, data: TensorData, batch_size: int = 16384) -> dict[str, np.ndarray]:
    model.eval()
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in model.task_names}
    for i in range(0, len(data), batch_size):
        out = model(data.numeric[i:i + batch_size], data.categorical[i:i + batch_size])
        for name, v in out.items():
            chunks[name].append(v.float().cpu())
    return {name: torch.cat(v).numpy() if v else np.zeros(0) for name, v in chunks.items()}


def evaluate_tensors(model: Architecture, data: TensorData, targets: list[TargetSpec]) -> dict[str, dict[str, float]]:
    raw = predict_raw(model, data)
    return {t.name: task_metrics(t, raw[t.name], data.targets[t.name].cpu().numpy()) for t in targets}


def train_step(model: Architecture, strategy: Weighting, optimizer: torch.optim.Optimizer, data: TensorData,
               idx: torch.Tensor, tasks: dict[str, TaskSpec], autocast: torch.autocast,
               active: list[str] | None = None, scale: dict[str, float] | None = None,
               rep_mtl: RepMtlSpec | None = None, step: int = 0, world: int = 1) -> dict[str, torch.Tensor]:
    """One optimisation step on the rows `idx`; returns the per-task losses (no host sync).

    Only the `active` heads (default: all) are computed; the others get no gradient (`grad` stays None, so
    AdamW leaves them alone). `scale` multiplies each loss before the strategy sees it (MT2ST's γ); `rep_mtl`
    adds the Rep-MTL regulariser on the shared representation (the config allows it on a
    `SharedRepresentation` architecture only). The architecture's `penalty` is added, and with
    `alternating_groups` only group `step % len(groups)` is updated. With `world` > 1 the gradients are
    averaged across the data-parallel ranks before the step."""
    with autocast:
        if rep_mtl is None:
            out = model(data.numeric[idx], data.categorical[idx], tasks=active)
        else:
            shared = cast(SharedRepresentation, model)
            z = shared.encode(data.numeric[idx], data.categorical[idx])
            out = shared.predict_from(z, tasks=active)
        losses = {name: masked_loss(tasks[name], out[name], data.targets[name][idx]) for name in out}
    optimizer.zero_grad(set_to_none=True)
    if rep_mtl is not None and len(losses) > 1:  # its gradient accumulates with the strategy's below
        rep_mtl_loss(losses, z, rep_mtl).backward(retain_graph=True)
    penalty = model.penalty(list(losses))
    if penalty is not None:
        penalty.backward()
    strategy.backward({name: loss * scale[name] for name, loss in losses.items()} if scale else losses)
    groups = model.alternating_groups()
    if groups:
        for i, group in enumerate(groups):
            if i != step % len(groups):
                for p in group:
                    p.grad = None  # AdamW skips parameters without a gradient
    if world > 1:
        distributed.average_gradients([p for group in optimizer.param_groups for p in group["params"]], world)
    optimizer.step()
    return losses


def make_autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on GPU; plain fp32 on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@dataclass
class TrainResult:
    out_dir: Path
    best_epoch: int
    epochs_run: int
    validation: dict[str, dict[str, float]]
    history: list[dict]
    samples_per_s: float
    wall_s: float
    train_flops: float = 0.0
    switch_epoch: int | None = None


def _atomic_save(obj: object, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, out_dir: Path,
          resume: bool = False, progress: bool = True) -> TrainResult:
    tc = cfg.training
    device = distributed.local_device(pick_device(tc.device))
    rank, world = distributed.init(device)
    out_dir = Path(out_dir) / f"rank{rank}" if rank else Path(out_dir)  # rank 0 writes the run's files
    out_dir.mkdir(parents=True, exist_ok=True)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)

    ckpt_path = out_dir / CHECKPOINT
    ckpt = torch.load(ckpt_path, weights_only=True) if resume and ckpt_path.exists() else None
    if ckpt and ckpt["config"] != config_to_yaml(cfg):
        raise ValueError(f"{ckpt_path} was written by a run with a different config: "
                         "resume with the same config, or train without --resume")
    warm = Path(tc.warm_start) if tc.warm_start and not ckpt else None
    if ckpt:
        spec = FeatureSpec.from_json(ckpt["feature_spec"])
    elif warm:  # the warm-start weights index the old vocabularies: keep them (new values go out-of-vocabulary)
        spec = FeatureSpec.load(warm / SPEC)
    else:
        spec = FeatureSpec.fit(train_df, cfg)
    spec.save(out_dir / SPEC)
    (out_dir / CONFIG).write_text(config_to_yaml(cfg))

    train_t = to_tensors(train_df, spec).to(device)
    val_t = to_tensors(val_df, spec).to(device)
    model = build_model(spec, cfg.model)
    if warm:
        model.load_state_dict(torch.load(warm / WEIGHTS, weights_only=True))
    model = model.to(device)
    if world > 1:
        distributed.broadcast_parameters(model)
    step_model = torch.compile(model) if tc.compile else model
    task_names = model.task_names
    task_specs = {t.name: t for t in cfg.tasks}
    strategy = make_strategy(task_names, tc.strategy).attach(model)
    optimizer = torch.optim.AdamW([*model.parameters(), *strategy.parameters()], lr=tc.lr,
                                  weight_decay=tc.weight_decay)
    primary = cfg.primary_task
    schedule = Mt2stSchedule(tc.mt2st, task_names, primary.name)
    flops_per_sample: dict[str, float] = {}  # measured once per phase (set of trained heads)
    train_flops = 0.0
    start_epoch, best_epoch, bad_epochs = 0, -1, 0
    best_metric, best_state, history = float("nan"), None, []
    if ckpt:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        strategy.load_state_dict(ckpt["strategy"])
        schedule.load_state_dict(ckpt["schedule"])
        flops_per_sample, train_flops = ckpt["flops_per_sample"], ckpt["train_flops"]
        torch.set_rng_state(ckpt["rng"])
        start_epoch, best_epoch, bad_epochs = ckpt["epoch"] + 1, ckpt["best_epoch"], ckpt["bad_epochs"]
        best_metric, best_state, history = ckpt["best_metric"], ckpt["best_state"], ckpt["history"]
        if progress:
            print(f"resuming from {ckpt_path} after epoch {start_epoch} of {tc.epochs}", flush=True)

    n = len(train_t)
    steps = (n + tc.batch_size - 1) // tc.batch_size
    autocast = make_autocast(device)
    t0, seen = time.perf_counter(), 0
    columns = [TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        for epoch in range(start_epoch, tc.epochs):
            if epoch == schedule.switch_epoch:
                bad_epochs = 0  # the single-task phase gets its own early-stopping patience
            if bad_epochs >= tc.early_stopping_patience:
                break
            model.train()
            active = schedule.active_tasks(epoch)
            phase = "+".join(active)
            # seeded per epoch, so a resumed run draws the same batches
            gen = torch.Generator().manual_seed(tc.seed * 100_003 + epoch)
            perm = torch.randperm(n, generator=gen).to(device)
            loss_sums = {name: torch.zeros((), device=device) for name in active}
            job = bar.add_task("train", total=steps, epoch=epoch + 1, status="")
            for s in range(steps):
                idx = perm[s * tc.batch_size:(s + 1) * tc.batch_size][rank::world]
                counter = FlopCounterMode(display=False) if phase not in flops_per_sample else None
                # the counted step runs eagerly: dynamo meeting the counter's dispatch mode would skip the model
                # for good, and FLOPs are counted on the eager ops anyway
                with counter or contextlib.nullcontext():
                    losses = train_step(step_model if counter is None else model, strategy, optimizer, train_t, idx,
                                        task_specs, autocast, active=active, rep_mtl=tc.rep_mtl, world=world,
                                        scale=schedule.loss_weights(epoch + s / steps), step=epoch * steps + s)
                if counter is not None:
                    flops_per_sample[phase] = counter.get_total_flops() / len(idx)
                train_flops += flops_per_sample[phase] * len(idx)
                for name in active:
                    loss_sums[name] += losses[name].detach()
                bar.advance(job)
            seen += n
            strategy.epoch_end()
            train_loss = {name: float(v) / steps for name, v in loss_sums.items()}
            val = evaluate_tensors(model, val_t, spec.targets)
            metric = val[primary.name][primary.metric]
            improved = best_epoch < 0 or is_better(primary.metric, metric, best_metric)
            if improved:
                best_metric, best_epoch, bad_epochs = metric, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
            if schedule.observe(epoch, improved) and progress:
                print(f"MT2ST switch: {primary.name} plateaued, training it alone from epoch {epoch + 2}", flush=True)
            history.append({"epoch": epoch + 1, "tasks": active, "loss_weights": schedule.loss_weights(epoch),
                            "train_loss": train_loss, "validation": val})
            bar.update(job, status=f"val {primary.name} {primary.metric}={metric:.4f}{' *' if improved else ''}")
            _atomic_save({
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "strategy": strategy.state_dict(), "schedule": schedule.state_dict(),
                "flops_per_sample": flops_per_sample, "train_flops": train_flops,
                "rng": torch.get_rng_state(), "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "best_metric": best_metric, "best_state": best_state,
                "history": history, "feature_spec": spec.to_json(), "config": config_to_yaml(cfg),
            }, ckpt_path)

    wall = time.perf_counter() - t0
    assert best_state is not None, "no epoch was trained"
    model.load_state_dict(best_state)
    torch.save(best_state, out_dir / WEIGHTS)
    result = TrainResult(out_dir, best_epoch + 1, len(history), history[best_epoch]["validation"], history,
                         samples_per_s=seen / wall if wall > 0 else 0.0, wall_s=wall, train_flops=train_flops,
                         switch_epoch=schedule.switch_epoch)
    (out_dir / SUMMARY).write_text(json.dumps({
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "validation": result.validation,
        "samples_per_s": result.samples_per_s, "wall_s": wall, "device": device.type,
        "train_flops": train_flops * world, "flops_per_sample": flops_per_sample, "switch_epoch": schedule.switch_epoch,
        "world_size": world, "compiled": tc.compile,
        "history": history,
    }, indent=1))
    return result


def load_trained(model_dir: Path) -> tuple[Architecture, FeatureSpec, ProjectConfig]:
    model_dir = Path(model_dir)
    cfg = load_config(model_dir / CONFIG)
    spec = FeatureSpec.load(model_dir / SPEC)
    model = build_model(spec, cfg.model)
    model.load_state_dict(torch.load(model_dir / WEIGHTS, weights_only=True))
    model.eval()
    return model, spec, cfg
