"""A table with no time column, by YAML alone: ggplot2::diamonds (configs/diamonds.yaml) through the real
CLI, DVC and pipeline (kfp.local) with a random and with a hash split, a log1p price target served in dollars
by the real BentoML server, equal to offline scoring."""

from __future__ import annotations

import copy
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from components.artifacts import registry
from components.artifacts.inference import OnnxModel
from components.artifacts.predictions import prediction_frame
from components.config.schema import load_config
from components.data.tables import label_column
from pipelines.local import run_local
from serving.client import to_records
from serving.launch import ServerProcess
from tests.conftest import DIAMONDS, raw_config
from tests.test_pipeline_e2e import mtlops, repo_with_data

pytestmark = pytest.mark.slow


def _repo(root: Path, split: dict, model_name: str) -> Path:
    """A git repo with the diamonds config (a 15% sample, 4 epochs), its data built and committed."""
    raw = copy.deepcopy(raw_config(DIAMONDS))
    raw["data"].update(sample_fraction=0.15, dvc_remote=str(root.parent / f"{model_name}-remote"), split=split)
    raw["training"].update(epochs=4, threads=2)
    raw["registry"]["model_name"] = model_name
    cfg_path, built = repo_with_data(root, raw, "diamonds")
    assert "1 partitions" in built and "data/diamonds/all.parquet" in built
    assert "The .dvc pointers are staged: commit them so a model's lineage names a clean git revision" in built
    return cfg_path


def _split(run_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(next(run_dir.glob(f"split*/{name}")))


def test_random_split_by_yaml_alone(tmp_path: Path) -> None:
    cfg_path = _repo(tmp_path, {"method": "random", "validation": 0.2, "test": 0.2, "seed": 7}, "e2e-diamonds-random")
    result = run_local(load_config(cfg_path), tmp_path, tmp_path / "runs")
    assert result.decision["promoted"]
    test, base = result.metrics["test"], result.metrics["baseline"]
    assert test["price"]["mae"] < 0.5 * base["price"]["mae"]  # in dollars: the baseline is the median price
    assert test["fine_cut"]["roc_auc"] > 0.6
    rows = {name: len(_split(result.run_dir, name)) for name in ("train", "validation", "test")}
    total = sum(rows.values())
    assert rows["test"] / total == pytest.approx(0.2, abs=0.03) and rows["validation"] / total == pytest.approx(0.2,
                                                                                                               abs=0.03)
    assert not registry.champion("e2e-diamonds-random").info.metadata["lineage"]["git_revision"].endswith("-dirty")


def test_hash_split_and_a_log1p_target_served_in_original_units(tmp_path: Path) -> None:
    cfg_path = _repo(tmp_path, {"method": "hash"}, "e2e-diamonds-hash")
    cfg = load_config(cfg_path)
    out = mtlops("run", "--config", str(cfg_path), "--root", str(tmp_path), "--pipeline-root",
                 str(tmp_path / "runs"), cwd=tmp_path)
    assert "test split: 15% of the rows (hash of diamond_id)" in out.stdout
    run_dir = max((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    train, test = _split(run_dir, "train"), _split(run_dir, "test")
    assert not set(train["diamond_id"]) & set(test["diamond_id"])
    champion = registry.champion(cfg.registry.model_name)
    offline_mae = champion.info.metadata["metrics"]["test"]["price"]["mae"]

    server = ServerProcess(cfg_path, tmp_path / "server.out", max_rows=256, workers=1,
                           env={"MTLOPS_ORT_THREADS": "1"})
    try:
        server.wait_ready()
        rows = test.head(200)
        r = httpx.post(server.url + "/predict", json={"records": to_records(rows, cfg.features.names)}, timeout=60)
        assert r.status_code == 200, r.text
        served = np.array([p["price"]["value"] for p in r.json()["predictions"]])
    finally:
        server.stop()
    model = OnnxModel(Path(champion.path))
    expected = prediction_frame(model.spec, model.predict_frame(rows))["price__value"].to_numpy()
    assert served == pytest.approx(expected, rel=1e-4)  # the server answers what offline scoring computes
    truth = rows[label_column("price")].to_numpy()
    assert 300 < np.median(served) < 20_000 and np.median(np.abs(served - truth) / truth) < 0.3  # dollars
    # the pipeline's metric (in dollars, from the exported graph) is the same number from these outputs
    all_served = prediction_frame(model.spec, model.predict_frame(test))["price__value"].to_numpy()
    assert np.mean(np.abs(all_served - test[label_column("price")].to_numpy())) == pytest.approx(offline_mae,
                                                                                                 rel=1e-3)
