"""The PBT pipeline compiles, and runs through kfp.local with a tiny population: members fan out with
ParallelFor, the bottom member becomes a copy of the top one, the best member's weight schedule comes back."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from kfp import compiler, local

from components.config.schema import config_to_yaml
from pipelines.pbt import pbt_pipeline
from tests.conftest import FLIGHTS, config_with, window


def test_pbt_pipeline_compiles_with_a_parallel_for_per_round(tmp_path: Path) -> None:
    compiler.Compiler().compile(pbt_pipeline(rounds=2), str(tmp_path / "pbt.yaml"))
    spec = yaml.safe_load((tmp_path / "pbt.yaml").read_text())
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    loops = [name for dag in dags for name, task in dag["tasks"].items() if "parameterIterator" in task]
    assert len(loops) == 2, loops  # one fan-out per round


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping to run a task that uses custom")
def test_pbt_pipeline_runs_locally_with_a_tiny_population(flights_frame: pd.DataFrame, tmp_path: Path) -> None:
    cfg = config_with(FLIGHTS, model={"hidden": [8]}, training={"epochs": 1, "threads": 1, "batch_size": 1024})
    window(flights_frame, cfg, "train").iloc[::6].to_parquet(tmp_path / "train.parquet")
    window(flights_frame, cfg, "validation").iloc[::6].to_parquet(tmp_path / "val.parquet")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    task = pbt_pipeline(rounds=2)(config_yaml=config_to_yaml(cfg), train_uri=str(tmp_path / "train.parquet"),
                                  validation_uri=str(tmp_path / "val.parquet"), population=3, replace=1)
    result = task.output
    assert len(result["schedule"]) == 2 and 0.5 < result["score"] < 1
    exploited = [torch.load(p, weights_only=True) for p in (tmp_path / "root").rglob("member-*.pt")]
    assert len(exploited) == 3
    copies = [s for s in exploited if s["copied_from"] != s["member"]]
    assert len(copies) == 1  # Q = 1: the bottom member now carries the top member's model and lineage
    top = next(s for s in exploited if s["member"] == copies[0]["copied_from"])
    assert copies[0]["schedule"] == top["schedule"]
    for name, tensor in top["model"].items():
        assert torch.equal(tensor, copies[0]["model"][name])


def test_the_pbt_steps_read_only_what_their_configure_step_hands_them(flights_frame: pd.DataFrame, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """What every PBT step does (`components.training.weight_search`), run in this process on the config
    `pbt_configure_op` hands them, reads `STEP_READS["pbt"]` and nothing else of the config."""
    from components import steps
    from components.config.schema import config_from_yaml
    from components.training.weight_search import exploit_files, initial_weights, run_member_round, select_best
    from pipelines.pbt import pbt_configure_op
    from tests.config_reads import ConfigReads

    cfg = config_with(FLIGHTS, model={"hidden": [8]}, training={"epochs": 1, "threads": 1, "batch_size": 1024})
    train, val = (window(flights_frame, cfg, name).iloc[::12] for name in ("train", "validation"))
    reads = ConfigReads(monkeypatch)
    population = tmp_path / "population"
    population.mkdir()
    with reads.step("pbt"):
        given = config_from_yaml(pbt_configure_op(config_to_yaml(cfg)))
        members = [{"member": i, "weights": w} for i, w in enumerate(initial_weights(
            [t.name for t in given.tasks], 2, random.Random(0)))]
        states = [str(tmp_path / f"state-{m['member']}.pt") for m in members]
        for member, state in zip(members, states, strict=True):
            run_member_round(given, train, val, member, str(population), 1, 0, state)
        exploit_files(given, states, 1, 0, str(tmp_path / "next"))
        select_best(given, states, str(tmp_path / "best.pt"))
    assert reads.mismatches("pbt", steps.STEP_READS["pbt"], cfg) == []
