"""The alert policy: rules, cool-down in data time, the JSONL log, and a real webhook receiver."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import pytest
from pydantic import BaseModel

from components.config.schema import AlertPolicy, ConfigError, ProjectConfig
from monitoring.alerts import ALERT_RULES, DATA, POLICY_SETTINGS, data_reasons, decide, read_alerts, reasons_to_alert
from tests.conftest import FLIGHTS, ROOT, config_with


@dataclass
class Report:
    """The fields of a monitor run the policy reads (monitoring.drift.MonitorSummary has them all)."""

    window: str = "2013-07"
    rows_current: int = 10_000
    drift_share: float = 0.0
    drifted_features: list[str] = field(default_factory=list)
    drifted_predictions: list[str] = field(default_factory=list)
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    estimated: dict[str, float] = field(default_factory=dict)
    estimated_reference: dict[str, float] = field(default_factory=dict)
    estimate_checks: dict[str, dict] = field(default_factory=dict)
    data_findings: list[dict] = field(default_factory=list)
    duplicate_share: float = 0.0
    duplicate_share_reference: float = 0.0
    model_version: str = "flights-mtl:v1"


POLICY = {"drift_share": 0.4, "features": ["distance", "carrier"], "prediction_drift": ["arr_delayed"],
          "metric_drop": {"arr_delayed": 0.03}, "cooldown_days": 45, "min_rows": 1000, "action": "retrain"}


def test_each_rule_alerts_and_a_quiet_window_does_not() -> None:
    cfg = config_with(FLIGHTS, alerts=POLICY)
    assert reasons_to_alert(cfg, Report(drift_share=0.2, drifted_features=["temp"])) == []
    assert "drift share 50% >= 40%" in reasons_to_alert(cfg, Report(drift_share=0.5))[0]
    assert "distance" in reasons_to_alert(cfg, Report(drifted_features=["distance", "temp"]))[0]
    assert "arr_delayed" in reasons_to_alert(cfg, Report(drifted_predictions=["arr_delayed", "dep_delay"]))[0]
    assert reasons_to_alert(cfg, Report(drifted_predictions=["dep_delay"])) == []
    dropped = Report(quality={"arr_delayed": {"reference": 0.72, "current": 0.68}})
    assert "roc_auc 0.7200 -> 0.6800" in reasons_to_alert(cfg, dropped)[0]
    held = Report(quality={"arr_delayed": {"reference": 0.72, "current": 0.71}})
    assert reasons_to_alert(cfg, held) == []
    assert reasons_to_alert(cfg, Report(rows_current=999, drift_share=1.0)) == []  # too few rows to judge


def test_defaults_watch_every_task_and_every_non_context_feature() -> None:
    """The default policy: each task's predictions, each feature but the context ones, each task's
    metric vs the champion's (its own tolerance) and vs the trivial baseline on the same rows."""
    cfg = config_with(FLIGHTS, alerts={"min_rows": 1000}, monitoring={"context_features": ["temp"]})
    assert "dep_delay" in reasons_to_alert(cfg, Report(drifted_predictions=["dep_delay"]))[0]
    assert reasons_to_alert(cfg, Report(drifted_features=["temp"])) == []  # context: shown, not alerting
    assert "distance" in reasons_to_alert(cfg, Report(drifted_features=["distance", "temp"]))[0]
    assert cfg.alert_tolerance("air_time") == 0.10  # the task's tolerance
    assert cfg.alert_tolerance("arr_delayed") == 0.03 and cfg.alert_tolerance("cancelled") == 0.05  # metric_drop; task
    worse = Report(quality={"air_time": {"reference": 10.3, "current": 11.5, "baseline": 70.0}})
    assert reasons_to_alert(cfg, worse) == ["air_time mae 10.3000 -> 11.5000 (-11.7%, alert at -10%)"]
    held = Report(quality={"air_time": {"reference": 10.3, "current": 11.0, "baseline": 70.0}})
    assert reasons_to_alert(cfg, held) == []
    # Sep-Nov on dep_delay: better than the champion's June MAE, worse than the constant median
    useless = Report(quality={"dep_delay": {"reference": 23.9, "current": 20.0, "baseline": 19.5}})
    assert reasons_to_alert(cfg, useless) == ["dep_delay mae 20.0000 is no better than the trivial baseline's "
                                              "19.5000 on the same window"]


def test_a_drop_past_the_tolerance_alerts_only_when_the_one_sided_bootstrap_test_rejects_it_being_noise() -> None:
    """The metric rule is a stated test: H0 "the window's metric is within the task's tolerance of the
    champion's", one-sided bootstrap p-value (`quality.p_value`: the share of resamples within it),
    rejected at `monitoring.quality_confidence` (0.95), and the point drop past the tolerance. A drop
    whose resamples often come back within the tolerance (a small window) does not alert; a point value
    within the tolerance never does."""
    cfg = config_with(FLIGHTS, alerts=POLICY)
    noisy = Report(quality={"arr_delayed": {"reference": 0.72, "current": 0.69, "p_value": 0.12}})
    assert reasons_to_alert(cfg, noisy) == []
    pinned = Report(quality={"arr_delayed": {"reference": 0.72, "current": 0.69, "p_value": 0.005}})
    assert reasons_to_alert(cfg, pinned) == ["arr_delayed roc_auc 0.7200 -> 0.6900 (-4.2%, alert at -3%; one-sided "
                                             "bootstrap p=0.005 <= 0.05)"]
    within = Report(quality={"arr_delayed": {"reference": 0.72, "current": 0.71, "p_value": 0.005}})
    assert reasons_to_alert(cfg, within) == []
    # MAE: lower is better; the p-value is the share of resamples with an MAE at most the champion's
    mae = Report(quality={"air_time": {"reference": 10.0, "current": 12.0, "p_value": 0.2}})
    assert reasons_to_alert(cfg, mae) == []
    point = config_with(FLIGHTS, alerts=POLICY, monitoring={"quality_confidence": 0})  # 0: the point value decides
    assert reasons_to_alert(point, noisy) == ["arr_delayed roc_auc 0.7200 -> 0.6900 (-4.2%, alert at -3%)"]


def test_a_data_alert_names_the_column_and_segment_and_never_retrains(tmp_path: Path) -> None:
    """Broken input is a data alert: logged with its kind, no retraining even under `action: retrain`, and
    its own cool-down, so the next model alert still retrains."""
    cfg = config_with(FLIGHTS, alerts=POLICY)
    finding = {"feature": "temp", "segment_column": "origin", "segment": "EWR", "check": "shift", "score": 2.6,
               "threshold": 0.5}
    broken = Report(data_findings=[finding], drifted_features=["distance"])
    log = tmp_path / "alerts.jsonl"
    alert = decide(cfg, broken, pd.Timestamp("2013-08-01"), log)
    assert alert.kind == "data" and alert.acts and not alert.retrains
    assert alert.data_reasons == ["data: temp in origin=EWR: shifted against the other segments (2.60 >= 0.50)"]
    assert alert.reasons == ["watched features drifted: distance"]  # logged beside, as what the break may cause
    duplicated = Report(window="2013-08", duplicate_share=0.05, duplicate_share_reference=0.001)
    assert decide(cfg, duplicated, pd.Timestamp("2013-09-01"), log).data_reasons == [
        "data: duplicated records 5.0% of the window (reference 0.1%, alert at +2%)"]
    model = decide(cfg, Report(window="2013-09", drift_share=0.9), pd.Timestamp("2013-10-01"), log)
    assert model.kind == "model" and model.retrains  # the data alerts' cool-down is theirs alone
    assert [(a.kind, a.suppressed) for a in read_alerts(log)] == [("data", False), ("data", True), ("model", False)]
    assert data_reasons(cfg, Report(rows_current=999, data_findings=[finding])) == []
    surge = {**finding, "feature": "tailnum", "segment_column": "", "segment": "", "check": "nulls", "score": 0.49,
             "threshold": 0.3}
    assert data_reasons(cfg, Report(data_findings=[surge])) == [
        "data: tailnum: null share grew by 0.49 in the whole window (>= 0.30)"]


def test_an_estimate_whose_check_fails_does_not_count_as_known_quality() -> None:
    """An estimate in doubt neither alerts on its own drop nor silences the task's prediction drift."""
    cfg = config_with(FLIGHTS, alerts={"min_rows": 1000})
    doubt = {"dep_delay": {"holds": False, "doubts": ["60% of the rows have inputs outside the reference's range"]}}
    drops = Report(estimated={"dep_delay": 25.0}, estimated_reference={"dep_delay": 16.0}, estimate_checks=doubt)
    assert reasons_to_alert(cfg, drops) == []
    holds = Report(drifted_predictions=["dep_delay"], estimated={"dep_delay": 16.2},
                   estimated_reference={"dep_delay": 16.0})
    assert reasons_to_alert(cfg, holds) == []
    assert reasons_to_alert(cfg, replace(holds, estimate_checks=doubt)) == ["predictions drifted: dep_delay"]


def test_prediction_drift_alerts_only_while_the_tasks_quality_is_not_known_to_hold() -> None:
    """June, the champion's own test month: summer moves the delay predictions past their calibrated
    threshold while ROC-AUC stays where it was. Known-good quality (realized, or estimated before the
    labels) silences the task's prediction drift; an estimated drop alerts before the labels arrive."""
    cfg = config_with(FLIGHTS, alerts={"min_rows": 1000})
    drifted = {"drifted_predictions": ["arr_delayed", "dep_delay"]}
    realized_holds = Report(**drifted, quality={"arr_delayed": {"reference": 0.72, "current": 0.72, "baseline": 0.5}})
    assert reasons_to_alert(cfg, realized_holds) == ["predictions drifted: dep_delay"]  # dep_delay: not judged
    estimate_holds = Report(**drifted, estimated={"arr_delayed": 0.76, "dep_delay": 21.7},
                            estimated_reference={"arr_delayed": 0.75, "dep_delay": 21.0})
    assert reasons_to_alert(cfg, estimate_holds) == []
    estimate_drops = Report(**drifted, estimated={"arr_delayed": 0.70, "dep_delay": 21.7},
                            estimated_reference={"arr_delayed": 0.75, "dep_delay": 21.0})
    assert reasons_to_alert(cfg, estimate_drops) == [
        "predictions drifted: arr_delayed",
        "arr_delayed roc_auc estimated 0.7500 -> 0.7000 (-6.7%, alert at -3%; labels not yet known)"]


def test_cooldown_in_data_time_and_webhook_only_for_acting_alerts(tmp_path: Path,
                                                                  receiver: tuple[str, list[dict]]) -> None:
    url, got = receiver
    cfg = config_with(FLIGHTS, alerts={**POLICY, "webhook": url})
    log = tmp_path / "alerts.jsonl"
    shifted = Report(drift_share=0.9)
    first = decide(cfg, shifted, pd.Timestamp("2013-08-01"), log)
    second = decide(cfg, Report(window="2013-08", drift_share=0.9), pd.Timestamp("2013-09-01"), log)
    quiet = decide(cfg, Report(window="2013-09"), pd.Timestamp("2013-10-01"), log)
    third = decide(cfg, Report(window="2013-10", drift_share=0.9), pd.Timestamp("2013-11-01"), log)
    assert first.acts and first.webhook_status == "204" and first.action == "retrain"
    assert second.suppressed and second.webhook_status is None  # 31 days after the first: inside 45
    assert quiet is None
    assert third.acts  # 92 days after the first
    assert [a["window"] for a in got] == ["2013-07", "2013-10"]
    assert got[0]["source"] == "mtlops" and got[0]["reasons"] == first.reasons
    assert [(a.window, a.suppressed) for a in read_alerts(log)] == [("2013-07", False), ("2013-08", True),
                                                                   ("2013-10", False)]


def test_a_receiver_that_is_down_does_not_stop_monitoring(tmp_path: Path) -> None:
    cfg = config_with(FLIGHTS, alerts={**POLICY, "webhook": "http://127.0.0.1:9/nothing-listens"})
    alert = decide(cfg, Report(drift_share=1.0), pd.Timestamp("2013-08-01"), tmp_path / "alerts.jsonl")
    assert alert.acts and alert.webhook_status.startswith("error: ConnectError")
    assert len(read_alerts(tmp_path / "alerts.jsonl")) == 1


@pytest.mark.parametrize(("alerts", "field_name"), [
    ({"features": ["no_such_feature"]}, "alerts.features"),
    ({"metric_drop": {"arr_delayed": 1.5}}, "alerts.metric_drop"),
    ({"metric_drop": {"nope": 0.1}}, "alerts.metric_drop names unknown tasks"),
    ({"prediction_drift": ["nope"]}, "alerts.prediction_drift names unknown tasks"),
    ({"min_rows": 0}, "alerts.min_rows"),
    ({"drift_share": 1.5}, "alerts.drift_share"),
    ({"no_such_rule": 1}, "alerts.no_such_rule"),
    ({"action": "page-someone"}, "alerts.action"),
    ({"webhook": "ftp://x"}, "alerts.webhook"),
    ({"cooldown_days": -1}, "alerts.cooldown_days"),
    ({"below_baseline": "sometimes"}, "alerts.below_baseline"),
])
def test_bad_policy_is_a_config_error_naming_the_field(alerts: dict, field_name: str) -> None:
    with pytest.raises(ConfigError, match=field_name.replace(".", r"\.")):
        config_with(FLIGHTS, alerts=alerts)


@pytest.mark.parametrize(("monitoring", "field_name"), [
    ({"context_features": ["no_such_feature"]}, "monitoring.context_features"),
    ({"calibration_quantile": 1.0}, "monitoring.calibration_quantile"),
    ({"calibration_blocks": 1}, "monitoring.calibration_blocks"),
    ({"calibration_draws": 2}, "monitoring.calibration_draws"),
    ({"quality_confidence": 1.0}, "monitoring.quality_confidence"),
    ({"quality_draws": 1}, "monitoring.quality_draws"),
    ({"segments": ["temp"]}, "monitoring.segments names no categorical feature"),
    ({"segments": ["no_such_feature"]}, "monitoring.segments names no categorical feature"),
    ({"segment_min_rows": 5}, "monitoring.segment_min_rows"),
    ({"segment_shift": 0}, "monitoring.segment_shift"),
    ({"segment_null_share": 1.5}, "monitoring.segment_null_share"),
    ({"duplicate_share": 0}, "monitoring.duplicate_share"),
    ({"null_share": 2}, "monitoring.null_share"),
    ({"estimate_max_outside": 0}, "monitoring.estimate_max_outside"),
])
def test_bad_calibration_settings_are_config_errors_naming_the_field(monitoring: dict, field_name: str) -> None:
    with pytest.raises(ConfigError, match=field_name.replace(".", r"\.")):
        config_with(FLIGHTS, monitoring=monitoring)


FINDING = {"feature": "temp", "segment_column": "origin", "segment": "EWR", "check": "shift", "score": 2.6,
           "threshold": 0.5}
# per registered rule: a window that breaks it and no other rule under POLICY (a new rule fails until it has one)
BREAKS_ALONE = {
    "segment_checks": Report(data_findings=[FINDING]),
    "duplicated_records": Report(duplicate_share=0.05, duplicate_share_reference=0.001),
    "drift_share": Report(drift_share=0.5),
    "watched_features": Report(drifted_features=["distance"]),
    "prediction_drift": Report(drifted_predictions=["arr_delayed"]),
    "realized_quality": Report(quality={"arr_delayed": {"reference": 0.72, "current": 0.68}}),
    "estimated_quality": Report(estimated={"arr_delayed": 0.70}, estimated_reference={"arr_delayed": 0.75}),
}


@pytest.mark.parametrize("name", ALERT_RULES)
def test_every_rule_alerts_alone_on_a_window_that_breaks_it_and_never_under_min_rows(name: str) -> None:
    cfg = config_with(FLIGHTS, alerts=POLICY)
    window = BREAKS_ALONE[name]
    found = {rule.name: rule.reasons(cfg, window) for rule in ALERT_RULES.values()}
    assert found.pop(name) and not any(found.values()), found
    of_its_kind = data_reasons if ALERT_RULES[name].kind == DATA else reasons_to_alert
    assert of_its_kind(cfg, window) == ALERT_RULES[name].reasons(cfg, window)
    small = replace(window, rows_current=POLICY["min_rows"] - 1)
    assert data_reasons(cfg, small) == [] and reasons_to_alert(cfg, small) == []


def _field(path: str) -> object:
    """The config field at `path` (`alerts.drift_share`, `tasks.tolerance`: through lists), or KeyError."""
    model: type[BaseModel] = ProjectConfig
    *parents, last = path.split(".")
    for name in parents:
        annotation = model.model_fields[name].annotation
        model = next(a for a in (annotation, *typing.get_args(annotation))
                     if isinstance(a, type) and issubclass(a, BaseModel))
    return model.model_fields[last]


@pytest.mark.parametrize("name", ALERT_RULES)
def test_every_rule_names_config_fields_that_exist(name: str) -> None:
    for path in ALERT_RULES[name].settings:
        assert _field(path) is not None, path


def test_every_alerts_setting_belongs_to_a_rule_or_to_the_policy() -> None:
    """A field of `alerts:` that no rule and not the policy reads would validate and silently do nothing."""
    owned = {path for rule in ALERT_RULES.values() for path in rule.settings} | set(POLICY_SETTINGS)
    assert {f"alerts.{f}" for f in AlertPolicy.model_fields} == {p for p in owned if p.startswith("alerts.")}


@pytest.mark.parametrize("name", ALERT_RULES)
def test_the_docs_list_every_rule_with_its_kind_and_settings(name: str) -> None:
    docs = (ROOT / "docs" / "monitoring.md").read_text()
    row = next((line for line in docs.splitlines() if line.startswith(f"| `{name}` |")), None)
    assert row is not None, f"docs/monitoring.md, 'The rules': no row for `{name}`"
    rule = ALERT_RULES[name]
    assert f"| {rule.kind} |" in row and all(f"`{path}`" in row for path in rule.settings), row


class NightFlights:
    """A rule written for this test: the window holds too few rows for the night (an example of a new rule)."""

    name, kind, settings = "night_flights", "model", ("alerts.min_rows",)

    def reasons(self, cfg: object, report: Report) -> list[str]:
        return ["night flights: too few"] if report.window.endswith("-night") else []


def test_a_new_rule_is_one_class_and_its_registry_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Registered, a rule is applied, logged and acted on with nothing else changed; until the docs list it,
    the docs-coverage test fails for it."""
    monkeypatch.setitem(ALERT_RULES, NightFlights.name, NightFlights())
    cfg = config_with(FLIGHTS, alerts=POLICY)
    night = Report(window="2013-07-night")
    assert reasons_to_alert(cfg, night) == ["night flights: too few"]
    alert = decide(cfg, night, pd.Timestamp("2013-08-01"), tmp_path / "alerts.jsonl")
    assert alert.retrains and read_alerts(tmp_path / "alerts.jsonl")[0].reasons == ["night flights: too few"]
    with pytest.raises(AssertionError, match="no row for `night_flights`"):
        test_the_docs_list_every_rule_with_its_kind_and_settings(NightFlights.name)


def test_the_monitoring_pipelines_steps_run_as_plain_functions(tmp_path: Path) -> None:
    """What the monitoring pipeline's steps do besides calling the library, tested without kfp: the
    argument checks (before any work) and the policy's one-word answer that the `dsl.If` reads."""
    from monitoring.windows import monitor_step, policy_step
    from tests.test_prometheus import summary

    cfg = config_with(FLIGHTS)
    with pytest.raises(ValueError, match="name the window"):
        monitor_step(cfg, tmp_path, data_root=str(tmp_path))
    with pytest.raises(ValueError, match="the window's source"):
        monitor_step(cfg, tmp_path, window="2013-07")
    where = {"alert_log": str(tmp_path / "alerts.jsonl"), "workspace": str(tmp_path / "workspace")}
    assert policy_step(cfg, summary("2013-06", broken=True), data_root="/data", **where) == "alert"  # data: no retrain
    assert policy_step(cfg, summary("2013-07", broken=False), data_root="/data", **where) == "retrain"
    assert policy_step(cfg, summary("2013-08", broken=False), data_root="/data", **where) == "suppressed"
    assert policy_step(cfg, summary("2013-12", broken=False), **where) == "alert"  # no data to retrain on
    assert len(read_alerts(tmp_path / "alerts.jsonl")) == 4
