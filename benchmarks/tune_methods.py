"""Every method with the same tuning budget: an Optuna TPE study per method, then seeds of its best setting.

For each method of `benchmarks/mtl_methods.py` (EW and the MTL methods of `methods()`), for STL (one study per
task's model) and for LightGBM (one study per task's booster), a seeded TPE study runs the same number of trials
(`--trials`) over the method's search space (`network_space` and `LIGHTGBM_SPACE` below, the only place the
spaces are written). A trial trains on the train window (Jan–Apr), early-stopped on the validation window (May),
and its value is the study's task metric on that window (the primary task; a per-task model's own task), in the
metric's direction. Trial 0 is the untuned setting of mtl_methods.py, so the best setting is never worse than it
on validation. Then each method's best setting trains with `--seeds` seeds and is scored on the test window
(June), reported like mtl_methods.py (per-task metrics, Δm% vs the tuned STL, wall time, FLOPs).

The studies persist in an Optuna journal (`journals/<out>.optuna.jsonl`) and the seed runs in a run journal
(`journals/<out>.runs.jsonl`): a stopped run resumes where it was, and a rerun with more `--trials` extends the studies.
Needs the `bench` extra (`pip install -e '.[bench]'`: lightgbm, optuna). Run from the repository root:

    .venv/bin/python -m benchmarks.tune_methods --quick        # 10% rows, 4 epochs, 4 trials, 2 seeds, QUICK_METHODS:
                                                               # 3.5 min on 2 shared CPU cores (--threads 1)
    nice .venv/bin/python -m benchmarks.tune_methods           # all rows, 8 epochs, 30 trials, 5 seeds: hours
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.common import (  # the sibling benchmark: its runners, journal and table
    LGBM_PARAMS,
    RESULTS,
    ROOT,
    MethodSummary,
    RunJournal,
    RunResult,
    bench_config,
    beside,
    config_key,
    journal_file,
    load_windows,
    markdown,
    merged,
    methods,
    plot,
    results_header,
    run_lightgbm,
    run_mtl,
    seed_runs,
    setting_overrides,
    with_min_frequency,
    with_training,
)
from components.config.schema import ProjectConfig, TaskSpec, parse_config
from components.training.stl import single_task_config
from components.training.train import TrainingDiverged

Value = int | float | str
# --quick tunes one method of each family (and EW+towers, Rep-MTL's baseline), not the combined variants
QUICK_METHODS = ["EW", "EW+towers", "UW", "DWA", "PCGrad", "UPGrad", "MT2ST-Diminish", "MT2ST-Switch", "Rep-MTL",
                 "MMoE", "shared_private", "LightGBM"]


@dataclass(frozen=True)
class Knob:
    """One searched setting: its dotted path in the config (a LightGBM parameter's name for the boosters) and its
    range, `low`..`high` (log scale when `log`, whole numbers when `integer`) or `choices`. A `layers` knob is a
    list of layer widths, searched as the strings "256-128"."""

    path: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple[Value, ...] = ()
    layers: bool = False

    def describe(self) -> str:
        if self.choices:
            return f"{self.path} ∈ {{{', '.join(map(str, self.choices))}}}"
        kind = ("int " if self.integer else "") + ("log " if self.log else "")
        return f"{self.path} ∈ [{self.low:g}, {self.high:g}] {kind.strip()}".strip()

    def suggest(self, trial: Any) -> Value:
        """The trial's value (an `optuna.Trial`)."""
        if self.choices:
            return trial.suggest_categorical(self.path, self.choices)
        if self.integer:
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, log=self.log)

    def start(self, value: Any) -> Value | None:
        """`value` (the untuned setting) as a point of this knob's space: clamped into a range, None where it is
        not one of the choices (trial 0 then samples this knob)."""
        if self.layers:
            value = "-".join(map(str, value))
        if self.choices:
            return value if value in self.choices else None
        return min(max(value, self.low), self.high)


def network_space(cfg: ProjectConfig) -> list[Knob]:
    """The search space of a network method: what every network trains with, then the knobs of the parts this
    method's config uses (its strategy, MT2ST, Rep-MTL, towers, architecture, numeric embeddings). The epoch
    budget is not searched: it is every method's compute cap, with early stopping under it."""
    t, m = cfg.training, cfg.model
    knobs = [Knob("training.lr", 3e-4, 1e-2, log=True), Knob("training.weight_decay", 1e-6, 1e-2, log=True),
             Knob("model.dropout", 0.0, 0.4), Knob("model.hidden", choices=("128-64", "256-128", "512-256",
                                                                               "256-128-64"), layers=True),
             Knob("training.batch_size", choices=(512, 1024, 2048, 4096))]
    if t.strategy.name == "dwa":
        knobs.append(Knob("training.strategy.temperature", 0.5, 10.0, log=True))
    if t.mt2st and t.mt2st.diminish:
        knobs += [Knob("training.mt2st.diminish.eta", 0.03, 1.0, log=True),
                  Knob("training.mt2st.diminish.nu", 1.0, 2.0)]
    if t.mt2st and t.mt2st.switch and t.mt2st.switch.epoch:
        knobs.append(Knob("training.mt2st.switch.epoch", 1, t.epochs - 1, integer=True))  # the config: < epochs
    if t.rep_mtl:
        knobs += [Knob("training.rep_mtl.lambda_tsr", 0.01, 10.0, log=True),
                  Knob("training.rep_mtl.lambda_csa", 0.01, 10.0, log=True),
                  Knob("training.rep_mtl.tau", 0.05, 2.0, log=True)]
    if m.head_hidden:
        knobs.append(Knob("model.head_hidden", choices=(16, 32, 64)))
    if m.architecture == "mmoe":
        knobs.append(Knob("model.experts", 2, 8, integer=True))
    if m.architecture == "shared_private":
        knobs += [Knob("model.private_hidden", choices=("32", "64", "128"), layers=True),
                  Knob("model.similarity_penalty", 1e-4, 1.0, log=True)]
    if m.numeric_embedding == "periodic":
        knobs += [Knob("model.numeric_sigma", 0.01, 1.0, log=True), Knob("model.numeric_frequencies",
                                                                         choices=(8, 16, 32))]
    return knobs


# The boosters' space: tree size and leaf size (min_data_in_leaf up to 1,000: a month of flights has ~28,000 rows),
# shrinkage (early stopping picks the rounds), row and column subsampling, L2 on the leaves, and the categorical
# split's smoothing; trial 0 is LGBM_PARAMS
LIGHTGBM_SPACE = [
    Knob("num_leaves", 7, 255, log=True, integer=True), Knob("learning_rate", 0.01, 0.2, log=True),
    Knob("min_data_in_leaf", 10, 1000, log=True, integer=True), Knob("feature_fraction", 0.3, 1.0),
    Knob("bagging_fraction", 0.5, 1.0), Knob("lambda_l2", 1e-3, 100.0, log=True),
    Knob("min_data_per_group", 10, 500, log=True, integer=True), Knob("cat_smooth", 1.0, 100.0, log=True),
    Knob("max_cat_threshold", 8, 64, log=True, integer=True)]


def start_values(tree: dict[str, Any], knobs: list[Knob]) -> dict[str, Value]:
    """Trial 0: the untuned setting in `tree` (a config dump, or LightGBM parameters), knob by knob."""
    values = {k.path: k.start(_at(tree, k.path)) for k in knobs}
    return {path: v for path, v in values.items() if v is not None}


def with_values(tree: dict[str, Any], knobs: list[Knob], values: dict[str, Value]) -> dict[str, Any]:
    """A copy of `tree` with each knob's value at its path. Every parent of a path must be there already, so a
    knob never switches on a part (MT2ST, Rep-MTL) that the method does not use."""
    out = copy.deepcopy(tree)
    for knob in knobs:
        *parents, leaf = knob.path.split(".")
        node = out
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise KeyError(f"search-space path '{knob.path}': '{key}' is not set in this method's config")
            node = node[key]
        value = values[knob.path]
        node[leaf] = [int(w) for w in str(value).split("-")] if knob.layers else value
    return out


def tuned_config(cfg: ProjectConfig, knobs: list[Knob], values: dict[str, Value]) -> ProjectConfig:
    return parse_config(with_values(cfg.model_dump(mode="json", exclude_none=True), knobs, values), "<tuning trial>")


def _at(tree: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        tree = tree[key]
    return tree


@dataclass
class Candidate:
    """One model to tune: a method's, or one task's model of a per-task method (STL, LightGBM). `fit` trains it
    with a setting and a seed and scores it on the window given."""

    study: str
    task: TaskSpec  # the objective: this task's metric on the validation window
    knobs: list[Knob]
    start: dict[str, Value]
    fit: Callable[[dict[str, Value], pd.DataFrame, int], RunResult]


def candidates(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, threads: int,
               lightgbm_rounds: int, only: list[str] | None) -> dict[str, list[Candidate]]:
    """Method name -> the models tuned for it: one per network method, one per task for STL and LightGBM."""

    def network(study: str, method_cfg: ProjectConfig) -> Candidate:
        knobs = network_space(method_cfg)

        def fit(values: dict[str, Value], window: pd.DataFrame, seed: int) -> RunResult:
            run_cfg = with_training(tuned_config(method_cfg, knobs, values), seed=seed)
            with tempfile.TemporaryDirectory(prefix="mtl-tune-") as work:
                return run_mtl(run_cfg, train_df, val_df, window, Path(work))

        start = start_values(method_cfg.model_dump(mode="json", exclude_none=True), knobs)
        return Candidate(study, method_cfg.primary_task, knobs, start, fit)

    def booster(task_cfg: ProjectConfig) -> Candidate:
        def fit(values: dict[str, Value], window: pd.DataFrame, seed: int) -> RunResult:
            params = with_values(LGBM_PARAMS, LIGHTGBM_SPACE, values)
            return run_lightgbm(task_cfg, train_df, val_df, window, seed, threads, lightgbm_rounds, params)

        task = task_cfg.primary_task
        return Candidate(f"LightGBM/{task.name}", task, LIGHTGBM_SPACE, start_values(LGBM_PARAMS, LIGHTGBM_SPACE),
                         fit)

    per_task = {t.name: single_task_config(cfg, t.name) for t in cfg.tasks}
    table: dict[str, list[Candidate]] = {"STL": [network(f"STL/{name}", c) for name, c in per_task.items()]}
    for name, settings in methods(cfg).items():
        if only is None or name in only:
            settings = copy.deepcopy(settings)
            table[name] = [network(name, with_training(cfg, model=settings.pop("model", None), **settings))]
    if only is None or "LightGBM" in only:
        table["LightGBM"] = [booster(c) for c in per_task.values()]
    return table


def tune(candidate: Candidate, storage: Any, trials: int, settings: dict[str, object], val_df: pd.DataFrame,
         on_trials: Callable[[int], None]) -> Any:
    """The candidate's study, run up to `trials` finished trials (resumed from `storage`); `on_trials(n)` is told
    of the trials finished before and of each new one. Returns the study."""
    import optuna

    direction = "maximize" if candidate.task.higher_is_better else "minimize"
    study = optuna.create_study(study_name=candidate.study, storage=storage, direction=direction,
                                load_if_exists=True)
    settings = settings | {"space": [k.describe() for k in candidate.knobs]}
    if "settings" not in study.user_attrs:
        study.set_user_attr("settings", settings)
    elif study.user_attrs["settings"] != settings:
        then = study.user_attrs["settings"]
        changed = sorted(k for k in then.keys() | settings.keys() if then.get(k) != settings.get(k))
        raise ValueError(f"study '{candidate.study}' in the journal was run with other settings: "
                         + "; ".join(f"{k} {then.get(k)} then, {settings.get(k)} now" for k in changed)
                         + ". Use another --out, or --fresh to start over")
    states = optuna.trial.TrialState
    if not any(t.state in (states.COMPLETE, states.WAITING) for t in study.trials):
        study.enqueue_trial(candidate.start)
    # seeded by the trials already made: a fresh study is reproducible, a resumed one does not redraw its points
    study.sampler = optuna.samplers.TPESampler(seed=len(study.trials))

    def objective(trial: Any) -> float:
        values = {k.path: k.suggest(trial) for k in candidate.knobs}
        run = candidate.fit(values, val_df, 0)
        trial.set_user_attr("wall_s", run.wall_s)
        return run.metrics[candidate.task.name]

    # a setting that diverges is a failed trial of the budget (TPE then avoids its region), not the end of the study
    done = sum(t.state in (states.COMPLETE, states.FAIL) for t in study.trials)
    on_trials(min(done, trials))
    study.optimize(objective, n_trials=max(0, trials - done), callbacks=[lambda *_: on_trials(1)],
                   catch=(TrainingDiverged,))
    return study


def best_settings_table(table: dict[str, list[Candidate]], studies: dict[str, Any]) -> str:
    """Per tuned model: trials, the validation value of trial 0 (untuned) and of the best trial, the tuning wall
    time, and the best setting."""
    import optuna

    lines = ["| model | validation metric | trials | untuned (trial 0) | best | tuning wall s | best setting |",
             "|---|---|---|---|---|---|---|"]
    for group in table.values():
        for c in group:
            study = studies[c.study]
            done = [t for t in study.trials if t.value is not None]
            untuned = next((t.value for t in done if all(t.params.get(p) == v for p, v in c.start.items())), None)
            untuned_cell = f"{untuned:.4f}" if untuned is not None else "n/a"
            params = ", ".join(f"{p.split('.')[-1]}={_fmt(v)}" for p, v in study.best_params.items())
            wall = sum(t.user_attrs.get("wall_s", 0.0) for t in done)
            diverged = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
            trials = f"{len(done)}" + (f" + {diverged} diverged" if diverged else "")
            lines.append(f"| {c.study} | {c.task.name} {c.task.metric} | {trials} | {untuned_cell} | "
                         f"{study.best_value:.4f} | {wall:.0f} | {params} |")
    return "\n".join(lines) + "\n"


def spaces_table(cfg: ProjectConfig, table: dict[str, list[Candidate]]) -> str:
    """The search spaces: what every network searches (the space of `cfg`, plain EW), then each method's own."""
    common = network_space(cfg)
    lines = [f"Every network (STL per task and each method): {'; '.join(k.describe() for k in common)}.", "",
             "| method | its own knobs |", "|---|---|"]
    for name, group in table.items():
        own = [k.describe() for k in group[0].knobs if k not in common]
        lines.append(f"| {name} | {'; '.join(own) or '—'} |")
    return "\n".join(lines) + "\n"


def _fmt(v: Value) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "flights.yaml"))
    parser.add_argument("--quick", action="store_true", help="10%% row sample, 4 epochs, 4 trials, 2 seeds, "
                        "QUICK_METHODS")
    parser.add_argument("--fraction", type=float, default=None, help="row sample of the data (default 1, quick 0.1)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch budget (default: the config's; quick 4)")
    parser.add_argument("--trials", type=int, default=None, help="trials per tuned model (default 30, quick 4)")
    parser.add_argument("--seeds", type=int, default=None, help="test-window seeds of each best setting "
                        "(default 5, quick 2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="method names to tune (STL always runs; "
                        "default: every method, quick: QUICK_METHODS)")
    parser.add_argument("--out", default=None, help="output path without suffix (default benchmarks/results/...)")
    parser.add_argument("--device", default="cpu", help="training device: cpu, cuda or auto")
    parser.add_argument("--min-frequency", action="append", default=[], metavar="COLUMN=N",
                        help="a categorical feature's min_frequency over the config's, e.g. tailnum=30 (repeatable)")
    parser.add_argument("--fresh", action="store_true", help="delete the journals (journals/<out>.optuna.jsonl, "
                        "<out>.runs.jsonl) and start over")
    args = parser.parse_args(argv)

    import optuna

    from components.config.schema import load_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = with_min_frequency(load_config(args.config), setting_overrides(args.min_frequency, "min-frequency"))
    fraction = args.fraction if args.fraction is not None else (0.1 if args.quick else 1.0)
    epochs = args.epochs or (4 if args.quick else base.training.epochs)
    trials = args.trials or (4 if args.quick else 30)
    seeds = args.seeds or (2 if args.quick else 5)
    lightgbm_rounds = 150 if args.quick else 2000
    out = Path(args.out) if args.out else RESULTS / f"tune_methods{'_quick' if args.quick else ''}"
    torch.set_num_threads(args.threads)
    cfg = bench_config(base, epochs, args.threads, args.device)
    train_df, val_df, test_df = load_windows(cfg, fraction)
    only = args.only if args.only is not None else (QUICK_METHODS if args.quick else None)
    table = candidates(cfg, train_df, val_df, args.threads, lightgbm_rounds, only)

    out.parent.mkdir(parents=True, exist_ok=True)
    study_path, runs_path = journal_file(out, "optuna"), journal_file(out, "runs")
    if args.fresh:
        study_path.unlink(missing_ok=True)
        runs_path.unlink(missing_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(study_path)))
    settings: dict[str, object] = config_key(args.config, base) | {
        "fraction": fraction, "epochs": epochs, "lightgbm_rounds": lightgbm_rounds, "device": args.device}
    models = sum(len(group) for group in table.values())
    console = Console(stderr=True)
    console.print(f"{len(train_df):,} train / {len(val_df):,} validation / {len(test_df):,} test rows, "
                  f"{epochs} epochs, {trials} trials × {models} models, then {seeds} seeds × {len(table)} methods")
    studies: dict[str, Any] = {}
    summaries: list[MethodSummary] = []
    t0 = time.perf_counter()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("tuning", total=trials * models + seeds * len(table))
        for group in table.values():
            for c in group:
                bar.update(job, description=f"tuning {c.study}")
                studies[c.study] = tune(c, storage, trials, settings, val_df, lambda n: bar.advance(job, n))
        for name, group in table.items():
            best = {c.study: studies[c.study].best_params for c in group}
            journal = RunJournal(runs_path, settings | {"best": best})
            summaries.append(seed_runs(name, seeds, journal, lambda seed, g=group, b=best:
                                       merged([c.fit(b[c.study], test_df, seed) for c in g]), bar, job))
    total = time.perf_counter() - t0

    header = (results_header(f"MTL methods on `{Path(args.config).name}`, each tuned with the same budget",
                             "tune_methods.py", argv, args.threads, args.device, fraction,
                             (train_df, val_df, test_df), epochs)
              + f". Tuning: an Optuna TPE study of {trials} trials per model (a method's "
              f"model; for STL and LightGBM each task's), scored on the validation window, trial 0 the untuned "
              f"setting of `mtl_methods.py`. Then each method's best setting with seeds 0..{seeds - 1} on the "
              f"test window: mean ± std over seeds. Whole run: {total / 60:.1f} min (journals "
              f"`{study_path.name}`, `{runs_path.name}`).")
    text = (markdown(cfg, summaries, header) + "\n## Best settings (validation window, seed 0)\n\n"
            + best_settings_table(table, studies) + "\n## Search spaces\n\n" + spaces_table(cfg, table))
    beside(out, ".md").write_text(text + f"\n![primary metric vs training FLOPs]({out.name}.png)\n")
    plot(cfg, summaries, beside(out, ".png"), f"{cfg.data.name}: tuned methods, {cfg.primary_task.name} "
         "vs training compute")
    print(text)
    console.print(f"wrote {beside(out, '.md')} and {beside(out, '.png')}")


if __name__ == "__main__":
    main()
