"""The BentoML service, started for real by `mtlops serve` on a loopback port.

One txhousing model (multiclass + regression + binary heads) is the champion; the
tests talk HTTP to the live server, promote new versions in the model store and
reload, and finally stop the server and read its prediction log.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import bentoml
import httpx
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.artifacts import registry
from components.artifacts.export import export_onnx
from components.artifacts.inference import ONNX_FILE, OnnxModel
from components.artifacts.predictions import (
    Compaction,
    compact_log,
    expire_log,
    log_usage,
    maintenance_lock,
    prediction_frame,
    read_prediction_log,
    write_log_part,
)
from components.config.schema import ProjectConfig, config_to_yaml
from components.data.features import SPEC_FILE
from components.data.tables import load_source, with_labels
from components.training.train import train
from serving.client import to_records
from serving.launch import ServerProcess
from serving.prediction_log import PredictionLogWriter, ServedBatch
from serving.runtime import load_version
from tests.conftest import TXHOUSING, config_with, window

MAX_ROWS = 64
MAX_BODY = 256 * 1024
TOKEN = "test-admin-token"
WORKERS = 2


@dataclass
class Server:
    process: ServerProcess
    log_dir: Path
    answered: dict[str, int] = field(default_factory=dict)  # request id -> records answered with 200 (vs the log)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, r: httpx.Response) -> None:
        body = r.json()
        with self.lock:
            self.answered[body["request_id"]] = len(body["predictions"])

    @property
    def url(self) -> str:
        return self.process.url

    def post(self, body: object | str, path: str = "/predict", token: str | None = None) -> httpx.Response:
        content = body if isinstance(body, str | bytes) else json.dumps(body)
        headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {token}"} if token else {})
        r = httpx.post(self.url + path, content=content, headers=headers, timeout=60)
        if path == "/predict" and r.status_code == 200:
            self.record(r)
        return r


@dataclass
class Champion:
    cfg: ProjectConfig
    tag: str
    export_dir: Path
    test: pd.DataFrame


def _records(df: pd.DataFrame, cfg: ProjectConfig) -> list[dict]:
    return to_records(df, cfg.features.names)


def train_champion(root: Path, model_name: str) -> Champion:
    """A txhousing model (multiclass + regression + binary heads) trained, exported and promoted."""
    cfg = config_with(TXHOUSING, training={"epochs": 3, "threads": 2}, registry={"model_name": model_name})
    df = with_labels(load_source(cfg.data), cfg)
    train(cfg, window(df, cfg, "train"), window(df, cfg, "validation"), root / "model", progress=False)
    test = window(df, cfg, "test")
    export_onnx(root / "model", root / "onnx", test)
    tag = registry.register(root / "onnx", cfg, {"test": {"price_band": {"macro_f1": 0.5}}}, {"data_version": "t"})
    registry.promote(cfg.registry.model_name, tag)
    return Champion(cfg, tag, root / "onnx", test)


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return train_champion(tmp_path_factory.mktemp("serving"), "serving-test")


@pytest.fixture(scope="module")
def server(champion: Champion, tmp_path_factory: pytest.TempPathFactory) -> Server:
    root = tmp_path_factory.mktemp("server")
    (root / "config.yaml").write_text(config_to_yaml(champion.cfg))
    env = {"MTLOPS_ADMIN_TOKEN": TOKEN, "MTLOPS_LOG_FLUSH_SECONDS": "0.2", "MTLOPS_MAX_BODY_BYTES": str(MAX_BODY),
           "MTLOPS_ORT_THREADS": "1"}
    process = ServerProcess(root / "config.yaml", root / "server.out", prediction_log=root / "predictions",
                            max_rows=MAX_ROWS, env=env, workers=WORKERS)
    process.wait_ready()
    yield Server(process, root / "predictions")
    process.stop()


def test_every_task_type_round_trip_matches_offline_scoring(server: Server, champion: Champion) -> None:
    rows = champion.test.head(20)
    r = server.post({"records": _records(rows, champion.cfg)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == champion.tag
    expected = prediction_frame(OnnxModel(champion.export_dir).spec, OnnxModel(champion.export_dir).predict_frame(rows))
    for i, got in enumerate(body["predictions"]):
        assert set(got) == {"price_band", "sales", "busy_month"}
        band = got["price_band"]
        assert band["label"] == expected["price_band__label"][i]
        assert set(band["probabilities"]) == {"low", "mid", "high"}
        assert sum(band["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert got["sales"]["value"] == pytest.approx(expected["sales__value"][i], rel=1e-4)
        busy = got["busy_month"]
        assert busy["probability"] == pytest.approx(expected["busy_month__proba"][i], abs=1e-5)
        assert busy["label"] == int(busy["probability"] >= 0.5)


def test_tasks_subset_and_batch_sizes(server: Server, champion: Champion) -> None:
    records = _records(champion.test.head(MAX_ROWS), champion.cfg)
    r = server.post({"records": records[:1], "tasks": ["sales"]})
    assert r.status_code == 200 and list(r.json()["predictions"][0]) == ["sales"]
    r = server.post({"records": records})
    assert r.status_code == 200 and len(r.json()["predictions"]) == MAX_ROWS


def _bad_cases(champion: Champion) -> list[tuple[str, object, int, list[str]]]:
    good = _records(champion.test.head(3), champion.cfg)

    def with_field(i: int, **changes: object) -> list[dict]:
        recs = [dict(r) for r in good]
        recs[i].update(changes)
        return recs

    missing = [dict(r) for r in good]
    del missing[2]["city"]
    return [
        ("missing feature", {"records": missing}, 400, ["records", "2", "city", "missing"]),
        ("unknown feature", {"records": with_field(1, colour="red")}, 400, ["records", "1", "colour"]),
        ("string for a number", {"records": with_field(0, listings="100")}, 400, ["records", "0", "listings"]),
        ("wrong type", {"records": with_field(2, city=[1, 2])}, 400, ["records", "2", "city"]),
        ("null where not allowed", {"records": with_field(1, month=None)}, 400, ["records", "1", "month"]),
        ("NaN", json.dumps({"records": with_field(0, month=math.nan)}), 400, ["records", "0", "month", "finite"]),
        ("Infinity", {"records": with_field(0, inventory=float("inf"))}, 400, ["records", "0", "inventory"]),
        ("empty list", {"records": []}, 400, ["records", "at least 1"]),
        ("too many rows", {"records": good * (MAX_ROWS // 3 + 1)}, 400, ["records", str(MAX_ROWS)]),
        ("unknown task", {"records": good, "tasks": ["price"]}, 400, ["tasks", "0", "price_band"]),
        ("malformed JSON", '{"records": [', 400, ["Invalid JSON"]),
        ("not an object", "[1, 2]", 400, ["object"]),
        ("body too large", {"records": good, "pad": "x" * MAX_BODY}, 413, [str(MAX_BODY)]),
        ("category beyond int64", {"records": with_field(0, city=2**64)}, 400, ["records", "0", "city"]),
        ("number beyond float32", {"records": with_field(1, listings=1e300)}, 400, ["records", "1", "listings"]),
        ("above the declared max", {"records": with_field(2, inventory=61)}, 400, ["records", "2", "inventory", "60"]),
        ("below the declared min", {"records": with_field(0, listings=-1)}, 400, ["records", "0", "listings", "0"]),
        ("fraction for a whole number", {"records": with_field(1, month=5.5)}, 400,
         ["records", "1", "month", "multiple of 1"]),
        ("unknown top-level key", {"records": good, "extra": 1}, 400, ["extra"]),
    ]


def test_bad_input_gets_4xx_naming_record_and_field(server: Server, champion: Champion) -> None:
    for name, body, status, words in _bad_cases(champion):
        r = server.post(body)
        assert r.status_code == status, (name, r.status_code, r.text)
        for w in words:
            assert w in r.text, (name, w, r.text)
        assert "error" in r.json(), (name, r.text)  # the published ErrorResponse shape


def test_bentomls_api_layer_and_the_fast_path_answer_every_bad_request_alike(server: Server, champion: Champion,
                                                                             tmp_path: Path) -> None:
    """The same request model and decoding behind both request paths: `serving.fast_path: false` (here
    its variable) sends /predict through BentoML's own API layer, which must refuse each bad request
    with the fast path's status and body, and answer a good one alike."""
    process = ServerProcess(server.process.output.parent / "config.yaml", tmp_path / "server.out",
                            max_rows=MAX_ROWS, workers=1,
                            env={"MTLOPS_FAST_PATH": "0", "MTLOPS_MAX_BODY_BYTES": str(MAX_BODY),
                                 "MTLOPS_ORT_THREADS": "1"})
    try:
        process.wait_ready()
        through_bentoml = Server(process, tmp_path / "unused")
        good = {"records": _records(champion.test.head(2), champion.cfg), "tasks": ["sales"]}
        fast, slow = server.post(good), through_bentoml.post(good)
        assert slow.headers["server"].startswith("BentoML Service") and "BentoML" not in fast.headers.get("server", "")
        assert slow.json()["predictions"] == fast.json()["predictions"]
        for name, body, status, _ in _bad_cases(champion):
            fast, slow = server.post(body), through_bentoml.post(body)
            assert (slow.status_code, slow.json()) == (fast.status_code, fast.json()) == (status, fast.json()), name
        record = json.dumps(good["records"][0])
        duplicate = f'{{"records": [{record[:-1]}, "city": "Austin"}}]}}'  # the schema sees the last city only
        fast, slow = server.post(duplicate), through_bentoml.post(duplicate)
        assert (slow.status_code, slow.json()) == (fast.status_code, fast.json())
        assert fast.status_code == 400 and "duplicate key 'city'" in fast.text
    finally:
        process.stop()


def test_wrong_content_type_gets_415(server: Server, champion: Champion) -> None:
    body = json.dumps({"records": _records(champion.test.head(1), champion.cfg)})
    for headers in ({"content-type": "text/plain"}, {}):
        r = httpx.post(server.url + "/predict", content=body, headers=headers, timeout=30)
        assert r.status_code == 415 and "application/json" in r.json()["error"], r.text


def test_duplicate_tasks_are_answered_and_counted_once(server: Server, champion: Champion) -> None:
    before = _metric(server, "mtlops_predictions_total", task="sales")
    r = server.post({"records": _records(champion.test.head(2), champion.cfg), "tasks": ["sales", "sales", "sales"]})
    assert r.status_code == 200 and [list(p) for p in r.json()["predictions"]] == [["sales"], ["sales"]]
    assert _metric(server, "mtlops_predictions_total", task="sales") == before + 2


def test_unknown_category_is_answered_and_counted(server: Server, champion: Champion) -> None:
    record = _records(champion.test.head(1), champion.cfg)[0] | {"city": "Atlantis"}
    before = _metric(server, "mtlops_out_of_vocabulary_values_total", feature="city")
    tasks_before = _metric(server, "mtlops_predictions_total", task="busy_month")
    r = server.post({"records": [record, record]})
    assert r.status_code == 200
    assert _metric(server, "mtlops_out_of_vocabulary_values_total", feature="city") == before + 2
    assert _metric(server, "mtlops_predictions_total", task="busy_month") == tasks_before + 2


def _metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_model_health_and_openapi(server: Server, champion: Champion) -> None:
    info = httpx.get(server.url + "/model", timeout=10).json()
    assert info["model_version"] == champion.tag
    assert [t["name"] for t in info["tasks"]] == ["price_band", "sales", "busy_month"]
    assert info["tasks"][0]["classes"] == ["low", "mid", "high"]
    assert info["lineage"] == {"data_version": "t"}
    assert httpx.get(server.url + "/livez", timeout=10).status_code == 200
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
    schema = httpx.get(server.url + "/docs.json", timeout=10).json()["components"]["schemas"]["Record"]
    assert set(schema["required"]) == {"month", "listings", "inventory", "city"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["month"]["type"] == "number"
    assert _metric(server, "mtlops_model_info", model_version=champion.tag) == 1


SCHEMATHESIS = Path(__file__).resolve().parents[1] / ".venv-schemathesis" / "bin" / "st"


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server: Server, tmp_path: Path) -> None:
    """Schemathesis (all checks) against the published /docs.json: over 1,000 generated requests,
    valid and invalid, and every answer a documented status in the documented shape."""
    assert SCHEMATHESIS.exists(), "no schemathesis venv: `make test` creates .venv-schemathesis"
    out = subprocess.run([str(SCHEMATHESIS), "run", server.url + "/docs.json", "--checks", "all", "-n", "1000",
                          "--generation-deterministic", "-H", f"Authorization: Bearer {TOKEN}",
                          "--report", "har", "--report-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    (har,) = tmp_path.glob("har-*.json")
    statuses = [e["response"]["status"] for e in json.loads(har.read_text())["log"]["entries"]]
    assert len(statuses) >= 1000 and max(statuses) < 500, (len(statuses), sorted(set(statuses)))
    assert statuses.count(200) > 100 and statuses.count(400) > 100  # both valid and invalid requests were sent


JSON_SCALARS = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats() | st.text(max_size=6)
JSON_ANY = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                          max_size=3), max_leaves=8)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_input_crashes_the_server(server: Server, champion: Champion, data: st.DataObject) -> None:
    """Property: any JSON body (valid-looking records with random values, missing and extra
    keys, or anything at all) gets 200 or a 4xx, never a 5xx."""
    names = ["month", "listings", "inventory", "city"]
    record = st.dictionaries(st.sampled_from([*names, "extra"]), JSON_ANY, max_size=6) | st.fixed_dictionaries(
        {n: JSON_SCALARS for n in names})
    body = data.draw(st.fixed_dictionaries({"records": st.lists(record, max_size=4)},
                                           optional={"tasks": st.lists(st.sampled_from(["sales", "x"]))}) | JSON_ANY)
    r = server.post(json.dumps(body))
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        assert len(r.json()["predictions"]) == len(body["records"])


def test_admin_reload_needs_the_token(server: Server) -> None:
    assert server.post({}, path="/admin/reload").status_code == 401
    assert server.post({}, path="/admin/reload", token="nope").status_code == 401


def test_reload_command_says_what_is_missing(server: Server) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MTLOPS_ADMIN_TOKEN"}
    cli = [sys.executable, "-m", "pipelines.cli", "reload", "--url"]
    out = subprocess.run([*cli, server.url], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "MTLOPS_ADMIN_TOKEN is not set" in out.stdout and "Traceback" not in out.stderr
    out = subprocess.run([*cli, "http://127.0.0.1:9"], capture_output=True, text=True, timeout=120,
                         env=env | {"MTLOPS_ADMIN_TOKEN": TOKEN})
    assert out.returncode == 2 and "no service at" in out.stdout and "Traceback" not in out.stderr


def _register_copy(champion: Champion, tmp: Path, edit: str | None = None) -> str:
    folder = tmp / f"copy-{edit}"
    shutil.copytree(champion.export_dir, folder)
    if edit == "corrupt":
        (folder / ONNX_FILE).write_bytes(b"not an onnx graph" * 100)
    elif edit == "renamed-feature":
        spec = json.loads((folder / SPEC_FILE).read_text())
        spec["numeric"][0]["name"] = "month_of_year"
        (folder / SPEC_FILE).write_text(json.dumps(spec))
    elif edit == "rescaled":  # the same graph fed on other scales and vocabularies, as a retrained version is
        spec = json.loads((folder / SPEC_FILE).read_text())
        for n in spec["numeric"]:
            n["mean"] += 2 * n["std"]
        for c in spec["categorical"]:
            c["values"].reverse()
        (folder / SPEC_FILE).write_text(json.dumps(spec))
    return registry.register(folder, champion.cfg, {}, {"data_version": edit or "v2"})


def test_reload_under_load_switches_once_without_a_failed_request(server: Server, champion: Champion,
                                                                 tmp_path: Path) -> None:
    records = _records(champion.test.head(4), champion.cfg)
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            r = server.post({"records": records})
            seen.append((r.status_code, r.json().get("model_version", r.text) if r.status_code == 200 else r.text))

    worker = threading.Thread(target=client)
    worker.start()
    try:
        time.sleep(1.0)
        new_tag = _register_copy(champion, tmp_path)
        registry.promote(champion.cfg.registry.model_name, new_tag)
        r = server.post({}, path="/admin/reload", token=TOKEN)
        assert r.status_code == 200 and r.json() == {"status": "reloaded", "model_version": new_tag,
                                                     "workers": WORKERS, "shadow": None}, r.text
        # every worker answers with the new version once the reload has returned
        after = [httpx.get(server.url + "/model", timeout=10).json()["model_version"] for _ in range(20)]
        assert set(after) == {new_tag}, after
        time.sleep(1.0)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v in seen]
    # the workers swap independently, each once: no answer comes from the old version after the new one
    # was seen by every worker, and the last answers are all new
    assert versions[0] == champion.tag and versions[-1] == new_tag, versions
    last_old = max(i for i, v in enumerate(versions) if v == champion.tag)
    assert all(v == new_tag for v in versions[last_old + 1:])
    assert _metric(server, "mtlops_model_info", model_version=new_tag) == 1
    assert _metric(server, "mtlops_model_info", model_version=champion.tag) == 0


@pytest.mark.parametrize("edit", ["corrupt", "renamed-feature"])
def test_a_bad_champion_is_rejected_and_the_old_one_keeps_serving(server: Server, champion: Champion,
                                                                  tmp_path: Path, edit: str) -> None:
    serving = httpx.get(server.url + "/model", timeout=10).json()["model_version"]
    bad = _register_copy(champion, tmp_path, edit)
    registry.promote(champion.cfg.registry.model_name, bad)
    r = server.post({}, path="/admin/reload", token=TOKEN)
    assert r.status_code == 409 and r.json()["model_version"] == serving, r.text
    assert bad in r.json()["error"]
    r = server.post({"records": _records(champion.test.head(2), champion.cfg)})
    assert r.status_code == 200 and r.json()["model_version"] == serving
    registry.rollback(champion.cfg.registry.model_name)  # leave the store's champion servable


def _logged(server: Server) -> set[str]:
    return set(read_prediction_log(server.log_dir)["request_id"])


def test_a_killed_worker_comes_back_and_serves(server: Server, champion: Champion) -> None:
    """SIGKILL one worker (as the OOM killer would): requests keep succeeding (the other worker and
    then the replacement answer), the replacement serves the same version, and /readyz is never 200
    from a worker that cannot answer /predict."""
    records = _records(champion.test.head(2), champion.cfg)
    serving = httpx.get(server.url + "/model", timeout=10).json()["model_version"]
    before = server.process.worker_pids()
    assert len(before) == WORKERS
    # a killed worker takes its unflushed log records with it (at most one flush interval): the module's
    # last test checks the log holds every answered record, so let what was answered so far be written
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not set(server.answered) <= _logged(server):
        time.sleep(0.2)
    os.kill(before[0], signal.SIGKILL)
    deadline, statuses = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        pids = server.process.worker_pids()
        ready = httpx.get(server.url + "/readyz", timeout=10).status_code
        r = server.post({"records": records})
        statuses.append(r.status_code)
        if ready == 200:
            assert r.status_code == 200, r.text
        if len(pids) == WORKERS and before[0] not in pids:
            break
        time.sleep(0.2)
    assert len(server.process.worker_pids()) == WORKERS and before[0] not in server.process.worker_pids()
    for _ in range(20):  # both workers, the replacement included, answer with the same version
        r = server.post({"records": records})
        assert r.status_code == 200 and r.json()["model_version"] == serving, r.text
    assert set(statuses) == {200}, statuses


def test_shutdown_under_load_drains_and_flushes_every_answered_record(server: Server, champion: Champion) -> None:
    """SIGTERM while clients are sending through a "load balancer" that routes only while /readyz is
    200 (as a Kubernetes Service does): the server drains — keeps answering, reports not ready —
    so no request fails, and the log holds every answered record."""
    records = _records(champion.test.head(3), champion.cfg)
    failed: list[str] = []
    routing = threading.Event()
    routing.set()
    answered_while_draining = 0

    def balancer() -> None:
        while routing.is_set():
            try:
                if httpx.get(server.url + "/readyz", timeout=5).status_code != 200:
                    routing.clear()
            except httpx.TransportError:
                routing.clear()
            time.sleep(0.05)

    def client() -> None:
        nonlocal answered_while_draining
        with httpx.Client(timeout=60) as c:
            while routing.is_set():
                try:
                    r = c.post(server.url + "/predict", json={"records": records})
                except httpx.TransportError as exc:
                    failed.append(repr(exc))
                    return
                if r.status_code != 200:
                    failed.append(r.text)
                    continue
                server.record(r)
                with server.lock:
                    answered_while_draining += r.headers.get("connection") == "close"

    threads = [threading.Thread(target=balancer)] + [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert server.process.stop() == 0
    routing.clear()
    for t in threads:
        t.join(timeout=60)
    assert failed == []
    assert answered_while_draining > 0  # requests kept being answered after SIGTERM
    log = read_prediction_log(server.log_dir)
    logged = log.groupby("request_id").size().to_dict()  # schemathesis' requests are in the log too
    assert len(server.answered) > 0 and {rid: logged.get(rid) for rid in server.answered} == server.answered
    assert log["request_id"].nunique() > 1
    assert set(log["model_version"]) >= {champion.tag}
    assert {"price_band__label", "sales__value", "busy_month__proba", "city"} <= set(log.columns)
    assert np.isfinite(log["sales__value"]).all()
    assert log["timestamp"].is_monotonic_increasing


def test_bento_build_bundles_the_champion(champion: Champion, tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(config_to_yaml(champion.cfg))
    serving_champion = str(registry.champion(champion.cfg.registry.model_name).tag)
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "bento", "--config", str(tmp_path / "config.yaml")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    bento = bentoml.bentos.get("mtlops-serving:latest")
    assert [str(m.tag) for m in bento.info.all_models] == [serving_champion]
    assert {"name": "MTLOPS_MODEL_NAME", "value": "serving-test"} in [
        {"name": e.name, "value": e.value} for e in bento.info.envs]
    assert (Path(bento.path) / "src" / "serving" / "service.py").exists()
    assert "Record" in (Path(bento.path) / "apis" / "openapi.yaml").read_text()


def test_prediction_log_keeps_batches_while_the_disk_refuses_them(champion: Champion, tmp_path: Path) -> None:
    model = load_version(champion.tag)
    features = model.spec.record_encoder().encode_records(_records(champion.test.head(3), champion.cfg))
    stacked = np.zeros((3, sum(model.head_widths)), np.float32)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log folder should be")
    writer = PredictionLogWriter(blocked, flush_seconds=3600, max_buffered_batches=2)
    for i in range(3):
        writer.append(ServedBatch(f"r{i}", datetime.now(UTC), model, features, stacked))
    with pytest.raises(OSError):
        writer.flush()
    assert writer.dropped == 1  # bounded: the oldest batch went
    assert writer.failed_flushes == 1 and writer.written == 0
    buffered, lag = writer.backlog()  # what /metrics exports as the log's backlog and lag
    assert buffered == 6 and lag > 0
    writer.log_dir = tmp_path / "log"
    writer.close()
    log = read_prediction_log(tmp_path / "log")
    assert list(log["request_id"].unique()) == ["r1", "r2"] and len(log) == 6
    assert writer.written == 6 and writer.backlog() == (0, 0.0)


def test_prediction_log_flushes_early_once_enough_records_are_buffered(champion: Champion, tmp_path: Path) -> None:
    """Under heavy load the buffer is bounded by records, not only by time: with an hour between timed
    flushes, 6 buffered records (bound 5) are written at once."""
    model = load_version(champion.tag)
    features = model.spec.record_encoder().encode_records(_records(champion.test.head(3), champion.cfg))
    stacked = np.zeros((3, sum(model.head_widths)), np.float32)
    writer = PredictionLogWriter(tmp_path / "log", flush_seconds=3600, flush_records=5)
    writer.append(ServedBatch("r0", datetime.now(UTC), model, features, stacked))
    time.sleep(0.5)
    assert not list((tmp_path / "log").rglob("*.parquet"))  # 3 records: below the bound, nothing yet
    writer.append(ServedBatch("r1", datetime.now(UTC), model, features, stacked))
    deadline = time.monotonic() + 30
    while not list((tmp_path / "log").rglob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(read_prediction_log(tmp_path / "log")) == 6
    writer.close()


def test_compaction_under_load_keeps_every_row_exactly_once(champion: Champion, tmp_path: Path) -> None:
    """The writer flushes a part every few milliseconds while compaction merges them and readers read:
    no reader ever sees a row twice, and at the end rows in = rows out in one part per hour."""
    model = load_version(champion.tag)
    features = model.spec.record_encoder().encode_records(_records(champion.test.head(3), champion.cfg))
    stacked = np.zeros((3, sum(model.head_widths)), np.float32)
    log_dir = tmp_path / "log"
    writer = PredictionLogWriter(log_dir, flush_seconds=0.01)
    done, problems, compacted = threading.Event(), [], []

    def compact() -> None:
        while not done.is_set():
            with maintenance_lock(log_dir) as ours:
                assert ours
                c = compact_log(log_dir, min_age_seconds=0)
                compacted.append(c.parts_before - c.parts_after)

    def read() -> None:
        while not done.is_set():
            log = read_prediction_log(log_dir)
            if log.duplicated(["request_id", "record_index"]).any():
                problems.append(f"{log.duplicated(['request_id', 'record_index']).sum()} rows read twice")

    threads = [threading.Thread(target=compact), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for i in range(300):
        writer.append(ServedBatch(f"r{i}", datetime.now(UTC), model, features, stacked))
        time.sleep(0.002)
    writer.close()
    done.set()
    for t in threads:
        t.join(timeout=60)
    assert not problems, problems[:3]
    assert sum(compacted) > 0  # it did merge while the writer wrote
    with maintenance_lock(log_dir):
        compact_log(log_dir, min_age_seconds=0)
    log = read_prediction_log(log_dir)
    assert len(log) == 900 and not log.duplicated(["request_id", "record_index"]).any()
    parts = list(log_dir.rglob("*.parquet"))
    assert len(parts) == len({(p.parent, p.name[:2]) for p in parts})  # one part per partition and hour
    assert not list(log_dir.rglob("*.tmp"))


def test_a_compaction_stopped_half_way_is_read_once_and_finished_by_the_next(champion: Champion,
                                                                             tmp_path: Path) -> None:
    model = load_version(champion.tag)
    features = model.spec.record_encoder().encode_records(_records(champion.test.head(3), champion.cfg))
    stacked = np.zeros((3, sum(model.head_widths)), np.float32)
    log_dir, saved = tmp_path / "log", tmp_path / "saved"
    writer = PredictionLogWriter(log_dir, flush_seconds=3600)
    for i in range(4):
        writer.append(ServedBatch(f"r{i}", datetime.now(UTC), model, features, stacked))
        writer.flush()
    writer.close()
    shutil.copytree(log_dir, saved)
    assert compact_log(log_dir, min_age_seconds=0) == Compaction(parts_before=4, parts_after=1, rows=12)
    for part in saved.rglob("*.parquet"):  # the merged part is in place, the four it holds were not removed yet
        shutil.copy(part, log_dir / part.relative_to(saved))
    assert len(list(log_dir.rglob("*.parquet"))) == 5
    assert len(read_prediction_log(log_dir)) == 12
    compact_log(log_dir, min_age_seconds=0)
    assert len(list(log_dir.rglob("*.parquet"))) == 1 and len(read_prediction_log(log_dir)) == 12
    # young parts wait: nothing under an hour old is merged by default
    shutil.copytree(saved, tmp_path / "young")
    assert compact_log(tmp_path / "young").parts_after == 4


def test_retention_removes_whole_days_past_it_and_nothing_younger(tmp_path: Path) -> None:
    frame = pd.DataFrame({"request_id": ["a"], "record_index": [0], "model_version": ["m:1"]})
    for day in ("2026-01-01", "2026-01-29", "2026-01-30"):
        write_log_part(frame.assign(timestamp=pd.Timestamp(day, tz="UTC")), tmp_path)
    expired = expire_log(tmp_path, retention_days=30, today=datetime(2026, 3, 1).date())
    assert expired == ["date=2026-01-01", "date=2026-01-29"]
    assert sorted(p.name for p in tmp_path.glob("date=*")) == ["date=2026-01-30"]  # 30 days old on March 1st
    assert log_usage(tmp_path).parts == 1 and log_usage(tmp_path).bytes > 0
