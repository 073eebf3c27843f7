"""The training pipeline: configure -> ingest -> validate -> split -> train -> evaluate -> export -> register.

Each kfp component is a thin wrapper: it maps typed artifacts to paths and calls
the plain function in `components.steps`. The same pipeline object runs through
`kfp.local` and compiles to IR YAML for a Kubeflow cluster.

`configure` hands each later step only the parts of the config it reads (`components.steps.STEP_READS`):
a step's cache key follows its inputs, so an edit of an alert threshold, the monitoring settings or the
promotion gate re-runs only the steps that read it (the gate: `register`), never the training.

Images come from the environment so a user points them at their registry:
MTLOPS_IMAGE (every step) and MTLOPS_GPU_IMAGE (the training step).
"""

# no `from __future__ import annotations`: kfp reads the annotations as types

import os
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from pipelines.cluster import ClusterSettings, apply_cluster_settings

DEFAULT_IMAGE = "ghcr.io/mtlops/mtlops:0.1.0"
DEFAULT_GPU_IMAGE = "ghcr.io/mtlops/mtlops-cuda:0.1.0"
PIPELINE_NAME = "mtlops-training"


def configure_op(config_yaml: str) -> NamedTuple("StepConfigs", [("ingest", str), ("validate", str), ("split", str),
                                                                  ("train", str), ("export", str), ("register", str)]):
    # the NamedTuple is written here, not named at module level: kfp runs this function's source alone
    from collections import namedtuple

    from components.steps import step_configs

    given = step_configs(config_yaml, ("ingest", "validate", "split", "train", "export", "register"))
    return namedtuple("StepConfigs", list(given))(**given)


def ingest_op(config_yaml: str, data_root: str, git_revision: str, dataset: Output[Dataset]) -> None:
    from components.steps import ingest

    lineage = ingest(config_yaml, data_root, dataset.path, git_revision)
    dataset.metadata.update(lineage)


def validate_op(config_yaml: str, dataset: Input[Dataset], report: Output[Artifact]) -> None:
    from components.steps import validate

    report.metadata.update(validate(config_yaml, dataset.path, report.path))


def split_op(config_yaml: str, dataset: Input[Dataset], report: Input[Artifact], train: Output[Dataset],
             validation: Output[Dataset], test: Output[Dataset]) -> None:
    from components.steps import split

    counts = split(config_yaml, dataset.path, train.path, validation.path, test.path)
    for art, name in ((train, "train"), (validation, "validation"), (test, "test")):
        art.metadata["rows"] = counts[name]


def train_op(config_yaml: str, train: Input[Dataset], validation: Input[Dataset], model: Output[Model],
             train_metrics: Output[Metrics]) -> None:
    from components.steps import train_model

    summary = train_model(config_yaml, train.path, validation.path, model.path)
    model.metadata["framework"] = "pytorch"
    for key in ("best_epoch", "epochs_run", "samples_per_s", "wall_s", "train_flops"):
        train_metrics.log_metric(key, float(summary[key]))
    for task, values in summary["validation"].items():
        for metric, value in values.items():
            train_metrics.log_metric(f"validation.{task}.{metric}", float(value))


def evaluate_op(model: Input[Model], train: Input[Dataset], test: Input[Dataset], metrics: Output[Metrics],
                metrics_json: Output[Artifact]) -> None:
    from components.steps import evaluate_model

    result = evaluate_model(model.path, train.path, test.path, metrics_json.path)
    for kind in ("test", "baseline"):
        for task, values in result[kind].items():
            for metric, value in values.items():
                metrics.log_metric(f"{kind}.{task}.{metric}", float(value))


def export_op(config_yaml: str, model: Input[Model], train: Input[Dataset], test: Input[Dataset],
              onnx_model: Output[Model]) -> None:
    from components.steps import export_model

    parity = export_model(config_yaml, model.path, train.path, test.path, onnx_model.path)
    onnx_model.metadata.update({"framework": "onnx", "parity_rows": parity["rows"],
                                "parity_max_abs_diff": parity["max_abs_diff"]})


def register_op(config_yaml: str, onnx_model: Input[Model], metrics_json: Input[Artifact], dataset: Input[Dataset],
                test: Input[Dataset], decision: Output[Artifact]) -> str:
    from components.steps import register_model

    lineage = {k: dataset.metadata.get(k) for k in ("data_version", "partitions", "rows", "git_revision")}
    out = register_model(config_yaml, onnx_model.path, metrics_json.path, test.path, lineage, decision.path)
    decision.metadata.update({"tag": out["tag"], "promoted": out["promoted"], "shadowed": out["shadowed"]})
    return out["tag"]


def images(image: str | None = None, gpu_image: str | None = None) -> tuple[str, str]:
    return (image or os.environ.get("MTLOPS_IMAGE", DEFAULT_IMAGE),
            gpu_image or os.environ.get("MTLOPS_GPU_IMAGE", DEFAULT_GPU_IMAGE))


def component(fn, image: str):  # type: ignore[no-untyped-def]
    # the image has the project installed: no pip install at step start
    return dsl.component(fn, base_image=image, install_kfp_package=False)


def build_pipeline(image: str | None = None, gpu_image: str | None = None,  # type: ignore[no-untyped-def]
                   cluster: ClusterSettings | None = None):
    """The pipeline object, with components built for the given images; with `cluster`, every
    step also carries the Kubernetes settings a real cluster needs (pipelines/cluster.py)."""
    image, gpu_image = images(image, gpu_image)
    configure_c = component(configure_op, image)
    ingest_c, validate_c, split_c = (component(f, image) for f in (ingest_op, validate_op, split_op))
    train_c, evaluate_c = component(train_op, gpu_image), component(evaluate_op, image)
    export_c, register_c = component(export_op, image), component(register_op, image)

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, evaluate, export and register one multi-task model.")
    def training_pipeline(config_yaml: str, data_root: str, git_revision: str = "unknown") -> str:
        configure_t = configure_c(config_yaml=config_yaml)
        given = configure_t.outputs
        ingest_t = ingest_c(config_yaml=given["ingest"], data_root=data_root, git_revision=git_revision)
        validate_t = validate_c(config_yaml=given["validate"], dataset=ingest_t.outputs["dataset"])
        split_t = split_c(config_yaml=given["split"], dataset=ingest_t.outputs["dataset"],
                          report=validate_t.outputs["report"])
        train_t = train_c(config_yaml=given["train"], train=split_t.outputs["train"],
                          validation=split_t.outputs["validation"])
        train_t.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        train_t.set_cpu_limit("8").set_memory_limit("32G")
        evaluate_t = evaluate_c(model=train_t.outputs["model"], train=split_t.outputs["train"],
                                test=split_t.outputs["test"])
        export_t = export_c(config_yaml=given["export"], model=train_t.outputs["model"], train=split_t.outputs["train"],
                            test=split_t.outputs["test"])
        register_t = register_c(config_yaml=given["register"], onnx_model=export_t.outputs["onnx_model"],
                                metrics_json=evaluate_t.outputs["metrics_json"],
                                dataset=ingest_t.outputs["dataset"], test=split_t.outputs["test"])
        tasks = (configure_t, ingest_t, validate_t, split_t, train_t, evaluate_t, export_t, register_t)
        for task in tasks:
            task.set_caching_options(True)
        # retry what can fail transiently (remote storage, a preempted GPU node); a failed
        # validation or parity check is deterministic and fails at once
        for task in (ingest_t, train_t, register_t):
            task.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
        if cluster:
            apply_cluster_settings(cluster, tasks)
        return register_t.outputs["Output"]

    return training_pipeline
