"""Drift and quality of one multi-task model: one Evidently report per monitored window.

`monitor` compares a current window with the model's reference, both in the prediction
log's format (`components.artifacts.predictions`): features by name, per-task prediction columns and,
once known, label columns `label__<task>`. One Evidently `Report` computes

- data drift per feature at thresholds calibrated on the reference (`monitoring.calibration`;
  `DataDriftPreset`: Evidently's method by column type and size,
  overridable per column in `monitoring:`; categoricals over the reference's most frequent
  values plus an OTHER bucket) and the dataset drift share;
- prediction drift per task, on the task's monitored column (`monitored_column`);
- per-task quality estimated without labels (`monitoring.estimation`: CBPE, DLE) and, once the
  window has labels, the realized quality (`TaskQuality`, this module's metric, which
  scores with `components.training.metrics.task_metrics`, the numbers the promotion gate uses).

Both windows are sampled to `sample_size` rows (Evidently is slow on large tables, upstream
issue #1526); the summary reports rows before and after. The snapshot is saved as JSON and
HTML, and added to the model's project in an Evidently Workspace when one is given
(`monitoring.dashboard`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.metric_types import SingleValue, SingleValueCalculation, SingleValueMetric
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset

from components.artifacts.predictions import monitored_column
from components.config.schema import MonitoringSpec, ProjectConfig, TaskSpec
from components.config.tasks import kind_of
from components.data.features import TargetSpec
from components.data.tables import label_column
from components.training.metrics import baseline_raw, relative_change, task_metrics
from monitoring.calibration import Calibration, calibrate
from monitoring.dashboard import RecordedValue, add_snapshot, recorded_values
from monitoring.estimation import check_estimate, estimate_error, estimate_quality, last_errors, log_errors
from monitoring.segments import duplicate_share, null_surges, segment_findings
from monitoring.summary import MonitorSummary, window_start

DEFAULT_SAMPLE_SIZE: int = MonitoringSpec.model_fields["sample_size"].default  # chosen by benchmarks/monitor_speed.py
SNAPSHOT_JSON, SNAPSHOT_HTML, SUMMARY_JSON = "snapshot.json", "report.html", "summary.json"
OTHER = "(other)"  # categorical values outside the reference's top values


# --- per-task quality ------------------------------------------------------------


def _target(task: TaskSpec | TargetSpec, frame: pd.DataFrame) -> TargetSpec:
    """The task as `task_metrics` sees it on a prediction log (classes in the log's column order)."""
    classes = kind_of(task).classes_in(task.name, frame.columns)
    return TargetSpec(task.name, task.type, classes=classes, threshold=task.threshold)


def _outputs(target: TargetSpec, frame: pd.DataFrame) -> np.ndarray:
    """Logged predictions as the graph output them (logits / log-probabilities / values in units)."""
    return kind_of(target).from_columns(target, frame)


def _labels(target: TargetSpec, frame: pd.DataFrame) -> np.ndarray:
    return kind_of(target).label_values(target, frame[label_column(target.name)])


def task_quality(task: TaskSpec | TargetSpec, frame: pd.DataFrame) -> dict[str, float]:
    """`task_metrics` (what the gate uses) on a prediction-log frame with the task's label column."""
    target = _target(task, frame)
    return task_metrics(target, _outputs(target, frame), _labels(target, frame))


def labelled_outputs(task: TaskSpec, frame: pd.DataFrame) -> tuple[TargetSpec, np.ndarray, np.ndarray]:
    """The task, its logged outputs and its labels on the labelled rows of a prediction-log frame."""
    target = _target(task, frame)
    outputs, y = _outputs(target, frame), _labels(target, frame)
    labelled = ~np.isnan(y)
    return target, outputs[labelled], y[labelled]


def bootstrap_counts(n: int, draws: int, seed: int) -> np.ndarray:
    """[draws, n]: how often each of `draws` resamples of `n` rows (with replacement) drew each row."""
    rows = np.random.default_rng(seed).integers(0, n, (draws, n))
    return np.bincount((rows + n * np.arange(draws)[:, None]).ravel(), minlength=draws * n).reshape(draws, n)


def quality_bootstrap(task: TaskSpec, frame: pd.DataFrame, draws: int, confidence: float, reference: float,
                      tolerance: float, seed: int = 0) -> tuple[float, float, float]:
    """The task's gated metric over the labelled rows of `frame`, resampled `draws` times: the two-sided
    `confidence` percentile interval (how far the window's metric moves by sampling alone) and the
    one-sided bootstrap p-value of H0 "the window's metric is within `tolerance` (relative) of
    `reference`" — the share of resamples no further below, (1 + k) / (1 + draws) — which the alert
    policy tests."""
    target, raw, y = labelled_outputs(task, frame)
    if len(y) == 0:
        return math.nan, math.nan, math.nan
    metric = task.metric or ""
    values = kind_of(target).resampled(target, metric, raw, y, bootstrap_counts(len(y), draws, seed))
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(values, [alpha, 1 - alpha])
    finite = values[np.isfinite(values)]
    at_least = np.sum([relative_change(metric, float(v), reference) > -tolerance for v in finite])
    p_value = (1 + at_least) / (1 + len(finite)) if math.isfinite(reference) else math.nan
    return float(low), float(high), float(p_value)


def baseline_quality(task: TaskSpec, reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, float]:
    """The trivial model (the reference's prevalence / class frequencies / median) scored on the
    current window's labels: what "no model at all" achieves on the same rows."""
    target = _target(task, current)
    y = _labels(target, current)
    return task_metrics(target, baseline_raw(target, _labels(target, reference), len(y)), y)


def has_labels(task: TaskSpec | TargetSpec, frame: pd.DataFrame) -> bool:
    col = label_column(task.name)
    return col in frame.columns and bool(frame[col].notna().any())


class TaskQuality(SingleValueMetric):
    """One task's gated metric (ROC-AUC, MAE, ...) on the labelled rows of a window, stored in
    the snapshot so the dashboard can plot it. Its result is a plain `SingleValue`, so
    `evidently ui` reads it without importing this module."""

    task: str
    task_type: str
    metric: str
    threshold: float = 0.5


class TaskQualityCalculation(SingleValueCalculation[TaskQuality]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> Any:
        m = self.metric
        task = TargetSpec(m.task, m.task_type, threshold=m.threshold)

        def value(data: Dataset | None) -> SingleValue | None:
            if data is None:
                return None
            frame = data.as_dataframe()
            score = task_quality(task, frame).get(m.metric, math.nan) if has_labels(task, frame) else math.nan
            return self.result(float(score))

        return value(current_data), value(reference_data)

    def display_name(self) -> str:
        return f"{self.metric.task}: {self.metric.metric}"


def _reference_quality(task: TaskSpec, reference: pd.DataFrame,
                       reference_quality: dict[str, dict[str, float]] | None) -> float:
    """The quality a window is compared with: the given held-out metric, else the model scored on the
    reference sample (in-sample, optimistic)."""
    metric = task.metric or ""
    given = (reference_quality or {}).get(task.name, {}).get(metric)
    if given is not None:
        return float(given)
    return task_quality(task, reference).get(metric, math.nan) if has_labels(task, reference) else math.nan


# --- calibration ---------------------------------------------------------------------


def reference_calibration(cfg: ProjectConfig, reference: pd.DataFrame, model_version: str) -> Calibration:
    """Calibrate the drift thresholds on the whole reference, in time order, prepared as the
    report sees it (categoricals over the reference's top values)."""
    predictions = _columns(cfg, reference, reference)
    time_col = cfg.data.time_column
    ordered = reference.sort_values(time_col, kind="stable") if time_col in reference.columns else reference
    prepared = _prepared(ordered.reset_index(drop=True), cfg, predictions, top_categories(reference, cfg))
    mon = cfg.monitoring
    by_column = {**{f: f for f in cfg.features.names}, **{c: t for t, c in predictions.items()}}
    methods = {column: mon.per_column_method.get(name, mon.method) for column, name in by_column.items()}
    return calibrate(cfg, prepared, _column_types(cfg, predictions), methods, model_version)


# --- the report ----------------------------------------------------------------------


def sample(frame: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    """At most `size` rows, a seeded uniform sample (all rows when fewer)."""
    if len(frame) <= size:
        return frame.reset_index(drop=True)
    return frame.sample(n=size, random_state=seed).reset_index(drop=True)


def _columns(cfg: ProjectConfig, reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, str]:
    """task -> monitored prediction column; raises naming whatever a frame lacks."""
    predictions = {t.name: monitored_column(TargetSpec(t.name, t.type)) for t in cfg.tasks}
    wanted = [*cfg.features.names, *predictions.values()]
    for name, frame in (("reference", reference), ("current", current)):
        missing = [c for c in wanted if c not in frame.columns]
        if missing:
            raise ValueError(f"the {name} window lacks columns of the prediction log format: {missing}")
        if frame.empty:
            raise ValueError(f"the {name} window has no rows")
    return predictions


def _data_definition(cfg: ProjectConfig, predictions: dict[str, str]) -> DataDefinition:
    numeric = [f.name for f in cfg.features.numeric]
    categorical = [f.name for f in cfg.features.categorical]
    for t in cfg.tasks:
        (categorical if kind_of(t).monitored_is_categorical else numeric).append(predictions[t.name])
    return DataDefinition(numerical_columns=numeric, categorical_columns=categorical)


def _as_text(col: pd.Series) -> pd.Series:
    """Categoricals as strings (a categorical feature may be stored as integers, e.g. flight
    numbers), nulls kept."""
    return col.astype("string").astype(object).where(col.notna(), None)


def top_categories(reference: pd.DataFrame, cfg: ProjectConfig) -> dict[str, set[str]]:
    """Per categorical feature, the reference's `monitoring.top_categories` most frequent values."""
    n = cfg.monitoring.top_categories
    return {f.name: set(_as_text(reference[f.name]).value_counts().index[:n]) for f in cfg.features.categorical}


def _prepared(frame: pd.DataFrame, cfg: ProjectConfig, predictions: dict[str, str],
              top: dict[str, set[str]]) -> pd.DataFrame:
    """The columns the report reads; categorical features over the reference's top values plus
    an OTHER bucket: a long tail (tailnum: ~4,000 aircraft) compared value by value on a few
    thousand rows reads as drift from sampling noise alone (docs/monitoring.md, "Monitor a window")."""
    labels = [label_column(t.name) for t in cfg.tasks if label_column(t.name) in frame.columns]
    probas = [c for t in cfg.tasks for c in kind_of(t).extra_columns(t.name, frame.columns)]
    out = frame[[*cfg.features.names, *predictions.values(), *probas, *labels]].copy()
    for f in cfg.features.categorical:
        text = _as_text(out[f.name])
        out[f.name] = text.where(text.isna() | text.isin(top[f.name]), OTHER)
    return out


def _column_types(cfg: ProjectConfig, predictions: dict[str, str]) -> dict[str, str]:
    """Every compared column (features, monitored predictions) -> "num" or "cat"."""
    definition = _data_definition(cfg, predictions)
    return {**{c: "num" for c in definition.numerical_columns or []},
            **{c: "cat" for c in definition.categorical_columns or []}}


def thresholds(cfg: ProjectConfig, predictions: dict[str, str],
               calibration: Calibration) -> dict[str, tuple[str, float]]:
    """Column -> (Evidently method, threshold): the calibrated ones, a `per_column_threshold` from
    the config (keyed by feature or task) overriding the calibrated threshold."""
    by_column = {**{f: f for f in cfg.features.names}, **{c: t for t, c in predictions.items()}}
    explicit = cfg.monitoring.per_column_threshold
    return {column: (c.method, explicit.get(by_column[column], c.threshold))
            for column, c in calibration.columns.items()}


def _report(cfg: ProjectConfig, predictions: dict[str, str], quality_tasks: list[TaskSpec],
            limits: dict[str, tuple[str, float]], recorded: list[RecordedValue]) -> Report:
    """Watched features in the `DataDriftPreset` (so its drift share counts them only), context
    features and task predictions as single `ValueDrift`s; every column at its calibrated threshold."""
    mon = cfg.monitoring
    watched = [f for f in cfg.features.names if f not in mon.context_features]
    items: list[Any] = []
    if watched:
        items.append(DataDriftPreset(columns=watched, drift_share=mon.drift_share,
                                     per_column_method={c: limits[c][0] for c in watched},
                                     per_column_threshold={c: limits[c][1] for c in watched}))
    for column in [*mon.context_features, *predictions.values()]:
        items.append(ValueDrift(column=column, method=limits[column][0], threshold=limits[column][1]))
    for t in quality_tasks:
        items.append(TaskQuality(task=t.name, task_type=t.type, metric=t.metric or "", threshold=t.threshold))
    return Report([*items, *recorded], include_tests=True)


def _method_name(method: str) -> str:
    """Evidently's display name ("K-S p_value", "PSI", ...): a configured method comes back as its
    short name, a default one as its display name already."""
    from evidently.legacy.calculations.stattests.registry import _registered_stat_tests

    by_type = _registered_stat_tests.get(method)
    return next(iter(by_type.values())).display_name if by_type else method


def _drift_results(snapshot_dict: dict) -> tuple[dict[str, float], dict[str, str], set[str], float]:
    """column -> score, column -> method, drifted columns, drift share, from the snapshot."""
    scores, methods, share = {}, {}, math.nan
    for m in snapshot_dict["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith(":ValueDrift"):
            scores[cfg["column"]] = float(m["value"])
            methods[cfg["column"]] = f"{_method_name(cfg['method'])} (threshold {cfg['threshold']})"
        elif cfg["type"].endswith(":DriftedColumnsCount"):
            share = float(m["value"]["share"])
    drifted = {t["metric_config"]["params"]["column"] for t in snapshot_dict["tests"]
               if t["id"] == "drift" and t["status"] == "FAIL"}
    return scores, methods, drifted, share


def monitor(cfg: ProjectConfig, reference: pd.DataFrame, current: pd.DataFrame, out_dir: Path, *,
            window: str, model_version: str, sample_size: int | None = None, seed: int = 0,
            workspace: Path | None = None, calibration: Calibration | None = None,
            reference_quality: dict[str, dict[str, float]] | None = None,
            estimate_log: Path | None = None) -> MonitorSummary:
    """Drift of every feature and task output, and per-task quality when `current` has labels.

    `sample_size` defaults to the config's `monitoring.sample_size`. Reference quality is the
    model scored on the reference frame (its training-window sample: in-sample, so optimistic)
    unless `reference_quality` gives held-out numbers (task -> {metric: value}, e.g. the model's
    stored test metrics, which `mtlops monitor` passes). Writes `snapshot.json`, `report.html`
    and `summary.json` into `out_dir`; with `workspace`, adds the snapshot to the model's project.
    Drift thresholds come from `calibration` (`reference_calibration` when not given).
    Each label-free estimate is checked (`monitoring.estimation.check_estimate`) against the data
    checks and the last labelled window's error read from `estimate_log`; a window with labels
    appends its realized-vs-estimated errors there.
    """
    size = sample_size or cfg.monitoring.sample_size
    predictions = _columns(cfg, reference, current)
    ref, cur = sample(reference, size, seed), sample(current, size, seed)
    labelled = [t for t in cfg.tasks if has_labels(t, cur)]
    when = window_start(window)
    top = top_categories(ref, cfg)
    calibration = calibration or reference_calibration(cfg, reference, model_version)
    limits = thresholds(cfg, predictions, calibration)
    estimated, estimated_reference = estimate_quality(cfg, ref, cur)
    findings = [*null_surges(cfg, ref, cur), *segment_findings(cfg, ref, cur)]
    last = last_errors(estimate_log, model_version)
    checks = {t.name: check_estimate(cfg, t, ref, cur, [f.feature for f in findings], last.get(t.name))
              for t in cfg.tasks if t.name in estimated}
    reference_values = {t.name: _reference_quality(t, ref, reference_quality) for t in labelled}
    errors = {t.name: estimate_error(t.metric or "", estimated[t.name], estimated_reference[t.name],
                                     task_quality(t, cur).get(t.metric or "", math.nan), reference_values[t.name])
              for t in labelled if math.isfinite(estimated.get(t.name, math.nan))}
    recorded = recorded_values(cfg, estimated, {column: limit for column, (_, limit) in limits.items()},
                               {task: c.doubts for task, c in checks.items()},
                               {task: e["error"] for task, e in errors.items()}, len(findings))
    snapshot = _report(cfg, predictions, labelled, limits, recorded).run(
        Dataset.from_pandas(_prepared(cur, cfg, predictions, top), data_definition=_data_definition(cfg, predictions)),
        Dataset.from_pandas(_prepared(ref, cfg, predictions, top), data_definition=_data_definition(cfg, predictions)),
        timestamp=when, tags=["monitor"], metadata={"window": window, "model_version": model_version},
        name=f"{window} · {model_version}")
    as_dict = snapshot.dict()
    scores, methods, drifted, share = _drift_results(as_dict)

    quality: dict[str, dict[str, Any]] = {}
    by_task = {t.name: t for t in labelled}
    for m in as_dict["metrics"]:
        if not m["config"]["type"].endswith(":TaskQuality"):
            continue
        task = by_task[m["config"]["task"]]
        metric = task.metric or ""
        ref_value = reference_values[task.name]
        current_value = float(m["value"])
        mon = cfg.monitoring
        low, high, p_value = (quality_bootstrap(task, cur, mon.quality_draws, mon.quality_confidence, ref_value,
                                                cfg.alert_tolerance(task.name), seed)
                              if mon.quality_confidence > 0 else (current_value, current_value, math.nan))
        quality[task.name] = {
            "metric": metric, "reference": ref_value, "current": current_value,
            "relative_change": relative_change(metric, current_value, ref_value),
            "ci_low": low, "ci_high": high, "p_value": p_value,
            "baseline": baseline_quality(task, ref, cur).get(metric, math.nan) if has_labels(task, ref) else math.nan,
            "rows": int(cur[label_column(task.name)].notna().sum()),
        }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    snapshot.save_json(str(out_dir / SNAPSHOT_JSON))
    snapshot.save_html(str(out_dir / SNAPSHOT_HTML))
    features = cfg.features.names
    by_name = {**{f: f for f in features}, **{t: c for t, c in predictions.items()}}
    summary = MonitorSummary(
        model_version=model_version, window=window,
        rows_reference=len(reference), rows_current=len(current), sampled_reference=len(ref),
        sampled_current=len(cur), drift_share=share, dataset_drift=share >= cfg.monitoring.drift_share,
        drifted_features=[f for f in features if f in drifted],
        feature_scores={f: scores[f] for f in features},
        drifted_predictions=[t for t, c in predictions.items() if c in drifted],
        prediction_scores={t: scores[c] for t, c in predictions.items()},
        quality=quality, snapshot_json=str(out_dir / SNAPSHOT_JSON), snapshot_html=str(out_dir / SNAPSHOT_HTML),
        estimated=estimated, estimated_reference=estimated_reference,
        methods=methods, quality_reference="model test metrics" if reference_quality else "reference sample",
        timestamp=when.isoformat(), thresholds={name: limits[column][1] for name, column in by_name.items()},
        context_features=list(cfg.monitoring.context_features),
        data_findings=[f.as_dict() for f in findings],
        duplicate_share=duplicate_share(cfg, current), duplicate_share_reference=duplicate_share(cfg, reference),
        estimate_checks={task: c.as_dict() for task, c in checks.items()}, estimate_errors=errors,
    )
    if estimate_log is not None and errors:
        log_errors(estimate_log, window, model_version, errors)
    if workspace is not None:
        summary.snapshot_id = add_snapshot(Path(workspace), cfg, snapshot, summary)
    (out_dir / SUMMARY_JSON).write_text(summary.to_json())
    return summary
