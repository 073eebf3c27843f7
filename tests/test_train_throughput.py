"""The throughput benchmark's hot loop drives `train_step` as the trainer does, so it measures every strategy."""

from __future__ import annotations

import importlib.util
import math
import sys

import pandas as pd
import pytest

from components.features import FeatureSpec
from components.train import to_tensors
from tests.conftest import FLIGHTS, ROOT, config_with, window

_spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "benchmarks" / "train_throughput.py")
train_throughput = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["train_throughput"] = train_throughput  # its dataclasses resolve their annotations through it
_spec.loader.exec_module(train_throughput)  # type: ignore[union-attr]


@pytest.mark.parametrize("strategy", ["ew", "pcgrad"])  # pcgrad: a Jacobian method needs `attach` before stepping
def test_hot_loop_trains_with_the_strategy(strategy: str, flights_frame: pd.DataFrame) -> None:
    cfg = config_with(FLIGHTS, model={"hidden": [16]}, training={"strategy": {"name": strategy}, "threads": 1})
    rows = window(flights_frame, cfg, "train").head(4096)
    spec = FeatureSpec.fit(rows, cfg)
    result = train_throughput.hot_loop(cfg, spec, to_tensors(rows, spec), batch_size=512, seconds=0.05)
    assert result.steps >= 1 and result.samples == 512 * result.steps and math.isfinite(result.mean_loss)
