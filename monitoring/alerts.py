"""The alert policy: when a monitored window alerts, the cool-down, the alert log, the webhook.

Two kinds of alert. A **data** alert says the input is broken (a column shifted inside one
segment against the others, a null surge in a segment, duplicated records: `data_reasons`); it
names the column and the segment and never retrains — a model retrained on the broken column
would learn the bug. A **model** alert (drift, quality: `reasons_to_alert`) acts as the policy
says (`alerts.action`). A window with both is a data alert: its model reasons are logged beside,
as what the broken input may have caused. Each rule is an `AlertRule` registered in `ALERT_RULES`.

Time is data time: the cool-down is measured between the ends of the monitored windows, so a
replay of past months behaves as live traffic would; each kind has its own cool-down, so a data
alert does not silence the next retraining. Every alert is appended to the alert log (JSONL),
suppressed ones too (marked), so the log explains why nothing happened.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import pandas as pd

from components.config.schema import AlertPolicy, ProjectConfig
from components.training.metrics import is_better, relative_change
from monitoring.segments import SegmentFinding


class WindowReport(Protocol):
    """What the policy reads from a monitor run (monitoring.drift.MonitorSummary)."""

    model_version: str
    window: str
    rows_current: int
    drift_share: float
    drifted_features: list[str]
    drifted_predictions: list[str]
    quality: dict[str, dict[str, float]]
    estimated: dict[str, float]
    estimated_reference: dict[str, float]
    estimate_checks: dict[str, dict[str, Any]]
    data_findings: list[dict[str, Any]]
    duplicate_share: float
    duplicate_share_reference: float


DATA, MODEL = "data", "model"


class Reason(str):
    """One line a rule gives for a window: the text for a person (it is that string) and, for a metric's
    labels (monitoring/exposition.py), what it is about — `rule` (data: shift, nulls, duplicates; model:
    drift_share, feature_drift, prediction_drift, quality_drop, below_baseline, estimated_drop), the
    features or tasks it names, the segment — bounded by the config's features, tasks and segments."""

    rule: str
    subjects: tuple[str, ...]
    segment_column: str
    segment: str

    def __new__(cls, text: str, rule: str, subjects: tuple[str, ...] = (), segment_column: str = "",
                segment: str = "") -> Reason:
        reason = super().__new__(cls, text)
        reason.rule, reason.subjects, reason.segment_column, reason.segment = rule, subjects, segment_column, segment
        return reason


@dataclass
class Alert:
    window: str
    window_end: str  # ISO date: the data time the cool-down is measured in
    model_version: str
    reasons: list[str]  # model reasons: drift, quality
    action: str  # what the policy does on a model alert: "alert" or "retrain"
    suppressed: bool  # inside the cool-down of an earlier alert of the same kind: logged, not acted on
    raised_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    webhook_status: str | None = None
    data_reasons: list[str] = field(default_factory=list)  # broken input: column (and segment) named
    kind: str = MODEL  # DATA when there is a data reason, else MODEL

    @property
    def acts(self) -> bool:
        return not self.suppressed

    @property
    def all_reasons(self) -> list[str]:
        """Data reasons first: what to fix before reading the model reasons."""
        return [*self.data_reasons, *self.reasons]

    @property
    def retrains(self) -> bool:
        """An acting model alert of a policy whose action is to retrain; a data alert never retrains."""
        return self.acts and self.kind == MODEL and self.action == "retrain"


class AlertRule(Protocol):
    """One rule of the alert policy. Adding a rule is a class here and its line in `ALERT_RULES`; the rule
    table of docs/monitoring.md lists it (tests/test_alerts.py fails until it does)."""

    name: str
    kind: str  # DATA: the input is broken (never retrains); MODEL: drift or quality (acts as `alerts.action` says)
    # the config fields that decide it, as paths (`alerts.drift_share`): read here, or where the monitor computes
    # what it reads (`monitoring.segments` -> the report's data findings)
    settings: tuple[str, ...]

    def reasons(self, cfg: ProjectConfig, report: WindowReport) -> list[str]:
        """What the window breaks, one line each (empty: nothing); a `Reason` to label the line's metric."""
        ...


class SegmentChecks:
    """The data checks the window fails (monitoring/segments.py): each names the column and, for a segment
    check, the segment."""

    name, kind = "segment_checks", DATA
    settings = ("monitoring.segments",)

    def reasons(self, cfg: ProjectConfig, report: WindowReport) -> list[str]:
        findings = [SegmentFinding(**f) for f in report.data_findings]
        return [Reason(f"data: {f.describe()}", f.check, (f.feature,), f.segment_column, f.segment) for f in findings]


class DuplicatedRecords:
    """More duplicated records than the reference holds, by `monitoring.duplicate_share` or more."""

    name, kind = "duplicated_records", DATA
    settings = ("monitoring.duplicate_share",)

    def reasons(self, cfg: ProjectConfig, report: WindowReport) -> list[str]:
        limit = cfg.monitoring.duplicate_share
        if limit is None or report.duplicate_share - report.duplicate_share_reference < limit:
            return []
        return [Reason(f"data: duplicated records {report.duplicate_share:.1%} of the window (reference "
                       f"{report.duplicate_share_reference:.1%}, alert at +{limit:.0%})", "duplicates")]


class DriftShare:
    """The share of drifted features reaches `alerts.drift_share`."""

    name, kind = "drift_share", MODEL
    settings = ("alerts.drift_share",)

    def reasons(self, cfg: ProjectConfig, report: WindowReport) -> list[str]:
        limit = cfg.alerts.drift_share
        if limit is None or report.drift_share < limit:
            return []
        return [Reason(f"drift share {report.drift_share:.0%} >= {limit:.0%}", "drift_share")]


class WatchedFeatures:
    """A watched feature (`alerts.features`; `"*"`: every feature not in `monitoring.context_features`) passes
    its calibrated threshold."""

    name, kind = "watched_features", MODEL
    settings = ("alerts.features", "monitoring.context_features", "monitoring.calibration_quantile")

    def reasons(self, cfg: ProjectConfig, report: WindowReport) -> list[str]:
        context = set(cfg.monitoring.context_features)
        watched = set(cfg.alerts.features)
        if "*" in watched:
            watched = {f for f in cfg.features.names if f not in context}
        drifted = sorted(watched & set(report.drifted_features))
        return [Reason(f"watched features drifted: {', '.join(drifted)}", "feature_drift", tuple(drifted))] \
            if drifted else []


class PredictionDrift:
    """A watched task's predictions (`alerts.prediction_drift`; `"*"`: every task) drift while its quality is
    not known to hold: drift is the proxy for a quality that cannot be judged, and a seasonal shift of the
    predictions that leaves the metric where it was is no alert."""

    name, kind = "prediction_drift", MODEL
    settings = ("alerts.prediction_drift", "monitoring.calibration_quantile")

    def reasons(self, cfg: ProjectConfig, report: WindowReport) -> list[str]:
        watched = set(cfg.alerts.prediction_drift)
        drifted = [t.name for t in cfg.tasks if ("*" in watched or t.name in watched)
                   and t.name in report.drifted_predictions and not _quality_holds(cfg, t.name, report)]
        return [Reason(f"predictions drifted: {', '.join(drifted)}", "prediction_drift", tuple(drifted))] \
            if drifted else []


class RealizedQuality:
    """Once labels are known, per task: a metric drop vs the champion's held-out metric beyond the task's
    tolerance that a one-sided bootstrap test finds significant at `monitoring.quality_confidence` (H0: the
    drop is within the tolerance); or a metric no better than the trivial baseline's on the same rows."""

    name, kind = "realized_quality", MODEL
    settings = ("alerts.metric_drop", "alerts.below_baseline", "monitoring.quality_confidence",
                "tasks.tolerance", "registry.default_tolerance")

    def reasons(self, cfg: ProjectConfig, report: WindowReport) -> list[str]:
        return [r for t in cfg.tasks for r in _realized(cfg, t.name, t.metric or "", report) or []]


class EstimatedQuality:
    """Before the labels, per task: the estimated metric (CBPE / DLE) drops beyond the task's tolerance
    against the same estimator on its reference, when the estimate's assumption check holds."""

    name, kind = "estimated_quality", MODEL
    settings = ("alerts.metric_drop", "tasks.tolerance", "registry.default_tolerance",
                "monitoring.estimate_max_outside")

    def reasons(self, cfg: ProjectConfig, report: WindowReport) -> list[str]:
        return [r for t in cfg.tasks if _realized(cfg, t.name, t.metric or "", report) is None
                for r in _estimated(cfg, t.name, t.metric or "", report) or []]


ALERT_RULES: dict[str, AlertRule] = {rule.name: rule for rule in (
    SegmentChecks(), DuplicatedRecords(), DriftShare(), WatchedFeatures(), PredictionDrift(), RealizedQuality(),
    EstimatedQuality())}
POLICY_SETTINGS = ("alerts.min_rows", "alerts.cooldown_days", "alerts.action", "alerts.webhook")  # read by `decide`


def _reasons(kind: str, cfg: ProjectConfig, report: WindowReport) -> list[Reason]:
    """The reasons of every rule of `kind`, in the registry's order (a rule's plain line becomes a `Reason`
    labelled with the rule's name); windows under `alerts.min_rows` are not judged."""
    if report.rows_current < cfg.alerts.min_rows:
        return []
    return [r if isinstance(r, Reason) else Reason(r, rule.name)
            for rule in ALERT_RULES.values() if rule.kind == kind for r in rule.reasons(cfg, report)]


def data_reasons(cfg: ProjectConfig, report: WindowReport) -> list[str]:
    """Every data rule the window breaks: each names the column and, for a segment check, the segment."""
    return [str(r) for r in data_problems(cfg, report)]


def reasons_to_alert(cfg: ProjectConfig, report: WindowReport) -> list[str]:
    """Every model rule the window breaks (empty: no model alert)."""
    return [str(r) for r in model_problems(cfg, report)]


def data_problems(cfg: ProjectConfig, report: WindowReport) -> list[Reason]:
    """`data_reasons`, each with its check, column and segment."""
    return _reasons(DATA, cfg, report)


def model_problems(cfg: ProjectConfig, report: WindowReport) -> list[Reason]:
    """`reasons_to_alert`, each with its rule and the features or tasks it names."""
    return _reasons(MODEL, cfg, report)


def _realized(cfg: ProjectConfig, task: str, metric: str, report: WindowReport) -> list[str] | None:
    """The task's realized-quality reasons, or None when its labels are not known."""
    q = report.quality.get(task)
    if not (q and math.isfinite(q.get("current", math.nan))):
        return None
    tolerance = cfg.alert_tolerance(task)
    reasons, current = [], q["current"]
    if math.isfinite(q.get("reference", math.nan)):
        change = relative_change(metric, current, q["reference"])
        # the stated test: H0 "the window's metric is within the tolerance of the reference's", one-sided
        # bootstrap p-value; the drop alerts when it is past the tolerance and H0 is rejected at
        # monitoring.quality_confidence
        confidence, p_value = cfg.monitoring.quality_confidence, q.get("p_value", math.nan)
        tested = confidence > 0 and math.isfinite(p_value)
        if change <= -tolerance and (not tested or p_value <= 1 - confidence):
            test = f"; one-sided bootstrap p={p_value:.3f} <= {1 - confidence:.2f}" if tested else ""
            reasons.append(Reason(f"{task} {metric} {q['reference']:.4f} -> {current:.4f} "
                                  f"({change:+.1%}, alert at -{tolerance:.0%}{test})", "quality_drop", (task,)))
    baseline = q.get("baseline", math.nan)
    if cfg.alerts.below_baseline and math.isfinite(baseline) and not is_better(metric, current, baseline):
        reasons.append(Reason(f"{task} {metric} {current:.4f} is no better than the trivial baseline's "
                              f"{baseline:.4f} on the same window", "below_baseline", (task,)))
    return reasons


def _estimated(cfg: ProjectConfig, task: str, metric: str, report: WindowReport) -> list[str] | None:
    """The task's estimated-quality reasons, or None when there is no estimate or its assumption is in doubt
    (the task's quality is then not known)."""
    estimate, reference = report.estimated.get(task, math.nan), report.estimated_reference.get(task, math.nan)
    if not (math.isfinite(estimate) and math.isfinite(reference)):
        return None
    if not report.estimate_checks.get(task, {}).get("holds", True):
        return None
    tolerance = cfg.alert_tolerance(task)
    change = relative_change(metric, estimate, reference)
    if change <= -tolerance:
        return [Reason(f"{task} {metric} estimated {reference:.4f} -> {estimate:.4f} ({change:+.1%}, alert at "
                       f"-{tolerance:.0%}; labels not yet known)", "estimated_drop", (task,))]
    return []


def _quality_holds(cfg: ProjectConfig, task: str, report: WindowReport) -> bool:
    """Whether the task's quality was judged (realized, else estimated) and broke no rule."""
    metric = next(t.metric or "" for t in cfg.tasks if t.name == task)
    found = _realized(cfg, task, metric, report)
    if found is None:
        found = _estimated(cfg, task, metric, report)
    return found == []


def read_alerts(log: Path) -> list[Alert]:
    if not Path(log).exists():
        return []
    return [Alert(**json.loads(line)) for line in Path(log).read_text().splitlines() if line.strip()]


def decide(cfg: ProjectConfig, report: WindowReport, window_end: pd.Timestamp, log: Path) -> Alert | None:
    """Apply the policy to one monitored window: log the alert (if any), respect the cool-down of
    its kind, notify the webhook for an alert that acts."""
    broken, reasons = data_reasons(cfg, report), reasons_to_alert(cfg, report)
    if not (broken or reasons):
        return None
    kind = DATA if broken else MODEL
    policy: AlertPolicy = cfg.alerts
    acted = [a for a in read_alerts(log) if a.acts and a.kind == kind]
    since_last = (window_end - pd.Timestamp(acted[-1].window_end)) if acted else None
    suppressed = since_last is not None and since_last < pd.Timedelta(days=policy.cooldown_days)
    alert = Alert(report.window, pd.Timestamp(window_end).isoformat(), report.model_version, reasons,
                  policy.action, suppressed, data_reasons=broken, kind=kind)
    if alert.acts and policy.webhook:
        alert.webhook_status = notify(policy.webhook, alert)
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with Path(log).open("a") as f:
        f.write(json.dumps(asdict(alert)) + "\n")
    return alert


def notify(url: str, alert: Alert) -> str:
    """POST the alert as JSON; a receiver that is down must not stop monitoring."""
    try:
        r = httpx.post(url, json={"source": "mtlops", **asdict(alert)}, timeout=10)
        return str(r.status_code)
    except httpx.HTTPError as exc:
        return f"error: {type(exc).__name__}: {exc}"
