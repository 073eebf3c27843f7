"""A monitor run in Prometheus' form: one snapshot of the window it judged, pushed to a Pushgateway.

A monitor run is a batch job: it runs once a month (the monitoring pipeline's recurring run, or
`mtlops monitor`), for a minute, in a pod that is gone before Prometheus would scrape it. That is
the one case Prometheus documents for the Pushgateway (a service-level batch job), so each run PUTs
its snapshot there, replacing the previous run's (grouping key: job `mtlops-monitor` and the model
name): the alerts read the latest window, and `mtlops_monitor_last_run_timestamp_seconds` says when
it ran, so a run that never came is an alert too. Pushing is tested against Debian's Pushgateway
(tests/test_prometheus.py); a serving pod that read the monitor's files instead would need the
monitoring volume mounted and would answer for a job it does not run.

Every label's values come from the config (features, tasks, segment columns), the data's segment
values that a check named, or the small fixed sets of `monitoring.alerts.Reason.rule`; free text
(the alert log's reasons) never becomes a label.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from components.config.schema import ProjectConfig
from monitoring.alerts import Alert, data_problems, model_problems
from monitoring.summary import MonitorSummary

log = logging.getLogger(__name__)

SERVING_JOB = "mtlops-serving"  # the Service's name: the job label a ServiceMonitor gives its targets
JOB = "mtlops-monitor"
PREFIX = "mtlops_monitor_"


class MonitorRunCollector(Collector):
    """The snapshot of one monitor run, as gauges (each a fact about the window, not a count)."""

    def __init__(self, cfg: ProjectConfig, summary: MonitorSummary, alert: Alert | None,
                 finished: float | None = None) -> None:
        self.cfg, self.summary, self.alert = cfg, summary, alert
        self.finished = time.time() if finished is None else finished

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s, cfg = self.summary, self.cfg
        yield _gauge("last_run_timestamp_seconds", "When the latest monitor run finished (Unix time)", [],
                     [((), self.finished)])
        yield _gauge("run_info", "The window and model version the latest monitor run judged",
                     ["window", "model_version"], [((s.window, s.model_version), 1)])
        yield _gauge("window_rows", "Rows of the monitored window, before sampling", [], [((), s.rows_current)])
        yield _gauge("drifted_features_ratio", "Share of the non-context features drifted (Evidently's dataset "
                     "drift share)", [], [((), s.drift_share)])
        yield _gauge("duplicate_ratio", "Share of the window's rows repeating an earlier row's features", [],
                     [((), s.duplicate_share)])
        features = list(s.feature_scores)
        yield _gauge("feature_drift_score", "Drift score per feature (p-value or distance: the column's method)",
                     ["feature"], [((f,), s.feature_scores[f]) for f in features])
        yield _gauge("feature_drift_threshold", "Calibrated drift threshold per feature", ["feature"],
                     [((f,), s.thresholds[f]) for f in features if f in s.thresholds])
        yield _gauge("feature_drifted", "1 when the feature drifted past its calibrated threshold", ["feature"],
                     [((f,), float(f in s.drifted_features)) for f in features])
        tasks = list(s.prediction_scores)
        yield _gauge("prediction_drift_score", "Drift score of each task's monitored prediction column", ["task"],
                     [((t,), s.prediction_scores[t]) for t in tasks])
        yield _gauge("prediction_drifted", "1 when the task's predictions drifted past their calibrated threshold",
                     ["task"], [((t,), float(t in s.drifted_predictions)) for t in tasks])
        metric = {t.name: t.metric or "" for t in cfg.tasks}
        yield _gauge("quality_estimated", "Each task's metric estimated without labels (CBPE / DLE)",
                     ["task", "metric"], [((t, metric.get(t, "")), v) for t, v in s.estimated.items()])
        yield _gauge("quality_estimated_reference", "The same estimator on the reference it was fitted on: what "
                     "the estimate is compared with", ["task", "metric"],
                     [((t, metric.get(t, "")), v) for t, v in s.estimated_reference.items()])
        yield _gauge("quality_realized", "Each task's metric on the window's labels (labelled windows only)",
                     ["task", "metric"], [((t, q["metric"]), q["current"]) for t, q in s.quality.items()])
        yield _gauge("quality_reference", "The champion's held-out metric the window is compared with",
                     ["task", "metric"], [((t, q["metric"]), q["reference"]) for t, q in s.quality.items()])
        yield _gauge("estimate_error", "Estimated relative change minus realized relative change of each task's "
                     "metric, on the latest labelled window (+: the estimate was too optimistic)", ["task"],
                     [((t, ), e["error"]) for t, e in s.estimate_errors.items()])
        yield from self._alerts()

    def _alerts(self) -> Iterator[GaugeMetricFamily]:
        s, alert = self.summary, self.alert
        data, model = data_problems(self.cfg, s), model_problems(self.cfg, s)
        yield _gauge("data_alert", "1 when the window's input is broken (a data alert: never retrains)", [],
                     [((), float(bool(data)))])
        yield _gauge("data_alert_reason", "One series per broken column: the check, the column and, for a "
                     "segment check, the segment", ["window", "check", "feature", "segment_column", "segment"],
                     [((s.window, r.rule, r.subjects[0] if r.subjects else "", r.segment_column, r.segment), 1)
                      for r in data])
        yield _gauge("model_alert", "1 when a model rule of the alert policy breaks (drift, quality)", [],
                     [((), float(bool(model)))])
        yield _gauge("model_alert_reason", "One series per model rule broken and each feature or task it names",
                     ["window", "rule", "subject"],
                     sorted({((s.window, r.rule, subject), 1) for r in model for subject in (r.subjects or ("",))}))
        yield _gauge("retrain_alert", "1 when the policy acts on the window by retraining (alerts.action: "
                     "retrain, outside the cool-down, no data alert)", [],
                     [((), float(alert is not None and alert.retrains))])
        yield _gauge("alert_suppressed", "1 when the window's alert falls in the cool-down of an earlier one "
                     "of its kind (logged, not acted on)", ["kind"],
                     [((alert.kind,), float(alert.suppressed))] if alert is not None else [])


def _gauge(name: str, documentation: str, labels: list[str],
           samples: list[tuple[tuple[str, ...], float]]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, documentation, labels=labels)
    for values, value in samples:
        if math.isfinite(value):  # a metric nobody computed (no labels, no estimator) is absent, not NaN
            family.add_metric(list(values), float(value))
    return family


def run_registry(cfg: ProjectConfig, summary: MonitorSummary, alert: Alert | None,
                 finished: float | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorRunCollector(cfg, summary, alert, finished))
    return registry


def push_run(cfg: ProjectConfig, summary: MonitorSummary, alert: Alert | None) -> str | None:
    """PUT the run's snapshot to the config's Pushgateway (replacing the last run's); None when no
    Pushgateway is configured, else "pushed" or the error. A gateway that is down must not stop
    monitoring: the missing run alerts (`MtlopsMonitorRunMissing`) instead."""
    gateway = cfg.prometheus.pushgateway
    if not gateway:
        return None
    try:
        push_to_gateway(gateway, job=JOB, grouping_key={"model": cfg.registry.model_name},
                        registry=run_registry(cfg, summary, alert), timeout=10)
    except OSError as exc:
        log.warning("could not push the monitor run to %s: %s", gateway, exc)
        return f"error: {type(exc).__name__}: {exc}"
    return "pushed"
