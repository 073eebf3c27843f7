"""Compiling for a cluster, and `mtlops submit` / `mtlops schedule`. No Kubeflow Pipelines API
exists here: the submit/schedule tests replace `kfp.Client` with a recording fake (hence
`mocked_kfp_client` in their names); everything before the client (compile with the cluster
settings, arguments, CLI) is real."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from components.config.schema import ConfigError, config_from_yaml
from pipelines.cli.main import app
from pipelines.cluster import load_cluster_settings
from pipelines.compile import PIPELINES, compile_pipelines

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "infra" / "kfp" / "cluster.yaml"
IMAGE, GPU_IMAGE = "registry.example.com/team/mtlops:1.2.3", "registry.example.com/team/mtlops-cuda:1.2.3"


@pytest.fixture(autouse=True)
def images_and_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTLOPS_IMAGE", IMAGE)
    monkeypatch.setenv("MTLOPS_GPU_IMAGE", GPU_IMAGE)
    monkeypatch.chdir(REPO)


def kubernetes_executors(spec: dict) -> dict:
    return spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.parametrize(("pipeline", "register_step"), [("training", "exec-register-op"),
                                                      ("retraining", "exec-register-continual-op")])
def test_compiled_for_a_cluster_every_step_gets_storage_secrets_volumes_and_only_training_gets_gpu_nodes(
        tmp_path: Path, pipeline: str, register_step: str) -> None:
    settings = load_cluster_settings(CLUSTER)
    path = compile_pipelines(tmp_path, [pipeline], settings)[pipeline]
    docs = list(yaml.safe_load_all(path.read_text()))
    spec, platform = docs[0], docs[1]
    container = spec["deploymentSpec"]["executors"]["exec-train-op"]["container"]
    assert container["image"] == GPU_IMAGE
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    executors = kubernetes_executors(platform)
    assert set(executors) == set(spec["deploymentSpec"]["executors"])
    for name, ex in executors.items():
        assert ex["secretAsEnv"][0]["secretName"] == "mtlops-storage", name
        assert {e["envVar"] for e in ex["secretAsEnv"][0]["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
        assert {e["envVar"] for e in ex["configMapAsEnv"][0]["keyToEnv"]} == {"MTLOPS_DVC_REMOTE_URL",
                                                                           "MTLOPS_DVC_ENDPOINT_URL"}
        assert {m["constant"]: m["mountPath"] for m in ex["pvcMount"]} == {
            "mtlops-model-store": "/mnt/model-store", "mtlops-workspace": "/mnt/workspace"}
        assert ex["securityContext"]["runAsNonRoot"] is True
        gpu = name == "exec-train-op"
        assert ex["activeDeadlineSeconds"] == str(settings.gpu.timeout_s if gpu else settings.timeout_s), name
        assert ("nodeSelector" in ex) == gpu and ("tolerations" in ex) == gpu, name
    train = executors["exec-train-op"]
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][register_step]["container"]["env"]}
    assert env["BENTOML_HOME"] == "/mnt/model-store"  # the step registers into the mounted store


def test_compiled_for_a_cluster_without_gpus_training_runs_on_cpu_within_the_local_limits(tmp_path: Path) -> None:
    settings = load_cluster_settings(CLUSTER.with_name("cluster-local.yaml"))
    docs = list(yaml.safe_load_all(compile_pipelines(tmp_path, ["training"], settings)["training"].read_text()))
    resources = docs[0]["deploymentSpec"]["executors"]["exec-train-op"]["container"]["resources"]
    assert "accelerator" not in resources
    assert (resources["cpuLimit"], resources["memoryLimit"]) == (2.0, 6.0)
    train = kubernetes_executors(docs[1])["exec-train-op"]
    assert "nodeSelector" not in train and train["activeDeadlineSeconds"] == "7200"
    assert train["secretAsEnv"][0]["secretName"] == "mtlops-storage"


def test_compiled_without_cluster_settings_carries_no_kubernetes_platform(tmp_path: Path) -> None:
    path = compile_pipelines(tmp_path)["training"]
    assert len(list(yaml.safe_load_all(path.read_text()))) == 1


def test_bad_cluster_settings_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_text("gpu:\n  tolerations:\n    - key: nvidia.com/gpu\n      operator: Sometimes\nvolume: []\n")
    with pytest.raises(ConfigError) as err:
        load_cluster_settings(bad)
    assert "gpu.tolerations[0].operator" in str(err.value) and "volume: unknown field" in str(err.value)


def test_compile_command_writes_every_registered_pipeline_and_rejects_unknown_names(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["compile", "--out-dir", str(tmp_path), "--cluster", str(CLUSTER)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}_pipeline.yaml" for n in PIPELINES)
    result = CliRunner().invoke(app, ["compile", "--out-dir", str(tmp_path), "-p", "nope"])
    assert result.exit_code == 2
    assert "unknown pipeline(s) nope; known: training, retraining, monitoring, shadow" in result.output


class RecordingKfpClient:
    """Stands in for kfp.Client (no KFP API here); records calls and keeps the uploaded package's text."""

    instances: ClassVar[list[RecordingKfpClient]] = []
    pipelines: ClassVar[dict[str, str]] = {}  # name -> id, shared across instances like a server would

    def __init__(self, host: str, namespace: str, existing_token: str | None) -> None:
        self.host, self.namespace, self.token = host, namespace, existing_token
        self.calls: list[tuple[str, dict]] = []
        self.packages: list[list[dict]] = []  # the YAML documents of each upload
        RecordingKfpClient.instances.append(self)

    def _record(self, method: str, **kwargs: object) -> None:
        self.calls.append((method, kwargs))

    def get_pipeline_id(self, name: str) -> str | None:
        return self.pipelines.get(name)

    def upload_pipeline(self, path: str, pipeline_name: str) -> object:
        self._record("upload_pipeline", pipeline_name=pipeline_name)
        self.packages.append(list(yaml.safe_load_all(Path(path).read_text())))
        self.pipelines[pipeline_name] = f"pid-{pipeline_name}"
        return type("P", (), {"pipeline_id": self.pipelines[pipeline_name]})

    def list_pipeline_versions(self, pipeline_id: str, page_size: int, sort_by: str) -> object:
        version = type("V", (), {"pipeline_version_id": "vid-1"})
        return type("L", (), {"pipeline_versions": [version]})

    def upload_pipeline_version(self, path: str, pipeline_version_name: str, pipeline_id: str) -> object:
        self._record("upload_pipeline_version", pipeline_id=pipeline_id, version=pipeline_version_name)
        self.packages.append(list(yaml.safe_load_all(Path(path).read_text())))
        return type("V", (), {"pipeline_version_id": "vid-2"})

    def create_experiment(self, name: str) -> object:
        return type("E", (), {"experiment_id": f"eid-{name}"})

    def run_pipeline(self, **kwargs: object) -> object:
        self._record("run_pipeline", **kwargs)
        return type("R", (), {"run_id": "rid-1"})

    def create_recurring_run(self, **kwargs: object) -> object:
        self._record("create_recurring_run", **kwargs)
        return type("J", (), {"recurring_run_id": "jid-1"})


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> type[RecordingKfpClient]:
    import kfp

    RecordingKfpClient.instances, RecordingKfpClient.pipelines = [], {}
    monkeypatch.setattr(kfp, "Client", RecordingKfpClient)
    monkeypatch.setenv("MTLOPS_KFP_TOKEN", "t0ken")
    return RecordingKfpClient


def test_submit_with_mocked_kfp_client_uploads_the_cluster_pipeline_then_a_new_version_and_runs_it(
        client: type[RecordingKfpClient]) -> None:
    host = "http://kfp.example:8080"
    for _ in range(2):
        result = CliRunner().invoke(app, ["submit", "--host", host, "--config", "configs/flights.yaml"])
        assert result.exit_code == 0, result.output
        assert "submitted training: run rid-1" in result.output
    first, second = client.instances
    assert (first.host, first.namespace, first.token) == (host, "kubeflow", "t0ken")
    assert [c[0] for c in first.calls] == ["upload_pipeline", "run_pipeline"]
    assert [c[0] for c in second.calls] == ["upload_pipeline_version", "run_pipeline"]
    assert second.calls[0][1]["pipeline_id"] == "pid-mtlops-training"
    package, platform = first.packages[0]
    assert package["pipelineInfo"]["name"] == "mtlops-training"
    assert package["deploymentSpec"]["executors"]["exec-train-op"]["container"]["image"] == GPU_IMAGE
    assert kubernetes_executors(platform)["exec-train-op"]["nodeSelector"]  # compiled with the cluster settings
    run = second.calls[1][1]
    assert (run["pipeline_id"], run["version_id"], run["experiment_id"]) == ("pid-mtlops-training", "vid-2",
                                                                            "eid-mtlops")
    params = run["params"]
    assert config_from_yaml(params["config_yaml"]).data.name == "flights"
    assert params["data_root"] == "/app" and params["git_revision"]


def test_schedule_with_mocked_kfp_client_creates_one_recurring_run_without_catch_up(
        client: type[RecordingKfpClient]) -> None:
    result = CliRunner().invoke(app, ["schedule", "--host", "http://kfp", "--pipeline", "training",
                                      "--cron", "0 0 6 * * *", "--param", "git_revision=abc"])
    assert result.exit_code == 0, result.output
    (_, job), = [c for c in client.instances[0].calls if c[0] == "create_recurring_run"]
    assert job["cron_expression"] == "0 0 6 * * *"
    assert job["max_concurrency"] == 1 and job["no_catchup"] is True and job["enabled"] is True
    assert job["params"]["git_revision"] == "abc"  # --param wins over the detected revision


@pytest.mark.parametrize(("args", "message"), [
    (["--cron", "0 6 * * *"], "needs 6 fields"),
    (["--cron", "0 0 6 * * *", "--pipeline", "nope"], "known: training"),
    (["--cron", "0 0 6 * * *", "--pipeline", "training", "--param", "epochs=3"], "no parameter(s) epochs"),
    (["--cron", "0 0 6 * * *", "--pipeline", "training", "--param", "oops"], "expected NAME=VALUE"),
])
def test_schedule_with_mocked_kfp_client_rejects_bad_input_before_calling_the_cluster(
        client: type[RecordingKfpClient], args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["schedule", "--host", "http://kfp", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert all(not c.calls for c in client.instances)
