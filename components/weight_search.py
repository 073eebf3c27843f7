"""Searching static task weights (PAPERS.md §2, Royer et al. 2023): scalarization with well-chosen weights is a
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

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from components.architectures import build_model
from components.config import ProjectConfig, parse_config
from components.features import FeatureSpec
from components.metrics import is_better
from components.strategies import make_strategy
from components.train import evaluate_tensors, make_autocast, pick_device, to_tensors, train, train_step


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
    model: torch.nn.Module
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


def exploit_and_explore(members: list[Member], replace: int, higher_is_better: bool,
                        rng: random.Random) -> list[tuple[int, int]]:
    """The bottom `replace` members copy a random top-`replace` member (weights, optimizer state, task weights
    and their schedule so far), then perturb the task weights. Returns (bottom, top) pairs."""
    order = sorted(range(len(members)), key=lambda i: members[i].score, reverse=higher_is_better)
    pairs = []
    for bottom in order[-replace:]:
        top = rng.choice(order[:replace])
        src, dst = members[top], members[bottom]
        dst.model.load_state_dict(src.model.state_dict())
        dst.optimizer.load_state_dict(copy.deepcopy(src.optimizer.state_dict()))
        dst.schedule = [dict(w) for w in src.schedule]
        dst.weights = normalise({k: v * rng.choice((0.8, 1.2)) for k, v in src.weights.items()})
        dst.score = src.score
        pairs.append((bottom, top))
    return pairs


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
    names = [t.name for t in cfg.tasks]
    tasks = {t.name: t for t in cfg.tasks}
    primary = cfg.primary_task
    autocast = make_autocast(device)

    def new_member(i: int) -> Member:
        draw = [1.0] * len(names) if i == 0 else [rng.random() + 1e-3 for _ in names]
        model = build_model(spec, cfg.model).to(device)
        return Member(normalise(dict(zip(names, draw, strict=True))), model,
                      torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay))

    members = [new_member(i) for i in range(population)]
    n, flops_per_sample = len(train_t), 0.0
    history: list[list[float]] = []
    replaced_log: list[list[tuple[int, int]]] = []
    for r in range(rounds):
        for m in members:
            m.schedule.append(dict(m.weights))
            strategy = make_strategy(names, with_static_weights(cfg, m.weights).training.strategy).attach(m.model)
            m.model.train()
            for e in range(interval):
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + r * 101 + e)).to(device)
                for s in range(0, n, tc.batch_size):
                    idx = perm[s:s + tc.batch_size]
                    if not flops_per_sample:
                        with FlopCounterMode(display=False) as counter:
                            train_step(m.model, strategy, m.optimizer, train_t, idx, tasks, autocast)
                        flops_per_sample = counter.get_total_flops() / len(idx)
                    else:
                        train_step(m.model, strategy, m.optimizer, train_t, idx, tasks, autocast)
            m.score = evaluate_tensors(m.model, val_t, spec.targets)[primary.name][primary.metric]  # type: ignore[index]
        history.append([m.score for m in members])
        if r < rounds - 1:
            replaced_log.append(exploit_and_explore(members, replace, primary.higher_is_better, rng))
    best = members[0]
    for m in members[1:]:
        if is_better(primary.metric, m.score, best.score):  # type: ignore[arg-type]
            best = m
    return PbtResult(best.schedule, best, spec, history, replaced_log, members,
                     train_flops=flops_per_sample * n * rounds * interval * population)
