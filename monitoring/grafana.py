"""The Grafana dashboard for the endpoint and the monitor, built with the Grafana foundation SDK (its
typed builders produce the dashboard model Grafana's schema defines) and written as JSON beside the
rules (`python -m monitoring.prometheus_rules`). `PANELS` is the one list of PromQL expressions: the
dashboard is built from it, and tests/test_prometheus.py runs each against a real Prometheus and
plots the results (monitoring/README.md shows the picture)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from components.config.schema import ProjectConfig
from monitoring.exposition import JOB as MONITOR_JOB
from monitoring.exposition import SERVING_JOB

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SERVING, MONITOR = f'job="{SERVING_JOB}"', f'job="{MONITOR_JOB}"'


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)


ENDPOINT = (
    Panel("Requests by route", "reqps",
          ((f"sum by (endpoint) (rate(bentoml_service_request_total{{{SERVING}}}[5m]))", "{{endpoint}}"),)),
    Panel("/predict error ratio (5xx)", "percentunit", (("mtlops:predict_errors:ratio_rate5m", "{{job}}"),)),
    Panel("/predict latency", "s", (
        ("mtlops:predict_latency_seconds:p99_5m", "p99"),
        (f'histogram_quantile(0.5, sum by (le) (rate(bentoml_service_request_duration_seconds_bucket'
         f'{{{SERVING},endpoint="/predict"}}[5m])))', "p50"))),
    Panel("Rows per ONNX call (mean)", "short", (("mtlops:batch_rows:mean_5m", "{{job}}"),)),
    Panel("Workers", "short", ((f"sum(mtlops_workers{{{SERVING}}})", "running"),
                               (f"sum(mtlops_workers_ready{{{SERVING}}})", "ready"))),
    Panel("Worker exits by cause (1 h)", "short",
          ((f"sum by (cause) (increase(mtlops_worker_exits_total{{{SERVING}}}[1h]))", "{{cause}}"),)),
    Panel("Model version served", "short",
          ((f"count by (model_version) (mtlops_model_info{{{SERVING}}} == 1)", "{{model_version}}"),)),
    Panel("Prediction log disk free", "percentunit",
          ((f"max by (instance) (mtlops_prediction_log_disk_free_bytes{{{SERVING}}}) "
            f"/ max by (instance) (mtlops_prediction_log_disk_size_bytes{{{SERVING}}})", "{{instance}}"),)),
    Panel("Prediction log parts (compaction merges each hour's)", "short",
          ((f"max by (instance) (mtlops_prediction_log_parts{{{SERVING}}})", "{{instance}}"),)),
)
MONITOR_PANELS = (
    Panel("Feature drift score", "short",
          ((f"mtlops_monitor_feature_drift_score{{{MONITOR}}}", "{{feature}}"),)),
    Panel("Drifted features (share)", "percentunit",
          ((f"mtlops_monitor_drifted_features_ratio{{{MONITOR}}}", "drift share"),)),
    Panel("Prediction drift score per task", "short",
          ((f"mtlops_monitor_prediction_drift_score{{{MONITOR}}}", "{{task}}"),)),
    Panel("Alerts of the latest window", "short", (
        (f"mtlops_monitor_data_alert{{{MONITOR}}}", "data"), (f"mtlops_monitor_model_alert{{{MONITOR}}}", "model"),
        (f"mtlops_monitor_retrain_alert{{{MONITOR}}}", "retrain"))),
    Panel("Broken columns (data alert reasons)", "short",
          ((f"count by (feature, segment_column, segment) (mtlops_monitor_data_alert_reason{{{MONITOR}}})",
            "{{feature}} {{segment_column}}={{segment}}"),)),
    Panel("Quality per task: estimated (no labels) and realized", "short", (
        (f"mtlops_monitor_quality_estimated{{{MONITOR}}}", "{{task}} {{metric}} estimated"),
        (f"mtlops_monitor_quality_realized{{{MONITOR}}}", "{{task}} {{metric}} realized"),
        (f"mtlops_monitor_quality_reference{{{MONITOR}}}", "{{task}} {{metric}} champion"))),
    Panel("Estimate error per task (estimated - realized change)", "percentunit",
          ((f"mtlops_monitor_estimate_error{{{MONITOR}}}", "{{task}}"),)),
    Panel("Time since the last monitor run", "s", (("mtlops:monitor_run_age_seconds", "{{model}}"),)),
)
PANELS = ENDPOINT + MONITOR_PANELS


def _panel(p: Panel) -> timeseries.Panel:
    panel = timeseries.Panel().title(p.title).unit(p.unit).datasource(DATASOURCE).height(8).span(12)
    for ref, (expr, legend) in zip("ABCDEFGH", p.queries, strict=False):
        panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
    return panel


def dashboard(cfg: ProjectConfig) -> dict:
    """The dashboard as Grafana's JSON model (import it, or let Grafana's sidecar load the ConfigMap)."""
    board = (db.Dashboard(f"mtlops: {cfg.registry.model_name}").uid(f"mtlops-{cfg.registry.model_name}")
             .tags(["mtlops"]).time("now-7d", "now").refresh("1m").editable()
             .with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus")))
    board = board.with_row(db.Row("Endpoint"))
    for p in ENDPOINT:
        board = board.with_panel(_panel(p))
    board = board.with_row(db.Row("Monitor (one point per monitor run)"))
    for p in MONITOR_PANELS:
        board = board.with_panel(_panel(p))
    return json.loads(JSONEncoder(sort_keys=True).encode(board.build()))


def query_range(prometheus_url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    """The series of one PromQL expression over [start, end]; a query Prometheus refuses raises, naming it."""
    import httpx

    r = httpx.get(f"{prometheus_url}/api/v1/query_range",
                  params={"query": expr, "start": start, "end": end, "step": step}, timeout=30)
    body = r.json()
    if body.get("status") != "success":
        raise ValueError(f"Prometheus refused {expr!r}: {body.get('error', r.text)}")
    return body["data"]["result"]


def plot_panels(prometheus_url: str, start: float, end: float, path: Path, step: float = 1.0) -> dict[str, int]:
    """Every panel's queries over [start, end], read from Prometheus and drawn with matplotlib as the
    dashboard lays them out (two per row): the dashboard's picture where Grafana does not run. Returns
    panel title -> series drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(PANELS) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(14, 2.6 * rows), squeeze=False)
    drawn = {}
    for ax, panel in zip(axes.flat, PANELS, strict=False):
        drawn[panel.title] = 0
        for expr, legend in panel.queries:
            for series in query_range(prometheus_url, expr, start, end, step):
                t = [float(v[0]) - start for v in series["values"]]
                y = [float(v[1]) for v in series["values"]]
                label = re.sub(r"\{\{(\w+)\}\}", lambda m, s=series: s["metric"].get(m.group(1), ""), legend)
                ax.plot(t, y, label=label[:40], drawstyle="steps-post")
                drawn[panel.title] += 1
        ax.set_title(f"{panel.title} [{panel.unit}]", fontsize=9)
        ax.set_xlim(0, end - start)  # one time axis: the monitor's runs line up with the endpoint's traffic
        ax.tick_params(labelsize=7)
        if drawn[panel.title]:
            ax.legend(fontsize=6, loc="upper left", ncol=1 + drawn[panel.title] // 5)
    for ax in axes.flat[len(PANELS):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("seconds from the start", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return drawn
