"""Champion vs shadow on the same live records (serving/shadow.py logs the shadow's outputs).

Before labels: per task, how often the two disagree on the label, how far apart their outputs are,
and how far apart their output distributions are. Once labels arrive: each task's gated metric for
both on the same labelled records, and a paired bootstrap of the shadow's relative change (the same
resamples for both, so what the two share cancels): "not worse" when the one-sided lower bound at
`confidence` clears the task's gate tolerance (non-inferiority), "worse" when even the upper bound is
below it, "undecided" in between. `decide` turns that into the registry's decision: promote the
shadow, reject it, or keep shadowing (what `mtlops shadow decide` and the shadow pipeline run).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from components.artifacts.predictions import SHADOW_LOG_FOLDER, read_prediction_log
from components.config.schema import ProjectConfig, TaskSpec
from components.config.tasks import kind_of, label_output_column
from components.data.tables import label_column
from components.training.metrics import relative_change, task_metrics
from monitoring.drift import bootstrap_counts, labelled_outputs
from monitoring.windows import LOG_KEYS, read_labels

SHADOW_SUFFIX = "@shadow"


@dataclass
class TaskComparison:
    task: str
    records: int  # scored by both
    label_flip_rate: float  # share of records whose predicted label differs (NaN: a task without labels)
    mean_abs_difference: float  # of the monitored output (probability or value; NaN for a class label)
    output_drift: float  # KS statistic of the monitored outputs, or total variation distance of the labels
    labelled: int = 0
    metric: str = ""
    champion: float = math.nan
    shadow: float = math.nan
    change: float = math.nan  # the shadow's relative change, positive is better
    change_low: float = math.nan  # one-sided lower bound at the confidence
    change_high: float = math.nan  # one-sided upper bound
    tolerance: float = math.nan
    verdict: str = "no labels"  # not worse | worse | undecided | no labels


@dataclass
class ShadowComparison:
    champion_version: str
    shadow_version: str
    tasks: list[TaskComparison]

    @property
    def shadow_not_worse(self) -> bool:
        """Every task labelled and shown not worse than its tolerance (what promotion asks)."""
        return bool(self.tasks) and all(t.verdict == "not worse" for t in self.tasks)

    def to_dict(self) -> dict:
        return {"champion_version": self.champion_version, "shadow_version": self.shadow_version,
                "tasks": [asdict(t) for t in self.tasks]}


def paired_log(log_dir: Path, start: datetime | None = None, end: datetime | None = None,
               labels: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The champion's and the shadow's logged rows for the records both scored, aligned row by row
    (joined with `labels` on the log keys when given)."""
    champion = read_prediction_log(log_dir, start, end)
    shadow = read_prediction_log(Path(log_dir) / SHADOW_LOG_FOLDER, start, end)
    if champion.empty or shadow.empty:
        return champion.iloc[:0], shadow.iloc[:0]
    outputs = ["model_version", *(c for c in shadow.columns if "__" in c)]  # prediction columns: <task>__<what>
    merged = champion.merge(shadow[LOG_KEYS + outputs], on=LOG_KEYS, suffixes=("", SHADOW_SUFFIX),
                            validate="one_to_one")
    if labels is not None:
        merged = merged.merge(labels, on=LOG_KEYS, how="left", validate="one_to_one")
    shadow_view = merged.drop(columns=outputs).rename(columns={c + SHADOW_SUFFIX: c for c in outputs})
    return merged.drop(columns=[c + SHADOW_SUFFIX for c in outputs]), shadow_view


def compare(cfg: ProjectConfig, champion: pd.DataFrame, shadow: pd.DataFrame, confidence: float = 0.95,
            draws: int = 1000, seed: int = 0) -> ShadowComparison:
    """Per-task agreement and, where labels are present, the paired test (see the module doc)."""
    tasks = [_compare_task(cfg, t, champion, shadow, confidence, draws, seed) for t in cfg.tasks]
    return ShadowComparison(_version(champion), _version(shadow), tasks)


def _version(frame: pd.DataFrame) -> str:
    return ", ".join(sorted(map(str, frame["model_version"].unique()))) if len(frame) else ""


def _compare_task(cfg: ProjectConfig, task: TaskSpec, champion: pd.DataFrame, shadow: pd.DataFrame,
                  confidence: float, draws: int, seed: int) -> TaskComparison:
    kind = kind_of(task)
    column = kind.monitored_column(task.name)
    label = label_output_column(task.name)
    a, b = champion[column].to_numpy(), shadow[column].to_numpy()
    flips = float(np.mean(champion[label].to_numpy() != shadow[label].to_numpy())) \
        if label in champion.columns and len(a) else math.nan
    if kind.monitored_is_categorical:
        mad = math.nan
        shares = pd.concat([pd.Series(a).value_counts(normalize=True), pd.Series(b).value_counts(normalize=True)],
                           axis=1).fillna(0.0)
        drift = float(0.5 * (shares.iloc[:, 0] - shares.iloc[:, 1]).abs().sum()) if len(a) else math.nan
        flips = float(np.mean(a != b)) if len(a) else math.nan
    else:
        a, b = a.astype(np.float64), b.astype(np.float64)
        mad = float(np.mean(np.abs(a - b))) if len(a) else math.nan
        drift = float(ks_2samp(a, b).statistic) if len(a) else math.nan
    out = TaskComparison(task.name, len(a), flips, mad, drift, metric=task.metric or "",
                         tolerance=cfg.gate_tolerance(task.name))
    if label_column(task.name) not in champion.columns:
        return out
    target, raw_a, y = labelled_outputs(task, champion)
    _, raw_b, _ = labelled_outputs(task, shadow)
    out.labelled = len(y)
    if len(y) == 0:
        return out
    metric = out.metric
    out.champion = task_metrics(target, raw_a, y)[metric]
    out.shadow = task_metrics(target, raw_b, y)[metric]
    out.change = relative_change(metric, out.shadow, out.champion)
    counts = bootstrap_counts(len(y), draws, seed)
    resampled_a = kind.resampled(target, metric, raw_a, y, counts)
    resampled_b = kind.resampled(target, metric, raw_b, y, counts)
    changes = np.array([relative_change(metric, float(s), float(c)) for s, c in zip(resampled_b, resampled_a,
                                                                                      strict=True)])
    changes = changes[np.isfinite(changes)]
    out.change_low, out.change_high = (float(q) for q in np.quantile(changes, [1 - confidence, confidence]))
    out.verdict = "not worse" if out.change_low >= -out.tolerance else \
        "worse" if out.change_high < -out.tolerance else "undecided"
    return out


@dataclass
class ShadowDecision:
    outcome: str  # promoted | rejected | undecided
    tag: str | None  # the shadow decided on (None while undecided)
    reason: str
    comparison: ShadowComparison


def decide(cfg: ProjectConfig, log_dir: Path, labels_file: Path, min_labelled: int = 1000,
           confidence: float = 0.95) -> ShadowDecision:
    """Promote the shadow when every task is shown not worse than the champion beyond its tolerance on at
    least `min_labelled` labelled live records; reject it as soon as a task is shown worse; otherwise keep
    shadowing. A decision goes into the shadow's registry metadata with its numbers."""
    from components.artifacts.registry import champion as current_champion
    from components.artifacts.registry import decide_shadow
    from components.artifacts.registry import shadow as current_shadow

    name = cfg.registry.model_name
    shadowed, serving = current_shadow(name), current_champion(name)
    if shadowed is None:
        raise LookupError(f"{name!r} has no shadow to decide on")
    champion, shadow = paired_log(log_dir, labels=read_labels(cfg, labels_file))
    # only what today's champion and shadow scored: the log keeps every version that served or shadowed before
    ours = ((shadow["model_version"] == str(shadowed.tag)) &
            (champion["model_version"] == str(serving.tag) if serving else False)).to_numpy()
    champion, shadow = champion[ours].reset_index(drop=True), shadow[ours].reset_index(drop=True)
    if champion.empty:
        return ShadowDecision("undecided", None, f"no record in {log_dir} was scored by both the champion and a "
                              "shadow yet", ShadowComparison("", "", []))
    result = compare(cfg, champion, shadow, confidence)
    outcome, why = verdict(result, min_labelled)
    if outcome == "undecided":
        return ShadowDecision(outcome, None, why, result)
    return ShadowDecision(outcome, decide_shadow(name, outcome == "promoted", result.to_dict() | {
        "min_labelled": min_labelled}), why, result)


def verdict(result: ShadowComparison, min_labelled: int = 1000) -> tuple[str, str]:
    """("rejected", why) as soon as a task is shown worse; ("promoted", why) once every task has
    `min_labelled` labelled records and is shown not worse; else ("undecided", why): keep shadowing."""
    short = [t.task for t in result.tasks if t.labelled < min_labelled]
    worse = [t.task for t in result.tasks if t.verdict == "worse"]
    if worse:
        return "rejected", f"worse on {', '.join(worse)}"
    if not short and result.shadow_not_worse:
        return "promoted", "no task worse beyond its tolerance"
    return "undecided", (f"too few labelled records for {', '.join(short)}" if short else
                         "some task is shown neither worse nor not worse")
