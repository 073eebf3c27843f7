"""What one monitor run found (`MonitorSummary`, saved as `summary.json`) and where a window
sits on the dashboard's time axis: shared by the monitor (`monitoring.drift`) and the dashboard
(`monitoring.dashboard`), which plots the runs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd


@dataclass
class MonitorSummary:
    model_version: str
    window: str  # a label, e.g. "2013-07"
    rows_reference: int  # before sampling
    rows_current: int
    sampled_reference: int  # after sampling
    sampled_current: int
    drift_share: float  # share of the non-context features drifted (Evidently's dataset drift)
    dataset_drift: bool  # drift_share >= monitoring.drift_share
    drifted_features: list[str]  # past their calibrated threshold (context features included)
    feature_scores: dict[str, float]  # Evidently's drift score per feature (p-value or distance, see methods)
    drifted_predictions: list[str]  # tasks whose monitored prediction column drifted
    prediction_scores: dict[str, float]  # task -> drift score of its monitored column
    # task -> metric, reference, current, relative_change (+ = better), ci_low / ci_high (bootstrap interval of
    # current), baseline (trivial model, same rows), rows
    quality: dict[str, dict[str, Any]]
    snapshot_json: str
    snapshot_html: str
    estimated: dict[str, float] = field(default_factory=dict)  # task -> its metric estimated without labels
    # task -> the same estimator on the reference it was fitted on: what `estimated` is compared with
    estimated_reference: dict[str, float] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)  # column -> drift method (and threshold)
    quality_reference: str = "reference sample"  # where the reference quality comes from
    timestamp: str = ""  # the window's start (the snapshot's time on the dashboard)
    snapshot_id: str | None = None  # in the Workspace, when one was given
    thresholds: dict[str, float] = field(default_factory=dict)  # feature or task -> calibrated drift threshold
    context_features: list[str] = field(default_factory=list)  # monitored, outside the drift share and "*"
    # data checks (monitoring/segments.py): columns broken inside a segment, as SegmentFinding dicts
    data_findings: list[dict[str, Any]] = field(default_factory=list)
    duplicate_share: float = 0.0  # rows repeating an earlier row's features, in the whole current window
    duplicate_share_reference: float = 0.0  # the same in the reference
    # task -> its label-free estimate's method, assumption and check (monitoring.estimation.EstimateCheck + holds)
    estimate_checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    # task -> estimated, realized, estimated_change, realized_change, error (labelled windows only)
    estimate_errors: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, allow_nan=True)

    @classmethod
    def from_json(cls, text: str) -> MonitorSummary:
        return cls(**json.loads(text))


def window_start(window: str) -> datetime:
    """The window label's start ("2013-07" -> 2013-07-01) for the dashboard's time axis; now if
    the label is no date."""
    try:
        return pd.Period(window).start_time.to_pydatetime()
    except ValueError:
        return datetime.now(UTC).replace(tzinfo=None)
