"""Every registered architecture trains through the same trainer and exports to one ONNX graph with parity."""

from __future__ import annotations

from pathlib import Path

import onnx
import pandas as pd
import pytest

from components.architectures import ARCHITECTURES
from components.config import ConfigError, ProjectConfig
from components.export import ONNX_FILE, check_parity, export_onnx
from components.train import train
from tests.conftest import FLIGHTS, config_with, window


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_architecture_trains_and_exports_with_parity(architecture: str, flights_frame: pd.DataFrame,
                                                     flights_cfg: ProjectConfig, tmp_path: Path) -> None:
    cfg = config_with(FLIGHTS, model={"architecture": architecture, "hidden": [32, 16], "experts": 3},
                      training={"epochs": 3, "threads": 2, "batch_size": 256, "early_stopping_patience": 3})
    train_df = window(flights_frame, cfg, "train").iloc[::3]
    result = train(cfg, train_df, window(flights_frame, cfg, "validation").iloc[::3], tmp_path / "model",
                   progress=False)
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert sum(last.values()) < sum(first.values())
    assert result.validation["arr_delayed"]["roc_auc"] > 0.55
    test = window(flights_frame, cfg, "test")
    path = export_onnx(tmp_path / "model", tmp_path / "onnx", test)
    assert [o.name for o in onnx.load(str(path)).graph.output] == [t.name for t in cfg.tasks]
    report = check_parity(tmp_path / "model", tmp_path / "onnx", test, rows=500, atol=1e-4)
    assert report.ok and (tmp_path / "onnx" / ONNX_FILE).is_file()


def test_unknown_architecture_and_rep_mtl_without_shared_representation_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"model\.architecture: unknown architecture 'nope'"):
        config_with(FLIGHTS, model={"architecture": "nope"})
    with pytest.raises(ConfigError, match=r"training\.rep_mtl needs"):
        config_with(FLIGHTS, model={"architecture": "mmoe"}, training={"rep_mtl": {}})
