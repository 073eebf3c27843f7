"""The alert policy: when a monitored window alerts, the cool-down, the alert log, the webhook.

Time is data time: the cool-down is measured between the ends of the monitored windows, so a
replay of past months behaves as live traffic would. Every alert is appended to the alert log
(JSONL), suppressed ones too (marked), so the log explains why nothing happened.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import httpx
import pandas as pd

from components.config import AlertPolicy, ProjectConfig
from components.metrics import is_better, relative_change


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


@dataclass
class Alert:
    window: str
    window_end: str  # ISO date: the data time the cool-down is measured in
    model_version: str
    reasons: list[str]
    action: str  # "alert" or "retrain"
    suppressed: bool  # inside the cool-down of an earlier alert: logged, not acted on
    raised_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    webhook_status: str | None = None

    @property
    def acts(self) -> bool:
        return not self.suppressed

    @property
    def retrains(self) -> bool:
        """An acting alert of a policy whose action is to retrain."""
        return self.acts and self.action == "retrain"


def reasons_to_alert(cfg: ProjectConfig, report: WindowReport) -> list[str]:
    """Every rule of the policy the window breaks (empty: no alert): the drift share, each watched
    feature past its calibrated threshold, and per task its quality — once labels are known, a
    metric drop vs the champion's held-out metric beyond the task's tolerance even at the
    favourable end of the window's bootstrap interval, or a metric worse than the trivial
    baseline's on the same rows; before that, the estimated metric (CBPE / DLE) dropping beyond
    the tolerance. A watched task's prediction drift alerts unless the task's quality, realized or
    estimated, is known to hold: drift is the proxy for a quality that cannot be judged, and a
    seasonal shift of the predictions that leaves the metric where it was is no alert."""
    policy = cfg.alerts
    if report.rows_current < policy.min_rows:
        return []
    reasons = []
    if policy.drift_share is not None and report.drift_share >= policy.drift_share:
        reasons.append(f"drift share {report.drift_share:.0%} >= {policy.drift_share:.0%}")
    context = set(cfg.monitoring.context_features)
    features = {f for f in cfg.features.names if f not in context} if "*" in policy.features else set(policy.features)
    watched = sorted(features & set(report.drifted_features))
    if watched:
        reasons.append(f"watched features drifted: {', '.join(watched)}")
    quality_reasons, quality_holds = [], set()
    for task in cfg.tasks:
        found, judged = _quality_reasons(cfg, task.name, task.metric or "", report)
        quality_reasons += found
        if judged and not found:
            quality_holds.add(task.name)
    tasks = {t.name for t in cfg.tasks} if "*" in policy.prediction_drift else set(policy.prediction_drift)
    drifted = [t.name for t in cfg.tasks if t.name in tasks - quality_holds and t.name in report.drifted_predictions]
    if drifted:
        reasons.append(f"predictions drifted: {', '.join(drifted)}")
    return reasons + quality_reasons


def _quality_reasons(cfg: ProjectConfig, task: str, metric: str, report: WindowReport) -> tuple[list[str], bool]:
    """The task's quality rules the window breaks, and whether its quality could be judged at all
    (realized from labels, else estimated)."""
    tolerance = cfg.alert_tolerance(task)
    q = report.quality.get(task)
    if q and math.isfinite(q.get("current", math.nan)):
        reasons, current = [], q["current"]
        if math.isfinite(q.get("reference", math.nan)):
            change = relative_change(metric, current, q["reference"])
            # the window's interval end that is best for the model: sampling noise alone cannot explain a
            # drop that is past the tolerance even there
            ends = [x for x in (q.get("ci_low", current), q.get("ci_high", current)) if math.isfinite(x)] or [current]
            favourable = max(ends, key=lambda x: relative_change(metric, x, q["reference"]))
            if relative_change(metric, favourable, q["reference"]) <= -tolerance:
                interval = "" if favourable == current else f", {favourable:.4f} at the interval's favourable end"
                reasons.append(f"{task} {metric} {q['reference']:.4f} -> {current:.4f} "
                               f"({change:+.1%}, alert at -{tolerance:.0%}{interval})")
        baseline = q.get("baseline", math.nan)
        if cfg.alerts.below_baseline and math.isfinite(baseline) and not is_better(metric, current, baseline):
            reasons.append(f"{task} {metric} {current:.4f} is no better than the trivial baseline's "
                           f"{baseline:.4f} on the same window")
        return reasons, True
    estimate, reference = report.estimated.get(task, math.nan), report.estimated_reference.get(task, math.nan)
    if not (math.isfinite(estimate) and math.isfinite(reference)):
        return [], False
    change = relative_change(metric, estimate, reference)
    if change <= -tolerance:
        return [f"{task} {metric} estimated {reference:.4f} -> {estimate:.4f} ({change:+.1%}, alert at "
                f"-{tolerance:.0%}; labels not yet known)"], True
    return [], True


def read_alerts(log: Path) -> list[Alert]:
    if not Path(log).exists():
        return []
    return [Alert(**json.loads(line)) for line in Path(log).read_text().splitlines() if line.strip()]


def decide(cfg: ProjectConfig, report: WindowReport, window_end: pd.Timestamp, log: Path) -> Alert | None:
    """Apply the policy to one monitored window: log the alert (if any), respect the cool-down,
    notify the webhook for an alert that acts."""
    reasons = reasons_to_alert(cfg, report)
    if not reasons:
        return None
    policy: AlertPolicy = cfg.alerts
    acted = [a for a in read_alerts(log) if a.acts]
    since_last = (window_end - pd.Timestamp(acted[-1].window_end)) if acted else None
    suppressed = since_last is not None and since_last < pd.Timedelta(days=policy.cooldown_days)
    alert = Alert(report.window, pd.Timestamp(window_end).isoformat(), report.model_version, reasons,
                  policy.action, suppressed)
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
