"""Assemble a monitored window for the champion and monitor it: what `mtlops monitor` and the
kfp monitor component both run.

The current window comes from the serving prediction log, or from the data partitions scored
offline by the champion's ONNX graph (`--data`). Labels ("the month's true outcomes") come from
the data partitions (offline scoring) or from a labels file keyed by `request_id` and
`record_index` (prediction log). The reference is the champion's `reference.parquet`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from components.artifacts.inference import OnnxModel
from components.artifacts.predictions import REFERENCE_FILE, read_prediction_log, score_frame
from components.config.schema import ProjectConfig
from components.data.features import SPEC_FILE, FeatureSpec
from components.data.tables import label_column, partition_dir, partitions_for, read_window, with_labels
from monitoring.alerts import Alert, decide
from monitoring.calibration import Calibration, save_calibration, stored_calibration
from monitoring.dashboard import add_alert_marker
from monitoring.drift import monitor, reference_calibration
from monitoring.exposition import push_run
from monitoring.summary import MonitorSummary

LOG_KEYS = ["request_id", "record_index"]
ESTIMATE_LOG = "estimates.jsonl"  # in the workspace: each labelled window's realized-vs-estimated error per task


@dataclass(frozen=True)
class Champion:
    tag: str
    folder: Path
    test_metrics: dict[str, dict[str, float]]  # task -> {metric: value}, held-out (June 2013)


def champion_model(cfg: ProjectConfig) -> Champion:
    from components.artifacts.registry import champion

    found = champion(cfg.registry.model_name)
    if found is None:
        raise LookupError(f"no champion for '{cfg.registry.model_name}' in the model store: run `mtlops run` first")
    return Champion(str(found.tag), Path(found.path), found.info.metadata.get("metrics", {}).get("test", {}))


def monitored_config(cfg: ProjectConfig, folder: Path) -> ProjectConfig:
    """`cfg` for monitoring the model in `folder`: the tasks both have. A task the config added is monitored from
    the promotion of a model that answers it (its reference, calibration and panels come with that model); a
    task the config retired, from the promotion of a model without it."""
    answered = {t.name for t in FeatureSpec.load(Path(folder) / SPEC_FILE).targets}
    names = [t.name for t in cfg.tasks]
    return cfg if answered.issuperset(names) and len(answered) == len(names) else cfg.for_tasks(
        [n for n in names if n in answered])


def model_calibration(cfg: ProjectConfig, folder: Path, model_version: str, reference: pd.DataFrame) -> Calibration:
    """The drift thresholds stored with the model (`calibration.json` beside its reference);
    calibrated and stored on first use, or again when the calibration settings changed."""
    found = stored_calibration(folder, cfg, model_version)
    if found is None:
        found = reference_calibration(cfg, reference, model_version)
        save_calibration(folder, found)
    return found


def window_bounds(window: str) -> tuple[datetime, datetime]:
    """"2013-07" -> [2013-07-01, 2013-08-01); "2013" -> the year; "2013-07-15" -> the day."""
    period = pd.Period(window)
    return period.start_time.to_pydatetime(), (period + 1).start_time.to_pydatetime()


def scored_partitions(cfg: ProjectConfig, model: OnnxModel, tag: str, root: Path, window: str,
                      labels: bool) -> pd.DataFrame:
    """The window's rows from the data partitions, scored offline; label columns if `labels`."""
    from components.data.versioning import pull

    start, end = (pd.Timestamp(x) for x in window_bounds(window))
    part_dir = partition_dir(cfg, root)
    absent = [p for p in partitions_for(cfg, part_dir, start, end)
              if not p.exists() and Path(str(p) + ".dvc").exists()]
    if absent:
        pull(root, absent)
    rows = with_labels(read_window(cfg, part_dir, start, end), cfg)
    frame = score_frame(model, rows, tag)
    if labels:
        for t in cfg.tasks:
            frame[label_column(t.name)] = rows[label_column(t.name)].to_numpy()
    return frame


def logged(cfg: ProjectConfig, log_dir: Path, window: str, labels_file: Path | None) -> pd.DataFrame:
    """The window's records from the prediction log, joined with a labels file when given."""
    start, end = window_bounds(window)
    frame = read_prediction_log(log_dir, start, end)
    if labels_file is None:
        return frame
    return frame.merge(read_labels(cfg, labels_file), on=LOG_KEYS, how="left", validate="one_to_one")


def read_labels(cfg: ProjectConfig, labels_file: Path) -> pd.DataFrame:
    """A labels file (parquet/CSV): the log keys and one `label__<task>` column per task."""
    labels = pd.read_parquet(labels_file) if labels_file.suffix == ".parquet" else pd.read_csv(labels_file)
    wanted = [label_column(t.name) for t in cfg.tasks]
    missing = [c for c in [*LOG_KEYS, *wanted] if c not in labels.columns]
    if missing:
        raise ValueError(f"labels file {labels_file} lacks columns {missing} (keys {LOG_KEYS}, one "
                         f"`label__<task>` column per task)")
    return labels[[*LOG_KEYS, *wanted]]


def monitor_window(cfg: ProjectConfig, window: str, out_dir: Path, *, data_root: Path | None = None,
                   log_dir: Path | None = None, labels: bool = False, labels_file: Path | None = None,
                   workspace: Path | None = None, sample_size: int | None = None) -> MonitorSummary:
    """Monitor the champion on `window`, from the prediction log (`log_dir`) or the data partitions
    (`data_root`). Reference quality: the champion's stored held-out test metrics. With a workspace,
    the estimate log (`ESTIMATE_LOG`) in it keeps each labelled window's estimate error."""
    if (data_root is None) == (log_dir is None):
        raise ValueError("give exactly one source for the current window: data_root or log_dir")
    champ = champion_model(cfg)
    cfg = monitored_config(cfg, champ.folder)
    reference = pd.read_parquet(champ.folder / REFERENCE_FILE)
    if data_root is not None:
        current = scored_partitions(cfg, OnnxModel(champ.folder), champ.tag, data_root, window, labels)
    else:
        current = logged(cfg, log_dir, window, labels_file)  # type: ignore[arg-type]
    if current.empty:
        raise ValueError(f"no records in window {window}")
    return monitor(cfg, reference, current, out_dir, window=window, model_version=champ.tag,
                   sample_size=sample_size, workspace=workspace, reference_quality=champ.test_metrics or None,
                   calibration=model_calibration(cfg, champ.folder, champ.tag, reference),
                   estimate_log=Path(workspace) / ESTIMATE_LOG if workspace is not None else None)


def apply_policy(cfg: ProjectConfig, summary: MonitorSummary, window: str, alert_log: Path,
                 workspace: Path | None = None) -> Alert | None:
    """The alert policy on a monitored window (`monitoring.alerts.decide`: alert log, cool-down,
    webhook), the alert marked on the dashboard when there is one, the run pushed to the config's
    Pushgateway when there is one; what `mtlops monitor` and the monitoring pipeline run."""
    watched = [t.name for t in cfg.tasks if t.name in summary.prediction_scores]
    if watched and len(watched) < len(cfg.tasks):  # the model monitored lacks a task the config added
        cfg = cfg.for_tasks(watched)
    alert = decide(cfg, summary, pd.Timestamp(window_bounds(window)[1]), alert_log)
    if alert is not None and workspace is not None:
        add_alert_marker(workspace, cfg, window, "; ".join(alert.all_reasons), alert.kind)
    push_run(cfg, summary, alert)
    return alert


def monitor_step(cfg: ProjectConfig, snapshot_dir: Path, *, window: str = "", scheduled_time: str = "",
                 data_root: str = "", prediction_log: str = "", labels: bool = False,
                 workspace: str = "") -> MonitorSummary:
    """The monitoring pipeline's monitor step, its arguments as the pipeline passes them ("": not given):
    the window named, else the calendar month before the run's scheduled time; the prediction log when
    there is one (the window as served; data_root is then the retraining's data only), else the data."""
    if not (window or scheduled_time):
        raise ValueError("name the window: this run has no schedule time to derive it from")
    if not (prediction_log or data_root):
        raise ValueError("give the window's source: prediction_log or data_root")
    source = {"log_dir": Path(prediction_log)} if prediction_log else {"data_root": Path(data_root)}
    return monitor_window(cfg, window or previous_month(scheduled_time), snapshot_dir, **source, labels=labels,
                          workspace=Path(workspace) if workspace else None)


def policy_step(cfg: ProjectConfig, summary: MonitorSummary, *, data_root: str = "", alert_log: str = "",
                workspace: str = "") -> str:
    """The monitoring pipeline's policy step (`apply_policy`, the alert log by default in the workspace):
    "retrain" only for an acting alert with `alerts.action: retrain` and data to retrain on; else
    "alert", "suppressed" (cool-down) or "none"."""
    folder = Path(workspace or cfg.monitoring.workspace)
    alert = apply_policy(cfg, summary, summary.window, Path(alert_log) if alert_log else folder / "alerts.jsonl",
                         folder)
    if alert is None:
        return "none"
    if alert.suppressed:
        return "suppressed"
    return "retrain" if alert.retrains and data_root else "alert"


def previous_month(timestamp: str) -> str:
    """The calendar month before an ISO timestamp: a recurring run on 2013-08-01 checks "2013-07"."""
    return str(pd.Timestamp(timestamp).to_period("M") - 1)
