"""The throughput benchmark's hot loop runs the trainer's epoch loop, so it measures every strategy; its bare loop
trains the same model on the same batches."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from benchmarks import train_throughput
from components.data.features import FeatureSpec
from components.training.train import to_tensors
from tests.conftest import FLIGHTS, config_with, window


@pytest.mark.parametrize("strategy", ["ew", "pcgrad"])  # pcgrad: a Jacobian method needs `attach` before stepping
def test_hot_loop_trains_with_the_strategy(strategy: str, flights_frame: pd.DataFrame) -> None:
    cfg = config_with(FLIGHTS, model={"hidden": [16]}, training={"strategy": {"name": strategy}, "threads": 1})
    rows = window(flights_frame, cfg, "train").head(4096)
    spec = FeatureSpec.fit(rows, cfg)
    result = train_throughput.hot_loop(cfg, spec, to_tensors(rows, spec), batch_size=512, seconds=0.05)
    assert result.steps >= 1 and result.samples == 512 * result.steps and math.isfinite(result.mean_loss)


def test_bare_loop_trains_the_same_model_on_the_same_batches(flights_frame: pd.DataFrame) -> None:
    """The floor the hot loop is compared with: same model, batches and losses, so the ratio is overhead only."""
    cfg = config_with(FLIGHTS, model={"hidden": [16]}, training={"threads": 1})
    rows = window(flights_frame, cfg, "train").head(4096)
    spec = FeatureSpec.fit(rows, cfg)
    data = to_tensors(rows, spec)
    bare = train_throughput.bare_loop(cfg, spec, data, batch_size=512, seconds=0.0)  # one timed epoch each
    hot = train_throughput.hot_loop(cfg, spec, data, batch_size=512, seconds=0.0)
    assert bare.steps == hot.steps == 8 and bare.samples == hot.samples == 4096  # the same batches
    assert math.isclose(bare.mean_loss, hot.mean_loss, rel_tol=1e-4)  # the same losses, trained the same way
