"""Does MT2ST's Diminish survive the weighting strategy? Effective task weights per epoch, with and without γ.

γ_k(t) multiplies each auxiliary loss before the strategy sees it (docs/methods.md, "MT2ST"). A strategy that
adapts to the loss it is given can undo it: uncertainty weighting's log-variance s_k settles where e^{s_k} equals
the loss it weights, so with γ it tends to log(γ_k·L_k) and the effective weight γ_k·e^{−s_k}/2 to 1/(2L_k), no
longer depending on γ. This script trains each strategy twice on the same data and seed, plain and with Diminish,
through the trainer's own loop (`components.training.train.run_epoch`), records the weight the strategy put on each task
(the mean over the epoch's steps of what its `backward` returned) and reports per epoch and auxiliary task

    effective weight = γ_k(t) · w_k / w_primary

with Diminish, against w_k / w_primary without it: if the strategy keeps γ, their ratio is γ_k(t); if it cancels
γ, the ratio is 1. `survives` is log(ratio) / log γ_k(t) at the last epoch (1: all of γ acts, 0: none).

    .venv/bin/python -m benchmarks.mt2st_effective_weights --out benchmarks/results/mt2st_effective_weights
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from benchmarks.common import load_windows, with_training
from components.config.schema import ProjectConfig, parse_config
from components.data.features import FeatureSpec
from components.training.architectures import build_model
from components.training.mt2st import Mt2stSchedule
from components.training.strategies import Weighting, make_strategy
from components.training.train import EpochPlan, StepContext, epoch_batches, make_autocast, run_epoch, to_tensors

ROOT = Path(__file__).resolve().parents[1]


def recorded(strategy: Weighting) -> dict[str, list[float]]:
    """Wrap `strategy.backward` to keep every weight it returns, by task."""
    seen: dict[str, list[float]] = {}
    backward = strategy.backward

    def keep(losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        weights = backward(losses)
        for name, w in weights.items():
            seen.setdefault(name, []).append(float(w))
        return weights

    strategy.backward = keep  # type: ignore[method-assign]
    return seen


def strategy_weights(cfg: ProjectConfig, spec: FeatureSpec, data: object) -> tuple[list[dict], list[dict]]:
    """Per epoch: the strategy's mean weight per task, and MT2ST's γ per task at the epoch's start."""
    torch.manual_seed(cfg.training.seed)
    model = build_model(spec, cfg.model)
    strategy = make_strategy(model.task_names, cfg.training.strategy).attach(model)
    optimizer = torch.optim.AdamW([*model.parameters(), *strategy.parameters()], lr=cfg.training.lr,
                                  weight_decay=cfg.training.weight_decay)
    schedule = Mt2stSchedule(cfg.training.mt2st, model.task_names, cfg.primary_task.name)
    tasks = {t.name: t for t in cfg.tasks}
    weights, gammas = [], []
    seen = recorded(strategy)
    for epoch in range(cfg.training.epochs):
        seen.clear()
        model.train()
        run_epoch(StepContext(model, optimizer, data, tasks, make_autocast(torch.device("cpu"))),  # type: ignore[arg-type]
                  EpochPlan(strategy, loss_weights=lambda done, e=epoch: schedule.loss_weights(e + done)),
                  epoch_batches(len(data), cfg.training.batch_size, epoch, torch.device("cpu")))  # type: ignore[arg-type]
        strategy.epoch_end()
        weights.append({name: sum(v) / len(v) for name, v in seen.items()})
        gammas.append(schedule.loss_weights(epoch + 0.5))
    return weights, gammas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="*", default=["ew", "uw", "dwa", "pcgrad", "upgrad", "mgda"])
    parser.add_argument("--fraction", type=float, default=1.0, help="row sample of the train window (default all)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--eta", type=float, default=0.3,
                        help="Diminish η (default 0.3: a fade strong enough to see what a strategy does to it)")
    parser.add_argument("--out", type=Path, help="also write the tables to <out>.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import yaml

    base = parse_config(yaml.safe_load((ROOT / "configs" / "flights.yaml").read_text()), "configs/flights.yaml")
    train_df, _, _ = load_windows(base, args.fraction)
    spec = FeatureSpec.fit(train_df, base)
    data = to_tensors(train_df, spec)
    primary = base.primary_task.name
    lines = [f"MT2ST Diminish (γ0 1, η {args.eta}, ν 1) under each strategy: flights train window, "
             f"{len(train_df):,} rows, {args.epochs} epochs, the config's model and optimiser, seed 0, 1 thread.",
             "Per epoch: γ_k(t) at mid-epoch; the effective weight ratio (γ·w_k/w_primary with Diminish) / "
             "(w_k/w_primary without) — equal to γ when the strategy keeps it, 1 when it cancels it.", ""]
    for name in args.strategies:
        t0 = time.perf_counter()
        runs = {}
        for mt2st in (None, {"diminish": {"eta": args.eta}}):
            cfg = with_training(base, epochs=args.epochs, strategy={"name": name}, mt2st=mt2st, rep_mtl=None)
            runs[mt2st is not None] = strategy_weights(cfg, spec, data)
        (plain, _), (diminished, gammas) = runs[False], runs[True]
        aux = [t for t in plain[0] if t != primary]
        lines += [f"### {name} ({time.perf_counter() - t0:.0f} s)", "",
                  "| epoch | " + " | ".join(f"{t}: γ / kept" for t in aux) + " |",
                  "|---|" + "---|" * len(aux)]
        for epoch, (p, d, g) in enumerate(zip(plain, diminished, gammas, strict=True)):
            cells = []
            for t in aux:
                kept = (g[t] * d[t] / d[primary]) / (p[t] / p[primary])
                cells.append(f"{g[t]:.3f} / {kept:.3f}")
            lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
        last_g, last_d, last_p = gammas[-1], diminished[-1], plain[-1]
        survives = {t: math.log((last_g[t] * last_d[t] / last_d[primary]) / (last_p[t] / last_p[primary]))
                    / math.log(last_g[t]) for t in aux}
        lines += ["", "survives (last epoch): " + ", ".join(f"{t} {v:.2f}" for t, v in survives.items()), ""]
        print("\n".join(lines[-(len(plain) + 6):]), flush=True)
    if args.out:
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
