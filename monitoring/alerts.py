"""The alert policy: when a monitored window alerts, the cool-down, the alert log, the webhook.

Two kinds of alert. A **data** alert says the input is broken (a column shifted inside one
segment against the others, a null surge in a segment, duplicated records: `data_reasons`); it
names the column and the segment and never retrains — a model retrained on the broken column
would learn the bug. A **model** alert (drift, quality: `reasons_to_alert`) acts as the policy
says (`alerts.action`). A window with both is a data alert: its model reasons are logged beside,
as what the broken input may have caused.

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

from components.config import AlertPolicy, ProjectConfig
from components.metrics import is_better, relative_change
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


@dataclass(frozen=True)
class Reason:
    """One rule a window breaks: `text` for a person; `rule`, `subjects` (the features or tasks it
    names) and the segment for a metric's labels (monitoring/exposition.py), bounded by the config's
    features, tasks and segments."""

    text: str
    rule: str  # data: shift, nulls, duplicates; model: drift_share, feature_drift, prediction_drift,
    # quality_drop, below_baseline, estimated_drop
    subjects: tuple[str, ...] = ()
    segment_column: str = ""
    segment: str = ""


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


def data_reasons(cfg: ProjectConfig, report: WindowReport) -> list[str]:
    """The data checks the window fails (monitoring/segments.py): each names the column and, for a
    segment check, the segment. Windows under `alerts.min_rows` are not judged."""
    return [r.text for r in data_problems(cfg, report)]


def data_problems(cfg: ProjectConfig, report: WindowReport) -> list[Reason]:
    """`data_reasons`, each with its check, column and segment."""
    if report.rows_current < cfg.alerts.min_rows:
        return []
    reasons = []
    for f in report.data_findings:
        finding = SegmentFinding(**f)
        reasons.append(Reason(f"data: {finding.describe()}", finding.check, (finding.feature,),
                              finding.segment_column, finding.segment))
    limit = cfg.monitoring.duplicate_share
    extra = report.duplicate_share - report.duplicate_share_reference
    if limit is not None and extra >= limit:
        reasons.append(Reason(f"data: duplicated records {report.duplicate_share:.1%} of the window (reference "
                              f"{report.duplicate_share_reference:.1%}, alert at +{limit:.0%})", "duplicates"))
    return reasons


def reasons_to_alert(cfg: ProjectConfig, report: WindowReport) -> list[str]:
    """The texts of `model_problems`: what the alert log and the webhook carry."""
    return [r.text for r in model_problems(cfg, report)]


def model_problems(cfg: ProjectConfig, report: WindowReport) -> list[Reason]:
    """Every model rule of the policy the window breaks (empty: no model alert): the drift share, each
    watched feature past its calibrated threshold, and per task its quality — once labels are known,
    a metric drop vs the champion's held-out metric beyond the task's tolerance that a one-sided
    bootstrap test finds significant at `monitoring.quality_confidence` (H0: the drop is within the
    tolerance), or a metric worse than the
    trivial baseline's on the same rows; before that, the estimated metric (CBPE / DLE) dropping
    beyond the tolerance, when the estimate's check holds. A watched task's prediction drift alerts
    unless the task's quality, realized or estimated, is known to hold: drift is the proxy for a
    quality that cannot be judged, and a seasonal shift of the predictions that leaves the metric
    where it was is no alert."""
    policy = cfg.alerts
    if report.rows_current < policy.min_rows:
        return []
    reasons = []
    if policy.drift_share is not None and report.drift_share >= policy.drift_share:
        reasons.append(Reason(f"drift share {report.drift_share:.0%} >= {policy.drift_share:.0%}", "drift_share"))
    context = set(cfg.monitoring.context_features)
    features = {f for f in cfg.features.names if f not in context} if "*" in policy.features else set(policy.features)
    watched = sorted(features & set(report.drifted_features))
    if watched:
        reasons.append(Reason(f"watched features drifted: {', '.join(watched)}", "feature_drift", tuple(watched)))
    quality_reasons, quality_holds = [], set()
    for task in cfg.tasks:
        found, judged = _quality_reasons(cfg, task.name, task.metric or "", report)
        quality_reasons += found
        if judged and not found:
            quality_holds.add(task.name)
    tasks = {t.name for t in cfg.tasks} if "*" in policy.prediction_drift else set(policy.prediction_drift)
    drifted = [t.name for t in cfg.tasks if t.name in tasks - quality_holds and t.name in report.drifted_predictions]
    if drifted:
        reasons.append(Reason(f"predictions drifted: {', '.join(drifted)}", "prediction_drift", tuple(drifted)))
    return reasons + quality_reasons


def _quality_reasons(cfg: ProjectConfig, task: str, metric: str, report: WindowReport) -> tuple[list[Reason], bool]:
    """The task's quality rules the window breaks, and whether its quality could be judged at all
    (realized from labels, else estimated)."""
    tolerance = cfg.alert_tolerance(task)
    q = report.quality.get(task)
    if q and math.isfinite(q.get("current", math.nan)):
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
        return reasons, True
    estimate, reference = report.estimated.get(task, math.nan), report.estimated_reference.get(task, math.nan)
    if not (math.isfinite(estimate) and math.isfinite(reference)):
        return [], False
    if not report.estimate_checks.get(task, {}).get("holds", True):
        return [], False  # the estimate's assumption is in doubt: the task's quality is not known
    change = relative_change(metric, estimate, reference)
    if change <= -tolerance:
        return [Reason(f"{task} {metric} estimated {reference:.4f} -> {estimate:.4f} ({change:+.1%}, alert at "
                       f"-{tolerance:.0%}; labels not yet known)", "estimated_drop", (task,))], True
    return [], True


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
