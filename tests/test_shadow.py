"""Shadow scoring on the live server: the registry's shadow version scores the same requests as the
champion, its outputs only logged; the answers are those of champion-only serving, byte for byte;
a shadow that cannot be loaded costs no request and is counted."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pandas as pd
import pytest

from components.artifacts import registry
from components.artifacts.inference import OnnxModel
from components.artifacts.predictions import SHADOW_LOG_FOLDER, read_prediction_log, score_frame
from components.config.schema import CanarySpec, config_to_yaml
from components.data.tables import label_column
from monitoring.shadow import compare
from serving.canary import CanaryGuard
from serving.launch import PROJECT, ServerProcess
from tests.test_serving import TOKEN, Champion, _records, _register_copy, train_champion


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return train_champion(tmp_path_factory.mktemp("shadow"), "shadow-test")


def _start(champion: Champion, root: Path, share: float) -> ServerProcess:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(config_to_yaml(champion.cfg))
    process = ServerProcess(root / "config.yaml", root / "server.out", prediction_log=root / "predictions",
                            workers=2, env={"MTLOPS_ADMIN_TOKEN": TOKEN, "MTLOPS_LOG_FLUSH_SECONDS": "0.2",
                                            "MTLOPS_ORT_THREADS": "1", "MTLOPS_SHADOW_SHARE": str(share)})
    process.wait_ready()
    return process


@pytest.fixture(scope="module")
def shadowed(champion: Champion, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    """A server scoring a registered copy of the champion as its shadow."""
    shadow = _register_copy(champion, tmp_path_factory.mktemp("copies"))
    registry.start_shadow(champion.cfg.registry.model_name, shadow)
    process = _start(champion, tmp_path_factory.mktemp("shadowed"), share=1.0)
    yield process, shadow
    process.stop()


def _metric(url: str, name: str) -> float:
    """A metric's value summed over its label sets (0 when it has none yet)."""
    lines = httpx.get(url + "/metrics", timeout=10).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.startswith((name + "{", name + " ")))


def _predict(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/predict", content=json.dumps(body), headers={"content-type": "application/json"},
                      timeout=60)


def _without_request_id(r: httpx.Response) -> bytes:
    body = r.json()
    return r.content.replace(body["request_id"].encode(), b"")


def test_shadow_answers_nobody_and_logs_both_versions(champion: Champion, shadowed: tuple[ServerProcess, str],
                                                       tmp_path: Path) -> None:
    server, shadow = shadowed
    assert httpx.get(server.url + "/model", timeout=10).json()["shadow"] == {"model_version": shadow, "share": 1.0}
    bodies = [{"records": _records(champion.test.iloc[i:i + n], champion.cfg)} for i, n in ((0, 1), (5, 17), (40, 64))]
    with_shadow = [_predict(server.url, b) for b in bodies]
    assert all(r.status_code == 200 and r.json()["model_version"] == champion.tag for r in with_shadow)
    alone = _start(champion, tmp_path / "alone", share=0.0)  # the same champion, nothing shadowed
    try:
        assert httpx.get(alone.url + "/model", timeout=10).json()["shadow"] is None
        assert [_without_request_id(r) for r in with_shadow] == \
            [_without_request_id(_predict(alone.url, b)) for b in bodies]
    finally:
        alone.stop()
    ids = {r.json()["request_id"] for r in with_shadow}
    log_dir = server.output.parent / "predictions"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        shadow_rows = read_prediction_log(log_dir / SHADOW_LOG_FOLDER)
        if len(shadow_rows) and ids <= set(shadow_rows["request_id"]):
            break
    champion_rows = read_prediction_log(log_dir)
    champion_rows = champion_rows[champion_rows["request_id"].isin(ids)]
    shadow_rows = shadow_rows[shadow_rows["request_id"].isin(ids)]
    assert set(shadow_rows["model_version"]) == {shadow} and set(champion_rows["model_version"]) == {champion.tag}
    assert len(shadow_rows) == len(champion_rows) == 1 + 17 + 64
    paired = champion_rows.merge(shadow_rows, on=["request_id", "record_index"], suffixes=("", "_shadow"))
    assert len(paired) == len(champion_rows)
    assert (paired["sales__value"] - paired["sales__value_shadow"]).abs().max() < 1e-4  # a copy: same outputs
    assert _metric(server.url, "mtlops_shadow_records_total") >= 1 + 17 + 64


def test_the_paired_test_tells_a_worse_shadow_from_an_equal_one(champion: Champion) -> None:
    """Offline frames in the log's format: the shadow equals the champion on two tasks and predicts
    `sales` with a large error on the third; the paired bootstrap says which is which."""
    rows = champion.test.reset_index(drop=True)
    scored = score_frame(OnnxModel(champion.export_dir), rows, champion.tag)
    for t in champion.cfg.tasks:
        scored[label_column(t.name)] = rows[label_column(t.name)].to_numpy()
    worse = scored.assign(model_version="worse")
    worse["sales__value"] = worse["sales__value"] + rows[label_column("sales")].std()
    result = compare(champion.cfg, scored, worse, confidence=0.95, draws=300)
    by_task = {t.task: t for t in result.tasks}
    assert by_task["sales"].verdict == "worse" and by_task["sales"].change_high < -by_task["sales"].tolerance
    assert by_task["sales"].mean_abs_difference == pytest.approx(rows[label_column("sales")].std(), rel=1e-3)
    assert by_task["price_band"].verdict == by_task["busy_month"].verdict == "not worse"
    assert by_task["price_band"].label_flip_rate == by_task["busy_month"].label_flip_rate == 0.0
    assert not result.shadow_not_worse and result.shadow_version == "worse"
    same = compare(champion.cfg, scored, scored, draws=100)
    assert same.shadow_not_worse


def test_shadow_report_and_decision_on_the_live_log_with_labels(champion: Champion,
                                                                shadowed: tuple[ServerProcess, str],
                                                                tmp_path: Path) -> None:
    """`mtlops shadow report` pairs the live log with labels; `mtlops shadow decide` waits for enough
    labelled records; the shadow pipeline (through kfp.local) then promotes the shadow (a copy: not worse
    on any task) with its evidence."""
    from kfp import local

    from pipelines.shadow import build_shadow_pipeline

    server, shadow = shadowed
    rows = champion.test.head(30).reset_index(drop=True)
    r = _predict(server.url, {"records": _records(rows, champion.cfg)})
    labels = pd.DataFrame({"request_id": r.json()["request_id"], "record_index": np.arange(len(rows))})
    for t in champion.cfg.tasks:
        labels[label_column(t.name)] = rows[label_column(t.name)].to_numpy()
    labels.to_csv(tmp_path / "labels.csv", index=False)
    (tmp_path / "config.yaml").write_text(config_to_yaml(champion.cfg))
    log_dir = server.output.parent / "predictions"
    deadline = time.monotonic() + 30
    report: dict = {}
    while time.monotonic() < deadline:
        out = subprocess.run([sys.executable, "-m", "pipelines.cli", "shadow", "report", "--config",
                              str(tmp_path / "config.yaml"), "--log", str(log_dir), "--labels-file",
                              str(tmp_path / "labels.csv"), "--json"], capture_output=True, text=True, cwd=PROJECT)
        if out.returncode == 0:
            report = json.loads(out.stdout)
            if all(t["labelled"] >= len(rows) for t in report["tasks"]):
                break
        time.sleep(0.5)
    assert report, out.stderr
    assert {t["task"] for t in report["tasks"]} == {t.name for t in champion.cfg.tasks}
    for t in report["tasks"]:
        assert t["labelled"] == len(rows) and t["verdict"] == "not worse"  # the shadow is a copy

    def decide(min_labelled: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipelines.cli", "shadow", "decide", "--config",
                               str(tmp_path / "config.yaml"), "--log", str(log_dir), "--labels-file",
                               str(tmp_path / "labels.csv"), "--min-labelled", str(min_labelled)],
                              capture_output=True, text=True, cwd=PROJECT)

    name = champion.cfg.registry.model_name
    waiting = decide(len(rows) + 1)
    assert waiting.returncode == 3 and "too few labelled records" in waiting.stdout, waiting.stdout + waiting.stderr
    assert str(registry.champion(name).tag) == champion.tag
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True)
    decided = build_shadow_pipeline()(config_yaml=config_to_yaml(champion.cfg), prediction_log=str(log_dir),
                                      labels_file=str(tmp_path / "labels.csv"), min_labelled=len(rows))
    assert decided.output == "promoted"
    promoted = registry.champion(name)
    assert str(promoted.tag) == shadow and registry.shadow(name) is None
    assert {t["verdict"] for t in promoted.info.metadata["shadow_decision"]["tasks"]} == {"not worse"}


def test_a_broken_shadow_costs_no_request_and_is_counted(champion: Champion, shadowed: tuple[ServerProcess, str],
                                                         tmp_path: Path) -> None:
    server, _ = shadowed
    broken = _register_copy(champion, tmp_path, edit="corrupt")
    registry.start_shadow(champion.cfg.registry.model_name, broken)
    body = {"records": _records(champion.test.head(8), champion.cfg)}
    failed, stop = [], threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = _predict(server.url, body)
            if r.status_code != 200:
                failed.append(r.status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        r = httpx.post(server.url + "/admin/reload", headers={"authorization": f"Bearer {TOKEN}"}, timeout=120)
    finally:
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
    assert r.status_code == 200 and r.json()["shadow"] is None, r.text
    assert failed == []
    assert httpx.get(server.url + "/model", timeout=10).json()["shadow"] is None
    assert _metric(server.url, "mtlops_shadow_load_failures_total") >= 1
    assert "shadow " + broken in server.output.read_text() and "is not scored" in server.output.read_text()


def test_a_retrained_shadow_scores_records_on_its_own_scales_and_vocabularies(
        champion: Champion, shadowed: tuple[ServerProcess, str], tmp_path: Path) -> None:
    """A retrained version has its own standardisation and vocabularies: the shadow's logged outputs are
    what the shadow gives offline for the same records, not the champion's encoding fed to its graph."""
    server, _ = shadowed
    rescaled = _register_copy(champion, tmp_path, edit="rescaled")
    registry.start_shadow(champion.cfg.registry.model_name, rescaled)
    r = httpx.post(server.url + "/admin/reload", headers={"authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status_code == 200 and r.json()["shadow"] == rescaled, r.text
    rows = champion.test.head(20).reset_index(drop=True)
    answer = _predict(server.url, {"records": _records(rows, champion.cfg)}).json()
    log_dir = server.output.parent / "predictions"
    deadline, logged = time.monotonic() + 30, pd.DataFrame()
    while time.monotonic() < deadline and len(logged) < len(rows):
        time.sleep(0.5)
        logged = read_prediction_log(log_dir / SHADOW_LOG_FOLDER)
        logged = logged[logged["request_id"] == answer["request_id"]].sort_values("record_index")
    assert set(logged["model_version"]) == {rescaled} and len(logged) == len(rows)
    offline = score_frame(OnnxModel(tmp_path / "copy-rescaled"), rows, rescaled)
    champion_offline = score_frame(OnnxModel(champion.export_dir), rows, champion.tag)
    for column in ("sales__value", "busy_month__proba"):
        assert np.abs(logged[column].to_numpy() - offline[column].to_numpy()).max() < 1e-3, column
        assert np.abs(offline[column].to_numpy() - champion_offline[column].to_numpy()).max() > 1e-2  # it differs


def test_the_canary_budget_rolls_back_on_errors_or_latency_only_once_it_has_seen_enough() -> None:
    guard = CanaryGuard(CanarySpec(share=0.5, max_error_ratio=0.1, max_latency_ratio=2.0, min_requests=10))
    for _ in range(10):
        guard.champion_answered(0.001)
    assert all(guard.canary_answered(False, 0.001) is None for _ in range(9))  # 9 errors: not judged yet
    assert "error ratio 100.0%" in guard.canary_answered(False, 0.001)  # type: ignore[operator]
    guard = CanaryGuard(CanarySpec(share=0.5, max_error_ratio=0.1, max_latency_ratio=2.0, min_requests=10))
    for _ in range(10):
        guard.champion_answered(0.001)
    assert [guard.canary_answered(True, 0.0019) for _ in range(10)] == [None] * 10  # 1.9x: within budget
    assert guard.canary_answered(True, 0.001) is None and guard.canary_answered(False, 0.001) is None  # 10 % errors
    slow = CanaryGuard(CanarySpec(share=0.5, max_latency_ratio=2.0, min_requests=10))
    slow.champion_answered(0.001)
    reasons = [slow.canary_answered(True, 0.003) for _ in range(10)]
    assert reasons[:9] == [None] * 9 and "3.0x the champion's" in reasons[9]  # type: ignore[operator]
    assert not CanaryGuard(CanarySpec(share=0.0)).wants()


@pytest.mark.parametrize("latency_budget", [100.0, 0.001])
def test_a_canary_answers_its_share_and_rolls_back_on_its_own_past_its_budget(champion: Champion, tmp_path: Path,
                                                                             latency_budget: float) -> None:
    """The shadow version answers about half the requests; with a latency budget it cannot meet (0.001x the
    champion) the server stops the canary by itself after 20 canary requests, in every worker, and says so."""
    name = champion.cfg.registry.model_name
    registry.promote(name, champion.tag)
    canary = _register_copy(champion, tmp_path)
    registry.start_shadow(name, canary)
    (tmp_path / "config.yaml").write_text(config_to_yaml(champion.cfg))
    server = ServerProcess(tmp_path / "config.yaml", tmp_path / "server.out", prediction_log=tmp_path / "predictions",
                           workers=2, env={"MTLOPS_ORT_THREADS": "1", "MTLOPS_SHADOW_SHARE": "0",
                                           "MTLOPS_CANARY_SHARE": "0.5", "MTLOPS_CANARY_MIN_REQUESTS": "20",
                                           "MTLOPS_CANARY_MAX_LATENCY_RATIO": str(latency_budget)})
    server.wait_ready()
    try:
        body = {"records": _records(champion.test.head(3), champion.cfg)}
        answered_by = [_predict(server.url, body).json()["model_version"] for _ in range(120)]
        assert set(answered_by) == {champion.tag, canary}
        info = httpx.get(server.url + "/model", timeout=10).json()["canary"]
        assert info["model_version"] == canary and info["share"] == 0.5
        if latency_budget > 1:
            assert not info["rolled_back"] and _metric(server.url, "mtlops_canary_rollbacks_total") == 0
            assert _metric(server.url, "mtlops_canary_active") == 1
            return
        time.sleep(1)  # the other worker reads the rollback within a poll
        assert {_predict(server.url, body).json()["model_version"] for _ in range(30)} == {champion.tag}
        assert httpx.get(server.url + "/model", timeout=10).json()["canary"]["rolled_back"] is True
        assert _metric(server.url, "mtlops_canary_rollbacks_total") >= 1
        assert _metric(server.url, "mtlops_canary_active") == 0
        assert 20 <= _metric(server.url, "mtlops_canary_requests_total") < 120
        assert f"canary {canary} rolled back" in server.output.read_text()
    finally:
        server.stop()
        registry.stop_shadow(name)


def test_a_shadow_trained_on_broken_labels_is_rejected_on_live_labelled_records(champion: Champion,
                                                                              shadowed: tuple[ServerProcess, str],
                                                                              tmp_path: Path) -> None:
    """A challenger trained with its labels shuffled (an upstream join gone wrong) is scored as shadow on
    live requests; once their labels arrive, `decide` finds a task worse and rejects it: the champion
    stays, the version is `rejected` with its evidence."""
    from components.artifacts.export import export_onnx
    from components.data.tables import load_source, with_labels
    from components.training.train import train
    from monitoring.shadow import decide
    from tests.conftest import window

    server, _ = shadowed
    cfg, name = champion.cfg, champion.cfg.registry.model_name
    registry.promote(name, champion.tag)
    df = with_labels(load_source(cfg.data), cfg)
    rng = np.random.default_rng(0)
    broken = {}
    for split in ("train", "validation"):
        rows = window(df, cfg, split).reset_index(drop=True)
        for t in cfg.tasks:
            rows[label_column(t.name)] = rng.permutation(rows[label_column(t.name)].to_numpy())
        broken[split] = rows
    train(cfg, broken["train"], broken["validation"], tmp_path / "model", progress=False)
    export_onnx(tmp_path / "model", tmp_path / "onnx", champion.test)
    tag = registry.register(tmp_path / "onnx", cfg, {}, {"data_version": "shuffled labels"})
    registry.start_shadow(name, tag)
    r = httpx.post(server.url + "/admin/reload", headers={"authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status_code == 200 and r.json()["shadow"] == tag, r.text
    rows = champion.test.reset_index(drop=True)
    answer = _predict(server.url, {"records": _records(rows.head(64), champion.cfg)}).json()
    labels = pd.DataFrame({"request_id": answer["request_id"], "record_index": np.arange(64)})
    for t in cfg.tasks:
        labels[label_column(t.name)] = rows[label_column(t.name)].head(64).to_numpy()
    labels.to_csv(tmp_path / "labels.csv", index=False)
    log_dir = server.output.parent / "predictions"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.5)
        decision = decide(cfg, log_dir, tmp_path / "labels.csv", min_labelled=64)
        if decision.outcome != "undecided" or min((t.labelled for t in decision.comparison.tasks), default=0) >= 64:
            break
    assert decision.outcome == "rejected" and decision.tag == tag, decision
    assert str(registry.champion(name).tag) == champion.tag
    stored = bentoml.models.get(tag).info
    assert stored.labels["stage"] == "rejected"
    assert "worse" in {t["verdict"] for t in stored.metadata["shadow_decision"]["tasks"]}
