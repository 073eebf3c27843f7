"""What the benchmarks share: the config, data windows and seeds they run on, the runners (the trainer, STL, PBT,
LightGBM per task), the journal that lets a long run resume, and the results' header, table and plot.

`benchmarks.mtl_methods` runs them all on a config; the other benchmarks take what they need from here.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from rich.progress import Progress, TaskID

from components.config.plugins import with_options
from components.config.schema import ProjectConfig, TaskSpec, parse_config
from components.config.tasks import higher_is_better
from components.data.features import FeatureSpec
from components.data.tables import load_source, sample_rows, select_window, with_labels
from components.training.metrics import head_metrics, relative_change
from components.training.stl import single_task_config
from components.training.train import evaluate_tensors, load_trained, to_tensors, train
from components.training.weight_search import population_based_training

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOWER = 32  # units of a task tower (model.head_hidden): Rep-MTL needs towers on hps, EW+towers is its baseline


@dataclass
class RunResult:
    metrics: dict[str, float]  # task -> its config metric on the test window
    wall_s: float
    flops: float | None  # None: not counted (LightGBM)


@dataclass
class MethodSummary:
    name: str
    runs: list[RunResult] = field(default_factory=list)

    def mean(self, task: str) -> float:
        return statistics.fmean(r.metrics[task] for r in self.runs)

    def std(self, task: str) -> float:
        values = [r.metrics[task] for r in self.runs]
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def flops(self) -> float | None:
        """Mean training FLOPs over the seeds; None where they are not counted."""
        counted = [r.flops for r in self.runs if r.flops is not None]
        return statistics.fmean(counted) if counted else None


class RunJournal:
    """Finished runs, one JSON line each, so a long benchmark that is stopped resumes where it was: a rerun with the
    same settings skips the (method, seed) pairs already in the journal. Lines from other settings are ignored."""

    def __init__(self, path: Path, settings: dict[str, object]) -> None:
        self.path, self.settings = path, settings
        self.done: dict[tuple[str, int], RunResult] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if row["settings"] == settings:
                    self.done[(row["method"], row["seed"])] = RunResult(row["metrics"], row["wall_s"], row["flops"])

    def record(self, method: str, seed: int, result: RunResult) -> None:
        self.done[(method, seed)] = result
        row = {"settings": self.settings, "method": method, "seed": seed, "metrics": result.metrics,
               "wall_s": result.wall_s, "flops": result.flops}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def with_training(cfg: ProjectConfig, model: dict | None = None, **training: object) -> ProjectConfig:
    raw = cfg.model_dump(mode="json", exclude_none=True)
    raw["training"] = {**raw["training"], **training}
    if model:  # another architecture keeps the options the two share
        raw["model"] = with_options(cfg.model, **model).model_dump(mode="json", exclude_none=True)
    return parse_config(raw, "<benchmark>")


def methods(cfg: ProjectConfig) -> dict[str, dict]:
    """Method name -> the training (and model) settings it changes. MT2ST switches at half the epoch budget."""
    half = max(1, cfg.training.epochs // 2)
    diminish = {"gamma0": 1.0, "eta": 0.3, "nu": 1.0}
    return {
        "EW": {"strategy": {"name": "ew"}},
        "UW": {"strategy": {"name": "uw"}},
        "DWA": {"strategy": {"name": "dwa"}},
        "PCGrad": {"strategy": {"name": "pcgrad"}},
        "UPGrad": {"strategy": {"name": "upgrad"}},
        "MT2ST-Diminish": {"mt2st": {"diminish": diminish}},
        "MT2ST-Switch": {"mt2st": {"switch": {"epoch": half}}},
        "MT2ST-Diminish+Switch": {"mt2st": {"diminish": diminish, "switch": {"epoch": half}}},
        "MT2ST-Switch+towers": {"model": {"head_hidden": TOWER}, "mt2st": {"switch": {"epoch": half}}},
        "EW+towers": {"model": {"head_hidden": TOWER}, "strategy": {"name": "ew"}},
        "EW+periodic": {"model": {"numeric_embedding": "periodic"}, "strategy": {"name": "ew"}},
        "EW+periodic+towers": {"model": {"numeric_embedding": "periodic", "head_hidden": TOWER},
                               "strategy": {"name": "ew"}},
        "Rep-MTL": {"model": {"head_hidden": TOWER}, "rep_mtl": {"lambda_tsr": 1.0, "lambda_csa": 1.0, "tau": 0.5}},
        "MMoE": {"model": {"architecture": "mmoe", "experts": 4, "hidden": [128, 64]}},
        "shared_private": {"model": {"architecture": "shared_private", "private_hidden": [64]}},
    }


def mt2st_sweep(cfg: ProjectConfig) -> dict[str, dict]:
    """More MT2ST settings (`--mt2st-sweep`): slower and faster decay, a late decay (ν = 2), a later fixed switch
    and the plateau-triggered switch, so "MT2ST does not win here" is not one setting's verdict."""
    late = max(1, cfg.training.epochs * 3 // 4)
    return {
        "MT2ST-Diminish η=0.1": {"mt2st": {"diminish": {"eta": 0.1}}},
        "MT2ST-Diminish η=1": {"mt2st": {"diminish": {"eta": 1.0}}},
        "MT2ST-Diminish η=0.05 ν=2": {"mt2st": {"diminish": {"eta": 0.05, "nu": 2.0}}},
        f"MT2ST-Switch T={late}": {"mt2st": {"switch": {"epoch": late}}},
        "MT2ST-Switch plateau": {"mt2st": {"switch": {"patience": 1, "min_epoch": 3}}},
    }


def test_metrics(model_dir: Path, cfg: ProjectConfig, test_df: pd.DataFrame) -> dict[str, float]:
    model, spec, _ = load_trained(model_dir)
    scores = evaluate_tensors(model, to_tensors(test_df, spec), spec.targets)
    return {t.name: scores[t.name][t.metric] for t in cfg.tasks if t.name in scores}  # type: ignore[index]


def run_mtl(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, test_df: pd.DataFrame,
            work: Path) -> RunResult:
    result = train(cfg, train_df, val_df, work, progress=False)
    return RunResult(test_metrics(work, cfg, test_df), result.wall_s, result.train_flops)


def merged(runs: list[RunResult]) -> RunResult:
    """The runs of one model per task as one run: every task's metric, the summed wall time and FLOPs (None when
    any run's FLOPs were not counted)."""
    metrics: dict[str, float] = {}
    for run in runs:
        metrics |= run.metrics
    flops = None if any(r.flops is None for r in runs) else sum(r.flops or 0.0 for r in runs)
    return RunResult(metrics, sum(r.wall_s for r in runs), flops)


def run_stl(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, test_df: pd.DataFrame,
            work: Path) -> RunResult:
    return merged([run_mtl(single_task_config(cfg, t.name), train_df, val_df, test_df, work / t.name)
                   for t in cfg.tasks])


def run_pbt(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, test_df: pd.DataFrame,
            population: int) -> RunResult:
    """PBT over static weights (N members, E = 1 epoch, Q = N/4); the best member is scored. Its FLOPs are the
    whole population's: that is what the search cost."""
    t0 = time.perf_counter()
    result = population_based_training(cfg, train_df, val_df, population=population, interval=1,
                                       replace=max(1, population // 4), seed=cfg.training.seed)
    scores = evaluate_tensors(result.best.model, to_tensors(test_df, result.spec), result.spec.targets)
    metrics = {t.name: scores[t.name][t.metric] for t in cfg.tasks}  # type: ignore[index]
    return RunResult(metrics, time.perf_counter() - t0, result.train_flops)


# A booster is fitted to the metric its task is gated on, not to the network's loss: an MAE task gets the L1
# objective (the conditional median) whatever `loss` the network trains with, and early stopping watches the same
# metric (ROC-AUC, not log loss, for a ROC-AUC task). task type -> (objective, {task metric: early-stopping metric})
LGBM_OBJECTIVES: dict[str, tuple[str, dict[str, str]]] = {
    "binary": ("binary", {"roc_auc": "auc", "log_loss": "binary_logloss", "accuracy": "binary_error"}),
    "multiclass": ("multiclass", {"log_loss": "multi_logloss", "accuracy": "multi_error"}),
    "regression": ("regression", {"mae": "l1", "rmse": "rmse"}),
}
# an objective per metric where the type's default does not minimise it (the squared error's mean is not the
# absolute error's minimiser)
LGBM_OBJECTIVE_FOR_METRIC = {"regression": {"mae": "regression_l1", "rmse": "regression"}}
FALLBACK_STOPPING = {"binary": "binary_logloss", "multiclass": "multi_logloss", "regression": "l2"}
EARLY_STOPPING_ROUNDS = 100
# the untuned booster (canonical LightGBM names; a tuning search starts from them: benchmarks/tune_methods.py)
LGBM_PARAMS: dict[str, float | int] = {
    "learning_rate": 0.05, "num_leaves": 63, "min_data_in_leaf": 50, "bagging_fraction": 0.8, "bagging_freq": 1,
    "feature_fraction": 0.8, "max_cat_to_onehot": 8, "lambda_l2": 1.0, "min_data_per_group": 50,
    "cat_smooth": 10.0, "max_cat_threshold": 32}


def booster_objective(task: TaskSpec) -> dict[str, str]:
    """LightGBM's objective and early-stopping metric for `task`, from the metric the task is gated on."""
    if task.type not in LGBM_OBJECTIVES:
        raise ValueError(f"task '{task.name}': the LightGBM baseline has no objective for a {task.type} task "
                         f"(it fits {sorted(LGBM_OBJECTIVES)})")
    objective, stopping = LGBM_OBJECTIVES[task.type]
    objective = LGBM_OBJECTIVE_FOR_METRIC.get(task.type, {}).get(task.metric or "", objective)
    return {"objective": objective, "metric": stopping.get(task.metric, FALLBACK_STOPPING[task.type])}  # type: ignore[arg-type]


@dataclass
class LightGBMModels:
    """One booster per task, on the features as LightGBM reads them: numeric columns as they are (nulls are
    LightGBM's missing values), each categorical as its code in the networks' vocabulary, fitted on the training
    window with the config's cut-offs (`min_frequency`, `max_categories`): a rare or unseen value is code 0 and a
    null code 1, a category of its own. LightGBM sends missing categorical values to the "other" side of every
    split, so with nulls as missing a null (a cancelled flight's tail number) could never be split off; and
    thousands of raw tail numbers and flight numbers are codes a booster memorises, as the networks' embeddings
    would (configs/flights.yaml)."""

    spec: FeatureSpec  # the networks' encoding, fitted on the training window: vocabularies and targets
    boosters: dict[str, object]  # task -> lightgbm.Booster, early-stopped on the validation window

    @property
    def feature_names(self) -> list[str]:
        return self.spec.feature_names

    @property
    def categorical_names(self) -> list[str]:
        return [v.name for v in self.spec.categorical]

    def frame(self, df: pd.DataFrame) -> pd.DataFrame:
        x = pd.DataFrame({n.name: pd.to_numeric(df[n.name], errors="coerce").astype("float64")
                          for n in self.spec.numeric}, index=df.index)
        codes, _ = self.spec.transform_categorical(df)
        for j, name in enumerate(self.categorical_names):
            x[name] = codes[:, j]
        return x

    def raw_scores(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        x = self.frame(df)
        return {task: np.asarray(b.predict(x, raw_score=True, num_iteration=b.best_iteration))  # type: ignore[attr-defined]
                for task, b in self.boosters.items()}

    def metrics(self, tasks: list[TaskSpec], df: pd.DataFrame) -> dict[str, float]:
        """Each task's own metric on `df`, with the metric code the networks are scored with."""
        return {task: scores[metric] for task, (scores, metric) in self.all_metrics(tasks, df).items()}

    def all_metrics(self, tasks: list[TaskSpec], df: pd.DataFrame) -> dict[str, tuple[dict[str, float], str]]:
        """Each task's every metric on `df` (log loss beside ROC-AUC) and the name of the one it is gated on."""
        y, raw = self.spec.transform_targets(df), self.raw_scores(df)
        return {task.name: (head_metrics(target, raw[task.name], y[task.name]), task.metric)  # type: ignore[misc]
                for task, target in zip(tasks, self.spec.targets, strict=True)}


def fit_lightgbm(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, seed: int, threads: int,
                 rounds: int, params: dict[str, dict[str, float | int]] | None = None) -> LightGBMModels:
    """A booster per task of `cfg` (objective and early stopping from its metric: `booster_objective`), up to
    `rounds` rounds, stopped when the validation window's metric has not improved for EARLY_STOPPING_ROUNDS.
    `params` (task -> parameters) override LGBM_PARAMS for that task."""
    import lightgbm as lgb

    spec = FeatureSpec.fit(train_df, cfg)
    models = LightGBMModels(spec, {})
    x_train, x_val = models.frame(train_df), models.frame(val_df)
    y_train, y_val = spec.transform_targets(train_df), spec.transform_targets(val_df)
    for task, target in zip(cfg.tasks, spec.targets, strict=True):
        tr, va = ~np.isnan(y_train[task.name]), ~np.isnan(y_val[task.name])
        booster_params = {**LGBM_PARAMS, **(params or {}).get(task.name, {}), **booster_objective(task),
                          "seed": seed, "num_threads": threads, "verbosity": -1}
        if target.width > 1:
            booster_params["num_class"] = target.width
        data = {"categorical_feature": models.categorical_names, "free_raw_data": False}
        models.boosters[task.name] = lgb.train(
            booster_params, lgb.Dataset(x_train[tr], y_train[task.name][tr], **data), num_boost_round=rounds,
            valid_sets=[lgb.Dataset(x_val[va], y_val[task.name][va], **data)],
            callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False)])
    return models


def run_lightgbm(cfg: ProjectConfig, train_df: pd.DataFrame, val_df: pd.DataFrame, test_df: pd.DataFrame,
                 seed: int, threads: int, rounds: int, params: dict[str, float | int] | None = None) -> RunResult:
    """One gradient-boosted model per task on the same features (`fit_lightgbm`), scored on `test_df` with the
    same metric code as the networks. `params` override LGBM_PARAMS for every task."""
    t0 = time.perf_counter()
    models = fit_lightgbm(cfg, train_df, val_df, seed, threads, rounds, {t.name: params or {} for t in cfg.tasks})
    return RunResult(models.metrics(cfg.tasks, test_df), time.perf_counter() - t0, None)


def delta_m(cfg: ProjectConfig, summary: MethodSummary, stl: MethodSummary) -> float:
    """Δm% (docs/methods.md) on the seed means: mean over tasks of the sign-corrected relative change vs STL."""
    return 100 * statistics.fmean(relative_change(t.metric, summary.mean(t.name), stl.mean(t.name))  # type: ignore[arg-type]
                                  for t in cfg.tasks)


def markdown(cfg: ProjectConfig, summaries: list[MethodSummary], header: str) -> str:
    stl = next(s for s in summaries if s.name == "STL")
    tasks = cfg.tasks
    cols = [f"{t.name}{' (primary)' if t.primary else ''} {t.metric}" for t in tasks]
    lines = [header, "", "| method | " + " | ".join(cols) + " | Δm% vs STL | train wall s | train GFLOPs |",
             "|---" * (len(cols) + 4) + "|"]
    for s in summaries:
        cells = [f"{s.mean(t.name):.4f} ± {s.std(t.name):.4f}" for t in tasks]
        wall = statistics.fmean(r.wall_s for r in s.runs)
        flops = s.flops()
        gflops = f"{flops / 1e9:,.0f}" if flops is not None else "n/a"
        lines.append(f"| {s.name} | " + " | ".join(cells) + f" | {delta_m(cfg, s, stl):+.2f} | {wall:.1f} | {gflops} |")
    return "\n".join(lines) + "\n"


def plot(cfg: ProjectConfig, summaries: list[MethodSummary], path: Path, title: str) -> None:
    """Left: methods ranked by the primary test metric (± std over seeds), with their training GFLOPs.
    Right: the same metric against training FLOPs; methods that train alike share a FLOPs value, so the points
    are told apart by marker and legend rather than by labels that would overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = cfg.primary_task
    sign = 1 if higher_is_better(primary.metric) else -1  # the metric's own direction: best ends up on top
    ranked = sorted(summaries, key=lambda s: sign * s.mean(primary.name))
    ylabel = f"{primary.name} test {primary.metric} (mean ± std over seeds)"
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 0.32 * len(summaries) + 3),
                                      gridspec_kw={"width_ratios": [1, 1.25]})
    stl = next(s for s in summaries if s.name == "STL")
    for row, s in enumerate(ranked):
        flops = s.flops()
        label = f"{s.name} ({flops / 1e9:,.0f} GFLOPs)" if flops is not None else f"{s.name} (FLOPs n/a)"
        left.errorbar(s.mean(primary.name), row, xerr=s.std(primary.name), fmt="o", capsize=3,
                      color="tab:red" if s.name == "STL" else "tab:blue")
        left.annotate(label, (s.mean(primary.name), row), textcoords="offset points", xytext=(0, 6), fontsize=7,
                      ha="center")
    left.axvline(stl.mean(primary.name), linestyle=":", color="tab:red", linewidth=1)
    left.set_yticks([])
    left.set_ylim(-0.7, len(ranked) - 0.3)
    left.set_xlabel(ylabel)
    left.set_title("ranked (red: STL)", fontsize=9)
    left.grid(axis="x", alpha=0.3)

    markers = "osD^v<>pPhX*"
    for k, s in enumerate(summaries):
        flops = s.flops()
        style = {"color": plt.cm.tab20(k % 20), "marker": markers[k % len(markers)]}
        if flops is not None:
            right.errorbar(flops, s.mean(primary.name), yerr=s.std(primary.name), capsize=3,
                           linestyle="none", label=s.name, **style)
        else:
            right.axhline(s.mean(primary.name), linestyle="--", color="grey", linewidth=1,
                          label=f"{s.name} (FLOPs not comparable)")
    right.set_xscale("log")
    right.set_xlabel("training FLOPs (counted, log scale)")
    right.set_ylabel(ylabel)
    right.set_title("against training compute", fontsize=9)
    right.grid(alpha=0.3)
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench_config(base: ProjectConfig, epochs: int, threads: int, device: str) -> ProjectConfig:
    """The config every method starts from: plain EW whatever the config's own default strategy is, no MT2ST
    or Rep-MTL, the benchmark's epoch budget, threads and device."""
    return with_training(base, epochs=epochs, threads=threads, strategy={"name": "ew"}, mt2st=None, rep_mtl=None,
                         device=device)


OPTION_EXAMPLES = {"model": "architecture=ft_transformer", "training": "batch_size=256", "min-frequency": "tailnum=30"}


def setting_overrides(pairs: list[str], option: str = "model") -> dict[str, object]:
    """`--model` / `--training` FIELD=VALUE (`--min-frequency` COLUMN=N) pairs as settings, each value read as
    YAML (32 -> int, [128, 64] -> list)."""
    settings: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--{option} {pair!r}: write FIELD=VALUE, e.g. {OPTION_EXAMPLES[option]}")
        settings[name.strip()] = yaml.safe_load(value)
    return settings


def with_min_frequency(cfg: ProjectConfig, cutoffs: dict[str, object],
                       option: str = "--min-frequency") -> ProjectConfig:
    """`cfg` with `min_frequency` set on the named categorical features (`option` names the flag in an error)."""
    raw = cfg.model_dump(mode="json", exclude_none=True)
    known = {f["name"] for f in raw["features"]["categorical"]}
    if missing := sorted(set(cutoffs) - known):
        raise SystemExit(f"{option}: {missing} are not categorical features of the config (it has {sorted(known)})")
    for f in raw["features"]["categorical"]:
        f["min_frequency"] = cutoffs.get(f["name"], f["min_frequency"])
    return parse_config(raw, "<min_frequency>")


def config_key(path: str | Path, cfg: ProjectConfig) -> dict[str, object]:
    """What a journal keys a config on: its file name and its categorical cut-offs, since a run at other cut-offs
    trains other models (benchmarks/category_cutoff.py)."""
    return {"config": Path(path).name, "min_frequency": {f.name: f.min_frequency for f in cfg.features.categorical}}


def journal_file(out: Path, kind: str) -> Path:
    """The machine-written journal (`kind`: runs or optuna) of the results `out`: in journals/ beside the tables,
    out of a reader's way, where a stopped run resumes from."""
    path = out.parent / "journals" / f"{out.name}.{kind}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def beside(out: Path, suffix: str) -> Path:
    """`<out><suffix>`: `--out` has no suffix of its own, so a dot in its name (`ema0.99`) stays in the name."""
    return out.parent / f"{out.name}{suffix}"


def load_windows(cfg: ProjectConfig, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A seeded row sample of the config's data, cut into its train, validation and test time windows."""
    df = with_labels(sample_rows(load_source(cfg.data), fraction, seed=0), cfg)
    w = cfg.data.windows
    return tuple(select_window(df, cfg.data.time_column, x.start, x.end)  # type: ignore[return-value]
                 for x in (w.train, w.validation, w.test))


def machine(threads: int, device: str) -> str:
    accelerator = torch.cuda.get_device_name() if device != "cpu" and torch.cuda.is_available() else "CPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores (torch threads {threads}), "
            f"{platform.python_implementation()} {platform.python_version()}, torch {torch.__version__}, "
            f"{accelerator}")


def seed_runs(name: str, seeds: int, journal: RunJournal, run: Callable[[int], RunResult], bar: Progress,
              job: TaskID) -> MethodSummary:
    """`name` over seeds 0..seeds-1: each seed's run from the journal, or trained now and journaled."""
    summary = MethodSummary(name)
    for seed in range(seeds):
        bar.update(job, description=f"{name} seed {seed}")
        if (name, seed) not in journal.done:
            journal.record(name, seed, run(seed))
        summary.runs.append(journal.done[(name, seed)])
        bar.advance(job)
    return summary


def results_header(title: str, script: str, argv: list[str] | None, threads: int, device: str, fraction: float,
                   windows: tuple[pd.DataFrame, ...], epochs: int) -> str:
    """The title, command, machine and data lines a results file opens with; the caller ends the data line."""
    command = f"python -m benchmarks.{Path(script).stem} " + shlex.join(argv if argv is not None else sys.argv[1:])
    rows = " / ".join(f"{len(df):,} {name}" for df, name in zip(windows, ("train", "validation", "test"), strict=True))
    return (f"# {title}\n\nCommand: `{command.strip()}`  \nMachine: {machine(threads, device)}  \n"
            f"Data: {fraction:.0%} row sample; {rows} rows (time windows of the config), {epochs} epochs max, "
            f"early stopping on the primary validation metric")
