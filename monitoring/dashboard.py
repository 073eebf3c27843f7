"""The Evidently Workspace behind `mtlops dashboard`: one project per model, one snapshot per
monitor run (timestamped at its window's start), and the panels that plot them over time.

Alert markers: the alert policy calls `add_alert_marker` after a monitor run that alerted; it adds
a small snapshot (tag `alert`) holding one `AlertRaised` value at the window's time, which the
"Alerts" panel plots as a bar. The panels are rewritten on every run, so the "top features" panel
follows the features that drift most in the latest window.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.metric_types import SingleValueCalculation, SingleValueMetric
from evidently.sdk.models import PanelMetric
from evidently.sdk.panels import bar_plot_panel, line_plot_panel, text_panel
from evidently.ui.workspace import Project, Workspace

from components.artifacts.predictions import monitored_column
from components.config.schema import ProjectConfig
from components.data.features import TargetSpec
from monitoring.summary import MonitorSummary, window_start

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

TOP_FEATURES = 5
ALERT_LEGENDS = {"data": "data alert (no retraining)", "model": "model alert"}
DRIFT_TAB, QUALITY_TAB = "Drift", "Quality and alerts"


class AlertRaised(SingleValueMetric):
    """1.0 in a window where the alert policy raised an alert; `reason` says why, `kind` which:
    "data" (a broken input column: fix the data, no retraining) or "model" (drift, quality)."""

    reason: str
    kind: str = "model"


class AlertRaisedCalculation(SingleValueCalculation[AlertRaised]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> Any:
        return self.result(1.0), None

    def display_name(self) -> str:
        return f"{self.metric.kind} alert: {self.metric.reason}"


class RecordedValue(SingleValueMetric):
    """A number the monitor computed outside Evidently's own metrics, stored in the snapshot so a
    panel can plot it next to Evidently's (its result is a plain `SingleValue`: `evidently ui`
    reads it without importing this module)."""

    recorded: float


class EstimatedQuality(RecordedValue):
    """A task's metric estimated before its labels (monitoring.estimation: CBPE / DLE); `doubt`: why
    the estimate's assumption is in doubt in this window (empty: its check passed)."""

    task: str
    metric: str
    doubt: str = ""


class EstimatedQualityCalculation(SingleValueCalculation[EstimatedQuality]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> Any:
        return self.result(self.metric.recorded), None

    def display_name(self) -> str:
        doubt = f" — in doubt: {self.metric.doubt}" if self.metric.doubt else ""
        return f"{self.metric.task}: {self.metric.metric} estimated (no labels){doubt}"


class EstimateError(RecordedValue):
    """Once a window's labels are known: its estimated relative change minus the realized one."""

    task: str


class EstimateErrorCalculation(SingleValueCalculation[EstimateError]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> Any:
        return self.result(self.metric.recorded), None

    def display_name(self) -> str:
        return f"{self.metric.task}: estimated - realized relative change"


class DataFindings(RecordedValue):
    """How many columns the data checks found broken inside a segment (monitoring.segments)."""


class DataFindingsCalculation(SingleValueCalculation[DataFindings]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> Any:
        return self.result(self.metric.recorded), None

    def display_name(self) -> str:
        return "columns broken inside a segment"


class DriftThreshold(RecordedValue):
    """The calibrated drift threshold of a column (monitoring.calibration) in this window's run."""

    column: str


class DriftThresholdCalculation(SingleValueCalculation[DriftThreshold]):
    def calculate(self, context: Any, current_data: Dataset, reference_data: Dataset | None) -> Any:
        return self.result(self.metric.recorded), None

    def display_name(self) -> str:
        return f"{self.metric.column}: calibrated drift threshold"


def recorded_values(cfg: ProjectConfig, estimated: dict[str, float], thresholds: dict[str, float],
                    doubts: dict[str, list[str]], errors: dict[str, float], findings: int) -> list[RecordedValue]:
    """The dashboard's extra series for one run: each task's estimated metric (with the doubts of its
    check), each compared column's calibrated drift threshold, each labelled task's estimate error,
    the number of data-check findings (non-finite values left out)."""
    return [*(EstimatedQuality(task=t.name, metric=t.metric or "", recorded=estimated[t.name],
                               doubt="; ".join(doubts.get(t.name, []))) for t in cfg.tasks
              if math.isfinite(estimated.get(t.name, math.nan))),
            *(DriftThreshold(column=c, recorded=v) for c, v in thresholds.items() if math.isfinite(v)),
            *(EstimateError(task=t, recorded=v) for t, v in errors.items() if math.isfinite(v)),
            DataFindings(recorded=float(findings))]


def project(workspace: Path, name: str) -> tuple[Workspace, Project]:
    """The workspace folder and the model's project in it, created on first use."""
    workspace.mkdir(parents=True, exist_ok=True)
    ws = Workspace(str(workspace))
    found = ws.search_project(name)
    if found:
        return ws, found[0]
    return ws, ws.create_project(name, description=f"Drift and quality of the multi-task model '{name}'")


def _panels(cfg: ProjectConfig, top_features: list[str]) -> list[tuple[str, Any]]:
    tasks = cfg.tasks
    drift = [
        line_plot_panel("Share of drifted features", [PanelMetric(
            legend="share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"},
            tags=["monitor"])], description=f"dataset drift at >= {cfg.monitoring.drift_share:.0%}", size="half"),
        line_plot_panel("Drift score of the top features", [
            PanelMetric(legend=f, metric="ValueDrift", metric_labels={"column": f}, tags=["monitor"])
            for f in top_features], description="features with the highest score in the latest window", size="half"),
        *(line_plot_panel(f"Prediction drift: {t.name} vs its calibrated threshold", [
            PanelMetric(legend="drift score", metric="ValueDrift", metric_labels={"column": column}, tags=["monitor"]),
            PanelMetric(legend="calibrated threshold", metric="DriftThreshold", metric_labels={"column": column},
                        tags=["monitor"])],
            description=f"{column}: drifted when the score passes the threshold learned on the reference",
            size="half") for t, column in ((t, monitored_column(TargetSpec(t.name, t.type))) for t in tasks)),
    ]
    quality = [
        line_plot_panel(f"Quality: {t.name} ({t.metric}), estimated vs realized", [
            PanelMetric(legend="estimated (no labels)", metric="EstimatedQuality", metric_labels={"task": t.name},
                        tags=["monitor"]),
            PanelMetric(legend="realized", metric="TaskQuality", metric_labels={"task": t.name}, tags=["monitor"])],
            description="estimated from features and predictions (CBPE / DLE); realized once labels arrive",
            size="half")
        for t in tasks
    ]
    quality.append(line_plot_panel("Estimate error once the labels arrived (estimated - realized change)", [
        PanelMetric(legend=t.name, metric="EstimateError", metric_labels={"task": t.name}, tags=["monitor"])
        for t in tasks], description="+ = the label-free estimate was too optimistic; beyond a task's alert "
                                     "tolerance, the next window's estimate is marked in doubt", size="half"))
    quality.append(line_plot_panel("Data checks: columns broken inside a segment", [
        PanelMetric(legend="findings", metric="DataFindings", tags=["monitor"])],
        description="a column shifted or nulled in one segment against the others (monitoring/segments.py)",
        size="half"))
    quality.append(bar_plot_panel("Alerts", [
        PanelMetric(legend=legend, metric="AlertRaised", metric_labels={"kind": kind}, tags=["alert"])
        for kind, legend in ALERT_LEGENDS.items()],
        description="data alerts name a broken input column and never retrain; model alerts (drift, quality) "
                    "act as the policy says", size="full"))
    intro = text_panel(f"{cfg.registry.model_name}: one point per monitored window",
                       description="mtlops monitor adds a snapshot per window; click a point for its report")
    return [(DRIFT_TAB, intro), *((DRIFT_TAB, p) for p in drift), *((QUALITY_TAB, p) for p in quality)]


def refresh_panels(proj: Project, cfg: ProjectConfig, top_features: list[str]) -> None:
    dashboard = proj.dashboard
    dashboard.clear_dashboard()
    for tab, panel in _panels(cfg, top_features):
        dashboard.add_panel(panel, tab=tab)


def add_snapshot(workspace: Path, cfg: ProjectConfig, snapshot: Snapshot, summary: MonitorSummary) -> str:
    """Add a monitor run's snapshot to the model's project; returns the snapshot id."""
    ws, proj = project(workspace, cfg.registry.model_name)
    ref = ws.add_run(proj.id, snapshot, include_data=False)
    top = sorted(summary.feature_scores, key=lambda f: -_normalised(summary, f))[:TOP_FEATURES]
    refresh_panels(proj, cfg, top)
    return str(ref.id)


def _normalised(summary: MonitorSummary, feature: str) -> float:
    """Score on one scale across methods: distances as they are, p-values as 1 - p."""
    score = summary.feature_scores[feature]
    return 1.0 - score if "p_value" in summary.methods.get(feature, "").lower() else score


def add_alert_marker(workspace: Path, cfg: ProjectConfig, window: str, reason: str, kind: str = "model") -> str:
    """Mark `window` on the dashboard's Alerts panel as a `kind` ("data" or "model") alert; returns the
    snapshot id."""
    ws, proj = project(workspace, cfg.registry.model_name)
    one_row = Dataset.from_pandas(pd.DataFrame({"alert": [1.0]}),
                                  data_definition=DataDefinition(numerical_columns=["alert"]))
    snapshot = Report([AlertRaised(reason=reason, kind=kind)]).run(
        one_row, None, timestamp=window_start(window), tags=["alert"], metadata={"window": window},
        name=f"{window} · {kind} alert")
    return str(ws.add_run(proj.id, snapshot, include_data=False).id)


def serve(workspace: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Replace this process with `evidently ui` on the workspace."""
    workspace.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "evidently.cli", "ui", "--workspace", str(workspace), "--host", host,
           "--port", str(port)]
    os.execv(sys.executable, cmd)
