"""Month by month: the config's multi-head network against per-task LightGBM and STL, each frozen after training.

Each model trains once on the config's train window (early stopping on its validation window) and is then scored,
without retraining, on the test window and on every calendar month after it (flights: June, then July..December
2013); a config without later months (or with a hash / random split) is scored on its test split only. The models:

  - multi-head: the config as it is (its architecture, strategy and epoch budget), one network for every task;
  - STL: one network per task, the same config with the other tasks removed (`components.training.stl`);
  - LightGBM: one booster per task (`mtl_methods.fit_lightgbm`: objective and early stopping from the task's metric,
    the networks' vocabularies), each task's setting tuned first by an Optuna TPE study of `--trials` trials on the
    validation window (`tune_methods.tune`, trial 0 the untuned booster).

Every model trains with seeds 0..`--seeds`-1; a table cell is the mean ± std over the seeds of the task's gated
metric, and a "later months" row the mean over the months (per seed, then over seeds). Beside them, each
classification head's log loss against its trivial baseline (the training window's class frequencies): a head
whose log loss is worse serves probabilities worse than knowing nothing.

The studies persist in `journals/<out>.optuna.jsonl` and the finished (model, seed) runs in
`journals/<out>.runs.jsonl`: a stopped run resumes. Writes `<out>.md` and `<out>.png`. Needs the `bench` extra. Run
from the repository root:

    nice .venv/bin/python -m benchmarks.vs_gbdt                        # flights: all rows, 30 trials, 3 seeds
    .venv/bin/python -m benchmarks.vs_gbdt --fraction 0.05 --epochs 1 --trials 2 --seeds 1 --rounds 20   # a sample
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console

from benchmarks.common import (  # the sibling benchmark: boosters, journal, header
    LGBM_PARAMS,
    RESULTS,
    ROOT,
    RunJournal,
    RunResult,
    beside,
    config_key,
    fit_lightgbm,
    journal_file,
    results_header,
    with_training,
)
from benchmarks.tune_methods import LIGHTGBM_SPACE, candidates, tune, with_values
from components.config.schema import ProjectConfig, load_config
from components.config.tasks import higher_is_better
from components.data.features import FeatureSpec
from components.data.tables import load_source, sample_rows, split_assignment, with_labels
from components.training.metrics import baseline_raw, head_metrics
from components.training.stl import single_task_config
from components.training.train import evaluate_tensors, load_trained, to_tensors, train

MODELS = ("multi-head", "STL", "LightGBM")
LATER = "later months"  # the row of the mean over the months after the test window
SEP = "|"  # journal keys: period|task|metric


def periods(cfg: ProjectConfig, df: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, pd.DataFrame]:
    """The scored periods (the test split, then each calendar month after the test window) and the train and
    validation rows. Months exist only for a time split whose data runs past the test window."""
    side = split_assignment(df, cfg)
    train_df, val_df = df[side == "train"], df[side == "validation"]
    scored: dict[str, pd.DataFrame] = {}
    if cfg.data.split.method == "time":
        t = df[cfg.data.time_column]
        test = df[side == "test"]
        first, last = (pd.Timestamp(cfg.data.windows.test.start),
                       pd.Timestamp(cfg.data.windows.test.end) - pd.Timedelta(days=1))
        span = f"{first:%Y-%m}" if f"{first:%Y-%m}" == f"{last:%Y-%m}" else f"{first:%Y-%m}..{last:%Y-%m}"
        scored[f"{span} (test)"] = test
        after = df[t >= pd.Timestamp(cfg.data.windows.test.end)]
        for month, rows in after.groupby(after[cfg.data.time_column].dt.to_period("M"), sort=True):
            scored[str(month)] = rows
    else:
        scored["test"] = df[side == "test"]
    return scored, train_df, val_df


def scores(score: Callable[[pd.DataFrame], dict[str, dict[str, float]]], cfg: ProjectConfig,
           scored: dict[str, pd.DataFrame]) -> dict[str, float]:
    """period|task|metric -> value, for each task's gated metric and (classification) its log loss."""
    out: dict[str, float] = {}
    for period, rows in scored.items():
        for task, metrics in score(rows).items():
            for metric in {cfg.task(task).metric, "log_loss"} & metrics.keys():
                out[SEP.join((period, task, metric))] = metrics[metric]
    return out


def network_scores(run_cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame,
                   scored: dict[str, pd.DataFrame], work: Path) -> RunResult:
    result = train(run_cfg, train_df, val_df, work, progress=False)
    model, spec, _ = load_trained(work)
    values = scores(lambda rows: evaluate_tensors(model, to_tensors(rows, spec), spec.targets), run_cfg, scored)
    return RunResult(values, result.wall_s, result.train_flops)


def trivial_log_loss(cfg: ProjectConfig, train_df: pd.DataFrame, scored: dict[str, pd.DataFrame]) -> dict[str, float]:
    """period|task|log_loss of the trivial model (the training window's class frequencies), classification only."""
    spec = FeatureSpec.fit(train_df, cfg)
    y_train = spec.transform_targets(train_df)
    out: dict[str, float] = {}
    for period, rows in scored.items():
        y = spec.transform_targets(rows)
        for target in spec.targets:
            metrics = head_metrics(target, baseline_raw(target, y_train[target.name], len(rows)), y[target.name])
            if "log_loss" in metrics:
                out[SEP.join((period, target.name, "log_loss"))] = metrics["log_loss"]
    return out


def mean_std(runs: list[RunResult], key: str) -> tuple[float, float]:
    values = [r.metrics[key] for r in runs]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def with_later_mean(runs: list[RunResult], months: list[str]) -> list[RunResult]:
    """Each run with `LATER|task|metric`: its mean over `months` (a seed's mean, so the std is over seeds)."""
    out = []
    for run in runs:
        keys = {k.split(SEP, 1)[1] for k in run.metrics if k.split(SEP, 1)[0] in months}
        later = {SEP.join((LATER, k)): statistics.fmean(run.metrics[SEP.join((m, k))] for m in months) for k in keys}
        out.append(RunResult(run.metrics | later, run.wall_s, run.flops))
    return out


def markdown(cfg: ProjectConfig, runs: dict[str, list[RunResult]], rows: list[str], trivial: dict[str, float],
             header: str) -> str:
    """The gated-metric table (a row per period and model, the best model of a period in bold), how many periods
    each model wins per task, then the classification heads' log loss beside the trivial baseline's."""
    tasks = cfg.tasks
    lines = [header, "", "## Gated metric per task (mean ± std over seeds)", "",
             "| period | model | " + " | ".join(f"{t.name}{' (primary)' if t.primary else ''} {t.metric}"
                                                for t in tasks) + " | train wall s |", "|---" * (len(tasks) + 3) + "|"]
    for period in rows:
        best = {t.name: (max if higher_is_better(t.metric) else min)(
            runs, key=lambda m, t=t: mean_std(runs[m], SEP.join((period, t.name, t.metric)))[0]) for t in tasks}
        for model, model_runs in runs.items():
            cells = []
            for t in tasks:
                mean, std = mean_std(model_runs, SEP.join((period, t.name, t.metric)))
                cell = f"{mean:.4f} ± {std:.4f}"
                cells.append(f"**{cell}**" if best[t.name] == model and len(runs) > 1 else cell)
            wall = statistics.fmean(r.wall_s for r in model_runs)
            lines.append(f"| {period} | {model} | " + " | ".join(cells) + f" | {wall:.1f} |")
    months = [p for p in rows if p != LATER]
    lines += ["", "## Periods won (best seed-mean of the gated metric, out of "
              f"{len(months)})", "", "| model | " + " | ".join(t.name for t in tasks) + " |",
              "|---" * (len(tasks) + 1) + "|"]
    for model in runs:
        wins = []
        for t in tasks:
            pick = max if higher_is_better(t.metric) else min
            wins.append(sum(pick(runs, key=lambda m, p=p, t=t: mean_std(runs[m], SEP.join((p, t.name, t.metric)))[0])
                            == model for p in months))
        lines.append(f"| {model} | " + " | ".join(str(w) for w in wins) + " |")
    classified = [t for t in tasks if SEP.join((rows[0], t.name, "log_loss")) in trivial]
    if classified:
        lines += ["", "## Log loss of the classification heads (lower is better; trivial: class frequencies)", "",
                  "| period | model | " + " | ".join(f"{t.name} log loss" for t in classified) + " |",
                  "|---" * (len(classified) + 2) + "|"]
        for period in rows:
            for model, model_runs in runs.items():
                cells = []
                for t in classified:
                    mean, std = mean_std(model_runs, SEP.join((period, t.name, "log_loss")))
                    cells.append(f"{mean:.4f} ± {std:.4f}")
                lines.append(f"| {period} | {model} | " + " | ".join(cells) + " |")
            over = months[1:] if period == LATER else [period]  # the later months' row: their mean
            cells = [f"{statistics.fmean(trivial[SEP.join((p, t.name, 'log_loss'))] for p in over):.4f}"
                     for t in classified]
            lines.append(f"| {period} | trivial | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(cfg: ProjectConfig, runs: dict[str, list[RunResult]], months: list[str], path: Path, title: str) -> None:
    """One panel per task: its gated metric per period, a line per model with ± std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg.tasks), figsize=(4.2 * len(cfg.tasks), 3.6), squeeze=False)
    for ax, t in zip(axes[0], cfg.tasks, strict=True):
        for model, model_runs in runs.items():
            stats = [mean_std(model_runs, SEP.join((p, t.name, t.metric))) for p in months]
            ax.errorbar(range(len(months)), [m for m, _ in stats], yerr=[s for _, s in stats], marker="o",
                        capsize=3, label=model)
        ax.set_xticks(range(len(months)), [p.replace(" (test)", "\n(test)") for p in months], fontsize=7)
        ax.set_title(f"{t.name} {t.metric} ({'higher' if higher_is_better(t.metric) else 'lower'} is better)",
                     fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, list[RunResult]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "flights.yaml"))
    parser.add_argument("--fraction", type=float, default=1.0, help="row sample of the data")
    parser.add_argument("--epochs", type=int, default=None, help="the networks' epoch budget (default the config's)")
    parser.add_argument("--trials", type=int, default=30, help="Optuna trials per task's booster")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2000, help="LightGBM's round cap (early stopping under it)")
    parser.add_argument("--threads", type=int, default=1, help="training threads (LightGBM and torch)")
    parser.add_argument("--only", nargs="*", default=list(MODELS), choices=MODELS, help="the models to run")
    parser.add_argument("--out", default=None, help="output path without suffix (default benchmarks/results/vs_gbdt"
                        "[_<config>])")
    args = parser.parse_args(argv)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = load_config(args.config)
    epochs = args.epochs or base.training.epochs
    cfg = with_training(base, epochs=epochs, threads=args.threads, device="cpu")
    torch.set_num_threads(args.threads)
    name = Path(args.config).stem
    out = Path(args.out) if args.out else RESULTS / ("vs_gbdt" if name == "flights" else f"vs_gbdt_{name}")
    df = with_labels(sample_rows(load_source(cfg.data), args.fraction, seed=0), cfg)
    scored, train_df, val_df = periods(cfg, df)
    months = list(scored)
    console = Console(stderr=True)
    console.print(f"{len(train_df):,} train / {len(val_df):,} validation rows; scored on {', '.join(months)}")

    out.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(journal_file(out, "optuna"))))
    settings: dict[str, object] = config_key(args.config, base) | {"fraction": args.fraction, "epochs": epochs,
                                                                    "lightgbm_rounds": args.rounds}
    t0 = time.perf_counter()
    best: dict[str, dict[str, float | int]] = {}
    studied: dict[str, str] = {}  # task -> its study's trials and best validation value, for the table
    if "LightGBM" in args.only:
        for c in candidates(cfg, train_df, val_df, args.threads, args.rounds, ["LightGBM"])["LightGBM"]:
            console.print(f"tuning {c.study}: {args.trials} trials")
            study = tune(c, storage, args.trials, settings, val_df, lambda _: None)
            best[c.task.name] = with_values(LGBM_PARAMS, LIGHTGBM_SPACE, study.best_params)
            finished = [t for t in study.trials if t.value is not None]
            studied[c.task.name] = (f"{len(finished)} trials, validation {c.task.metric} {finished[0].value:.4f} "
                                    f"untuned, {study.best_value:.4f} best")
    # the networks' runs are keyed on the run's settings, the boosters' also on their tuned settings: a rerun with
    # more trials retrains the boosters whose best setting moved, and no network
    journals = {model: RunJournal(journal_file(out, "runs"), settings | ({"best": best} if model == "LightGBM"
                                                                         else {})) for model in MODELS}

    def fit(model: str, seed: int, work: Path) -> RunResult:
        if model == "multi-head":
            return network_scores(with_training(cfg, seed=seed), train_df, val_df, scored, work)
        if model == "STL":
            merged: dict[str, float] = {}
            wall = 0.0
            for t in cfg.tasks:
                run = network_scores(with_training(single_task_config(cfg, t.name), seed=seed), train_df, val_df,
                                     scored, work / t.name)
                merged |= run.metrics
                wall += run.wall_s
            return RunResult(merged, wall, None)
        start = time.perf_counter()
        boosters = fit_lightgbm(cfg, train_df, val_df, seed, args.threads, args.rounds, best)
        values = scores(lambda rows: {t: m for t, (m, _) in boosters.all_metrics(cfg.tasks, rows).items()}, cfg,
                        scored)
        return RunResult(values, time.perf_counter() - start, None)

    runs: dict[str, list[RunResult]] = {}
    with tempfile.TemporaryDirectory(prefix="mtlops-vs-gbdt-") as tmp:
        for model in [m for m in MODELS if m in args.only]:
            journal = journals[model]
            for seed in range(args.seeds):
                if (model, seed) not in journal.done:
                    console.print(f"{model} seed {seed}")
                    journal.record(model, seed, fit(model, seed, Path(tmp) / f"{model}-{seed}"))
            runs[model] = [journal.done[(model, s)] for s in range(args.seeds)]
    later = months[1:]
    rows = months + ([LATER] if len(later) > 1 else [])
    if len(later) > 1:
        runs = {model: with_later_mean(model_runs, later) for model, model_runs in runs.items()}
    header = (results_header(f"The multi-head network vs per-task LightGBM, period by period, on `{name}`",
                             "vs_gbdt.py", argv, args.threads, "cpu", args.fraction,
                             (train_df, val_df, next(iter(scored.values()))), epochs)
              + f". Every model trained once on the train window and frozen; seeds 0..{args.seeds - 1}. LightGBM: "
              f"one booster per task, each task's setting from an Optuna study of at least {args.trials} trials on "
              f"the validation window (each study's count below; {args.rounds} rounds max, early stopping on the "
              f"task's metric)"
              + (f"; `{LATER}`: the mean over {later[0]}..{later[-1]} per seed" if len(later) > 1 else "")
              + f". Run: {(time.perf_counter() - t0) / 60:.1f} min (journals `{out.name}.optuna.jsonl`, "
              f"`{out.name}.runs.jsonl`).")
    text = markdown(cfg, runs, rows, trivial_log_loss(cfg, train_df, scored), header)
    if best:
        text += "\n## Tuned LightGBM settings (best trial on the validation window)\n\n" + "\n".join(
            f"- {task} ({studied[task]}): " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in params.items()) for task, params in best.items()) + "\n"
    beside(out, ".md").write_text(text + f"\n![gated metric per period]({out.name}.png)\n")
    plot(cfg, runs, months, beside(out, ".png"), f"{cfg.data.name}: frozen models, period by period")
    print(text)
    console.print(f"wrote {beside(out, '.md')} and {beside(out, '.png')}")
    return runs


if __name__ == "__main__":
    main()
