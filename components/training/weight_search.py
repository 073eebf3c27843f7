"""Searching static task weights (docs/methods.md, after Royer et al. 2023): scalarization with well-chosen weights is a
strong baseline, and good weights transfer across model sizes of one family.

- `sweep_static_weights`: random points of the simplex, each trained on a small model; the best (by the primary
  validation metric) is meant to be reused on the large model (`with_static_weights`).
- `population_based_training`: N members train in-process with static weights; every E epochs the bottom Q copy
  the model, optimizer state and weights of a random top-Q member (exploit) and multiply each task weight by
  0.8 or 1.2, renormalised (explore). The result is the weight *schedule* of the best member's lineage.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.config.schema import ProjectConfig, parse_config
from components.data.features import FeatureSpec
from components.training.architectures import Architecture, build_model
from components.training.metrics import is_better
from components.training.strategies import make_strategy
from components.training.train import (
    EpochPlan,
    StepContext,
    TensorData,
    epoch_batches,
    evaluate_tensors,
    make_autocast,
    pick_device,
    run_epoch,
    to_tensors,
    train,
)


def normalise(weights: dict[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


def with_static_weights(cfg: ProjectConfig, weights: dict[str, float], **model: object) -> ProjectConfig:
    """`cfg` trained with static `weights` (and, e.g., another `hidden` for the small model of a sweep)."""
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw["training"]["strategy"] = {"name": "static", "weights": weights}
    raw["model"] = {**raw["model"], **model}
    return parse_config(raw, "<weight search>")


def sweep_static_weights(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, out_dir: str,
                         trials: int, small_hidden: list[int], seed: int = 0) -> list[tuple[dict[str, float], float]]:
    """(weights, primary validation metric) per trial, best first. Trial 0 is equal weights."""
    rng = np.random.default_rng(seed)
    names = [t.name for t in cfg.tasks]
    primary = cfg.primary_task
    results = []
    for trial in range(trials):
        draw = np.ones(len(names)) if trial == 0 else rng.dirichlet(np.ones(len(names)))
        weights = normalise(dict(zip(names, map(float, draw), strict=True)))
        run = train(with_static_weights(cfg, weights, hidden=small_hidden), train_df, val_df,
                    f"{out_dir}/trial-{trial}", progress=False)
        results.append((weights, run.validation[primary.name][primary.metric]))  # type: ignore[index]
    return sorted(results, key=lambda r: r[1], reverse=primary.higher_is_better)


@dataclass
class Member:
    weights: dict[str, float]
    model: Architecture
    optimizer: torch.optim.Optimizer
    score: float = float("nan")
    schedule: list[dict[str, float]] = field(default_factory=list)  # weights used in each round so far


@dataclass
class PbtResult:
    schedule: list[dict[str, float]]  # the best member's weights, one entry per round of E epochs
    best: Member
    spec: FeatureSpec
    rounds: list[list[float]]  # every member's validation score after each round
    replaced: list[list[tuple[int, int]]]  # (bottom member, top member it copied) after each round but the last
    members: list[Member]
    train_flops: float


def plan_exploit(scores: list[float], weights: list[dict[str, float]], replace: int, higher_is_better: bool,
                 rng: random.Random) -> list[tuple[int, int, dict[str, float]]]:
    """(bottom, top, new weights): each of the bottom `replace` members copies a random top-`replace` member,
    whose task weights are then multiplied by 0.8 or 1.2 each and renormalised."""
    order = sorted(range(len(scores)), key=lambda i: scores[i], reverse=higher_is_better)
    plan = []
    for bottom in order[-replace:]:
        top = rng.choice(order[:replace])
        plan.append((bottom, top, normalise({k: v * rng.choice((0.8, 1.2)) for k, v in weights[top].items()})))
    return plan


def exploit_and_explore(members: list[Member], replace: int, higher_is_better: bool,
                        rng: random.Random) -> list[tuple[int, int]]:
    """Apply `plan_exploit` in memory: model, optimizer state, weight schedule so far. Returns (bottom, top)."""
    plan = plan_exploit([m.score for m in members], [m.weights for m in members], replace, higher_is_better, rng)
    for bottom, top, weights in plan:
        src, dst = members[top], members[bottom]
        dst.model.load_state_dict(src.model.state_dict())
        dst.optimizer.load_state_dict(copy.deepcopy(src.optimizer.state_dict()))
        dst.schedule = [dict(w) for w in src.schedule]
        dst.weights, dst.score = weights, src.score
    return [(bottom, top) for bottom, top, _ in plan]


def initial_weights(names: list[str], population: int, rng: random.Random) -> list[dict[str, float]]:
    """Member 0 starts from equal weights, the others from random points of the simplex."""
    return [normalise(dict(zip(names, [1.0] * len(names) if i == 0 else [rng.random() + 1e-3 for _ in names],
                               strict=True))) for i in range(population)]


def train_epochs(member: Member, cfg: ProjectConfig, train_t: TensorData, epochs: int, seed: int,
                 count_flops: bool = False) -> float:
    """Train `member` for `epochs` with its static weights (the trainer's epoch loop); FLOPs per sample of one
    step when `count_flops`."""
    names = [t.name for t in cfg.tasks]
    tasks = {t.name: t for t in cfg.tasks}
    strategy = make_strategy(names, with_static_weights(cfg, member.weights).training.strategy).attach(member.model)
    device = train_t.numeric.device
    autocast = make_autocast(device)
    member.model.train()
    flops: dict[str, float] | None = {} if count_flops else None
    for e in range(epochs):
        run_epoch(StepContext(member.model, member.optimizer, train_t, tasks, autocast), EpochPlan(strategy),
                  epoch_batches(len(train_t), cfg.training.batch_size, seed * 7919 + e, device), flops_per_sample=flops)
    return next(iter(flops.values()), 0.0) if flops else 0.0


def new_member(cfg: ProjectConfig, spec: FeatureSpec, weights: dict[str, float], device: torch.device) -> Member:
    model = build_model(spec, cfg.model).to(device)
    return Member(weights, model, torch.optim.AdamW(model.parameters(), lr=cfg.training.lr,
                                                    weight_decay=cfg.training.weight_decay))


def score(member: Member, cfg: ProjectConfig, spec: FeatureSpec, val_t: TensorData) -> float:
    primary = cfg.primary_task
    return evaluate_tensors(member.model, val_t, spec.targets)[primary.name][primary.metric]  # type: ignore[index]


def population_based_training(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame,
                              population: int = 8, interval: int = 1, replace: int = 2, rounds: int | None = None,
                              seed: int = 0) -> PbtResult:
    """PBT over static task weights. `interval` is E (epochs per round), `replace` is Q; the default number of
    rounds spends the config's epoch budget."""
    if not 1 <= replace <= population // 2:
        raise ValueError(f"replace (Q={replace}) must be between 1 and population/2 ({population // 2})")
    tc = cfg.training
    rounds = rounds or max(1, tc.epochs // interval)
    device = pick_device(tc.device)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    spec = FeatureSpec.fit(train_df, cfg)
    train_t, val_t = to_tensors(train_df, spec).to(device), to_tensors(val_df, spec).to(device)
    primary = cfg.primary_task
    members = [new_member(cfg, spec, w, device) for w in initial_weights([t.name for t in cfg.tasks], population, rng)]
    flops_per_sample = 0.0
    history: list[list[float]] = []
    replaced_log: list[list[tuple[int, int]]] = []
    for r in range(rounds):
        for m in members:
            m.schedule.append(dict(m.weights))
            counted = train_epochs(m, cfg, train_t, interval, seed=seed * 1009 + r, count_flops=not flops_per_sample)
            flops_per_sample = flops_per_sample or counted
            m.score = score(m, cfg, spec, val_t)
        history.append([m.score for m in members])
        if r < rounds - 1:
            replaced_log.append(exploit_and_explore(members, replace, primary.higher_is_better, rng))
    best = members[0]
    for m in members[1:]:
        if is_better(primary.metric, m.score, best.score):  # type: ignore[arg-type]
            best = m
    return PbtResult(best.schedule, best, spec, history, replaced_log, members,
                     train_flops=flops_per_sample * len(train_t) * rounds * interval * population)


# --- PBT as files, for the kfp pipeline (pipelines/pbt.py): one member-round per task, exploit between rounds ---
# Member states come from the artifact store, which more people can write than can run code here: they are
# plain tensors, numbers, strings, lists and dicts, loaded with `weights_only=True` (no arbitrary unpickling).

def member_file(population_dir: str, member: int) -> Path:
    return Path(population_dir) / f"member-{member}.pt"


def run_member_round(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, member: dict,
                     population_dir: str, interval: int, round_index: int, state_path: str) -> float:
    """Train one member for `interval` epochs from its state in `population_dir` (fresh in the first round) and
    write its new state (model, optimizer, weights, schedule, score) to `state_path`. Returns the score."""
    torch.manual_seed(cfg.training.seed * 1000 + member["member"])
    device = pick_device(cfg.training.device)
    spec = FeatureSpec.fit(train_df, cfg)
    m = new_member(cfg, spec, dict(member["weights"]), device)
    start = member_file(population_dir, member["member"])
    if start.exists():
        state = torch.load(start, weights_only=True)
        m.model.load_state_dict(state["model"])
        m.optimizer.load_state_dict(state["optimizer"])
        m.schedule = state["schedule"]
    m.schedule.append(dict(m.weights))
    seed = cfg.training.seed * 1009 + round_index
    flops = train_epochs(m, cfg, to_tensors(train_df, spec).to(device), interval, seed=seed, count_flops=True)
    m.score = score(m, cfg, spec, to_tensors(val_df, spec).to(device))
    torch.save({"member": member["member"], "weights": m.weights, "schedule": m.schedule, "score": m.score,
                "model": m.model.state_dict(), "optimizer": m.optimizer.state_dict(),
                "train_flops": flops * len(train_df) * interval}, state_path)
    return m.score


def exploit_files(cfg: ProjectConfig, state_paths: list[str], replace: int, seed: int,
                  population_dir: str) -> list[dict]:
    """Write the next round's population: bottom members become copies of top members with perturbed weights.
    Returns the members for the next round ({"member", "weights"})."""
    states = sorted((torch.load(p, weights_only=True) for p in state_paths), key=lambda s: s["member"])
    plan = plan_exploit([s["score"] for s in states], [s["weights"] for s in states], replace,
                        cfg.primary_task.higher_is_better, random.Random(seed))
    copies = {bottom: (top, weights) for bottom, top, weights in plan}
    Path(population_dir).mkdir(parents=True, exist_ok=True)
    members = []
    for i, own in enumerate(states):
        top, weights = copies.get(i, (i, own["weights"]))
        state = {**states[top], "member": own["member"], "weights": weights, "copied_from": states[top]["member"]}
        torch.save(state, member_file(population_dir, own["member"]))
        members.append({"member": own["member"], "weights": weights})
    return members


def select_best(cfg: ProjectConfig, state_paths: list[str], best_path: str) -> dict:
    """The best final member's state goes to `best_path`; returns its member id, score and weight schedule."""
    states = [torch.load(p, weights_only=True) for p in state_paths]
    best = states[0]
    for s in states[1:]:
        if is_better(cfg.primary_task.metric, s["score"], best["score"]):  # type: ignore[arg-type]
            best = s
    torch.save(best, best_path)
    return {"member": best["member"], "score": best["score"], "schedule": best["schedule"]}
