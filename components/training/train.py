"""The training loop: in-memory tensor batches, masked per-task losses, a weighting
strategy, AdamW, early stopping on the primary task (on a new task's when a warm start adds one), a
checkpoint every epoch.

Reads top to bottom: tensors -> model -> for each epoch: shuffle, step, validate,
checkpoint -> best weights.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import ClassVar, cast

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from torch.utils.flop_counter import FlopCounterMode

from components.config.plugins import EqualWeightingSettings
from components.config.schema import ProjectConfig, TaskSpec, config_to_yaml, load_config
from components.config.tasks import kind_of
from components.data.features import SPEC_FILE, FeatureSpec, TargetSpec
from components.training import distributed
from components.training.architectures import Architecture, SharedRepresentation, build_model
from components.training.calibration import (
    calibrated,
    fit_temperatures,
    load_temperatures,
    save_temperatures,
    with_temperatures,
)
from components.training.metrics import head_metrics, is_better
from components.training.mt2st import Mt2stSchedule
from components.training.rep_mtl import RepMtlTerm, RepresentationTerm
from components.training.strategies import Weighting, make_strategy

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
    # bf16 autocast outputs are lifted to float32; a float64 model (a gradient check) keeps its precision
    loss = kind_of(task).loss(task.loss, pred.to(torch.promote_types(pred.dtype, torch.float32)), y0)  # type: ignore[arg-type]
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
    """Every metric of every task; a calibrated head's logits divided by its temperature first."""
    raw = calibrated(predict_raw(model, data), targets)
    return {t.name: head_metrics(t, raw[t.name], data.targets[t.name].cpu().numpy()) for t in targets}


@dataclass(frozen=True)
class StepContext:
    """What every optimisation step of a run reads: the model and its optimiser, the training tensors, the tasks,
    the autocast, and with several ranks how gradients reach them (`components.training.distributed`). `compiled` (a
    `torch.compile`d model) runs the steps that do not count FLOPs."""

    model: Architecture
    optimizer: torch.optim.Optimizer
    data: TensorData
    tasks: dict[str, TaskSpec]
    autocast: torch.autocast
    parallel: distributed.DataParallel | None = None
    compiled: Architecture | None = None


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch trains. `active`: the heads computed (None: all; the others get no gradient, so AdamW leaves
    them alone). `loss_weights(fraction of the epoch done)` scales each loss before the strategy sees it (MT2ST's
    γ). `loss_terms` are regularisers on the shared representation (Rep-MTL), their gradient added to the
    strategy's. `trainable` (None: every parameter) are the only parameters that learn this epoch."""

    strategy: Weighting
    active: list[str] | None = None
    loss_weights: Callable[[float], dict[str, float]] | None = None
    loss_terms: tuple[RepresentationTerm, ...] = ()
    trainable: frozenset[int] | None = None  # ids of parameters


def train_step(ctx: StepContext, plan: EpochPlan, idx: torch.Tensor, scale: dict[str, float] | None = None,
               step: int = 0, model: Architecture | None = None) -> dict[str, torch.Tensor]:
    """One optimisation step of `plan` on the rows `idx` (forward by `model`, default `ctx.model`); returns the
    per-task losses (no host sync). `scale` multiplies each loss; the architecture's `penalty` is added, and with
    `alternating_groups` only group `step % len(groups)` is updated. With several ranks the forward goes through
    `DistributedDataParallel` where it reduces the gradients, and the rest is averaged before the step."""
    data, base = ctx.data, ctx.model
    with ctx.autocast:
        if plan.loss_terms:  # the terms read the shared representation the heads are computed from
            z, out = cast(SharedRepresentation, base).represent(data.numeric[idx], data.categorical[idx], plan.active)
        else:
            forward = ctx.parallel.forward_model if ctx.parallel is not None else model if model is not None else base
            out = forward(data.numeric[idx], data.categorical[idx], tasks=plan.active)
        losses = {name: masked_loss(ctx.tasks[name], out[name], data.targets[name][idx]) for name in out}
    ctx.optimizer.zero_grad(set_to_none=True)
    for term in plan.loss_terms:  # its gradient accumulates with the strategy's below
        extra = term(losses, z)
        if extra is not None:
            extra.backward(retain_graph=True)
    penalty = base.penalty(list(losses))
    if penalty is not None:
        penalty.backward()
    plan.strategy.backward({name: loss * scale[name] for name, loss in losses.items()} if scale else losses)
    groups = base.alternating_groups()
    if groups:
        for i, group in enumerate(groups):
            if i != step % len(groups):
                for p in group:
                    p.grad = None  # AdamW skips parameters without a gradient
    if ctx.parallel is not None:
        ctx.parallel.finish(list(base.parameters()), plan.strategy.parameters())
    ctx.optimizer.step()
    return losses


def make_autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on GPU; plain fp32 on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class TrainingDiverged(ValueError):
    """A task's training loss stopped being a finite number: the setting (learning rate, a regulariser's weight)
    is too aggressive. Raised at the end of that epoch, before its weights can become the best epoch's."""


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


@dataclass
class TrainState:
    """Everything a run carries from one epoch to the next, saved after every epoch (`checkpoint.pt`) and
    restored by `--resume`: one list of fields for both directions. The checkpoint holds only tensors, numbers,
    strings, lists and dicts, so it loads with `weights_only=True`."""

    model: Architecture
    optimizer: torch.optim.Optimizer
    strategy: Weighting
    schedule: Mt2stSchedule
    epoch: int = -1  # the last finished epoch (0-based)
    best_epoch: int = -1
    bad_epochs: int = 0
    best_metric: float = float("nan")
    best_state: dict | None = None  # the model's weights at the best epoch
    history: list[dict] = field(default_factory=list)
    flops_per_sample: dict[str, float] = field(default_factory=dict)  # measured once per phase (set of heads)
    train_flops: float = 0.0
    average: dict | None = None  # the weight average's tensors (`training.ema_decay`), shared with it

    STATEFUL: ClassVar[tuple[str, ...]] = ("model", "optimizer", "strategy", "schedule")  # through state_dict()

    def to_checkpoint(self) -> dict:
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.STATEFUL}
        return {**{name: getattr(self, name).state_dict() for name in self.STATEFUL}, **plain,
                "rng": torch.get_rng_state()}

    def restore(self, checkpoint: dict) -> None:
        for name in self.STATEFUL:
            getattr(self, name).load_state_dict(checkpoint[name])
        for f in fields(self):
            if f.name not in self.STATEFUL:
                setattr(self, f.name, checkpoint[f.name])
        torch.set_rng_state(checkpoint["rng"])


class WeightAverage:
    """An exponential moving average of a model's weights (`training.ema_decay`), updated after every optimizer
    step; with it, the average is what is validated, kept as the best epoch's weights and exported. At a large
    learning rate one step's weights carry that step's noise; their average over the last 1 / (1 - decay) steps
    does not (docs/methods.md, "Averaging the weights"). The decay warms up as min(decay, (1 + n) / (10 + n)) after
    n updates, so a short run is not an average of its random start. Integer buffers are copied, not averaged."""

    def __init__(self, model: Architecture, decay: float, updates: int = 0) -> None:
        self.source, self.decay, self.updates = model, decay, updates
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        for avg, now in zip(self.model.state_dict().values(), self.source.state_dict().values(), strict=True):
            if avg.is_floating_point():
                avg.lerp_(now, 1 - decay)
            else:
                avg.copy_(now)


def epoch_batches(n: int, batch_size: int, seed: int, device: torch.device, rank: int = 0,
                  world: int = 1) -> list[torch.Tensor]:
    """Row indices of one epoch, batch by batch: a permutation drawn from `seed` alone (so a resumed run draws the
    same batches), each rank taking its `rank::world` share of every batch."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    return [perm[s:s + batch_size][rank::world] for s in range(0, n, batch_size)]


@dataclass
class EpochStats:
    train_loss: dict[str, float]  # mean per-task loss over the epoch's steps
    flops: float  # training FLOPs of the epoch (0 when not counted)


def run_epoch(ctx: StepContext, plan: EpochPlan, batches: list[torch.Tensor], *, first_step: int = 0,
              flops_per_sample: dict[str, float] | None = None,
              on_step: Callable[[], None] | None = None) -> EpochStats:
    """The one training loop (`train`, PBT and the throughput benchmark run it): `train_step` on every batch.

    With `flops_per_sample`, the first step of a phase not in it (its set of active heads) runs eagerly under
    `FlopCounterMode` and its FLOPs per sample are recorded there; dynamo meeting the counter's dispatch mode would
    skip the model for good, and FLOPs are counted on the eager ops anyway. The losses stay on the device until the
    epoch ends (no host sync per step)."""
    for p in ctx.model.parameters():
        p.requires_grad_(plan.trainable is None or id(p) in plan.trainable)
    names = plan.active or ctx.model.task_names
    phase = "+".join(names)
    sums = {name: torch.zeros((), device=ctx.data.numeric.device) for name in names}
    flops = 0.0
    for s, idx in enumerate(batches):
        counter = None
        if flops_per_sample is not None and phase not in flops_per_sample:
            counter = FlopCounterMode(display=False)
        with counter or contextlib.nullcontext():
            losses = train_step(ctx, plan, idx, plan.loss_weights(s / len(batches)) if plan.loss_weights else None,
                                first_step + s, ctx.compiled if counter is None else None)
        if counter is not None:
            flops_per_sample[phase] = counter.get_total_flops() / len(idx)  # type: ignore[index]
        if flops_per_sample is not None:
            flops += flops_per_sample[phase] * len(idx)
        for name in names:
            sums[name] += losses[name].detach()
        if on_step is not None:
            on_step()
    return EpochStats({name: float(v) / max(len(batches), 1) for name, v in sums.items()}, flops)


def _checkpoint_to_resume(path: Path, cfg: ProjectConfig, resume: bool) -> dict | None:
    ckpt = torch.load(path, weights_only=True) if resume and path.exists() else None
    if ckpt and ckpt["config"] != config_to_yaml(cfg):
        raise ValueError(f"{path} was written by a run with a different config: "
                         "resume with the same config, or train without --resume")
    return ckpt


def _feature_spec(cfg: ProjectConfig, train_df: pd.DataFrame, ckpt: dict | None) -> FeatureSpec:
    """The resumed run's spec, the warm start's (its weights index the old vocabularies: new values go
    out-of-vocabulary), or a new one fitted on the training window."""
    if ckpt:
        return FeatureSpec.from_json(ckpt["feature_spec"])
    if cfg.training.warm_start:
        return FeatureSpec.load(Path(cfg.training.warm_start) / SPEC).with_tasks(train_df, cfg)
    return FeatureSpec.fit(train_df, cfg)


def tasks_new_to(folder: Path, model: Architecture) -> list[str]:
    """The tasks of `model` that the model in `folder` (an exported model or a training run) has no head for."""
    old_tasks = {t.name for t in FeatureSpec.load(folder / SPEC).targets}
    return [name for name in model.task_names if name not in old_tasks]


def warm_start(model: Architecture, folder: Path) -> None:
    """Load the weights of the model in `folder` into `model`. A new task's head (and any module of its own) keeps
    its fresh initialisation, a retired task's parameters are left out; any other mismatch is an error."""
    new_tasks = tasks_new_to(folder, model)
    retired = {t.name for t in FeatureSpec.load(folder / SPEC).targets} - set(model.task_names)
    own = model.state_dict()
    state = torch.load(folder / WEIGHTS, weights_only=True)
    stray = [k for k in state if k not in own and not set(k.split(".")) & retired]
    stray += [k for k in own if k not in state and not set(k.split(".")) & set(new_tasks)]
    if stray:
        raise ValueError(f"{folder}: its weights do not fit this architecture ({stray[:3]} ...): warm start from a "
                         "model trained with the same `model:` settings, or train from scratch")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def task_parameters(model: Architecture, tasks: list[str]) -> list[torch.nn.Parameter]:
    """The parameters that belong to `tasks` alone: modules keyed by a task's name (heads, gates, encoders)."""
    return [p for name, p in model.named_parameters() if set(name.split(".")) & set(tasks)]


def _progress(enabled: bool) -> Progress:
    columns = [TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeRemainingColumn()]
    return Progress(*columns, disable=not enabled, transient=False)


def _record_epoch(state: TrainState, validated: Architecture, epoch: int, active: list[str],
                  train_loss: dict[str, float], val: dict[str, dict[str, float]],
                  watched: TaskSpec) -> tuple[bool, bool]:
    """Early stopping, MT2ST's plateau watch and the history line of one epoch: (the watched task's metric improved,
    MT2ST switches to the primary task alone). `validated` (the model, or its weight average) scored `val`."""
    metric = val[watched.name][watched.metric]  # type: ignore[index]
    improved = state.best_epoch < 0 or is_better(watched.metric, metric, state.best_metric)  # type: ignore[arg-type]
    if improved:
        state.best_metric, state.best_epoch, state.bad_epochs = metric, epoch, 0
        state.best_state = copy.deepcopy(validated.state_dict())
    else:
        state.bad_epochs += 1
    switched = state.schedule.observe(epoch, improved)
    state.history.append({"epoch": epoch + 1, "tasks": active, "loss_weights": state.schedule.loss_weights(epoch),
                          "train_loss": train_loss, "validation": val})
    state.epoch = epoch
    return improved, switched


@dataclass
class TrainingRun:
    """A run set up by `start_run`: what the epoch loop of `train` reads besides the config."""

    cfg: ProjectConfig
    out_dir: Path
    spec: FeatureSpec
    ctx: StepContext
    state: TrainState
    val_t: TensorData
    averaged: WeightAverage | None  # `training.ema_decay`: validated, kept and exported instead of the model
    rank: int
    world: int
    new_tasks: list[str]  # heads the warm start's model did not have
    loss_terms: tuple[RepresentationTerm, ...]

    @property
    def validated(self) -> Architecture:
        return self.averaged.model if self.averaged is not None else self.state.model

    @property
    def watched(self) -> TaskSpec:
        """The task whose validation metric stops training and picks the best epoch: the primary task, or in a run
        that adds tasks the first new one (the old tasks, which start trained, are held by the promotion gate)."""
        return self.cfg.task(self.new_tasks[0]) if self.new_tasks else self.cfg.primary_task

    @property
    def steps(self) -> int:
        """Optimisation steps per epoch."""
        return (len(self.ctx.data) + self.cfg.training.batch_size - 1) // self.cfg.training.batch_size

    def plan(self, epoch: int) -> EpochPlan:
        """The first `training.new_task_head_epochs` epochs of a warm start with new tasks train their heads alone
        (a plain loss sum: a frozen trunk has no gradient for a strategy to weigh); then MT2ST's schedule."""
        schedule = self.state.schedule
        if self.new_tasks and epoch < self.cfg.training.new_task_head_epochs:
            own = task_parameters(self.state.model, self.new_tasks)
            return EpochPlan(make_strategy(self.new_tasks, EqualWeightingSettings()), self.new_tasks,
                             trainable=frozenset(map(id, own)))
        return EpochPlan(self.state.strategy, schedule.active_tasks(epoch),
                         lambda done: schedule.loss_weights(epoch + done), self.loss_terms)

    def batches(self, epoch: int) -> list[torch.Tensor]:
        tc = self.cfg.training
        return epoch_batches(len(self.ctx.data), tc.batch_size, tc.seed * 100_003 + epoch,
                             self.ctx.data.numeric.device, self.rank, self.world)

    def after_step(self, bar: Progress, job: TaskID) -> None:
        if self.averaged is not None:
            self.averaged.update()
        bar.advance(job)

    def save_checkpoint(self) -> None:
        _atomic_save({**self.state.to_checkpoint(), "feature_spec": self.spec.to_json(),
                      "config": config_to_yaml(self.cfg)}, self.out_dir / CHECKPOINT)


def start_run(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, out_dir: Path, resume: bool,
              progress: bool) -> TrainingRun:
    """Device and ranks, seeds, the FeatureSpec and tensors, the model (resumed, warm-started or new), its
    strategy, optimiser and weight average, and the state restored from the checkpoint with `resume`."""
    tc = cfg.training
    device = distributed.local_device(pick_device(tc.device))
    rank, world = distributed.init(device)
    out_dir = Path(out_dir) / f"rank{rank}" if rank else Path(out_dir)  # rank 0 writes the run's files
    out_dir.mkdir(parents=True, exist_ok=True)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    ckpt = _checkpoint_to_resume(out_dir / CHECKPOINT, cfg, resume)
    spec = _feature_spec(cfg, train_df, ckpt)
    spec.save(out_dir / SPEC)
    (out_dir / CONFIG).write_text(config_to_yaml(cfg))
    train_t, val_t = to_tensors(train_df, spec).to(device), to_tensors(val_df, spec).to(device)
    model = build_model(spec, cfg.model)
    new_tasks = tasks_new_to(Path(tc.warm_start), model) if tc.warm_start else []
    if tc.warm_start and not ckpt:
        warm_start(model, Path(tc.warm_start))
    if new_tasks and tc.new_task_head_epochs and world > 1:
        raise ValueError(f"training.new_task_head_epochs: the head-only stage for the new tasks {new_tasks} runs on "
                         "one rank; set it to 0 for a distributed run")
    model = model.to(device)
    if world > 1 and tc.compile:
        raise ValueError("training.compile is not supported with several ranks (WORLD_SIZE > 1) yet: "
                         "set it to false for a distributed run")
    strategy = make_strategy(model.task_names, tc.strategy).attach(model)
    parallel = distributed.DataParallel(model, strategy, device, rep_mtl=tc.rep_mtl is not None,
                                        subsets=tc.mt2st is not None) if world > 1 else None
    optimizer = torch.optim.AdamW([*model.parameters(), *strategy.parameters()], lr=tc.lr,
                                  weight_decay=tc.weight_decay)
    state = TrainState(model, optimizer, strategy, Mt2stSchedule(tc.mt2st, model.task_names, cfg.primary_task.name))
    if ckpt:
        state.restore(ckpt)
        if progress:
            print(f"resuming from {out_dir / CHECKPOINT} after epoch {state.epoch + 1} of {tc.epochs}", flush=True)
    ctx = StepContext(model, optimizer, train_t, {t.name: t for t in cfg.tasks}, make_autocast(device), parallel,
                      cast(Architecture, torch.compile(model)) if tc.compile else None)
    run = TrainingRun(cfg, out_dir, spec, ctx, state, val_t, None, rank, world, new_tasks,
                      (RepMtlTerm(tc.rep_mtl),) if tc.rep_mtl else ())
    if tc.ema_decay:  # every epoch takes `steps` steps: the finished epochs say how many updates it has had
        run.averaged = WeightAverage(model, tc.ema_decay, (state.epoch + 1) * run.steps)
        if state.average is not None:
            run.averaged.model.load_state_dict(state.average)
        state.average = run.averaged.model.state_dict()  # the checkpoint saves the average as it moves
    return run


def train(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, out_dir: Path,
          resume: bool = False, progress: bool = True) -> TrainResult:
    run = start_run(cfg, train_df, val_df, out_dir, resume, progress)
    tc, state, primary, watched = cfg.training, run.state, cfg.primary_task, run.watched
    schedule = state.schedule
    t0, seen = time.perf_counter(), 0
    with _progress(progress) as bar:
        for epoch in range(state.epoch + 1, tc.epochs):
            if epoch == schedule.switch_epoch:
                state.bad_epochs = 0  # the single-task phase gets its own early-stopping patience
            if state.bad_epochs >= tc.early_stopping_patience and not schedule.switch_pending(epoch):
                break
            plan = run.plan(epoch)
            job = bar.add_task("train", total=run.steps, epoch=epoch + 1,
                               status="new heads" if plan.trainable is not None else "")
            run.ctx.model.train()
            stats = run_epoch(run.ctx, plan, run.batches(epoch), first_step=epoch * run.steps,
                              flops_per_sample=state.flops_per_sample, on_step=partial(run.after_step, bar, job))
            if diverged := sorted(name for name, loss in stats.train_loss.items() if not math.isfinite(loss)):
                raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: the training loss of {diverged} is "
                                       f"not finite (lr {tc.lr:g}); lower training.lr, or the regularisers' weights")
            state.train_flops += stats.flops
            seen += len(run.ctx.data)
            plan.strategy.epoch_end()
            val = evaluate_tensors(run.validated, run.val_t, run.spec.targets)
            improved, switched = _record_epoch(state, run.validated, epoch, plan.active or run.ctx.model.task_names,
                                               stats.train_loss, val, watched)
            if switched and progress:
                print(f"MT2ST switch: {primary.name} plateaued, training it alone from epoch {epoch + 2}", flush=True)
            metric = val[watched.name][watched.metric]  # type: ignore[index]
            bar.update(job, status=f"val {watched.name} {watched.metric}={metric:.4f}{' *' if improved else ''}")
            run.save_checkpoint()
    if progress and tc.mt2st and tc.mt2st.switch and not schedule.reached(len(state.history)):
        print(f"MT2ST switch not reached: {primary.name} did not plateau for the trigger's patience in "
              f"{len(state.history)} epochs, so every epoch trained all tasks (train_summary.json: switch_reached)",
              flush=True)
    return _finish(state, cfg, run.out_dir, time.perf_counter() - t0, seen, run.ctx.data.numeric.device,
                   run.ctx.parallel, run.spec, run.val_t)


def _finish(state: TrainState, cfg: ProjectConfig, out_dir: Path, wall: float, seen: int, device: torch.device,
            parallel: distributed.DataParallel | None, spec: FeatureSpec, val_t: TensorData) -> TrainResult:
    """The best epoch's weights into the model and `model.pt`, the classification heads' temperatures fitted on
    the validation window (`training.calibration`), and the run's summary: its validation metrics are the
    calibrated model's, what evaluation and the exported graph see."""
    assert state.best_state is not None, "no epoch was trained"
    state.model.load_state_dict(state.best_state)
    torch.save(state.best_state, out_dir / WEIGHTS)
    history, schedule = state.history, state.schedule
    validation = history[state.best_epoch]["validation"]
    if cfg.training.calibration == "temperature":
        temperatures = fit_temperatures(spec, predict_raw(state.model, val_t), {
            name: y.cpu().numpy() for name, y in val_t.targets.items()})
        save_temperatures(out_dir, temperatures)
        validation = evaluate_tensors(state.model, val_t, with_temperatures(spec, temperatures).targets)
    world = parallel.world if parallel is not None else 1
    switched = schedule.reached(len(history))  # a switch after the last epoch trained nothing alone
    result = TrainResult(out_dir, state.best_epoch + 1, len(history), validation,
                         history, samples_per_s=seen / wall if wall > 0 else 0.0, wall_s=wall,
                         train_flops=state.train_flops, switch_epoch=schedule.switch_epoch if switched else None)
    (out_dir / SUMMARY).write_text(json.dumps({
        "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "validation": result.validation,
        "samples_per_s": result.samples_per_s, "wall_s": wall, "device": device.type,
        "train_flops": state.train_flops * world, "flops_per_sample": state.flops_per_sample,
        "switch_epoch": result.switch_epoch,
        "switch_reached": switched if schedule.spec and schedule.spec.switch else None,
        "world_size": world, "compiled": cfg.training.compile,
        "gradient_sync": parallel.sync if parallel is not None else None,
        "history": history,
    }, indent=1))
    return result


def load_trained(model_dir: Path) -> tuple[Architecture, FeatureSpec, ProjectConfig]:
    model_dir = Path(model_dir)
    cfg = load_config(model_dir / CONFIG)
    spec = with_temperatures(FeatureSpec.load(model_dir / SPEC), load_temperatures(model_dir))
    model = build_model(spec, cfg.model)
    model.load_state_dict(torch.load(model_dir / WEIGHTS, weights_only=True))
    model.eval()
    return model, spec, cfg
