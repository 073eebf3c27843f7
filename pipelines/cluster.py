"""What a compiled pipeline needs on a real Kubernetes cluster, applied with kfp-kubernetes.

Locally (`kfp.local`) none of this exists; compiling for a cluster adds to every step the DVC
remote settings (ConfigMap) and credentials (Secret) as env vars, the shared volumes (model
store, Evidently workspace) with the env vars that point at them, a non-root security context
and a timeout; steps that request a GPU also get the GPU nodes' selector and tolerations and
their own, longer timeout. The settings are one YAML file (`infra/kfp/cluster.yaml`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import yaml
from kfp import kubernetes
from kfp.dsl import PipelineTask
from pydantic import Field, ValidationError

from components.config.schema import ConfigError, Strict, format_errors

DEFAULT_CLUSTER_SETTINGS = Path("infra/kfp/cluster.yaml")


class EnvFrom(Strict):
    """Keys of a Secret or ConfigMap exposed as env vars: {key in the object: env var name}."""

    name: str
    keys: dict[str, str] = Field(min_length=1)


class Volume(Strict):
    pvc: str
    mount_path: str = Field(pattern=r"^/")
    env: dict[str, str] = Field(default_factory=dict)  # env vars that point the step at the volume, e.g. BENTOML_HOME


class Toleration(Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None


class Limits(Strict):
    cpu: str | None = None  # e.g. "2"
    memory: str | None = None  # e.g. "6G"


class GpuPlacement(Strict):
    enabled: bool = True  # false on a cluster without GPUs (kind, minikube): GPU steps run on CPU
    limits: Limits | None = None  # replace the GPU steps' CPU/memory limits, e.g. to fit a laptop's node
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    timeout_s: int = Field(21600, gt=0)


class ClusterSettings(Strict):
    data_root: str = "/app"  # the project folder (configs + DVC pointers) inside the component image
    secret_env: list[EnvFrom] = Field(default_factory=list)
    config_map_env: list[EnvFrom] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)
    run_as_user: int = Field(10001, gt=0)  # the image's user; never root
    timeout_s: int = Field(3600, gt=0)
    gpu: GpuPlacement = Field(default_factory=GpuPlacement)
    image_pull_secrets: list[str] = Field(default_factory=list)


def load_cluster_settings(path: Path = DEFAULT_CLUSTER_SETTINGS) -> ClusterSettings:
    if not path.is_file():
        raise ConfigError(f"cluster settings not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid cluster settings {path}: not valid YAML: {err}") from None
    try:
        return ClusterSettings.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(format_errors(err, str(path), "cluster settings")) from None


def requests_gpu(task: PipelineTask) -> bool:
    resources = task.container_spec.resources if task.container_spec else None
    return bool(resources and resources.accelerator_type and resources.accelerator_count not in (None, "0"))


def apply_cluster_settings(settings: ClusterSettings, tasks: Iterable[PipelineTask]) -> None:
    """Annotate each task for Kubernetes; the pipelines call this with all their tasks."""
    for task in tasks:
        for source in settings.secret_env:
            kubernetes.use_secret_as_env(task, source.name, source.keys)
        for source in settings.config_map_env:
            kubernetes.use_config_map_as_env(task, source.name, source.keys)
        for volume in settings.volumes:
            kubernetes.mount_pvc(task, volume.pvc, volume.mount_path)
            for name, value in volume.env.items():
                task.set_env_variable(name, value)
        if settings.image_pull_secrets:
            kubernetes.set_image_pull_secrets(task, settings.image_pull_secrets)
        kubernetes.set_security_context(task, run_as_user=settings.run_as_user, run_as_group=settings.run_as_user,
                                        run_as_non_root=True)
        if requests_gpu(task):
            place_gpu_step(task, settings.gpu)
        else:
            kubernetes.set_timeout(task, settings.timeout_s)


def place_gpu_step(task: PipelineTask, gpu: GpuPlacement) -> None:
    """On the GPU nodes (selector, tolerations), or, on a cluster without GPUs, on CPU; with its
    own limits and timeout."""
    if gpu.limits and gpu.limits.cpu:
        task.set_cpu_limit(gpu.limits.cpu)
    if gpu.limits and gpu.limits.memory:
        task.set_memory_limit(gpu.limits.memory)
    if gpu.enabled:
        for key, value in gpu.node_selector.items():
            kubernetes.add_node_selector(task, key, value)
        for tol in gpu.tolerations:
            kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
    else:
        task.container_spec.resources.accelerator_type = None
        task.container_spec.resources.accelerator_count = None
    kubernetes.set_timeout(task, gpu.timeout_s)
