"""The monitor as kfp components and a pipeline, for a Kubeflow recurring run: monitor the window,
evaluate the alert policy, and on an acting alert with `alerts.action: retrain` run the retraining
pipeline on the window as a `dsl.If` branch of the same run.

    mtlops compile -p monitoring [--cluster infra/kfp/cluster.yaml]   # build/pipelines/monitoring_pipeline.yaml
    # then, on the cluster: kfp.Client().create_recurring_run(experiment_id, job_name="monitor",
    #   cron_expression="0 0 6 1 * *", pipeline_package_path="build/pipelines/monitoring_pipeline.yaml",
    #   params={"config_yaml": ..., "data_root": "/data"})   # 06:00 on the 1st: last month

With `window` empty the step monitors the calendar month before the run's scheduled time
(Kubeflow's `PIPELINE_JOB_SCHEDULE_TIME_UTC` placeholder); kfp.local cannot resolve that
placeholder, so locally build with `scheduled=False` and pass `window`. The steps
need the model store (`BENTOML_HOME`) and either the data partitions or the prediction log
mounted, as the training steps do; the alert log (default `<workspace>/alerts.jsonl`) must sit on
storage that outlives the run, or every run forgets the cool-down. Retraining needs `data_root`.
"""

# no `from __future__ import annotations`: kfp reads the annotations as types

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from pipelines.cluster import ClusterSettings, apply_cluster_settings
from pipelines.continual import build_pipeline as build_retraining_pipeline
from pipelines.training import component as make_component
from pipelines.training import images

PIPELINE_NAME = "mtlops-monitoring"


def monitor_op(config_yaml: str, window: str, scheduled_time: str, data_root: str, prediction_log: str,
               labels: bool, workspace: str, report: Output[HTML], snapshot: Output[Artifact],
               metrics: Output[Metrics]) -> str:
    import shutil
    from pathlib import Path

    from components.config.schema import config_from_yaml
    from monitoring.windows import monitor_step

    summary = monitor_step(config_from_yaml(config_yaml, "<pipeline parameter config_yaml>"), Path(snapshot.path),
                           window=window, scheduled_time=scheduled_time, data_root=data_root,
                           prediction_log=prediction_log, labels=labels, workspace=workspace)
    shutil.copyfile(summary.snapshot_html, report.path)
    snapshot.metadata.update({"window": summary.window, "model_version": summary.model_version})
    metrics.log_metric("drift_share", summary.drift_share)
    metrics.log_metric("drifted_features", float(len(summary.drifted_features)))
    metrics.log_metric("drifted_predictions", float(len(summary.drifted_predictions)))
    for task, q in summary.quality.items():
        metrics.log_metric(f"quality.{task}.{q['metric']}.relative_change", float(q["relative_change"]))
    return summary.to_json()


def policy_op(config_yaml: str, summary_json: str, data_root: str, alert_log: str, workspace: str) -> str:
    """`monitoring.windows.policy_step`. A plain string: kfp.local resolves a `dsl.If` condition on a
    step's single output, not on a NamedTuple field."""
    from components.config.schema import config_from_yaml
    from monitoring.summary import MonitorSummary
    from monitoring.windows import policy_step

    return policy_step(config_from_yaml(config_yaml, "<pipeline parameter config_yaml>"),
                       MonitorSummary.from_json(summary_json), data_root=data_root, alert_log=alert_log,
                       workspace=workspace)


def window_dates_op(summary_json: str) -> NamedTuple("WindowDates", [("new_start", str), ("new_end", str)]):
    """The monitored window as the retraining pipeline's new_start / new_end dates."""
    from collections import namedtuple

    from monitoring.summary import MonitorSummary
    from monitoring.windows import window_bounds

    start, end = window_bounds(MonitorSummary.from_json(summary_json).window)
    return namedtuple("WindowDates", ["new_start", "new_end"])(f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}")


def build_monitoring_pipeline(image: str | None = None, gpu_image: str | None = None,  # type: ignore[no-untyped-def]
                              cluster: ClusterSettings | None = None, scheduled: bool = True):
    """`scheduled`: wire Kubeflow's schedule-time placeholder into the step (for a recurring run);
    kfp.local cannot resolve it, so local runs pass False and name the window. With `cluster`,
    the step carries the Kubernetes settings of pipelines/cluster.py (store, workspace, secrets)."""
    image = images(image, gpu_image)[0]
    monitor_c, policy_c = make_component(monitor_op, image), make_component(policy_op, image)
    dates_c = make_component(window_dates_op, image)
    retraining = build_retraining_pipeline(image, gpu_image, cluster)

    @dsl.pipeline(name=PIPELINE_NAME, description="Drift and quality of the champion on one window (Evidently); "
                                                   "the alert policy; retraining when it acts.")
    def monitoring_pipeline(config_yaml: str, window: str = "", data_root: str = "", prediction_log: str = "",
                            labels: bool = False, workspace: str = "", alert_log: str = "",
                            git_revision: str = "unknown") -> str:
        monitor_t = monitor_c(config_yaml=config_yaml, window=window,
                              scheduled_time=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER if scheduled else "",
                              data_root=data_root, prediction_log=prediction_log, labels=labels, workspace=workspace)
        policy_t = policy_c(config_yaml=config_yaml, summary_json=monitor_t.outputs["Output"], data_root=data_root,
                            alert_log=alert_log, workspace=workspace)
        for task in (monitor_t, policy_t):
            task.set_caching_options(False)  # the log, the champion and the alert log change between runs
        if cluster:
            apply_cluster_settings(cluster, [monitor_t, policy_t])
        with dsl.If(policy_t.output == "retrain", name="alert-acts"):
            dates_t = dates_c(summary_json=monitor_t.outputs["Output"])
            dates_t.set_caching_options(False)
            if cluster:
                apply_cluster_settings(cluster, [dates_t])
            retraining(config_yaml=config_yaml, data_root=data_root, new_start=dates_t.outputs["new_start"],
                       new_end=dates_t.outputs["new_end"], git_revision=git_revision)
        return monitor_t.outputs["Output"]

    return monitoring_pipeline
