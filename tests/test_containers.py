"""The images built for real and run on a real Docker engine: the training pipeline through
kfp.local's DockerRunner on the component image, the serving image under `docker run` (non-root,
read-only root filesystem), both checked against what the same code answers in this process.

The session fixture installs and starts the engine where it is missing (root only, as CI runs;
elsewhere the tests skip, saying why), builds the base and the images once (`make local-images`:
debootstrap base, layer cache kept by the engine between runs) and stops what it started."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest

from components import registry
from components.config import ProjectConfig, load_config
from components.inference import OnnxModel
from components.predictions import prediction_frame, read_prediction_log
from components.versioning import data_version, dvc_md5
from pipelines.steplog import LOG_FILE
from serving.client import to_records
from tests.conftest import FLIGHTS, ROOT, raw_config
from tests.test_pipeline_e2e import repo_with_data

pytestmark = pytest.mark.slow

IMAGE_USER = 10001
IMAGES = {"component": "mtlops-local/mtlops:dev", "serving": "mtlops-local/mtlops-serving:dev"}
MTLOPS = [sys.executable, "-m", "pipelines.cli"]
NONINTERACTIVE = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def sh(*args: str, timeout: float = 600, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          **kwargs)  # type: ignore[call-overload]
    if check:
        assert proc.returncode == 0, f"{' '.join(args)}: {proc.stdout[-4000:]}{proc.stderr[-4000:]}"
    return proc


def engine_up() -> bool:
    return bool(shutil.which("docker")) and sh("docker", "info", check=False, timeout=30).returncode == 0


def apt_install(*packages: str) -> None:
    """Debian's packages, without a prompt; the package lists are refreshed only when they are stale."""
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if sh(*install, check=False, env=NONINTERACTIVE).returncode != 0:
        sh("apt-get", "update", "-q", env=NONINTERACTIVE)
        sh(*install, env=NONINTERACTIVE)


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A running engine: the one that is up, or dockerd installed (Debian's docker.io) and started
    by hand (no systemd in a CI container); stopped again at the end if started here."""
    needs = [tool for tool, package in (("dockerd", "docker.io"), ("debootstrap", "debootstrap"))
             if not shutil.which(tool)]
    if (needs or not engine_up()) and os.geteuid() != 0:
        pytest.skip("the container tests install and start a Docker engine (docker.io, debootstrap) "
                    "and build a base image with debootstrap: they need root, or both already set up")
    if needs:
        apt_install(*{"dockerd": "docker.io", "debootstrap": "debootstrap"}.values())
    started = None
    if not engine_up():
        log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
        started = subprocess.Popen(["dockerd"], stdout=log.open("w"), stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not engine_up():
            assert started.poll() is None and time.monotonic() < deadline, f"dockerd: {log.read_text()[-3000:]}"
            time.sleep(0.5)
    yield
    if started:
        started.terminate()
        started.wait(timeout=60)


@pytest.fixture(scope="session")
def images(docker_engine: None) -> dict[str, str]:
    """The debootstrap base, the component and serving images: `make local-images`, as a user runs
    it where no registry is reachable (cached layers make a rebuild seconds)."""
    sh("make", "-s", "local-images", cwd=ROOT, timeout=3600)
    return IMAGES


@dataclass
class DockerRun:
    root: Path
    cfg_path: Path
    cfg: ProjectConfig
    run_dir: Path
    tag: str


@pytest.fixture(scope="module")
def docker_run(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> DockerRun:
    """The training pipeline through DockerRunner on a tiny slice: a git repo, its data DVC-tracked."""
    root = tmp_path_factory.mktemp("repo")
    raw = copy.deepcopy(raw_config(FLIGHTS))
    raw["data"].update(sample_fraction=0.05, dvc_remote=str(root.parent / "remote"))
    raw["training"].update(epochs=1, threads=2)
    raw["registry"]["model_name"] = "docker-flights"
    cfg_path, _ = repo_with_data(root, raw, "tiny")
    out = sh(*MTLOPS, "run", "--config", str(cfg_path), "--root", str(root), "--pipeline-root", str(root / "runs"),
             "--runner", "docker", "--image", images["component"], cwd=root, timeout=1800,
             env={**os.environ, "COLUMNS": "200"}).stdout
    assert "promoted to champion" in out, out[-3000:]
    run_dir = next(p for p in (root / "runs").iterdir() if p.name != ".data")
    cfg = load_config(cfg_path)
    return DockerRun(root, cfg_path, cfg, run_dir, str(registry.champion(cfg.registry.model_name).tag))


def test_training_pipeline_in_containers_registers_a_model_with_lineage_and_onnx_parity(docker_run: DockerRun) -> None:
    run_dir = docker_run.run_dir
    steps = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert steps == ["evaluate-op", "export-op", "ingest-op", "register-op", "split-op", "train-op", "validate-op"]
    onnx_dir = run_dir / "export-op" / "onnx_model"
    parity = json.loads((onnx_dir / "parity.json").read_text())
    assert parity["ok"] and max(parity["max_abs_diff"].values()) <= 1e-4

    info = json.loads(sh(*MTLOPS, "models", "--config", str(docker_run.cfg_path), "--json",
                         cwd=docker_run.root).stdout)
    assert [(m["tag"], m["stage"]) for m in info] == [(docker_run.tag, "champion")]
    parts = {f"data/flights/2013-0{m}.parquet": dvc_md5(docker_run.root / f"data/flights/2013-0{m}.parquet")
             for m in range(1, 7)}  # the partitions the config's windows cover, as the pointers name them
    assert info[0]["data_version"] == data_version(parts)
    head = sh("git", "rev-parse", "HEAD", cwd=docker_run.root).stdout.strip()
    assert info[0]["git_revision"] == head
    # the steps ran as a user that is not root: every file they wrote belongs to it
    expected_uid = IMAGE_USER if os.geteuid() == 0 else os.geteuid()
    assert {p.stat().st_uid for p in run_dir.rglob("*") if p.name != LOG_FILE} == {expected_uid}


@dataclass
class ServingContainer:
    name: str
    url: str
    log_dir: Path


@pytest.fixture(scope="module")
def serving_container(docker_run: DockerRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingContainer]:
    """The serving image as a cluster runs it: non-root, read-only root filesystem (tmpfs for /tmp
    and BentoML's scratch), the model store's models read-only, the prediction log on a volume."""
    log_dir = tmp_path_factory.mktemp("predictions")
    os.chmod(log_dir, 0o777)  # the container's user writes it
    models = Path(os.environ["BENTOML_HOME"]) / "models"
    name = f"mtlops-serving-test-{os.getpid()}"
    sh("docker", "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--tmpfs", "/home/mtlops/bentoml",
       "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "-p", "127.0.0.1::3000",
       "-v", f"{models}:/home/mtlops/bentoml/models:ro", "-v", f"{log_dir}:/var/lib/mtlops/predictions",
       "-v", f"{docker_run.cfg_path}:/app/configs/served.yaml:ro",
       "-e", "MTLOPS_LOG_FLUSH_SECONDS=3600",  # nothing is flushed before SIGTERM
       IMAGES["serving"], "mtlops", "serve", "--config", "configs/served.yaml", "--host", "0.0.0.0",
       "--workers", "1", "--prediction-log", "/var/lib/mtlops/predictions")
    port = sh("docker", "port", name, "3000/tcp").stdout.split(":")[-1].strip()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        state = sh("docker", "inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        if state != "true" or time.monotonic() > deadline:
            logs = sh("docker", "logs", name, check=False)
            sh("docker", "rm", "-f", name, check=False)
            pytest.fail(f"serving container not ready: {logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        time.sleep(0.5)
    yield ServingContainer(name, url, log_dir)
    sh("docker", "rm", "-f", name, check=False)


def test_serving_container_answers_as_in_process_and_flushes_its_log_on_sigterm(
        docker_run: DockerRun, serving_container: ServingContainer) -> None:
    cfg = docker_run.cfg
    uid = sh("docker", "exec", serving_container.name, "id", "-u").stdout.strip()
    assert uid == str(IMAGE_USER)  # the running server is not root
    test = pd.read_parquet(docker_run.run_dir / "split-op" / "test").head(16)
    r = httpx.post(serving_container.url + "/predict", json={"records": to_records(test, cfg.features.names)},
                   timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == docker_run.tag
    onnx = OnnxModel(docker_run.run_dir / "export-op" / "onnx_model")
    expected = prediction_frame(onnx.spec, onnx.predict_frame(test))
    assert {task.type for task in cfg.tasks} == {"binary", "regression"}  # the flights tasks, compared below
    for i, got in enumerate(body["predictions"]):
        assert set(got) == {task.name for task in cfg.tasks}
        for task in cfg.tasks:
            if task.type == "binary":
                assert got[task.name]["probability"] == pytest.approx(expected[f"{task.name}__proba"][i], abs=1e-5)
            elif task.type == "regression":
                assert got[task.name]["value"] == pytest.approx(expected[f"{task.name}__value"][i], rel=1e-4, abs=1e-4)
    assert read_prediction_log(serving_container.log_dir).empty  # still in memory

    sh("docker", "stop", "--time", "60", serving_container.name, timeout=120)
    state = json.loads(sh("docker", "inspect", "-f", "{{json .State}}", serving_container.name).stdout)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    log = read_prediction_log(serving_container.log_dir)
    assert list(log["request_id"].unique()) == [body["request_id"]] and len(log) == len(test)


def test_images_run_as_a_user_that_is_not_root(images: dict[str, str]) -> None:
    for image in images.values():
        out = sh("docker", "run", "--rm", "--network", "none", image, "id", "-u").stdout.strip()
        assert out == str(IMAGE_USER), (image, out)
    # the serving image carries no PyTorch: the graph runs in ONNX Runtime
    proc = sh("docker", "run", "--rm", "--network", "none", images["serving"], "python", "-c", "import torch",
              check=False)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr


def test_an_unknown_runner_is_refused_before_any_work(tmp_path: Path) -> None:
    proc = subprocess.run([*MTLOPS, "run", "--runner", "kubernetes", "--pipeline-root", str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--runner: expected 'subprocess' or 'docker', got 'kubernetes'" in proc.stdout
    assert not (tmp_path / "runs").exists()
