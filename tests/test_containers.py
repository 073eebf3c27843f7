"""The images built for real and run on a real Docker engine: the training pipeline through
kfp.local's DockerRunner on the component image, the serving image under `docker run` (non-root,
read-only root filesystem), both checked against what the same code answers in this process.

The session fixture installs and starts the engine where it is missing (root only, as CI runs;
elsewhere the tests skip, saying why), builds the base and the images once (`make local-images`:
debootstrap base, layer cache kept by the engine between runs) and stops what it started."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from components.artifacts.inference import OnnxModel
from components.artifacts.predictions import prediction_frame, read_prediction_log
from components.config.schema import ProjectConfig, load_config
from components.data.versioning import data_version, dvc_md5
from serving.client import to_records
from tests.conftest import FLIGHTS, ROOT, allow_smoke_model, raw_config
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
    env: dict[str, str]  # HOME and no BENTOML_HOME: the default remote and model store under that home
    model_store: Path
    store_before: dict[Path, tuple[int, int, int]]  # (uid, gid, mode) of the store's paths before the run


def ownership(folder: Path) -> dict[Path, tuple[int, int, int]]:
    return {p: (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode) for p in (folder, *folder.rglob("*"))}


@pytest.fixture(scope="module")
def docker_run(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerRun]:
    """The training pipeline through DockerRunner on a tiny slice, as a user runs it: the DVC remote
    and the model store at their defaults (~/.cache/mtlops/dvc-remote, ~/bentoml). The home is a fresh
    folder inside the suite user's real home (/root/... in CI: a folder the image's user cannot enter,
    as a root user's defaults are), removed afterwards; the model store exists already, with a file of
    the user's, whose owners and modes the run must leave alone."""
    home = Path(tempfile.mkdtemp(prefix=".mtlops-test-home-", dir=Path.home()))
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_HOME"} | {"HOME": str(home), "COLUMNS": "200"}
    model_store = home / "bentoml"
    (model_store / "models").mkdir(parents=True)
    (model_store / "notes.txt").write_text("the user's own file\n")
    store_before = ownership(model_store)
    root = tmp_path_factory.mktemp("repo")
    raw = copy.deepcopy(raw_config(FLIGHTS))
    raw["data"].update(sample_fraction=0.05)
    raw["data"].pop("dvc_remote", None)
    raw["training"].update(epochs=1, threads=2)
    raw["registry"]["model_name"] = "docker-flights"
    allow_smoke_model(raw)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HOME", str(home))
            mp.delenv("BENTOML_HOME")
            cfg_path, _ = repo_with_data(root, raw, "tiny")
        out = sh(*MTLOPS, "run", "--config", str(cfg_path), "--root", str(root), "--pipeline-root", str(root / "runs"),
                 "--runner", "docker", "--image", images["component"], cwd=root, timeout=1800, env=env).stdout
        assert "promoted to champion" in out, out[-3000:]
        run_dir = next(p for p in (root / "runs").iterdir() if p.name != ".data")
        models = json.loads(sh(*MTLOPS, "models", "--config", str(cfg_path), "--json", cwd=root, env=env).stdout)
        champion = next(m["tag"] for m in models if m["stage"] == "champion")
        yield DockerRun(root, cfg_path, load_config(cfg_path), run_dir, champion, env, model_store, store_before)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_training_pipeline_in_containers_registers_a_model_with_lineage_and_onnx_parity(docker_run: DockerRun) -> None:
    run_dir = docker_run.run_dir
    steps = sorted(p.name for p in run_dir.iterdir() if p.is_dir())
    assert steps == ["configure-op", "evaluate-op", "export-op", "ingest-op", "register-op", "split-op", "train-op",
                     "validate-op"]
    onnx_dir = run_dir / "export-op" / "onnx_model"
    parity = json.loads((onnx_dir / "parity.json").read_text())
    assert parity["ok"] and max(parity["max_abs_diff"].values()) <= 1e-4

    info = json.loads(sh(*MTLOPS, "models", "--config", str(docker_run.cfg_path), "--json",
                         cwd=docker_run.root, env=docker_run.env).stdout)
    assert [(m["tag"], m["stage"]) for m in info] == [(docker_run.tag, "champion")]
    parts = {f"data/flights/2013-0{m}.parquet": dvc_md5(docker_run.root / f"data/flights/2013-0{m}.parquet")
             for m in range(1, 7)}  # the partitions the config's windows cover, as the pointers name them
    assert info[0]["data_version"] == data_version(parts)
    head = sh("git", "rev-parse", "HEAD", cwd=docker_run.root).stdout.strip()
    assert info[0]["git_revision"] == head
    # the steps ran as the user who ran `mtlops run`: what they wrote belongs to that user
    assert {p.stat().st_uid for p in run_dir.rglob("*")} == {os.geteuid()}


def test_a_container_run_changes_no_owner_or_mode_in_the_model_store(docker_run: DockerRun) -> None:
    """Every path the store held before the run keeps its owner and mode (the runner used to chown the
    whole store to the image's user when run as root); the new model belongs to the user who ran
    `mtlops run`."""
    after = ownership(docker_run.model_store)
    before = docker_run.store_before
    assert {str(p): (before[p], after.get(p)) for p in before if after.get(p) != before[p]} == {}
    new = [p for p in after if p not in docker_run.store_before]
    assert any(p.name == "model.yaml" for p in new)  # the registered model is there
    assert {after[p][:2] for p in new} == {(os.geteuid(), os.getegid())}


OTHER_USER = 4242  # a user neither the host nor the image knows


def test_the_pipeline_in_containers_as_a_user_that_is_not_root(images: dict[str, str]) -> None:
    """`mtlops run --runner docker` as a non-root user with the default remote and model store in
    that user's home: the steps run as that uid, which the image does not know (no home, no name
    there). The suite's root switches to it with setpriv, in the engine's socket group, keeping only
    CAP_DAC_READ_SEARCH so that it can reach this suite's interpreter (which may live in root's home);
    the step containers themselves run with no capability at all."""
    if os.geteuid() != 0:
        pytest.skip("the suite runs as a user that is not root: docker_run above is that case")
    home = Path(tempfile.mkdtemp(prefix="mtlops-other-user-"))  # pytest's own folders are root's, mode 0700
    os.chown(home, OTHER_USER, OTHER_USER)
    try:
        run_as_other_user(images, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_as_other_user(images: dict[str, str], home: Path) -> None:
    socket_group = Path("/var/run/docker.sock").stat().st_gid
    as_user = ["setpriv", f"--reuid={OTHER_USER}", f"--regid={OTHER_USER}", f"--groups={socket_group}",
               "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    env = {k: v for k, v in os.environ.items() if k != "BENTOML_HOME"} | {
        "HOME": str(home), "USER": "other", "COLUMNS": "200"}  # the host does not know the uid either: DVC asks
    build = ("import copy, pathlib, tests.conftest as c; from tests.test_pipeline_e2e import repo_with_data; "
             "raw = copy.deepcopy(c.raw_config(c.FLIGHTS)); raw['data'].update(sample_fraction=0.05); "
             "raw['data'].pop('dvc_remote', None); raw['training'].update(epochs=1, threads=2); "
             "raw['registry']['model_name'] = 'docker-other-user'; c.allow_smoke_model(raw); "
             f"root = pathlib.Path({str(home / 'repo')!r}); root.mkdir(); repo_with_data(root, raw, 'tiny')")
    sh(*as_user, sys.executable, "-c", build, cwd=ROOT, env=env, timeout=900)
    repo = home / "repo"
    out = sh(*as_user, *MTLOPS, "run", "--config", "configs/tiny.yaml", "--root", ".", "--pipeline-root", "runs",
             "--runner", "docker", "--image", images["component"], cwd=repo, env=env, timeout=1800).stdout
    assert "promoted to champion" in out, out[-3000:]
    written = [*(home / "bentoml").rglob("*"), *(repo / "runs").rglob("*")]
    assert any(p.name == "model.yaml" for p in written)
    assert {(p.stat().st_uid, p.stat().st_gid) for p in written} == {(OTHER_USER, OTHER_USER)}


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
    models = docker_run.model_store / "models"
    name = f"mtlops-serving-test-{os.getpid()}"
    sh("docker", "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp",
       "--tmpfs", "/home/mtlops/bentoml:uid=10001,gid=10001",
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


def test_a_step_container_removed_before_its_exit_status_is_read_is_a_failure(
        images: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The race kfp 2.17 loses at random (a container exits non-zero and is removed before wait()),
    forced on the real engine: the test's client removes each container once it has exited, before
    handing it back. kfp's `run_docker_container` reads that as exit 0; ours as a lost container."""
    import docker
    import docker.errors
    from docker.models.containers import ContainerCollection
    from kfp.local.docker_task_handler import run_docker_container

    from pipelines.steprun import run_step_container

    class ExitedAndRemoved(ContainerCollection):
        def run(self, *args: Any, **kwargs: Any) -> Any:
            container = super().run(*args, **kwargs)
            with contextlib.suppress(docker.errors.NotFound):
                container.wait()
            with contextlib.suppress(docker.errors.APIError):  # kfp's auto_remove may be at it already
                container.remove(force=True)
            for _ in range(600):  # until the engine no longer knows it (one being removed is still listed)
                try:
                    self.client.api.inspect_container(container.id)
                except docker.errors.NotFound:
                    return container
                time.sleep(0.1)
            pytest.fail(f"container {container.id} was not removed")

    class Client(docker.DockerClient):
        @property
        def containers(self) -> ContainerCollection:
            return ExitedAndRemoved(client=self)

    client = Client.from_env()
    executor_input = {"outputs": {"outputFile": str(tmp_path / "lost-op" / "executor_output.json")}}
    command = ["sh", "-c", "exit 3", "--executor_input", json.dumps(executor_input)]
    kwargs = {"network_mode": "none", "user": f"{os.getuid()}:{os.getgid()}"}
    assert run_docker_container(client, images["component"], command, {}, **kwargs) == 0  # the false SUCCESS
    assert run_step_container(client, images["component"], command, {}, **kwargs) != 0
    assert "lost-op: failed: the container was gone before its exit status could be read" in capsys.readouterr().out
    client.close()


def test_the_component_image_carries_the_commits_dvc_pointers_and_ingests_from_them(
        docker_run: DockerRun, tmp_path: Path) -> None:
    """The component image built from a checkout holding the data's pointers (the docker_run repo's,
    its data files beside them) carries the pointers and no data; `ingest` in it with data_root=/app,
    as on a cluster, pulls those versions from the remote and names the registered model's data version."""
    context = tmp_path / "checkout"
    for name in ("components", "pipelines", "serving", "monitoring", "configs", "infra/docker"):
        shutil.copytree(ROOT / name, context / name, ignore=shutil.ignore_patterns("__pycache__", "wheels", "ca.crt"))
    for name in ("pyproject.toml", "README.md", "Makefile", ".dockerignore"):
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(docker_run.root / "data", context / "data")
    shutil.copytree(docker_run.root / ".dvc", context / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    sh("make", "-s", "local-images", "LOCAL_REPO=mtlops-pointers-test", cwd=context, timeout=1800)
    image = "mtlops-pointers-test/mtlops:dev"
    pointers = sorted(str(p.relative_to(docker_run.root)) for p in (docker_run.root / "data").rglob("*.dvc"))
    assert pointers
    listed = sh("docker", "run", "--rm", "--network", "none", image, "find", "data", "-type", "f").stdout.split()
    assert sorted(listed) == pointers  # the pointers, and no data file

    remote = Path(docker_run.env["HOME"]) / ".cache" / "mtlops" / "dvc-remote"
    ingest = ("import json, pathlib; from components.steps import ingest; "
              "print(json.dumps(ingest(pathlib.Path('/config.yaml').read_text(), '/app', '/tmp/dataset.parquet')))")
    out = sh("docker", "run", "--rm", "--network", "none", "-v", f"{remote}:/mnt/dvc-remote:ro",
             "-v", f"{docker_run.cfg_path}:/config.yaml:ro", "-e", "MTLOPS_DVC_REMOTE_URL=/mnt/dvc-remote",
             image, "python", "-c", ingest, timeout=600).stdout
    lineage = json.loads(out.strip().splitlines()[-1])
    models = json.loads(sh(*MTLOPS, "models", "--config", str(docker_run.cfg_path), "--json", cwd=docker_run.root,
                           env=docker_run.env).stdout)
    assert lineage["data_version"] == models[0]["data_version"] and lineage["rows"] > 0
    sh("docker", "rmi", "mtlops-pointers-test/mtlops:dev", "mtlops-pointers-test/mtlops-serving:dev", check=False)


def wait_ready(url: str, name: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        running = sh("docker", "inspect", "-f", "{{.State.Running}}", name).stdout.strip()
        if running != "true" or time.monotonic() > deadline:
            logs = sh("docker", "logs", name, check=False)
            pytest.fail(f"{name} not ready: {logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        time.sleep(0.5)


def promote_a_new_version(docker_run: DockerRun) -> str:
    """The run's ONNX model registered once more and made champion (in the run's model store); its tag."""
    promote = ("import json, pathlib, sys; from components.artifacts import registry; "
               "from components.config.schema import load_config; "
               "cfg = load_config(sys.argv[1]); run = pathlib.Path(sys.argv[2]); "
               "old = registry.champion(cfg.registry.model_name); "
               "metrics = json.loads((run / 'evaluate-op' / 'metrics_json').read_text()); "
               "tag = registry.register(run / 'export-op' / 'onnx_model', cfg, metrics, old.info.metadata['lineage']); "
               "registry.promote(cfg.registry.model_name, tag); print(tag)")
    out = sh(sys.executable, "-c", promote, str(docker_run.cfg_path), str(docker_run.run_dir), cwd=ROOT,
             env={**docker_run.env, "BENTOML_HOME": str(docker_run.model_store)}).stdout
    return out.strip().splitlines()[-1]


def test_the_documented_serving_container_survives_docker_restart(docker_run: DockerRun) -> None:
    """infra/README's `docker run` for the serving image, with its /tmp on a named volume (which
    outlives the container, as an emptyDir outlives a pod's container), then `docker restart`: the same
    container, the same PID 1, the old /tmp. It answers /readyz, and /model names the champion of the
    moment: a new version promoted while the container ran, before the restart."""
    readme = (ROOT / "infra" / "README.md").read_text()
    documented = readme[readme.index("docker run -d --name mtlops-serving"):]
    documented = documented[:documented.index("mtlops-local/mtlops-serving:dev")]
    tmpfs = [word for word in documented.split() if word.startswith("/home/mtlops/bentoml")
             and "models" not in word]
    assert tmpfs == ["/home/mtlops/bentoml:uid=10001,gid=10001"]  # as documented, used below
    name = f"mtlops-serving-restart-{os.getpid()}"
    volume = sh("docker", "volume", "create").stdout.strip()
    try:
        sh("docker", "run", "-d", "--name", name, "-p", "127.0.0.1::3000", "--read-only", "-v", f"{volume}:/tmp",
           "--tmpfs", tmpfs[0], "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "-v", f"{docker_run.model_store / 'models'}:/home/mtlops/bentoml/models:ro",
           "-v", f"{docker_run.cfg_path}:/app/configs/served.yaml:ro",
           IMAGES["serving"], "mtlops", "serve", "--config", "configs/served.yaml", "--host", "0.0.0.0",
           "--workers", "1", "--prediction-log", "/tmp/predictions")
        champion = docker_run.tag
        for restarts in (0, 1):
            if restarts:
                champion = promote_a_new_version(docker_run)  # while it runs: its state names the old one
                sh("docker", "restart", "--time", "30", name, timeout=120)
            port = sh("docker", "port", name, "3000/tcp").stdout.split(":")[-1].strip()
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, name)
            model = httpx.get(url + "/model", timeout=10).json()
            assert model["model_version"] == champion, (restarts, model)
        state = json.loads(sh("docker", "inspect", "-f", "{{json .State}}", name).stdout)
        assert state["Running"] and state["Restarting"] is False
    finally:
        sh("docker", "rm", "-f", name, check=False)
        sh("docker", "volume", "rm", volume, check=False)


GPU_IMAGE = "mtlops-local/mtlops-cuda:dev"


def test_gpu_image_has_cuda_torch_and_ort_cuda_provider_and_trains_on_cpu(docker_run: DockerRun) -> None:
    """The CUDA component image (`make local-gpu-image`, several GB: never built by the tests, so this
    skips, saying so, where it is absent): torch is a CUDA build, ONNX Runtime lists the CUDA provider,
    and the training step (this checkout's code) runs a few batches on CPU (no GPU here) on the docker
    run's own split."""
    if sh("docker", "image", "inspect", GPU_IMAGE, check=False).returncode != 0:
        pytest.skip(f"{GPU_IMAGE} is not built here (make local-gpu-image downloads several GB; not done by tests)")
    probe = ("import json, torch, onnxruntime as ort; print(json.dumps({'torch': torch.__version__, "
             "'cuda': torch.version.cuda, 'providers': ort.get_available_providers()}))")
    found = json.loads(sh("docker", "run", "--rm", "--network", "none", GPU_IMAGE, "python", "-c", probe)
                       .stdout.strip().splitlines()[-1])
    assert found["cuda"] and "CUDAExecutionProvider" in found["providers"], found
    raw = copy.deepcopy(raw_config(docker_run.cfg_path))
    raw["training"].update(epochs=1, device="cpu", batch_size=512, threads=2)
    split = docker_run.run_dir / "split-op"
    train = ("import json, pathlib; from components.steps import train_model; "
             "s = train_model(pathlib.Path('/config.yaml').read_text(), '/split/train', '/split/validation', "
             "'/tmp/model'); print(json.dumps({k: s[k] for k in ('epochs_run', 'samples_per_s')}))")
    config = docker_run.root / "gpu-image-cpu.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    # this checkout's training code on the image's CUDA builds: an image built from an older commit
    # (it is never rebuilt by the tests) would not know today's config fields
    code = f"{ROOT / 'components'}:/opt/venv/lib/python3.11/site-packages/components:ro"
    out = sh("docker", "run", "--rm", "--network", "none", "-v", f"{split}:/split:ro", "-v", code,
             "-v", f"{config}:/config.yaml:ro", GPU_IMAGE, "python", "-c", train, timeout=900).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["epochs_run"] == 1 and summary["samples_per_s"] > 0
    print(f"gpu image: {found}; training on CPU: {summary}")
