"""The retraining pipeline: prepare (new window + older rows + old held-out) -> validate -> train
-> evaluate -> export -> register behind the continual gate.

The steps after `prepare` are the training pipeline's own components; what makes a run
continual is its data and its config, both from `prepare`: it finds the current champion, picks
the older rows `retraining.train_on` asks for, and hands the later steps a config that
warm-starts from the champion (`training.warm_start`) when that is `warm_replay`. The gate checks
the new window's last rows (after every training row) and the old window (no forgetting).

`run_in_process` runs the same steps, in the same order and with the same files between them, in
this Python: kfp.local starts a Python per step, and at replay sizes those six starts (imports) cost
more than the training, so the policy replay runs its retrains this way.
"""

# no `from __future__ import annotations`: kfp reads the annotations as types

import uuid
from pathlib import Path
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.config.schema import ProjectConfig, config_to_yaml
from pipelines.cluster import ClusterSettings, apply_cluster_settings
from pipelines.local import LocalRun
from pipelines.training import component, evaluate_op, export_op, images, train_op, validate_op

PIPELINE_NAME = "mtlops-retraining"


def prepare_op(config_yaml: str, data_root: str, new_start: str, new_end: str, git_revision: str,
               train: Output[Dataset], validation: Output[Dataset], new_test: Output[Dataset],
               old_test: Output[Dataset]) -> NamedTuple("RunConfigs", [("validate_config", str), ("train_config", str),
                                                                       ("export_config", str),
                                                                       ("register_config", str)]):
    """Returns the config each later step runs with: the part of the run's config it reads (warm start
    from the current champion); `<step>_config`, as `train` names the training rows."""
    from collections import namedtuple

    from components.steps import CONTINUAL_LINEAGE, prepare_continual

    out = prepare_continual(config_yaml, data_root, new_start, new_end, train.path, validation.path,
                            new_test.path, old_test.path, git_revision)
    train.metadata.update({k: out[k] for k in CONTINUAL_LINEAGE if out[k] is not None})
    for art, name in ((train, "train"), (validation, "validation"), (new_test, "new_test"), (old_test, "old_test")):
        art.metadata["rows"] = out["rows"][name]
    given = {f"{step}_config": text for step, text in out["step_configs"].items()}
    return namedtuple("RunConfigs", list(given))(**given)


def register_continual_op(config_yaml: str, onnx_model: Input[Model], metrics_json: Input[Artifact],
                          train: Input[Dataset], new_test: Input[Dataset], old_test: Input[Dataset],
                          decision: Output[Artifact]) -> str:
    from components.steps import CONTINUAL_LINEAGE, register_model

    lineage = {k: train.metadata.get(k) for k in CONTINUAL_LINEAGE}
    out = register_model(config_yaml, onnx_model.path, metrics_json.path, new_test.path, lineage, decision.path,
                         old_test_path=old_test.path)
    decision.metadata.update({"tag": out["tag"], "promoted": out["promoted"], "shadowed": out["shadowed"]})
    return out["tag"]


def build_pipeline(image: str | None = None, gpu_image: str | None = None,  # type: ignore[no-untyped-def]
                   cluster: ClusterSettings | None = None):
    image, gpu_image = images(image, gpu_image)
    prepare_c, validate_c = component(prepare_op, image), component(validate_op, image)
    train_c, evaluate_c = component(train_op, gpu_image), component(evaluate_op, image)
    export_c, register_c = component(export_op, image), component(register_continual_op, image)

    @dsl.pipeline(name=PIPELINE_NAME, description="Warm-start retraining on a new window with replay of old "
                                                   "data; promoted only if no task forgets the old window.")
    def retraining_pipeline(config_yaml: str, data_root: str, new_start: str, new_end: str,
                            git_revision: str = "unknown") -> str:
        prepare_t = prepare_c(config_yaml=config_yaml, data_root=data_root, new_start=new_start, new_end=new_end,
                              git_revision=git_revision)
        given = prepare_t.outputs  # warm start from the champion the run found
        validate_t = validate_c(config_yaml=given["validate_config"], dataset=prepare_t.outputs["train"])
        train_t = train_c(config_yaml=given["train_config"], train=prepare_t.outputs["train"],
                          validation=prepare_t.outputs["validation"]).after(validate_t)
        train_t.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        train_t.set_cpu_limit("8").set_memory_limit("32G")
        evaluate_t = evaluate_c(model=train_t.outputs["model"], train=prepare_t.outputs["train"],
                                test=prepare_t.outputs["new_test"])
        export_t = export_c(config_yaml=given["export_config"], model=train_t.outputs["model"],
                            train=prepare_t.outputs["train"], test=prepare_t.outputs["new_test"])
        register_t = register_c(config_yaml=given["register_config"], onnx_model=export_t.outputs["onnx_model"],
                                metrics_json=evaluate_t.outputs["metrics_json"], train=prepare_t.outputs["train"],
                                new_test=prepare_t.outputs["new_test"], old_test=prepare_t.outputs["old_test"])
        tasks = (prepare_t, validate_t, train_t, evaluate_t, export_t, register_t)
        for task in tasks:
            task.set_caching_options(False)  # the champion it starts from changes between runs
        for task in (prepare_t, train_t, register_t):
            task.set_retry(num_retries=2, backoff_duration="30s", backoff_factor=2.0)
        if cluster:
            apply_cluster_settings(cluster, tasks)
        return register_t.outputs["Output"]

    return retraining_pipeline


def run_in_process(cfg: ProjectConfig, data_root: Path, pipeline_root: Path, new_start: str, new_end: str,
                   git_revision: str = "unknown") -> LocalRun:
    """`build_pipeline`'s steps called in this process, in its order, each output a file under a new run
    folder in `pipeline_root`; no retries (a failing step raises). tests/test_pipeline_e2e.py checks that
    it trains and gates the same challenger as kfp.local."""
    from components import steps

    run_dir = pipeline_root.resolve() / f"{PIPELINE_NAME}-in-process-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(parents=True)
    path = {name: str(run_dir / name) for name in ("train", "validation", "new_test", "old_test", "report",
                                                     "model", "metrics_json", "onnx_model", "decision")}
    prepared = steps.prepare_continual(config_to_yaml(cfg), str(data_root.resolve()), new_start, new_end,
                                       path["train"], path["validation"], path["new_test"], path["old_test"],
                                       git_revision)
    given = prepared["step_configs"]
    steps.validate(given["validate"], path["train"], path["report"])
    summary = steps.train_model(given["train"], path["train"], path["validation"], path["model"])
    metrics = steps.evaluate_model(path["model"], path["train"], path["new_test"], path["metrics_json"])
    steps.export_model(given["export"], path["model"], path["train"], path["new_test"], path["onnx_model"])
    decision = steps.register_model(given["register"], path["onnx_model"], path["metrics_json"], path["new_test"],
                                    {k: prepared[k] for k in steps.CONTINUAL_LINEAGE}, path["decision"],
                                    old_test_path=path["old_test"])
    return LocalRun(tag=decision["tag"], run_dir=run_dir, artifacts={k: Path(v) for k, v in path.items()},
                    decision=decision, metrics=metrics, train_metrics={"train_flops": summary["train_flops"],
                                                                       "wall_s": summary["wall_s"]})
