"""The compiled IR YAML is what a Kubeflow cluster needs: GPU on training, retries, configured images."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.local import compile_pipeline


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
                              ("ingest", "validate", "split", "train", "evaluate", "export", "register")}
    for name, ex in executors.items():
        image = ex["container"]["image"]
        assert image.startswith("registry.example.com/team/mtlops"), name
        assert "pip install" not in " ".join(ex["container"]["command"]), name  # the image has the project


def test_steps_are_wired_in_order(compiled: dict) -> None:
    tasks = compiled["root"]["dag"]["tasks"]
    assert tasks["train-op"]["dependentTasks"] == ["split-op"]
    assert set(tasks["register-op"]["dependentTasks"]) == {"evaluate-op", "export-op", "ingest-op", "split-op"}
    assert tasks["split-op"]["dependentTasks"] == ["ingest-op", "validate-op"]
