"""The compiled IR YAML is what a Kubeflow cluster needs: GPU on training, retries, configured images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from components.config.schema import ProjectConfig, config_to_yaml
from pipelines.local import compile_pipeline
from pipelines.training import configure_op
from tests.conftest import FLIGHTS, config_with


@pytest.fixture
def compiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("MTLOPS_IMAGE", "registry.example.com/team/mtlops:1.2.3")
    monkeypatch.setenv("MTLOPS_GPU_IMAGE", "registry.example.com/team/mtlops-cuda:1.2.3")
    return yaml.safe_load(compile_pipeline(tmp_path / "p.yaml").read_text())


def test_train_step_requests_a_gpu_and_retries(compiled: dict) -> None:
    executors = compiled["deploymentSpec"]["executors"]
    train = executors["exec-train-op"]["container"]
    assert train["image"] == "registry.example.com/team/mtlops-cuda:1.2.3"
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    tasks = compiled["root"]["dag"]["tasks"]
    assert tasks["train-op"]["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["train-op"]["cachingOptions"]["enableCache"] is True
    assert "retryPolicy" not in tasks["validate-op"]  # deterministic failures are not retried


def test_every_step_uses_the_configured_image(compiled: dict) -> None:
    executors = compiled["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{s}-op" for s in
                              ("configure", "ingest", "validate", "split", "train", "evaluate", "export", "register")}
    for name, ex in executors.items():
        image = ex["container"]["image"]
        assert image.startswith("registry.example.com/team/mtlops"), name
        assert "pip install" not in " ".join(ex["container"]["command"]), name  # the image has the project


def test_steps_are_wired_in_order(compiled: dict) -> None:
    tasks = compiled["root"]["dag"]["tasks"]
    assert tasks["train-op"]["dependentTasks"] == ["configure-op", "split-op"]
    assert set(tasks["register-op"]["dependentTasks"]) == {"configure-op", "evaluate-op", "export-op", "ingest-op",
                                                           "split-op"}
    assert tasks["split-op"]["dependentTasks"] == ["configure-op", "ingest-op", "validate-op"]
    takes_whole_config = [name for name, t in tasks.items()
                          if t["inputs"].get("parameters", {}).get("config_yaml", {}).get("componentInputParameter")]
    assert takes_whole_config == ["configure-op"]


def kfp_cache_keys(ir: dict, arguments: dict[str, str], outputs: dict[str, dict[str, str]]) -> dict[str, str]:
    """Each task's cache key as a Kubeflow cluster computes it (kfp's cachekey.proto: the container's image,
    command and arguments, the input parameters' values, the names of the input artifacts, the output
    specs), given the run's `arguments` and the parameter `outputs` of the tasks that make some. An input
    artifact is named by the key of the task that made it: a task found in the cache hands on the
    artifacts it made before, so a task re-runs exactly when a task it reads from re-ran."""
    tasks, keys = ir["root"]["dag"]["tasks"], {}

    def key(name: str) -> str:
        if name not in keys:
            task = tasks[name]
            component = ir["components"][task["componentRef"]["name"]]
            container = ir["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
            parameters = {}
            for p, spec in task["inputs"].get("parameters", {}).items():
                if "componentInputParameter" in spec:
                    parameters[p] = arguments[spec["componentInputParameter"]]
                elif "taskOutputParameter" in spec:
                    source = spec["taskOutputParameter"]
                    parameters[p] = outputs[source["producerTask"]][source["outputParameterKey"]]
                else:
                    parameters[p] = spec["runtimeValue"]["constant"]
            made = {a: s["taskOutputArtifact"] for a, s in task["inputs"].get("artifacts", {}).items()}
            artifacts = {a: f"{key(m['producerTask'])}/{m['outputArtifactKey']}" for a, m in made.items()}
            cache_key = {"inputArtifactNames": artifacts, "inputParameterValues": parameters,
                         "outputs": component.get("outputDefinitions", {}),
                         "containerSpec": {"image": container["image"],
                                           "cmdArgs": container["command"] + container.get("args", [])}}
            keys[name] = hashlib.sha256(json.dumps(cache_key, sort_keys=True).encode()).hexdigest()
        return keys[name]

    for name in tasks:
        key(name)
    return keys


def training_cache_keys(compiled: dict, cfg: ProjectConfig) -> dict[str, str]:
    config_yaml = config_to_yaml(cfg)
    given = configure_op(config_yaml)  # what the configure step returns, run here
    arguments = {"config_yaml": config_yaml, "data_root": "/data", "git_revision": "abc123"}
    return kfp_cache_keys(compiled, arguments, {"configure-op": given._asdict()})


@pytest.mark.parametrize(("edit", "rerun"), [
    ({"alerts": {"min_rows": 50, "drift_share": 0.3}, "monitoring": {"sample_size": 5000},
      "retraining": {"replay_rows": 123}, "prometheus": {"latency_p99_seconds": 0.3},
      "serving": {"max_rows": 7, "max_batch_size": 64}}, set()),
    ({"registry": {"default_tolerance": 0.05, "passing_challenger": "shadow"}}, {"register-op"}),
    ({"training": {"lr": 0.001}}, {"train-op", "evaluate-op", "export-op", "register-op"}),
    ({"leakage": {"max_skill": 0.95}}, {"validate-op", "split-op", "train-op", "evaluate-op", "export-op",
                                         "register-op"}),
])
def test_an_edit_re_runs_only_the_steps_that_read_it(compiled: dict, edit: dict, rerun: set[str]) -> None:
    """Each step is handed only the config it reads (configure): an edit of the alerts re-runs no
    training step on a cluster with caching, a gate edit only the registration, a learning rate the
    training and what follows it, never the data steps."""
    before = training_cache_keys(compiled, config_with(FLIGHTS))
    after = training_cache_keys(compiled, config_with(FLIGHTS, **edit))
    assert before.keys() == after.keys()
    assert {task for task in before if before[task] != after[task]} == rerun | {"configure-op"}
