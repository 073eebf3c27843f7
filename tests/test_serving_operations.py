"""`mtlops serve` as it is operated: restarted as PID 1 over a /tmp that outlives it, two servers on one
model store, a champion that cannot load, scanners probing random paths, a stalled or killed worker,
and a rolling update's SIGTERM seen through a load balancer that polls /readyz like Kubernetes does, and a
prediction log whose disk fills up (a real, small tmpfs).

Every test starts its own real server (2 workers) on a loopback port; signals are real."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from components.artifacts import registry
from components.artifacts.inference import ONNX_FILE
from components.config.schema import config_to_yaml
from serving.launch import ServerProcess
from serving.server import LOCK_FILE, RUN_PREFIX, RunFolder, sweep_abandoned
from tests.test_serving import Champion, _records, train_champion

WORKERS = 2
TOKEN = "ops-admin-token"
PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Champion:
    return train_champion(tmp_path_factory.mktemp("ops"), "serving-ops-test")


@pytest.fixture
def start(champion: Champion, tmp_path: Path) -> Iterator:
    """Start servers for one test (stopped at its end); keyword arguments go to ServerProcess."""
    started: list[ServerProcess] = []
    (tmp_path / "config.yaml").write_text(config_to_yaml(champion.cfg))

    def _start(wait: bool = True, env: dict[str, str] | None = None, **kwargs: object) -> ServerProcess:
        n = len(started)
        kwargs.setdefault("prediction_log", tmp_path / f"predictions-{n}")
        process = ServerProcess(tmp_path / "config.yaml", tmp_path / f"server-{n}.out", workers=WORKERS,
                                env={"MTLOPS_ADMIN_TOKEN": TOKEN, "MTLOPS_ORT_THREADS": "1", **(env or {})},
                                **kwargs)  # type: ignore[arg-type]
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield _start
    for process in started:
        process.stop()


def register_copy(champion: Champion, folder: Path, corrupt: bool = False) -> str:
    shutil.copytree(champion.export_dir, folder)
    if corrupt:
        (folder / ONNX_FILE).write_bytes(b"not an onnx graph" * 100)
    return registry.register(folder, champion.cfg, {}, {"data_version": folder.name})


def served(server: ServerProcess) -> str:
    return httpx.get(server.url + "/model", timeout=10).json()["model_version"]


def predict(server: ServerProcess, champion: Champion, client: httpx.Client | None = None) -> httpx.Response:
    body = {"records": _records(champion.test.head(2), champion.cfg)}
    return (client or httpx).post(server.url + "/predict", json=body, timeout=30)  # type: ignore[attr-defined]


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()))


def wait_until(check, timeout_s: float = 60, every: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


def run_folders() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("mtlops-serv*"))


def beating(pid: int) -> bool:
    """Whether the worker has started its heartbeat (it serves from then on)."""
    return any(Path(tempfile.gettempdir()).glob(f"mtlops-serve-*/control/heartbeat/{pid}"))


def pid_namespace_available() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run([*PID_NAMESPACE, "true"], capture_output=True, timeout=30).returncode == 0


def test_a_server_restarted_as_pid_1_serves_the_champion_not_what_the_last_start_served(
        champion: Champion, start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A container restart: the server is PID 1 again and /tmp is the same. The last start had
    reloaded to B; the champion is A again (a rollback without a reload). The new start serves A."""
    if not pid_namespace_available():
        pytest.skip("needs `unshare --pid` (root, util-linux) to start the server as PID 1")
    b = register_copy(champion, tmp_path / "b")
    registry.promote(champion.cfg.registry.model_name, champion.tag)
    before = run_folders()
    first = start(prefix=PID_NAMESPACE)
    registry.promote(champion.cfg.registry.model_name, b)
    r = httpx.post(first.url + "/admin/reload", headers={"authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status_code == 200 and r.json()["model_version"] == b, r.text
    registry.promote(champion.cfg.registry.model_name, champion.tag)
    assert first.stop() == 0
    assert not run_folders() - before  # the start's own state went with it

    second = start(prefix=PID_NAMESPACE, port=first.port)
    assert served(second) == champion.tag
    assert {served(second) for _ in range(10)} == {champion.tag}
    assert metric(second, "mtlops_model_info", model_version=champion.tag) == 1
    assert metric(second, "mtlops_model_info", model_version=b) == 0


def test_a_champion_that_cannot_load_stops_the_server_with_the_reason(champion: Champion, start,
                                                                      tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broken = register_copy(champion, tmp_path / "broken", corrupt=True)
    registry.promote(champion.cfg.registry.model_name, broken)
    try:
        server = start(wait=False)
        try:
            code = server.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the server kept running (workers respawning behind an open socket) instead of exiting")
        output = server.output.read_text()
        assert code != 0
        assert "cannot serve" in output and broken in output, output[-3000:]
    finally:
        registry.promote(champion.cfg.registry.model_name, champion.tag)


def test_a_served_version_removed_from_the_store_is_replaced_by_the_champion_when_a_worker_restarts(
        champion: Champion, start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Serving B (reloaded), B is deleted from the store and A is champion again: a worker that
    restarts cannot load B, starts on A instead of crash-looping, and the other worker follows."""
    registry.promote(champion.cfg.registry.model_name, champion.tag)
    b = register_copy(champion, tmp_path / "gone")
    server = start()
    registry.promote(champion.cfg.registry.model_name, b)
    r = httpx.post(server.url + "/admin/reload", headers={"authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert r.status_code == 200, r.text
    registry.promote(champion.cfg.registry.model_name, champion.tag)
    import bentoml

    bentoml.models.delete(b)
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: len(server.worker_pids()) == WORKERS and victim not in server.worker_pids(), 120)
    assert server.proc.poll() is None
    assert wait_until(lambda: {served(server) for _ in range(20)} == {champion.tag}, 60)
    assert predict(server, champion).json()["model_version"] == champion.tag


def test_two_servers_on_one_model_store_keep_their_own_metrics(champion: Champion, start) -> None:  # type: ignore[no-untyped-def]
    registry.promote(champion.cfg.registry.model_name, champion.tag)
    first = start()
    for _ in range(5):
        assert predict(first, champion).status_code == 200
    counted = metric(first, "mtlops_predictions_total", task="sales")
    assert counted == 10
    second = start()
    assert predict(second, champion).status_code == 200
    assert metric(first, "mtlops_predictions_total", task="sales") == counted
    assert metric(second, "mtlops_predictions_total", task="sales") == 2


def test_unknown_paths_share_one_metric_label(champion: Champion, start) -> None:  # type: ignore[no-untyped-def]
    registry.promote(champion.cfg.registry.model_name, champion.tag)
    server = start()
    size = len(httpx.get(server.url + "/metrics", timeout=10).text)
    paths = [f"/scan-{uuid.uuid4().hex}" for _ in range(100)]
    for path in paths:
        assert httpx.get(server.url + path, timeout=10).status_code == 404
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert not any(path in text for path in paths)
    assert 'endpoint="unmatched"' in text
    assert len(text) < size + 20_000  # a few new series, not one per path
    assert predict(server, champion).status_code == 200  # the real routes still route
    assert 'endpoint="/predict"' in httpx.get(server.url + "/metrics", timeout=10).text


def test_duplicate_keys_and_oversized_categories_get_a_400_naming_the_field(champion: Champion, start) -> None:  # type: ignore[no-untyped-def]
    registry.promote(champion.cfg.registry.model_name, champion.tag)
    server = start()
    record = _records(champion.test.head(1), champion.cfg)[0]
    body = json.dumps({"records": [record, record]})
    doubled = body[:-3] + ', "city": "Austin"}]}'  # record 1 names its city twice
    r = httpx.post(server.url + "/predict", content=doubled, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["records", 1, "city"], r.text
    twice = '{"records": ' + json.dumps([record]) + ', "records": ' + json.dumps([record]) + "}"
    r = httpx.post(server.url + "/predict", content=twice, headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["records"], r.text
    # a value that spells a key, or holds a colon, is not a repeat
    named_like_a_key = json.dumps({"records": [{**record, "city": "city: Austin"}], "tasks": None})
    r = httpx.post(server.url + "/predict", content=named_like_a_key, headers={"content-type": "application/json"},
                   timeout=10)
    assert r.status_code == 200, r.text
    huge = {"records": [{**record, "city": "x" * 1_000_000}]}
    r = httpx.post(server.url + "/predict", json=huge, timeout=30)
    assert r.status_code == 400 and r.json()["detail"][0]["loc"][:3] == ["records", 0, "city"], r.text
    assert r.json()["detail"][0]["type"] == "string_too_long"


def test_a_stalled_worker_reports_unready_then_is_restarted_and_counted(champion: Champion, start) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP one worker (a hung event loop): /readyz turns 503 (answered by the other worker) and
    /metrics counts one ready worker of two, the watchdog kills the stalled one, a new worker serves,
    /readyz is 200 again with both ready, and the exit is logged with its cause and counted."""
    registry.promote(champion.cfg.registry.model_name, champion.tag)
    server = start(env={"MTLOPS_STALL_SECONDS": "1.5", "MTLOPS_RESTART_AFTER_SECONDS": "8"})
    assert wait_until(lambda: all(map(beating, server.worker_pids())), 120)  # both started, not only one
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    try:
        assert wait_until(lambda: httpx.get(server.url + "/readyz", timeout=5).status_code == 503, 30, every=0.02)
        assert wait_until(lambda: metric(server, "mtlops_workers_ready") == WORKERS - 1, 30)
        assert metric(server, "mtlops_workers") == WORKERS
        assert wait_until(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == WORKERS, 60)
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert wait_until(lambda: httpx.get(server.url + "/readyz", timeout=5).status_code == 200, 30)
    for _ in range(10):
        assert predict(server, champion).status_code == 200
    output = server.output.read_text()
    assert f"worker {victim} exited (stalled)" in output, output[-3000:]
    assert metric(server, "mtlops_worker_exits_total", cause="stalled") == 1
    assert wait_until(lambda: metric(server, "mtlops_workers_ready") == WORKERS, 30)


def test_a_killed_worker_is_logged_and_counted(champion: Champion, start) -> None:  # type: ignore[no-untyped-def]
    registry.promote(champion.cfg.registry.model_name, champion.tag)
    server = start()
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == WORKERS, 60)
    assert wait_until(lambda: f"worker {victim} exited (crashed)" in server.output.read_text(), 30)
    assert wait_until(lambda: metric(server, "mtlops_worker_exits_total", cause="crashed") == 1, 30)


def test_sigterm_under_load_fails_no_request_behind_a_probe_driven_load_balancer(champion: Champion, start) -> None:  # type: ignore[no-untyped-def]
    """A rolling update as Kubernetes does it: the endpoint controller keeps routing until the
    readiness probe (period p, failure threshold k) has failed k times; the server's drain is derived
    from the same two settings. 8 keep-alive clients; 0 failed requests, 0 connection resets."""
    registry.promote(champion.cfg.registry.model_name, champion.tag)
    period, threshold = 0.5, 2
    server = start(env={"MTLOPS_READINESS_PERIOD_SECONDS": str(period),
                        "MTLOPS_READINESS_FAILURE_THRESHOLD": str(threshold)})
    routing = threading.Event()
    routing.set()
    failed: list[str] = []
    answered = [0]

    def endpoint_controller() -> None:
        failures = 0
        while routing.is_set():
            try:
                ok = httpx.get(server.url + "/readyz", timeout=period).status_code == 200
            except httpx.TransportError:
                ok = False
            failures = 0 if ok else failures + 1
            if failures >= threshold:
                routing.clear()
            time.sleep(period)

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while routing.is_set():
                try:
                    r = predict(server, champion, c)
                except httpx.TransportError as exc:
                    failed.append(repr(exc))
                    return
                if r.status_code != 200:
                    failed.append(r.text)
                answered[0] += 1

    threads = [threading.Thread(target=endpoint_controller)] + [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert server.stop() == 0
    routing.clear()
    for t in threads:
        t.join(timeout=60)
    assert failed == [] and answered[0] > 0


def test_a_run_folder_is_swept_only_once_its_server_is_gone(tmp_path: Path) -> None:
    """Leftovers of a killed server are removed at the next start; a live server's folder, and one just
    made by a server that has not locked it yet, are not."""
    live = RunFolder(tmp_path)
    abandoned, fresh = tmp_path / f"{RUN_PREFIX}killed", tmp_path / f"{RUN_PREFIX}starting"
    abandoned.mkdir()
    (abandoned / LOCK_FILE).touch()
    fresh.mkdir()
    old = time.time() - 3600
    for folder in (live.path, abandoned):
        os.utime(folder, (old, old))
    assert sweep_abandoned(tmp_path) == [abandoned]
    assert live.path.exists() and fresh.exists() and not abandoned.exists()
    live.remove()
    assert not live.path.exists()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB file system (tmpfs), unmounted at the end."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a real full disk)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with one file."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def test_a_full_disk_keeps_answers_coming_counts_drops_and_writes_nothing_half(
        champion: Champion, start, small_disk: Path) -> None:  # type: ignore[no-untyped-def]
    """The log's disk fills: every request is still answered, the writer keeps what it can (10 requests)
    and counts what it drops, no half-written part is left, and once space is back every record it
    kept is written: rows in the log = records answered - records dropped."""
    from components.artifacts.predictions import read_prediction_log

    log_dir = small_disk / "predictions"
    server = start(prediction_log=log_dir, env={"MTLOPS_LOG_FLUSH_SECONDS": "0.2",
                                                "MTLOPS_LOG_MAINTENANCE_SECONDS": "0.5",
                                                "MTLOPS_LOG_MAX_BUFFERED_BATCHES": "10"})
    answered = len(predict(server, champion).json()["predictions"])  # the day's folder exists when the disk fills
    assert wait_until(lambda: metric(server, "mtlops_prediction_log_written_records_total") == answered, 30)
    filler = fill(small_disk)
    with httpx.Client() as client:
        for _ in range(60):
            r = predict(server, champion, client)
            assert r.status_code == 200, r.text
            answered += len(r.json()["predictions"])
    assert wait_until(lambda: metric(server, "mtlops_prediction_log_dropped_batches_total") > 0, 60)
    assert metric(server, "mtlops_prediction_log_failed_flushes_total") > 0
    assert wait_until(lambda: metric(server, "mtlops_prediction_log_disk_free_bytes") < 65536, 30)
    assert not list(small_disk.rglob("*.tmp"))  # nothing written half
    assert len(read_prediction_log(log_dir)) == answered - 60 * 2  # nothing written while full; what is there reads
    assert metric(server, "mtlops_prediction_log_buffered_records") > 0
    filler.unlink()
    assert wait_until(lambda: metric(server, "mtlops_prediction_log_buffered_records") == 0, 60)
    dropped_requests = metric(server, "mtlops_prediction_log_dropped_batches_total")
    assert server.stop() == 0
    logged = read_prediction_log(log_dir)
    assert len(logged) == answered - 2 * dropped_requests  # 2 records a request
    assert 0 < dropped_requests < 60


def test_a_compaction_on_a_full_disk_fails_whole_and_loses_nothing(small_disk: Path) -> None:
    import pandas as pd

    from components.artifacts.predictions import compact_log, read_prediction_log, write_log_part

    log_dir = small_disk / "predictions"
    for k in range(3):
        write_log_part(pd.DataFrame({"request_id": [f"r{k}"] * 2000, "record_index": range(2000),
                                     "timestamp": pd.Timestamp.now(tz="UTC"), "model_version": "m:1",
                                     "city": [uuid.uuid4().hex for _ in range(2000)]}), log_dir)
    filler = fill(small_disk)
    with pytest.raises(OSError):
        compact_log(log_dir, min_age_seconds=0)
    assert not list(small_disk.rglob("*.tmp"))
    assert len(list(log_dir.rglob("*.parquet"))) == 3 and len(read_prediction_log(log_dir)) == 6000
    filler.unlink()
    assert compact_log(log_dir, min_age_seconds=0).parts_after == 1
    assert len(read_prediction_log(log_dir)) == 6000
