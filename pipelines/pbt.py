"""Population-Based Training of the task weights as a Kubeflow pipeline (docs/methods.md).

Each round fans the members out with `dsl.ParallelFor` (one pod per member on a cluster, GPU-capable image),
then one step exploits/explores over the collected member states and writes the next population. Rounds are
unrolled when the pipeline is built (`pbt_pipeline(rounds)`); the last step keeps the best member and returns
its weight schedule. Every step is a thin wrapper over `components.training.weight_search`, which also runs in-process.
"""

# no `from __future__ import annotations`: kfp reads the annotations as types, and typing.List is the list
# type its Collected inputs and list outputs are documented with
# ruff: noqa: UP006, UP035

from typing import List

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from pipelines.training import component, images


def pbt_configure_op(config_yaml: str) -> str:
    """The part of the config the PBT steps read (`STEP_READS["pbt"]`): an edit of anything else leaves
    their inputs, so their cache keys, unchanged."""
    from components.steps import step_configs

    return step_configs(config_yaml, ("pbt",))["pbt"]


def pbt_init_op(config_yaml: str, population: int, seed: int, population_dir: Output[Artifact]) -> List[dict]:
    import os
    import random

    from components.config.schema import config_from_yaml
    from components.training.weight_search import initial_weights

    cfg = config_from_yaml(config_yaml)
    os.makedirs(population_dir.path, exist_ok=True)
    weights = initial_weights([t.name for t in cfg.tasks], population, random.Random(seed))
    return [{"member": i, "weights": w} for i, w in enumerate(weights)]


def pbt_member_op(config_yaml: str, train: Input[Dataset], validation: Input[Dataset], member: dict,
                  population_dir: Input[Artifact], interval: int, round_index: int, state: Output[Model]) -> float:
    import pandas as pd

    from components.config.schema import config_from_yaml
    from components.training.weight_search import run_member_round

    score = run_member_round(config_from_yaml(config_yaml), pd.read_parquet(train.path),
                             pd.read_parquet(validation.path), member, population_dir.path, interval, round_index,
                             state.path)
    state.metadata.update({"member": member["member"], "score": score})
    return score


def pbt_exploit_op(config_yaml: str, states: Input[List[Model]], replace: int, seed: int, round_index: int,
                   population_dir: Output[Artifact]) -> List[dict]:
    from components.config.schema import config_from_yaml
    from components.training.weight_search import exploit_files

    return exploit_files(config_from_yaml(config_yaml), [s.path for s in states], replace, seed * 1000 + round_index,
                         population_dir.path)


def pbt_select_op(config_yaml: str, states: Input[List[Model]], best: Output[Model]) -> dict:
    from components.config.schema import config_from_yaml
    from components.training.weight_search import select_best

    return select_best(config_from_yaml(config_yaml), [s.path for s in states], best.path)


def pbt_pipeline(rounds: int, image: str | None = None, gpu_image: str | None = None):  # type: ignore[no-untyped-def]
    """A pipeline of `rounds` rounds; its inputs are the config YAML and the URIs of the train and validation
    parquet files (imported as Datasets). Members train in `gpu_image`, the other steps in `image`."""
    image, gpu_image = images(image, gpu_image)
    configure_c = component(pbt_configure_op, image)
    init_c, member_c = component(pbt_init_op, image), component(pbt_member_op, gpu_image)
    exploit_c, select_c = component(pbt_exploit_op, image), component(pbt_select_op, image)

    # the rounds are a pipeline of their own, given the configure step's output as an input: kfp.local (2.17)
    # replaces every task output a ParallelFor body reads with the loop item, but not a pipeline input
    @dsl.pipeline(name="mtlops-pbt-rounds", description="The rounds of population-based training")
    def rounds_pipeline(config_yaml: str, train_uri: str, validation_uri: str, population: int, interval: int,
                        replace: int, seed: int) -> dict:
        train = dsl.importer(artifact_uri=train_uri, artifact_class=Dataset, reimport=False)
        validation = dsl.importer(artifact_uri=validation_uri, artifact_class=Dataset, reimport=False)
        init = init_c(config_yaml=config_yaml, population=population, seed=seed)
        members, population_dir = init.outputs["Output"], init.outputs["population_dir"]
        for r in range(rounds):
            with dsl.ParallelFor(members) as member:
                step = member_c(config_yaml=config_yaml, train=train.output, validation=validation.output,
                                member=member, population_dir=population_dir, interval=interval, round_index=r)
            states = dsl.Collected(step.outputs["state"])
            if r == rounds - 1:
                return select_c(config_yaml=config_yaml, states=states).outputs["Output"]
            exploit = exploit_c(config_yaml=config_yaml, states=states, replace=replace, seed=seed, round_index=r)
            members, population_dir = exploit.outputs["Output"], exploit.outputs["population_dir"]
        raise ValueError("rounds must be at least 1")

    @dsl.pipeline(name="mtlops-pbt", description="Population-based training of task weights")
    def pipeline(config_yaml: str, train_uri: str, validation_uri: str, population: int = 8, interval: int = 1,
                 replace: int = 2, seed: int = 0) -> dict:
        given = configure_c(config_yaml=config_yaml).output
        return rounds_pipeline(config_yaml=given, train_uri=train_uri, validation_uri=validation_uri,
                               population=population, interval=interval, replace=replace, seed=seed).output

    return pipeline
