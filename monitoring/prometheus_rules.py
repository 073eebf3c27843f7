"""The Prometheus rules (recording rules and alerts) for the endpoint and the monitor, generated from
the project config, so the thresholds the rules alert at are the config's (`prometheus:` and the
alert policy's tolerances) and nothing is copied by hand.

    python -m monitoring.prometheus_rules --config configs/flights.yaml   # writes infra/k8s/prometheus/

writes the PrometheusRule and the Grafana dashboard (monitoring/grafana.py) beside the hand-written
ServiceMonitor, Pushgateway and Alertmanager route (tests/test_prometheus.py fails when the
committed files differ from what the committed config generates).

Every alert carries `alert_kind` (serving, data, model, retrain), which the Alertmanager route
sends to its receiver, and a one-line `runbook`: what to do when it fires.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components.config.schema import ProjectConfig, load_config
from monitoring.exposition import JOB as MONITOR_JOB
from monitoring.exposition import SERVING_JOB

OUT_DIR = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "prometheus"
RULE_FILE, DASHBOARD_FILE = "prometheusrule.yaml", "dashboard.json"
PREDICT = f'job="{SERVING_JOB}",endpoint="/predict"'


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    kind: str  # alert_kind: which receiver the Alertmanager route sends it to
    severity: str
    summary: str
    runbook: str
    for_: str = "0m"
    labels: dict[str, str] = field(default_factory=dict)

    def rule(self) -> dict:
        return {"alert": self.name, "expr": self.expr, "for": self.for_,
                "labels": {"severity": self.severity, "alert_kind": self.kind, **self.labels},
                "annotations": {"summary": self.summary, "runbook": self.runbook}}


RECORDING = {
    "mtlops:predict_requests:rate5m": f"sum by (job) (rate(bentoml_service_request_total{{{PREDICT}}}[5m]))",
    "mtlops:predict_errors:ratio_rate5m": (
        f'sum by (job) (rate(bentoml_service_request_total{{{PREDICT},http_response_code=~"5.."}}[5m]))'
        f" / sum by (job) (rate(bentoml_service_request_total{{{PREDICT}}}[5m]))"),
    "mtlops:predict_latency_seconds:p99_5m": (
        f"histogram_quantile(0.99, sum by (job, le) (rate(bentoml_service_request_duration_seconds_bucket"
        f"{{{PREDICT}}}[5m])))"),
    "mtlops:batch_rows:mean_5m": (
        f'sum by (job) (rate(mtlops_batch_rows_sum{{job="{SERVING_JOB}"}}[5m]))'
        f' / sum by (job) (rate(mtlops_batch_rows_count{{job="{SERVING_JOB}"}}[5m]))'),
    "mtlops:monitor_run_age_seconds": f'time() - mtlops_monitor_last_run_timestamp_seconds{{job="{MONITOR_JOB}"}}',
}


def serving_alerts(cfg: ProjectConfig) -> list[AlertRule]:
    p = cfg.prometheus
    return [
        AlertRule("MtlopsEndpointErrorRatio", f"mtlops:predict_errors:ratio_rate5m > {p.error_ratio:g}", "serving",
                  "page",
                  f"/predict answers 5xx to {{{{ $value | humanizePercentage }}}} of requests (alert above "
                  f"{p.error_ratio:.1%})",
                  "Read the server log for the traceback (`mtlops serve` output / `kubectl logs`); a new model version "
                  "just before? roll back (`mtlops rollback`, then `mtlops reload`).", "5m"),
        AlertRule("MtlopsEndpointLatencyP99", f"mtlops:predict_latency_seconds:p99_5m > {p.latency_p99_seconds:g}",
                  "serving", "page",
                  f"/predict p99 latency {{{{ $value | humanizeDuration }}}} over the {p.latency_p99_seconds:g} s "
                  "budget",
                  "Compare request rate and mtlops:batch_rows:mean_5m with the serving benchmark: more load than the "
                  "pods' CPUs carry means scale out (HPA max, --workers); a slow model version means roll back.",
                  "10m"),
        AlertRule("MtlopsNoReadyWorkers",
                  f'max by (job, instance) (mtlops_workers_ready{{job="{SERVING_JOB}"}}) == 0 '
                  f'or up{{job="{SERVING_JOB}"}} == 0', "serving", "page",
                  "{{ $labels.instance }}: no worker of the server is ready (or /metrics does not answer)",
                  "mtlops_workers 0: the champion cannot load (the log says why, the server exits); workers running "
                  "but none ready: their event loops stall (watchdog lines in the log).", "1m"),
        AlertRule("MtlopsWorkerRestarts",
                  f'increase(mtlops_worker_exits_total{{job="{SERVING_JOB}",cause!="stopped"}}[15m]) > 0', "serving",
                  "warning", "{{ $labels.instance }}: workers exited ({{ $labels.cause }}) in the last 15 minutes",
                  "cause=stalled: a request blocked a worker's event loop (the watchdog log line names the worker); "
                  "cause=crashed: out of memory or a native crash (kubectl describe pod, dmesg)."),
        AlertRule("MtlopsPredictionLogFailing",
                  f'increase(mtlops_prediction_log_failed_flushes_total{{job="{SERVING_JOB}"}}[10m]) > 0 '
                  f'or increase(mtlops_prediction_log_dropped_batches_total{{job="{SERVING_JOB}"}}[10m]) > 0',
                  "serving", "warning",
                  "{{ $labels.instance }}: the prediction log cannot be written (records buffered or dropped)",
                  "Answers go on, but monitoring misses what is not written: check the log volume's free space and "
                  "permissions (`df`, the server log's 'prediction log flush failed'); "
                  "mtlops_prediction_log_lag_seconds says how far behind it is.", "5m"),
        AlertRule("MtlopsPredictionLogDiskFilling",
                  f'max by (job, instance) (mtlops_prediction_log_disk_free_bytes{{job="{SERVING_JOB}"}}) '
                  f'/ max by (job, instance) (mtlops_prediction_log_disk_size_bytes{{job="{SERVING_JOB}"}}) '
                  f'< {p.log_disk_free_ratio:g} or max by (job, instance) (predict_linear('
                  f'mtlops_prediction_log_disk_free_bytes{{job="{SERVING_JOB}"}}[6h], 86400)) < 0',
                  "serving", "warning",
                  "{{ $labels.instance }}: the prediction log's disk is full within a day or has less than "
                  f"{p.log_disk_free_ratio:.0%} free",
                  "Grow the volume, or shorten the log's retention (MTLOPS_LOG_RETENTION_DAYS, at least the "
                  "monitor's window); mtlops_prediction_log_bytes and _parts show whether the log or something "
                  "else fills it (many parts: is compaction running? the server log says).", "15m"),
        AlertRule("MtlopsCanaryRolledBack",
                  f'increase(mtlops_canary_rollbacks_total{{job="{SERVING_JOB}"}}[15m]) > 0', "serving", "warning",
                  "{{ $labels.instance }}: the canary broke its error or latency budget and was rolled back",
                  "The champion answers everything again; the server log's 'canary ... rolled back' line says why. "
                  "Reject the version (`mtlops shadow decide` or `mtlops shadow stop`) before it is promoted."),
        AlertRule("MtlopsModelVersionChanged",
                  f'max by (job, model_version) (mtlops_model_info{{job="{SERVING_JOB}"}}) == 1 unless '
                  f'max by (job, model_version) (mtlops_model_info{{job="{SERVING_JOB}"}} offset 15m) == 1',
                  "serving", "info", "Now serving {{ $labels.model_version }}",
                  "Expected after a promotion or a reload; otherwise find who promoted it (the model store's labels) "
                  "and watch the error ratio and latency of the new version."),
    ]


def monitor_alerts(cfg: ProjectConfig) -> list[AlertRule]:
    job = f'job="{MONITOR_JOB}"'
    gaps = " or ".join(f'abs(mtlops_monitor_estimate_error{{{job},task="{t.name}"}}) > {cfg.alert_tolerance(t.name):g}'
                       for t in cfg.tasks)
    hours = cfg.prometheus.monitor_every_hours
    return [
        AlertRule("MtlopsDataAlert", f"mtlops_monitor_data_alert_reason{{{job}}} == 1", "data", "warning",
                  "Window {{ $labels.window }}: {{ $labels.feature }} broken ({{ $labels.check }}) "
                  "in {{ $labels.segment_column }}={{ $labels.segment }}",
                  "Broken input, not a model problem: fix the named column at its source for the named segment "
                  "(a unit or encoding change upstream), then monitor the window again; never retrain on it."),
        AlertRule("MtlopsRetrainAlert",
                  f"mtlops_monitor_model_alert_reason{{{job}}} == 1 and on (job, model) "
                  f"(mtlops_monitor_retrain_alert{{{job}}} == 1)", "retrain", "warning",
                  "Window {{ $labels.window }}: retraining on {{ $labels.rule }} {{ $labels.subject }}",
                  "The policy retrains (alerts.action: retrain): follow the retraining run and its gate; the alert "
                  "log's line gives every reason."),
        AlertRule("MtlopsModelAlert",
                  f"mtlops_monitor_model_alert_reason{{{job}}} == 1 unless on (job, model) "
                  f"(mtlops_monitor_retrain_alert{{{job}}} == 1 or mtlops_monitor_data_alert{{{job}}} == 1 "
                  f"or mtlops_monitor_alert_suppressed{{{job}}} == 1)", "model", "warning",
                  "Window {{ $labels.window }}: {{ $labels.rule }} {{ $labels.subject }}",
                  "Open the window's report (runs/monitor/<window>, the Evidently UI): decide on retraining "
                  "(`mtlops monitor --act` or the retraining pipeline)."),
        AlertRule("MtlopsEstimateGap", f"({gaps})", "model", "warning",
                  "{{ $labels.task }}: the label-free estimate missed the realized change by {{ $value | "
                  "humanizePercentage }}",
                  "The estimate cannot decide alerts at this task's tolerance until it tracks the labels again: "
                  "judge the task on labelled windows (estimates.jsonl in the workspace)."),
        AlertRule("MtlopsMonitorRunMissing",
                  f"{RECORDING['mtlops:monitor_run_age_seconds']} > {hours * 3600:g} "
                  f"or absent(mtlops_monitor_last_run_timestamp_seconds{{{job}}})", "model", "warning",
                  f"No monitor run for over {hours:g} h (its schedule)",
                  "Check the monitoring pipeline's recurring run (kfp UI) or the cron running `mtlops monitor`, and "
                  "that it reaches the Pushgateway (prometheus.pushgateway in the config).", "1h"),
    ]


def rule_groups(cfg: ProjectConfig) -> list[dict]:
    """The groups of a Prometheus rules file (a PrometheusRule's spec.groups)."""
    return [
        {"name": "mtlops-recording", "rules": [{"record": name, "expr": expr} for name, expr in RECORDING.items()]},
        {"name": "mtlops-serving", "rules": [a.rule() for a in serving_alerts(cfg)]},
        {"name": "mtlops-monitor", "rules": [a.rule() for a in monitor_alerts(cfg)]},
    ]


def prometheus_rule(cfg: ProjectConfig) -> dict:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "mtlops", "labels": {"app.kubernetes.io/name": "mtlops"}},
            "spec": {"groups": rule_groups(cfg)}}


def rendered(cfg: ProjectConfig, source: str) -> dict[str, str]:
    """File name -> content, as committed under infra/k8s/prometheus/."""
    from monitoring.grafana import dashboard

    header = (f"# generated by `python -m monitoring.prometheus_rules --config {source}`: edit the config "
              "(prometheus:, alerts:) or monitoring/prometheus_rules.py, not this file\n")
    return {RULE_FILE: header + yaml.safe_dump(prometheus_rule(cfg), sort_keys=False, width=120),
            DASHBOARD_FILE: json.dumps(dashboard(cfg), indent=1, sort_keys=True) + "\n"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/flights.yaml")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    for name, text in rendered(load_config(args.config), args.config).items():
        (args.out / name).write_text(text)


if __name__ == "__main__":
    main()
