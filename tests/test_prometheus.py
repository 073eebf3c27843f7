"""Operations in Prometheus' own form, checked with Prometheus' own tools (Debian's `prometheus`,
`prometheus-pushgateway` and `prometheus-alertmanager`, installed here when missing): the committed
rules and dashboard are what the config generates; `promtool check rules` and `promtool test rules`
(an input that fires and one that stays quiet for every alert, built from the config's thresholds);
`amtool` routes data and retraining alerts to different receivers; the monitor's exposition passes
`promtool check metrics`; and one end-to-end run: a real Prometheus on loopback scrapes a live
`mtlops serve` and a Pushgateway that `mtlops monitor` pushes a clean and a broken window to."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import kubernetes_validate
import pandas as pd
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from components.config.schema import ProjectConfig, config_to_yaml, load_config
from monitoring.exposition import JOB as MONITOR_JOB
from monitoring.exposition import push_run, run_registry
from monitoring.prometheus_rules import (
    DASHBOARD_FILE,
    OUT_DIR,
    RECORDING,
    SERVING_JOB,
    monitor_alerts,
    rendered,
    rule_groups,
    serving_alerts,
)
from monitoring.summary import MonitorSummary
from serving.launch import ServerProcess, free_port
from tests.conftest import FLIGHTS, ROOT
from tests.test_containers import apt_install

# fixtures of the monitoring tests, looked up by name below: a flights champion and 10,000 unseen Jan-Apr rows
from tests.test_monitoring import model, unseen_jan_apr  # noqa: F401
from tests.test_serving_operations import wait_until

TOOLS = {"promtool": "prometheus", "prometheus": "prometheus", "prometheus-pushgateway": "prometheus-pushgateway",
         "amtool": "prometheus-alertmanager"}
ALERTMANAGER_EXAMPLE = OUT_DIR / "alertmanager.example.yaml"
KUBERNETES_VERSION = "1.32"


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    """Prometheus' binaries: Debian's packages, installed the way the other tool tests install theirs."""
    missing = sorted({package for tool, package in TOOLS.items() if not shutil.which(tool)})
    if missing and os.geteuid() != 0:
        pytest.skip(f"needs Debian's {' '.join(missing)} (apt-get install as root; this run is not root)")
    if missing:
        apt_install(*missing)
    return {tool: shutil.which(tool) or pytest.fail(f"{tool} missing after installing its package")
            for tool in TOOLS}


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload]


def write_rules(cfg: ProjectConfig, folder: Path) -> Path:
    path = folder / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(cfg)}, sort_keys=False))
    return path


# --- the committed files -----------------------------------------------------------------------


def test_the_committed_rules_and_dashboard_are_what_the_config_generates() -> None:
    for name, text in rendered(load_config(FLIGHTS), "configs/flights.yaml").items():
        assert (OUT_DIR / name).read_text() == text, \
            f"infra/k8s/prometheus/{name} is stale: python -m monitoring.prometheus_rules --config configs/flights.yaml"


def test_thresholds_come_from_the_config() -> None:
    cfg = load_config(FLIGHTS)
    changed = cfg.model_copy(update={"prometheus": cfg.prometheus.model_copy(update={
        "latency_p99_seconds": 0.125, "error_ratio": 0.02, "monitor_every_hours": 48})})
    exprs = {a.name: a.expr for a in serving_alerts(changed) + monitor_alerts(changed)}
    assert exprs["MtlopsEndpointLatencyP99"].endswith("> 0.125")
    assert exprs["MtlopsEndpointErrorRatio"].endswith("> 0.02")
    assert "> 172800" in exprs["MtlopsMonitorRunMissing"]
    for t in cfg.tasks:  # the alert policy's tolerance of each task
        assert f'task="{t.name}"}}) > {cfg.alert_tolerance(t.name):g}' in exprs["MtlopsEstimateGap"]


def test_the_manifests_render_and_the_core_objects_validate_against_the_kubernetes_schema() -> None:
    proc = run([str(Path(sys.executable).parent / "kubectl"), "kustomize", str(OUT_DIR)])
    assert proc.returncode == 0, proc.stderr
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(proc.stdout) if o}
    for obj in objects.values():
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # the operator's CRDs: checked below against what they must select and hold
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    serving = yaml.safe_load_all((ROOT / "infra" / "k8s" / "base" / "serving.yaml").read_text())
    service = next(o for o in serving if o["kind"] == "Service")
    monitor = objects[("ServiceMonitor", SERVING_JOB)]
    # the job label Prometheus gives the targets is the Service's name: the one the rules select
    assert service["metadata"]["name"] == SERVING_JOB
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
    gateway = objects[("ServiceMonitor", "mtlops-pushgateway")]
    assert gateway["spec"]["endpoints"][0]["honorLabels"] is True  # keeps the pushed job label
    assert gateway["spec"]["selector"]["matchLabels"].items() <= \
        objects[("Service", "mtlops-pushgateway")]["metadata"]["labels"].items()
    assert objects[("PrometheusRule", "mtlops")]["spec"]["groups"] == rule_groups(load_config(FLIGHTS))
    dashboard = json.loads(objects[("ConfigMap", "mtlops-dashboard")]["data"][DASHBOARD_FILE])
    assert objects[("ConfigMap", "mtlops-dashboard")]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["uid"] == "mtlops-flights-mtl" and len(dashboard["panels"]) > 10


# --- promtool and amtool -----------------------------------------------------------------------


def test_rules_pass_promtool_check_and_a_broken_rule_fails(tools: dict[str, str], tmp_path: Path) -> None:
    proc = run([tools["promtool"], "check", "rules", str(write_rules(load_config(FLIGHTS), tmp_path))])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = load_config(FLIGHTS)
    assert f"SUCCESS: {len(RECORDING) + len(serving_alerts(cfg)) + len(monitor_alerts(cfg))} rules found" in proc.stdout
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"alert": "Broken", "expr": "rate(mtlops_predictions_total[5m] > 1"}]}]}))
    assert run([tools["promtool"], "check", "rules", str(broken)]).returncode != 0  # the check is live


@dataclass(frozen=True)
class Case:
    """One alert's unit test: input series, when to look, and the alert expected (None: quiet)."""

    alert: str
    series: dict[str, str]
    eval_time: str
    labels: dict[str, str] | None
    interval: str = "1m"


def alert_cases(cfg: ProjectConfig) -> list[Case]:
    """For every alert an input that fires it and one that stays quiet, at the config's thresholds."""
    p = cfg.prometheus
    serving, monitor = f'job="{SERVING_JOB}",instance="a"', f'job="{MONITOR_JOB}",model="m"'
    predict = f'{serving},endpoint="/predict"'

    def requests(error_share: float) -> dict[str, str]:
        errors = round(1000 * error_share)
        return {f'bentoml_service_request_total{{{predict},http_response_code="200"}}': f"0+{1000 - errors}x30",
                f'bentoml_service_request_total{{{predict},http_response_code="500"}}': f"0+{errors}x30"}

    def latency(slow: bool) -> dict[str, str]:
        budget = p.latency_p99_seconds  # every request in (budget / 2, 2 budget] or all under budget / 2
        bucket = f"bentoml_service_request_duration_seconds_bucket{{{predict}"
        return {f'{bucket},le="{budget / 2:g}"}}': "0x30" if slow else "0+100x30",
                f'{bucket},le="{budget * 2:g}"}}': "0+100x30", f'{bucket},le="+Inf"}}': "0+100x30"}

    reason = {"window": "2013-07", "check": "shift", "feature": "temp", "segment_column": "origin", "segment": "EWR"}
    reason_labels = ",".join(f'{k}="{v}"' for k, v in reason.items())
    data_reason = f"mtlops_monitor_data_alert_reason{{{monitor},{reason_labels}}}"
    model_reason = f'mtlops_monitor_model_alert_reason{{{monitor},window="2013-07",rule="drift_share"}}'
    model_labels = {"job": MONITOR_JOB, "model": "m", "window": "2013-07", "rule": "drift_share"}

    def model_state(retrain: int, data: int, suppressed: int) -> dict[str, str]:
        return {model_reason: "1x10", f"mtlops_monitor_retrain_alert{{{monitor}}}": f"{retrain}x10",
                f"mtlops_monitor_data_alert{{{monitor}}}": f"{data}x10",
                f'mtlops_monitor_alert_suppressed{{{monitor},kind="model"}}': f"{suppressed}x10"}

    task, tolerance = cfg.tasks[0].name, cfg.alert_tolerance(cfg.tasks[0].name)
    gap = f'mtlops_monitor_estimate_error{{{monitor},task="{task}"}}'
    hours = int(p.monitor_every_hours) + 3  # + its `for` + one evaluation: rule groups run in no set order
    last_run = f"mtlops_monitor_last_run_timestamp_seconds{{{monitor}}}"
    version = f"mtlops_model_info{{{serving}"
    failed_flushes = "mtlops_prediction_log_failed_flushes_total"
    dropped_batches = "mtlops_prediction_log_dropped_batches_total"
    disk = 100e9

    def log_disk(free: str) -> dict[str, str]:
        return {f"mtlops_prediction_log_disk_free_bytes{{{serving}}}": free,
                f"mtlops_prediction_log_disk_size_bytes{{{serving}}}": f"{disk:.0f}x30"}

    return [
        Case("MtlopsEndpointErrorRatio", requests(2 * p.error_ratio), "20m", {"job": SERVING_JOB}),
        Case("MtlopsEndpointErrorRatio", requests(p.error_ratio / 2), "20m", None),
        Case("MtlopsEndpointLatencyP99", latency(slow=True), "25m", {"job": SERVING_JOB}),
        Case("MtlopsEndpointLatencyP99", latency(slow=False), "25m", None),
        Case("MtlopsNoReadyWorkers", {f"mtlops_workers_ready{{{serving}}}": "0x10", f"up{{{serving}}}": "1x10"}, "5m",
             {"job": SERVING_JOB, "instance": "a"}),
        Case("MtlopsNoReadyWorkers", {f"mtlops_workers_ready{{{serving}}}": "2x10", f"up{{{serving}}}": "1x10"}, "5m",
             None),
        Case("MtlopsWorkerRestarts", {f'mtlops_worker_exits_total{{{serving},cause="crashed"}}': "0 0 1 1 1 1"}, "4m",
             {"job": SERVING_JOB, "instance": "a", "cause": "crashed"}),
        Case("MtlopsWorkerRestarts", {f'mtlops_worker_exits_total{{{serving},cause="stopped"}}': "0 0 1 1 1 1"}, "4m",
             None),
        Case("MtlopsPredictionLogFailing", {f"{failed_flushes}{{{serving}}}": "0 0 1 2 3 4 5 6 7 8",
                                            f"{dropped_batches}{{{serving}}}": "0x10"}, "8m",
             {"job": SERVING_JOB, "instance": "a"}),
        Case("MtlopsPredictionLogFailing", {f"{failed_flushes}{{{serving}}}": "0x10",
                                            f"{dropped_batches}{{{serving}}}": "0x10"}, "8m", None),
        Case("MtlopsPredictionLogDiskFilling", log_disk(f"{disk * p.log_disk_free_ratio / 2:.0f}x30"), "20m",
             {"job": SERVING_JOB, "instance": "a"}),  # little free
        Case("MtlopsPredictionLogDiskFilling", log_disk(f"{disk / 2:.0f}-{disk / 100:.0f}x30"), "20m",
             {"job": SERVING_JOB, "instance": "a"}),  # half free, full within the hour at this pace
        Case("MtlopsPredictionLogDiskFilling", log_disk(f"{disk / 2:.0f}x30"), "20m", None),
        Case("MtlopsCanaryRolledBack", {f"mtlops_canary_rollbacks_total{{{serving}}}": "0 0 1 1 1 1"}, "4m",
             {"job": SERVING_JOB, "instance": "a"}),
        Case("MtlopsCanaryRolledBack", {f"mtlops_canary_rollbacks_total{{{serving}}}": "0x5"}, "4m", None),
        Case("MtlopsModelVersionChanged", {f'{version},model_version="m:1"}}': "1x20 0x20",
                                           f'{version},model_version="m:2"}}': "_x20 1x20"}, "25m",
             {"job": SERVING_JOB, "model_version": "m:2"}),
        Case("MtlopsModelVersionChanged", {f'{version},model_version="m:1"}}': "1x40"}, "30m", None),
        Case("MtlopsDataAlert", {data_reason: "1x5"}, "2m", {"job": MONITOR_JOB, "model": "m", **reason}),
        Case("MtlopsDataAlert", {f"mtlops_monitor_data_alert{{{monitor}}}": "0x5"}, "2m", None),
        Case("MtlopsRetrainAlert", model_state(retrain=1, data=0, suppressed=0), "2m", model_labels),
        Case("MtlopsRetrainAlert", model_state(retrain=0, data=0, suppressed=0), "2m", None),
        Case("MtlopsModelAlert", model_state(retrain=0, data=0, suppressed=0), "2m", model_labels),
        Case("MtlopsModelAlert", model_state(retrain=0, data=0, suppressed=1), "2m", None),
        Case("MtlopsModelAlert", model_state(retrain=0, data=1, suppressed=0), "2m", None),
        Case("MtlopsEstimateGap", {gap: f"{-2 * tolerance:g}x5"}, "2m", {"job": MONITOR_JOB, "model": "m",
                                                                          "task": task}),
        Case("MtlopsEstimateGap", {gap: f"{tolerance / 2:g}x5"}, "2m", None),
        Case("MtlopsMonitorRunMissing", {last_run: f"0x{hours}"}, f"{hours}h", {"job": MONITOR_JOB, "model": "m"},
             "1h"),
        Case("MtlopsMonitorRunMissing", {last_run: f"0+3600x{hours}"}, f"{hours}h", None, "1h"),
    ]


def expected_alert(rule: dict, labels: dict[str, str]) -> dict:
    """The alert as promtool reports it: the rule's labels and its annotations filled in from the
    alert's labels (annotations quoting $value are left out of the unit-test rules: see below)."""
    annotations = {k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), v)
                   for k, v in rule["annotations"].items() if "$value" not in v}
    return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": annotations}


def test_every_alert_fires_on_its_input_and_stays_quiet_on_a_clean_one(tools: dict[str, str],
                                                                       tmp_path: Path) -> None:
    cfg = load_config(FLIGHTS)
    groups = rule_groups(cfg)
    for group in groups:  # a value's humanized text is not the rule's logic; the labels-only text is compared
        for rule in group["rules"]:
            if "annotations" in rule:
                rule["annotations"] = {k: v for k, v in rule["annotations"].items() if "$value" not in v}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    rules = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    cases = alert_cases(cfg)
    assert {c.alert for c in cases} == set(rules)
    assert all({c.labels is None for c in cases if c.alert == a} == {True, False} for a in rules)
    files = []
    # Prometheus evaluates rule groups concurrently, promtool in an arbitrary order fixed per run: a month-long
    # case evaluated hourly must fire whichever group runs first (an alert reading another group's hourly
    # recording saw nothing in the 5 min lookback when its group ran first)
    orders = [[g["name"] for g in groups], [g["name"] for g in reversed(groups)]]
    for interval, order in itertools.product(sorted({c.interval for c in cases}), orders):
        tests = [{"interval": c.interval,
                  "input_series": [{"series": s, "values": v} for s, v in c.series.items()],
                  "alert_rule_test": [{"eval_time": c.eval_time, "alertname": c.alert,
                                       "exp_alerts": [expected_alert(rules[c.alert], c.labels)] if c.labels else []}]}
                 for c in cases if c.interval == interval]
        files.append(f"tests-{interval}-{order[0]}-first.yml")
        (tmp_path / files[-1]).write_text(yaml.safe_dump(
            {"rule_files": ["rules.yml"], "evaluation_interval": interval, "group_eval_order": order,
             "tests": tests}, sort_keys=False))
    proc = run([tools["promtool"], "test", "rules", *files], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the tests can fail: a rule that never fires fails its firing case
    groups[1]["rules"][0]["expr"] = "vector(0) > 1"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    proc = run([tools["promtool"], "test", "rules", *files], cwd=tmp_path)
    assert proc.returncode != 0 and "MtlopsEndpointErrorRatio" in proc.stdout + proc.stderr


def test_the_alertmanager_route_sends_data_and_retraining_alerts_to_different_receivers(
        tools: dict[str, str]) -> None:
    config = str(ALERTMANAGER_EXAMPLE)
    proc = run([tools["amtool"], "check-config", config])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def receiver(*labels: str) -> str:
        proc = run([tools["amtool"], "config", "routes", "test", f"--config.file={config}", *labels])
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    kinds = {a.kind for a in serving_alerts(load_config(FLIGHTS)) + monitor_alerts(load_config(FLIGHTS))}
    assert kinds == {"serving", "data", "model", "retrain"}
    assert receiver("alert_kind=data", "alertname=MtlopsDataAlert") == "data-owners"
    assert receiver("alert_kind=retrain", "alertname=MtlopsRetrainAlert") == "ml-retraining"
    assert receiver("alert_kind=serving", "severity=page") == "serving-oncall"
    assert receiver("alert_kind=model") == "ml-team"


# --- the monitor's exposition -----------------------------------------------------------------


def summary(window: str = "2013-07", broken: bool = True) -> MonitorSummary:
    """A monitor run's summary as `monitoring.drift.monitor` writes it (the fields the exposition reads)."""
    finding = {"feature": "temp", "segment_column": "origin", "segment": "EWR", "check": "shift", "score": 2.6,
               "threshold": 0.6}
    return MonitorSummary(
        model_version="flights-mtl:v1", window=window, rows_reference=5000, rows_current=10_000,
        sampled_reference=4000, sampled_current=4000, drift_share=0.6, dataset_drift=True,
        drifted_features=["distance", "temp"], feature_scores={"distance": 0.001, "temp": 0.002, "carrier": 0.4},
        drifted_predictions=["dep_delay"], prediction_scores={"dep_delay": 0.01, "arr_delayed": 0.3},
        quality={"air_time": {"metric": "mae", "reference": 10.3, "current": 12.0}},
        snapshot_json="", snapshot_html="", estimated={"dep_delay": 16.2, "arr_delayed": float("nan")},
        estimated_reference={"dep_delay": 16.0}, thresholds={"distance": 0.05, "temp": 0.05, "carrier": 0.05},
        data_findings=[finding] if broken else [],
        estimate_errors={"air_time": {"estimated": 11.0, "realized": 12.0, "estimated_change": -0.07,
                                      "realized_change": -0.165, "error": 0.095}})


def convention_breaches(promtool: str, text: str) -> list[str]:
    """`promtool check metrics` (Prometheus' naming lint) and what it does not check: every family
    named mtlops_*, documented, its labels snake_case, a unit (when there is one) in base units at the end."""
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    breaches = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("mtlops_") or not family.documentation:
            breaches.append(f"{family.name}: not mtlops_* or no HELP")
        for sample in family.samples:
            breaches += [f"{family.name}: label {k}" for k in sample.labels if not re.fullmatch(r"[a-z][a-z0-9_]*", k)]
        if re.search(r"_(milli|micro|kilo|mega)?(seconds|bytes)_|_(ms|percent|minutes|hours)(_|$)", family.name):
            breaches.append(f"{family.name}: unit not last or not a base unit")
    return breaches


def test_the_monitor_exposition_names_the_broken_column_and_passes_the_conventions(tools: dict[str, str]) -> None:
    cfg = load_config(FLIGHTS)
    text = generate_latest(run_registry(cfg, summary(), None, finished=1_700_000_000)).decode()
    assert convention_breaches(tools["promtool"], text) == []
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("mtlops_monitor_data_alert", ())] == 1
    assert samples[("mtlops_monitor_data_alert_reason", (("check", "shift"), ("feature", "temp"), ("segment", "EWR"),
                                                         ("segment_column", "origin"), ("window", "2013-07")))] == 1
    assert samples[("mtlops_monitor_last_run_timestamp_seconds", ())] == 1_700_000_000
    assert samples[("mtlops_monitor_feature_drifted", (("feature", "temp"),))] == 1
    assert samples[("mtlops_monitor_feature_drifted", (("feature", "carrier"),))] == 0
    assert samples[("mtlops_monitor_estimate_error", (("task", "air_time"),))] == pytest.approx(0.095)
    assert ("mtlops_monitor_quality_estimated", (("metric", "roc_auc"), ("task", "arr_delayed"))) not in samples  # NaN
    reasons = {dict(k[1])["rule"] + ":" + dict(k[1]).get("subject", "") for k in samples
               if k[0] == "mtlops_monitor_model_alert_reason"}
    # one series per rule and named feature or task: bounded by the config, no free text (dep_delay's drifted
    # predictions raise nothing: its estimated quality holds, as the policy says)
    assert reasons == {"drift_share:", "feature_drift:distance", "quality_drop:air_time"}
    clean = generate_latest(run_registry(cfg, summary(broken=False), None)).decode()
    assert "mtlops_monitor_data_alert 0.0" in clean and "mtlops_monitor_data_alert_reason{" not in clean
    bad = generate_latest(_one_gauge("mtlops_latency_milliseconds")).decode()
    assert convention_breaches(tools["promtool"], bad)  # the lint is live


def _one_gauge(name: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge(name, "a gauge", registry=registry).set(1)
    return registry


def test_a_pushgateway_that_is_down_does_not_stop_monitoring(tmp_path: Path) -> None:
    cfg = load_config(FLIGHTS)
    down = cfg.model_copy(update={"prometheus": cfg.prometheus.model_copy(
        update={"pushgateway": f"http://127.0.0.1:{free_port()}"})})
    assert push_run(down, summary(), None).startswith("error: ")  # type: ignore[union-attr]
    assert push_run(cfg, summary(), None) is None  # none configured: nothing pushed


# --- end to end: a real Prometheus, a live `mtlops serve`, the monitor through a Pushgateway ----


class Daemon:
    """A Prometheus binary on a loopback port, stopped at the end."""

    def __init__(self, args: list[str], log: Path, url: str) -> None:
        self.url, self.log = url, log
        self.proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        assert wait_until(lambda: self.answers("/-/ready"), 60), f"{args[0]} not ready:\n{log.read_text()[-3000:]}"

    def answers(self, path: str) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        try:
            return httpx.get(self.url + path, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@dataclass
class Stack:
    prometheus: Daemon
    gateway: Daemon
    server: ServerProcess
    cfg: ProjectConfig
    config: Path
    log: Path

    def query(self, expr: str) -> list[dict]:
        body = httpx.get(self.prometheus.url + "/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def alerts(self, name: str) -> list[dict]:
        body = httpx.get(self.prometheus.url + "/api/v1/alerts", timeout=10).json()
        return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]

    def evaluated_since(self, moment: float) -> bool:
        """Every rule group evaluated after `moment` (Unix time)."""
        groups = httpx.get(self.prometheus.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        return all(pd.Timestamp(g["lastEvaluation"]).timestamp() > moment for g in groups)


@pytest.fixture
def stack(tools: dict[str, str], request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """Pushgateway, `mtlops serve` (2 workers) and Prometheus scraping both every second with the
    generated rules evaluated every second, all on loopback ports; the flights champion served."""
    base_cfg, _ = request.getfixturevalue("model")
    ports = {"gateway": free_port(), "prometheus": free_port()}
    # memory only: Debian's build persists to /var/lib/prometheus by default, and an earlier run's push would be read
    gateway = Daemon([tools["prometheus-pushgateway"], f"--web.listen-address=127.0.0.1:{ports['gateway']}",
                      "--persistence.file="],
                     tmp_path / "pushgateway.log", f"http://127.0.0.1:{ports['gateway']}")
    pushing = base_cfg.prometheus.model_copy(update={"pushgateway": gateway.url})
    cfg = base_cfg.model_copy(update={"prometheus": pushing})
    (tmp_path / "config.yaml").write_text(config_to_yaml(cfg))
    server = ServerProcess(tmp_path / "config.yaml", tmp_path / "server.out", prediction_log=tmp_path / "log",
                           workers=2, env={"MTLOPS_LOG_FLUSH_SECONDS": "0.2", "MTLOPS_ORT_THREADS": "1"})
    server.wait_ready()
    write_rules(cfg, tmp_path)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": ["rules.yml"],
        "scrape_configs": [
            {"job_name": SERVING_JOB, "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}]},
            {"job_name": "pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{ports['gateway']}"]}]}]}))
    prometheus = Daemon([tools["prometheus"], f"--config.file={tmp_path / 'prometheus.yml'}",
                         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                         f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
                        tmp_path / "prometheus.log", f"http://127.0.0.1:{ports['prometheus']}")
    yield Stack(prometheus, gateway, server, cfg, tmp_path / "config.yaml", tmp_path / "log")
    for process in (prometheus, gateway):
        process.stop()
    server.stop()


def serve_window(stack: Stack, rows: pd.DataFrame) -> set[Path]:
    """The rows through /predict, 500 a request; returns the prediction log's parts once all are written."""
    from serving.client import to_records

    before = set(stack.log.glob("date=*/*.parquet"))
    with httpx.Client(timeout=60) as client:
        for start in range(0, len(rows), 500):
            r = client.post(stack.server.url + "/predict",
                            json={"records": to_records(rows.iloc[start:start + 500], stack.cfg.features.names)})
            assert r.status_code == 200, r.text

    def logged() -> set[Path]:
        return set(stack.log.glob("date=*/*.parquet")) - before

    assert wait_until(lambda: sum(len(pd.read_parquet(p)) for p in logged()) == len(rows), 60)
    return logged()


def monitor_log(stack: Stack, log: Path, tmp_path: Path, name: str) -> float:
    """`mtlops monitor` on the month the log holds, as a user runs it; returns when it began."""
    from typer.testing import CliRunner

    from pipelines.cli.main import app

    window, began = f"{pd.Timestamp.now(tz='UTC'):%Y-%m}", time.time()
    result = CliRunner().invoke(app, ["monitor", "--config", str(stack.config), "--window", window, "--log", str(log),
                                      "--out", str(tmp_path / name), "--workspace", str(tmp_path / "ws"),
                                      "--alert-log", str(tmp_path / "alerts.jsonl"), "--sample-size", "10000"])
    assert result.exit_code == 0, result.output
    return began


def test_prometheus_scrapes_the_endpoint_and_the_monitor_and_fires_the_data_alert_naming_the_column(
        stack: Stack, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A clean month served and monitored leaves MtlopsDataAlert inactive; the same month with `temp`
    in °C at EWR (an upstream unit bug) makes it pending/firing in Prometheus' /api/v1/alerts with
    the column and the airport as its labels. Every rule and dashboard query runs against this
    Prometheus; the dashboard's picture is drawn from its answers."""
    from monitoring.grafana import PANELS, plot_panels
    from tests.test_monitoring import celsius_at

    rows: pd.DataFrame = request.getfixturevalue("unseen_jan_apr")
    started = time.time()
    clean_log = tmp_path / "clean-log"
    for part in serve_window(stack, rows):
        (clean_log / part.parent.name).mkdir(parents=True, exist_ok=True)
        part.rename(clean_log / part.parent.name / part.name)
    began = monitor_log(stack, clean_log, tmp_path, "clean")
    assert wait_until(lambda: stack.query(f"mtlops_monitor_last_run_timestamp_seconds >= {began}"), 60)
    scraped = time.time()
    assert wait_until(lambda: stack.evaluated_since(scraped), 30)  # the rules saw the clean run
    assert stack.query("mtlops_monitor_data_alert") and stack.query("mtlops_monitor_data_alert == 1") == []
    assert stack.alerts("MtlopsDataAlert") == []

    serve_window(stack, celsius_at(rows, "EWR"))
    monitor_log(stack, stack.log, tmp_path, "broken")
    assert wait_until(lambda: stack.alerts("MtlopsDataAlert"), 60), stack.query("mtlops_monitor_data_alert_reason")
    (alert,) = [a for a in stack.alerts("MtlopsDataAlert") if a["labels"]["feature"] == "temp"]
    assert alert["state"] in ("pending", "firing")
    assert {k: alert["labels"][k] for k in ("segment_column", "segment", "check", "alert_kind")} == \
        {"segment_column": "origin", "segment": "EWR", "check": "shift", "alert_kind": "data"}
    assert "temp broken (shift) in origin=EWR" in alert["annotations"]["summary"]

    # the endpoint as Prometheus sees it: traffic, latency, workers, model version, and a clean exposition
    assert stack.query('mtlops:predict_requests:rate5m > 0') and stack.query("mtlops:predict_latency_seconds:p99_5m")
    assert [float(s["value"][1]) for s in stack.query(f'sum(mtlops_workers_ready{{job="{SERVING_JOB}"}})')] == [2.0]
    assert stack.query(f'mtlops_model_info{{job="{SERVING_JOB}"}} == 1')
    exposition = httpx.get(stack.server.url + "/metrics", timeout=10).text
    proc = subprocess.run([shutil.which("promtool") or "promtool", "check", "metrics"], input=exposition,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr
    for group in rule_groups(stack.cfg):  # every rule's expression and every dashboard query runs here
        for rule in group["rules"]:
            stack.query(rule["expr"])
    drawn = plot_panels(stack.prometheus.url, started, time.time(), tmp_path / "dashboard.png")
    assert set(drawn) == {p.title for p in PANELS}
    for title in ("Requests by route", "/predict latency", "Rows per ONNX call (mean)", "Workers",
                  "Prediction log disk free", "Prediction log parts (compaction merges each hour's)",
                  "Feature drift score", "Broken columns (data alert reasons)", "Alerts of the latest window"):
        assert drawn[title] > 0, (title, drawn)
    assert (tmp_path / "dashboard.png").stat().st_size > 20_000
