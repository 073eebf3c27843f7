"""Data-parallel training under torchrun: 2 CPU processes over gloo end with identical weights, whether
DistributedDataParallel reduces the gradients (one weighted sum, also with heads left out after an MT2ST
switch), a Jacobian method averages its per-task gradients before aggregating them, or Rep-MTL's double
backprop is averaged after the backward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from components.config.schema import config_to_yaml
from tests.conftest import FLIGHTS, config_with, window

_CHILD = """
import sys
from pathlib import Path
import pandas as pd
from components.config.schema import config_from_yaml
from components.training.train import train
cfg = config_from_yaml(Path(sys.argv[1]).read_text())
train(cfg, pd.read_parquet(sys.argv[2]), pd.read_parquet(sys.argv[3]), Path(sys.argv[4]), progress=False)
"""


@pytest.mark.parametrize(("training", "sync", "port"), [
    ({"strategy": {"name": "uw"}}, "ddp", 29517),
    ({"strategy": {"name": "pcgrad"}}, "after backward", 29518),
    # after the switch only the primary head is computed: DDP must find the unused heads
    ({"mt2st": {"switch": {"epoch": 1}}}, "ddp", 29519),
    ({"rep_mtl": {"lambda_tsr": 0.1, "lambda_csa": 0.1}}, "after backward", 29520),  # double backprop
], ids=["uw", "pcgrad", "mt2st-switch", "rep-mtl"])
def test_two_gloo_ranks_end_with_identical_weights(training: dict, sync: str, port: int, flights_frame: pd.DataFrame,
                                                   tmp_path: Path) -> None:
    cfg = config_with(FLIGHTS, model={"hidden": [32], "head_hidden": 8},  # towers: Rep-MTL needs them
                      training={"epochs": 2, "threads": 1, "batch_size": 512, **training})
    (tmp_path / "cfg.yaml").write_text(config_to_yaml(cfg))
    window(flights_frame, cfg, "train").iloc[::4].to_parquet(tmp_path / "train.parquet")
    window(flights_frame, cfg, "validation").iloc[::4].to_parquet(tmp_path / "val.parquet")
    (tmp_path / "child.py").write_text(_CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
         str(tmp_path / "child.py"), str(tmp_path / "cfg.yaml"), str(tmp_path / "train.parquet"),
         str(tmp_path / "val.parquet"), str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "out" / "rank1" / "model.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["gradient_sync"] == sync
