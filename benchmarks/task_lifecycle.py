"""Adding a task to a trained multi-head model: a warm start from it against training the bigger model from scratch.

The model before: the config with three tasks (flights: arr_delayed, dep_delay, air_time), trained on the train
window. Each case adds one task — `cancelled`, and `arr_delayed_60` (arr_delay > 60 min, derived from the same
column as the primary task) — and trains the four-task model on the same rows in four ways:

  - from scratch (the config as it is: a new FeatureSpec, random weights);
  - warm start from the three-task model (`training.warm_start`) with `training.new_task_head_epochs` = 0, 1, 3:
    that many epochs train the new head alone, the trunk and the old heads frozen, then every task trains jointly;

and, for the new task alone, a single-task network (STL) and a LightGBM booster (`mtl_methods.fit_lightgbm`,
untuned LGBM_PARAMS: the tuned per-task comparison is `vs_gbdt.py`'s). Every model is frozen after training and
scored on the test window and each month after it (flights: June, then Jul..Dec), seeds 0..`--seeds`-1, and its
training wall time, FLOPs and epochs are kept. Rows: mean ± std over the seeds; "Jul..Dec" is each seed's mean
over the later months. The question each table answers: does the warm start keep the old tasks where they were
(no forgetting) and learn the new one as well as a new model, for less compute?

The finished (model, seed) runs persist in `journals/<out>.runs.jsonl` (a stopped run resumes), the trained networks
under `--work` (default `runs/bench/task_lifecycle/`). Writes `<out>.md` and `<out>.png`. Needs the `bench` extra. From
the repository root:

    nice .venv/bin/python -m benchmarks.task_lifecycle                 # flights: all rows, 3 seeds
    .venv/bin/python -m benchmarks.task_lifecycle --fraction 0.05 --epochs 2 --seeds 1 --rounds 20 --head-epochs 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console

from benchmarks.common import (
    RESULTS,
    ROOT,
    RunJournal,
    RunResult,
    beside,
    fit_lightgbm,
    journal_file,
    results_header,
    with_training,
)
from benchmarks.vs_gbdt import LATER, SEP, network_scores, periods, scores, with_later_mean
from components.config.schema import ProjectConfig, load_config, parse_config
from components.config.tasks import higher_is_better
from components.data.tables import load_source, sample_rows, with_labels
from components.training.stl import single_task_config
from components.training.train import SUMMARY

OLD_TASKS = ("arr_delayed", "dep_delay", "air_time")
DERIVED = {"name": "arr_delayed_60", "type": "binary", "label": {"column": "arr_delay", "op": "gt", "value": 60},
           "metric": "roc_auc", "tolerance": 0.05}
NEW_TASKS = ("cancelled", DERIVED["name"])
BEFORE = "3 tasks (before)"


def with_derived_task(cfg: ProjectConfig) -> ProjectConfig:
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw["tasks"].append(DERIVED)
    return parse_config(raw, "<task_lifecycle>")


def arms(head_epochs: list[int]) -> list[str]:
    return ["from scratch", *(f"warm, {h} head epoch{'s' * (h != 1)}" for h in head_epochs), "STL", "LightGBM"]


def period_value(run: RunResult, period: str, task: str, cfg: ProjectConfig) -> float | None:
    return run.metrics.get(SEP.join((period, task, cfg.task(task).metric)))


def cell(runs: list[RunResult], period: str, task: str, cfg: ProjectConfig) -> str:
    values = [v for r in runs if (v := period_value(r, period, task, cfg)) is not None]
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {std:.4f}"


def case_table(cfg: ProjectConfig, new: str, runs: dict[str, list[RunResult]], rows: list[str]) -> str:
    tasks = [*OLD_TASKS, new]
    head = ["model", *(f"{t} {cfg.task(t).metric} {p.split(' ')[0]}" for t in tasks for p in rows),
            "train wall s", "train GFLOPs", "epochs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, arm_runs in runs.items():
        flops = [r.flops for r in arm_runs if r.flops is not None]
        epochs = [r.metrics["epochs"] for r in arm_runs if "epochs" in r.metrics]
        lines.append("| " + " | ".join([
            arm, *(cell(arm_runs, p, t, cfg) for t in tasks for p in rows),
            f"{statistics.fmean(r.wall_s for r in arm_runs):.1f}",
            f"{statistics.fmean(flops) / 1e9:,.0f}" if flops else "n/a",
            f"{statistics.fmean(epochs):.1f}" if epochs else "n/a"]) + " |")
    return "\n".join(lines)


def plot(cfg: ProjectConfig, results: dict[str, dict[str, list[RunResult]]], period: str, path: Path) -> None:
    """Per case: each old task's change against the model before (sign-corrected, + = better) and the new task's
    metric, for every arm; and the training GFLOPs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 2, figsize=(13, 4.2 * len(results)), squeeze=False)
    for row, (new, runs) in enumerate(results.items()):
        before = runs[BEFORE]
        networks = [a for a in runs if a not in (BEFORE, "STL", "LightGBM")]
        quality, compute = axes[row]
        width = 0.8 / len(networks)
        for i, arm in enumerate(networks):
            changes = []
            for task in OLD_TASKS:
                b = statistics.fmean(period_value(r, period, task, cfg) or 0.0 for r in before)
                a = statistics.fmean(period_value(r, period, task, cfg) or 0.0 for r in runs[arm])
                changes.append(100 * (a - b) / abs(b) * (1 if higher_is_better(cfg.task(task).metric) else -1))
            quality.bar([x + i * width for x in range(len(OLD_TASKS))], changes, width, label=arm)
        quality.axhline(0, color="black", linewidth=0.8)
        quality.set_xticks([x + 0.4 - width / 2 for x in range(len(OLD_TASKS))], OLD_TASKS)
        quality.set_ylabel(f"% change vs before, {period} (+ = better)")
        quality.set_title(f"adding {new}: the old tasks")
        quality.legend(fontsize=8)
        named = [a for a in runs if a != BEFORE]
        new_metric = [statistics.fmean(period_value(r, period, new, cfg) or 0.0 for r in runs[a]) for a in named]
        compute.barh(named, new_metric, color="tab:green")
        compute.set_xlim(min(new_metric) * 0.98, max(new_metric) * 1.01)
        compute.set_xlabel(f"{new} {cfg.task(new).metric}, {period}")
        for y, a in enumerate(named):
            flops = [r.flops for r in runs[a] if r.flops is not None]
            label = f"{statistics.fmean(flops) / 1e9:,.0f} GFLOPs" if flops else "boosting"
            compute.text(new_metric[y], y, f" {label}, {statistics.fmean(r.wall_s for r in runs[a]):.0f} s",
                         va="center", fontsize=8)
        compute.set_title(f"adding {new}: the new task, and the training compute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[RunResult]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "flights.yaml"))
    parser.add_argument("--fraction", type=float, default=1.0, help="row sample of the data")
    parser.add_argument("--epochs", type=int, default=None, help="the networks' epoch budget (default the config's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2000, help="LightGBM's round cap (early stopping under it)")
    parser.add_argument("--threads", type=int, default=2, help="training threads (LightGBM and torch)")
    parser.add_argument("--head-epochs", type=int, nargs="+", default=[0, 1, 3],
                        help="training.new_task_head_epochs of the warm starts")
    parser.add_argument("--out", default=str(RESULTS / "task_lifecycle"), help="output path without suffix")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench" / "task_lifecycle"),
                        help="where the trained networks are kept (a warm start reads its model from there)")
    args = parser.parse_args(argv)

    base = with_derived_task(load_config(args.config))
    epochs = args.epochs or base.training.epochs
    cfg = with_training(base, epochs=epochs, threads=args.threads, device="cpu")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    df = with_labels(sample_rows(load_source(cfg.data), args.fraction, seed=0), cfg)
    scored, train_df, val_df = periods(cfg, df)
    months = list(scored)
    console = Console(stderr=True)
    console.print(f"{len(train_df):,} train / {len(val_df):,} validation rows; scored on {', '.join(months)}")
    settings = {"config": Path(args.config).name, "fraction": args.fraction, "epochs": epochs, "rounds": args.rounds}
    journal = RunJournal(journal_file(out, "runs"), settings)
    work = Path(args.work) / f"{args.fraction:g}-{epochs}"
    t0 = time.perf_counter()

    def network(run_cfg: ProjectConfig, folder: Path) -> RunResult:
        run = network_scores(run_cfg, train_df, val_df, scored, folder)
        epochs_run = json.loads((folder / SUMMARY).read_text())["epochs_run"]
        return RunResult(run.metrics | {"epochs": epochs_run}, run.wall_s, run.flops)

    def fit(name: str, seed: int) -> RunResult:
        key = (name, seed)
        if key not in journal.done:
            console.print(f"{name} seed {seed}")
            journal.record(name, seed, make(name, seed))
        return journal.done[key]

    def make(name: str, seed: int) -> RunResult:
        three = with_training(cfg.for_tasks(OLD_TASKS), seed=seed)
        before_dir = work / f"before-{seed}"
        if name == BEFORE:
            return network(three, before_dir)
        new, arm = name.split(": ", 1)
        four = with_training(cfg.for_tasks([*OLD_TASKS, new]), seed=seed)
        folder = work / f"{new}-{arm.replace(' ', '_').replace(',', '')}-{seed}"
        if arm == "from scratch":
            return network(four, folder)
        if arm.startswith("warm"):
            if not (before_dir / "model.pt").exists():  # a resumed run whose networks were removed
                network(three, before_dir)
            return network(with_training(four, warm_start=str(before_dir), new_task_head_epochs=int(arm.split()[1])),
                           folder)
        if arm == "STL":
            return network(with_training(single_task_config(four, new), seed=seed), folder)
        start = time.perf_counter()
        alone = four.for_tasks([new])
        boosters = fit_lightgbm(alone, train_df, val_df, seed, args.threads, args.rounds)
        values = scores(lambda rows: {t: m for t, (m, _) in boosters.all_metrics(alone.tasks, rows).items()}, alone,
                        scored)
        return RunResult(values, time.perf_counter() - start, None)

    results: dict[str, dict[str, list[RunResult]]] = {}
    for new in NEW_TASKS:
        runs = {BEFORE: [fit(BEFORE, s) for s in range(args.seeds)]}
        for arm in arms(args.head_epochs):
            runs[arm] = [fit(f"{new}: {arm}", s) for s in range(args.seeds)]
        results[new] = runs
    later = months[1:]
    rows = [months[0], *([LATER] if len(later) > 1 else later)]
    if len(later) > 1:
        results = {new: {arm: with_later_mean(r, later) for arm, r in runs.items()} for new, runs in results.items()}
    header = (results_header("Adding a task: warm start from the trained model vs from scratch", "task_lifecycle.py",
                             argv, args.threads, "cpu", args.fraction, (train_df, val_df, next(iter(scored.values()))),
                             epochs)
              + f"; seeds 0..{args.seeds - 1}, mean ± std; `{LATER}`: each seed's mean over "
              f"{later[0] if later else '-'}..{later[-1] if later else '-'}. Run: "
              f"{(time.perf_counter() - t0) / 60:.1f} min (journal `{out.name}.runs.jsonl`).")
    parts = [header]
    for new, runs in results.items():
        parts += [f"## Adding `{new}`", case_table(cfg, new, runs, rows)]
    text = "\n\n".join(parts) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    beside(out, ".md").write_text(text)
    plot(cfg, results, rows[-1], beside(out, ".png"))
    print(text)
    return results


if __name__ == "__main__":
    main()
