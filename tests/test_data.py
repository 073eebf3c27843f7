"""Data: label derivations, validation reports, time-ordered split, DVC versioning."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components import steps
from components.config import ProjectConfig, config_to_yaml
from components.data import label_column
from components.validate import DataValidationError, validate_or_raise
from components.versioning import data_version, dvc_md5
from tests.conftest import TXHOUSING, config_with


def test_labels_follow_the_config_and_missing_labels_stay_missing(flights_frame: pd.DataFrame) -> None:
    df = flights_frame
    cancelled = df[label_column("cancelled")] == 1
    assert cancelled.any() and (~cancelled).any()
    # a cancelled flight has no arrival delay: its row is kept, masked for that task only
    assert df.loc[cancelled, label_column("arr_delayed")].isna().all()
    assert df.loc[~cancelled, label_column("arr_delayed")].notna().mean() > 0.99
    assert set(df[label_column("arr_delayed")].dropna().unique()) == {0.0, 1.0}
    # no label source column and no post-departure fact leaks in as a column
    assert not {"arr_delay", "dep_time", "arr_time", "air_time", "dep_delay"} & set(df.columns)


def test_validation_passes_on_real_data(flights_frame: pd.DataFrame, flights_cfg: ProjectConfig) -> None:
    report = validate_or_raise(flights_frame, flights_cfg)
    assert len(report) > 40 and all(c.ok for c in report)


def test_validation_catches_missing_column(flights_frame: pd.DataFrame, flights_cfg: ProjectConfig) -> None:
    with pytest.raises(DataValidationError) as err:
        validate_or_raise(flights_frame.drop(columns=["distance"]), flights_cfg)
    assert "[FAIL] schema      distance" in str(err.value)
    assert "numeric feature column missing" in str(err.value)


def test_validation_catches_wrong_dtype(flights_frame: pd.DataFrame, flights_cfg: ProjectConfig) -> None:
    bad = flights_frame.assign(temp=flights_frame["temp"].astype(str))
    with pytest.raises(DataValidationError) as err:
        validate_or_raise(bad, flights_cfg)
    assert "temp" in str(err.value) and "expected a number" in str(err.value)
    assert "1 of" in str(err.value).splitlines()[0]  # exactly the one failure


def test_validation_catches_ranges_nulls_and_absent_labels(flights_frame: pd.DataFrame,
                                                           flights_cfg: ProjectConfig) -> None:
    bad = flights_frame.copy()
    bad.loc[:4, "humid"] = 250.0
    bad.loc[:4, "carrier"] = None
    bad[label_column("cancelled")] = 0.0
    with pytest.raises(DataValidationError) as err:
        validate_or_raise(bad, flights_cfg)
    text = str(err.value)
    assert "range       humid" in text and "5 values outside [0.0, 100.0]" in text
    assert "nulls       carrier" in text and "none allowed" in text
    assert "label       cancelled" in text and "1 distinct values (need >= 2)" in text


@pytest.fixture(scope="module")
def tx_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ProjectConfig]:
    """A real git + DVC repo with the txhousing partitions pushed to a local remote."""
    root = tmp_path_factory.mktemp("txrepo")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    cfg = config_with(TXHOUSING, data={"dvc_remote": str(root.parent / "tx-remote")})
    steps.build_dataset(cfg, root)
    return root, cfg


def test_dvc_tracks_and_pushes_every_partition(tx_repo: tuple[Path, ProjectConfig]) -> None:
    root, cfg = tx_repo
    parts = sorted((root / "data" / "txhousing").glob("*.parquet"))
    assert [p.stem for p in parts] == [str(y) for y in range(2000, 2016)]
    for p in parts:
        md5 = dvc_md5(p)
        assert len(md5) == 32
        # the remote holds the content under its md5 (DVC 3 layout: files/md5/ab/cdef...)
        assert (Path(cfg.data.dvc_remote) / "files" / "md5" / md5[:2] / md5[2:]).is_file()
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=root, capture_output=True,
                            text=True).stdout
    assert "data/txhousing/2000.parquet.dvc" in staged  # pointers are staged in git, data is not
    assert "data/txhousing/2000.parquet\n" not in staged


def test_ingest_pulls_missing_partitions_and_records_lineage(tx_repo: tuple[Path, ProjectConfig],
                                                             tmp_path: Path) -> None:
    root, cfg = tx_repo
    lost = root / "data" / "txhousing" / "2014.parquet"
    before = lost.read_bytes()
    lost.unlink()
    lineage = steps.ingest(config_to_yaml(cfg), str(root), str(tmp_path / "all.parquet"), "abc123")
    assert lost.read_bytes() == before  # restored from the DVC remote
    assert lineage["partitions"]["data/txhousing/2014.parquet"] == dvc_md5(lost)
    assert lineage["data_version"] == data_version(lineage["partitions"])
    assert lineage["git_revision"] == "abc123"
    assert len(lineage["partitions"]) == 16


def test_split_is_time_ordered_and_disjoint(tx_repo: tuple[Path, ProjectConfig], tmp_path: Path) -> None:
    root, cfg = tx_repo
    text = config_to_yaml(cfg)
    p = {k: str(tmp_path / f"{k}.parquet") for k in ("all", "train", "validation", "test")}
    steps.ingest(text, str(root), p["all"])
    counts = steps.split(text, p["all"], p["train"], p["validation"], p["test"])
    frames = {k: pd.read_parquet(p[k]) for k in ("train", "validation", "test")}
    t = cfg.data.time_column
    assert frames["train"][t].max() < frames["validation"][t].min()
    assert frames["validation"][t].max() < frames["test"][t].min()
    assert sum(counts.values()) == len(pd.read_parquet(p["all"]))
    assert all(np.diff(f[t].to_numpy().astype("int64")).min() >= 0 for f in frames.values())


def test_rebuilding_gives_the_same_data_version(tx_repo: tuple[Path, ProjectConfig]) -> None:
    root, cfg = tx_repo
    parts = sorted((root / "data" / "txhousing").glob("*.parquet"))
    before = {p.name: dvc_md5(p) for p in parts}
    again = steps.build_dataset(cfg, root)
    assert {Path(k).name: v for k, v in again.items()} == before  # same source, same bytes, same lineage
