"""The monitor as a kfp component and a one-step pipeline, for a Kubeflow recurring run.

    mtlops compile -p monitoring [--cluster infra/kfp/cluster.yaml]   # build/pipelines/monitoring_pipeline.yaml
    # then, on the cluster: kfp.Client().create_recurring_run(experiment_id, job_name="monitor",
    #   cron_expression="0 0 6 1 * *", pipeline_package_path="build/pipelines/monitoring_pipeline.yaml",
    #   params={"config_yaml": ..., "data_root": "/data"})   # 06:00 on the 1st: last month

With `window` empty the step monitors the calendar month before the run's scheduled time
(Kubeflow's `PIPELINE_JOB_SCHEDULE_TIME_UTC` placeholder); kfp.local cannot resolve that
placeholder, so locally build with `scheduled=False` and pass `window`. The step
needs the model store (`BENTOML_HOME`) and either the data partitions or the prediction log
mounted, as the training steps do.
"""

# no `from __future__ import annotations`: kfp reads the annotations as types

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from pipelines.cluster import ClusterSettings, apply_cluster_settings
from pipelines.training import component as make_component
from pipelines.training import images

PIPELINE_NAME = "mtlops-monitoring"


def monitor_op(config_yaml: str, window: str, scheduled_time: str, data_root: str, prediction_log: str,
               labels: bool, workspace: str, report: Output[HTML], snapshot: Output[Artifact],
               metrics: Output[Metrics]) -> str:
    import shutil
    from pathlib import Path

    from components.config import config_from_yaml
    from monitoring.windows import monitor_window, previous_month

    cfg = config_from_yaml(config_yaml, "<pipeline parameter config_yaml>")
    if not (window or scheduled_time):
        raise ValueError("name the window: this run has no schedule time to derive it from")
    month = window or previous_month(scheduled_time)
    summary = monitor_window(cfg, month, Path(snapshot.path), data_root=Path(data_root) if data_root else None,
                             log_dir=Path(prediction_log) if prediction_log else None, labels=labels,
                             workspace=Path(workspace) if workspace else None)
    shutil.copyfile(summary.snapshot_html, report.path)
    snapshot.metadata.update({"window": month, "model_version": summary.model_version})
    metrics.log_metric("drift_share", summary.drift_share)
    metrics.log_metric("drifted_features", float(len(summary.drifted_features)))
    metrics.log_metric("drifted_predictions", float(len(summary.drifted_predictions)))
    for task, q in summary.quality.items():
        metrics.log_metric(f"quality.{task}.{q['metric']}.relative_change", float(q["relative_change"]))
    return summary.to_json()


def build_monitoring_pipeline(image: str | None = None, gpu_image: str | None = None,  # type: ignore[no-untyped-def]
                              cluster: ClusterSettings | None = None, scheduled: bool = True):
    """`scheduled`: wire Kubeflow's schedule-time placeholder into the step (for a recurring run);
    kfp.local cannot resolve it, so local runs pass False and name the window. With `cluster`,
    the step carries the Kubernetes settings of pipelines/cluster.py (store, workspace, secrets)."""
    component = make_component(monitor_op, images(image, gpu_image)[0])

    @dsl.pipeline(name=PIPELINE_NAME, description="Drift and quality of the champion on one window (Evidently).")
    def monitoring_pipeline(config_yaml: str, window: str = "", data_root: str = "", prediction_log: str = "",
                            labels: bool = False, workspace: str = "") -> str:
        task = component(config_yaml=config_yaml, window=window,
                         scheduled_time=dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER if scheduled else "",
                         data_root=data_root,
                         prediction_log=prediction_log, labels=labels, workspace=workspace)
        task.set_caching_options(False)  # the log and the champion change between runs with equal parameters
        if cluster:
            apply_cluster_settings(cluster, [task])
        return task.outputs["Output"]

    return monitoring_pipeline
