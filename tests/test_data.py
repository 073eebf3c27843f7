"""Data: label derivations, validation reports, time-ordered split, DVC versioning."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components import steps
from components.config.schema import DeriveSpec, ProjectConfig, config_to_yaml, parse_config
from components.data.features import OOV_INDEX, FeatureSpec
from components.data.tables import label_column
from components.data.validate import DataValidationError, validate_or_raise
from components.data.versioning import data_version, dvc_md5
from tests.conftest import DIAMONDS, FLIGHTS, TXHOUSING, config_with, raw_config


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


@pytest.fixture(scope="module")
def diamonds() -> pd.DataFrame:
    from components.data.tables import load_source

    return load_source(config_with(DIAMONDS).data)


def _task(label: dict, type_: str = "binary"):  # type: ignore[no-untyped-def]
    from components.config.schema import TaskSpec

    return TaskSpec(name="t", type=type_, label=label)


def test_set_range_and_negation_labels(diamonds: pd.DataFrame) -> None:
    from components.data.tables import derive_label

    cut = diamonds["cut"].astype(str)
    fine = derive_label(diamonds, _task({"column": "cut", "op": "in", "values": ["Premium", "Ideal"]}))
    assert (fine == cut.isin(["Premium", "Ideal"]).astype(float)).all() and 0 < fine.mean() < 1
    coarse = derive_label(diamonds, _task({"column": "cut", "op": "not_in", "values": ["Premium", "Ideal"]}))
    assert (coarse == 1 - fine).all()
    mid = derive_label(diamonds, _task({"column": "carat", "op": "between", "low": 0.5, "high": 1.0}))
    assert (mid == ((diamonds["carat"] >= 0.5) & (diamonds["carat"] <= 1.0)).astype(float)).all()
    numbers = derive_label(diamonds, _task({"column": "price", "op": "in", "values": [326, 327]}))
    assert numbers.sum() == diamonds["price"].isin([326, 327]).sum() > 0
    flags = pd.DataFrame({"ok": [1.0, 0.0, None, 1.0]})
    negated = derive_label(flags, _task({"column": "ok", "op": "not"}))
    assert negated.iloc[[0, 1, 3]].tolist() == [0.0, 1.0, 0.0] and np.isnan(negated.iloc[2])
    with pytest.raises(ValueError, match=r"'price' is numeric, but the label compares it with text \['cheap'\]"):
        derive_label(diamonds, _task({"column": "price", "op": "in", "values": ["cheap", 326]}))


def test_arithmetic_datetime_and_cyclical_derives(tmp_path: Path) -> None:
    import warnings

    from components.config.schema import DataSpec
    from components.data.tables import load_source

    (tmp_path / "rides.csv").write_text("when,km,minutes\n31/01/2024 23:30,10,20\n01/02/2024 06:00,0,0\n"
                                        "15/07/2024 12:15,3,-1\n")
    spec = DataSpec.model_validate({
        "name": "rides", "source": {"kind": "csv", "path": "rides.csv", "derive": [
            {"name": "at", "op": "datetime", "source": "when", "format": "%d/%m/%Y %H:%M"},
            {"name": "speed", "op": "ratio", "sources": ["km", "minutes"]},
            {"name": "gap", "op": "difference", "sources": ["km", "minutes"]},
            {"name": "work", "op": "product", "sources": ["km", "minutes"]},
            {"name": "log_km", "op": "log1p", "source": "km"},
            {"name": "hour_of_day", "op": "cyclical", "source": "at", "period": "hour"},
            {"name": "month_of_year", "op": "cyclical", "source": "at", "period": "month"}]},
        "split": "random"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Could not infer format" warning
        df = load_source(spec, tmp_path)
    assert df["at"].tolist() == [pd.Timestamp("2024-01-31 23:30"), pd.Timestamp("2024-02-01 06:00"),
                                 pd.Timestamp("2024-07-15 12:15")]
    assert df["speed"].iloc[0] == 0.5 and np.isnan(df["speed"].iloc[1])  # a zero divisor gives null
    assert df["gap"].tolist() == [-10, 0, 4] and df["work"].tolist() == [200, 0, -3]
    assert df["log_km"].tolist() == pytest.approx(np.log1p([10, 0, 3]).tolist())
    assert df["hour_of_day_sin"].iloc[1] == pytest.approx(1.0)  # 06:00 is a quarter of the day
    assert df["hour_of_day_cos"].iloc[1] == pytest.approx(0.0, abs=1e-12)
    assert df["month_of_year_cos"].iloc[0] == pytest.approx(1.0)  # January is the start of the cycle
    assert df["month_of_year_cos"].iloc[2] == pytest.approx(-1.0)  # July half a year later
    bad = spec.model_copy(update={"source": spec.source.model_copy(update={"derive": [
        DeriveSpec(name="log_minutes", op="log1p", source="minutes")]})})
    with pytest.raises(ValueError, match=r"derive 'log_minutes' \(log1p\): 1 values of 'minutes' are <= -1"):
        load_source(bad, tmp_path)


def test_streamed_build_writes_the_partitions_the_whole_table_gives(tmp_path: Path) -> None:
    """`data build` streams a parquet source a part at a time: the same files, byte for byte, as partitioning the
    whole table: rows sorted by time within a month as the whole table sorts them (ties in source order), ids
    numbered in time order across months, rows without a time left out, a string column null in a whole part."""
    from components.data.tables import build_partitions, load_source, write_partitions

    rng = np.random.default_rng(0)
    n = 500
    day = rng.integers(0, 120, n)  # Jan-Apr 2024, unsorted, with ties
    source = pd.DataFrame({
        "when": [None if i % 97 == 0 else str(pd.Timestamp("2024-01-01") + pd.Timedelta(days=int(d)))
                 for i, d in enumerate(day)],
        "km": rng.integers(0, 50, n).astype(float),
        "minutes": rng.integers(1, 90, n),
        "station": [None if i < 60 else f"s{i % 7}" for i in range(n)],  # the first part's are all null
    })
    source.to_parquet(tmp_path / "rides.parquet", index=False)
    cfg = parse_config({**raw_config(DIAMONDS), "data": {
        "name": "rides", "time_column": "at", "id_column": "ride_id", "split": "random",
        "partition": "month", "source": {"kind": "parquet", "path": "rides.parquet", "derive": [
            {"name": "at", "op": "datetime", "source": "when"},
            {"name": "speed", "op": "ratio", "sources": ["km", "minutes"]}], "drop": ["when"]}}})
    whole = write_partitions(load_source(cfg.data, tmp_path), cfg, tmp_path / "whole")
    streamed = build_partitions(cfg, tmp_path, tmp_path / "streamed", rows=60)  # 9 parts
    assert [p.name for p in streamed] == [p.name for p in whole] == [f"2024-0{m}.parquet" for m in range(1, 5)]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(whole, streamed, strict=True))
    rows = pd.concat([pd.read_parquet(p) for p in streamed], ignore_index=True)
    assert rows["ride_id"].tolist() == list(range(len(rows))) and len(rows) == n - len(range(0, n, 97))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rides.parquet", "streamed", "whole"]  # no spill left


def test_random_hash_and_group_splits(diamonds: pd.DataFrame) -> None:
    from components.data.tables import split_assignment

    def side(df: pd.DataFrame, **split: object) -> pd.Series:
        return split_assignment(df, config_with(DIAMONDS, data={"split": split}))

    for method in ("random", "hash"):
        shares = side(diamonds, method=method, validation=0.2, test=0.1).value_counts(normalize=True)
        assert shares["train"] == pytest.approx(0.7, abs=0.01) and shares["test"] == pytest.approx(0.1, abs=0.01)
    # stored sorted by price: a row-order split would put only dear diamonds in test, these do not
    by_hash = side(diamonds, method="hash")
    assert diamonds["price"][by_hash == "test"].median() == pytest.approx(diamonds["price"].median(), rel=0.1)
    # hash: a row keeps its side when the table grows and is reordered; a new seed reshuffles
    grown = pd.concat([diamonds.iloc[::-1], diamonds.head(100).assign(diamond_id=lambda d: d["diamond_id"] + 10**6)],
                      ignore_index=True)
    again = side(grown, method="hash")
    assert (again.iloc[:len(diamonds)].to_numpy() == by_hash.iloc[::-1].to_numpy()).all()
    assert (side(diamonds, method="hash", seed=1) != by_hash).mean() > 0.2
    assert (side(diamonds, method="random", seed=3) == side(diamonds, method="random", seed=3)).all()
    groups = side(diamonds, method="group", column="clarity", validation=0.3, test=0.3)
    assert (groups.groupby(diamonds["clarity"].astype(str)).nunique() == 1).all()  # a group stays on one side


def test_a_planted_leak_fails_validation_naming_feature_and_task(flights_frame: pd.DataFrame,
                                                                 flights_cfg: ProjectConfig, tmp_path: Path) -> None:
    """A near-copy of a label under another name (the arrival delay as "reported", with noise) stops
    the validate step before training; allow_leaky with a reason lets it through; tailnum's null
    indicator (a missing aircraft means cancelled) is flagged unless allow_leaky lists it or its nulls share
    the out-of-vocabulary index."""
    rng = np.random.default_rng(0)
    label = flights_frame[label_column("arr_delayed")]
    planted = flights_frame.assign(reported_delay=np.where(label.isna(), rng.random(len(label)),
                                                           label + rng.normal(0, 0.3, len(label))))
    planted.to_parquet(tmp_path / "all.parquet")
    base = raw_config(FLIGHTS)
    base["features"]["numeric"].append({"name": "reported_delay"})
    cfg = parse_config(base)
    with pytest.raises(DataValidationError) as err:
        steps.validate(config_to_yaml(cfg), str(tmp_path / "all.parquet"), str(tmp_path / "report.json"))
    text = str(err.value)
    assert "[FAIL] leakage     reported_delay           -> arr_delayed: skill" in text, text
    assert "1 of" in text.splitlines()[0], text  # nothing else flagged
    base["leakage"]["allow_leaky"].append({"feature": "reported_delay", "task": "arr_delayed",
                                           "reason": "test: known to be a copy"})
    steps.validate(config_to_yaml(parse_config(base)), str(tmp_path / "all.parquet"), str(tmp_path / "report.json"))
    assert "allowed: test: known to be a copy" in (tmp_path / "report.json").read_text()

    unlisted = raw_config(FLIGHTS)
    unlisted.pop("leakage")  # the reference config keeps tailnum on purpose, under allow_leaky
    with pytest.raises(DataValidationError) as err:
        validate_or_raise(flights_frame, parse_config(unlisted))
    assert "tailnum (null)           -> cancelled" in str(err.value) and "null rows 100.0% one class" in str(err.value)
    report = validate_or_raise(flights_frame, flights_cfg)
    assert any(c.column == "tailnum (null)" and c.ok and "allowed: a missing tail number" in c.detail for c in report)
    # nulls: unknown hides the null in the out-of-vocabulary index, for batches and for served records alike
    next(f for f in unlisted["features"]["categorical"] if f["name"] == "tailnum")["nulls"] = "unknown"
    hidden = parse_config(unlisted)
    validate_or_raise(flights_frame, hidden)
    spec = FeatureSpec.fit(flights_frame, hidden)
    rows = flights_frame.head(2).assign(tailnum=[None, "N-NEVER-SEEN"])
    col = spec.feature_names.index("tailnum") - len(spec.numeric)
    assert spec.transform_categorical(rows)[0][:, col].tolist() == [OOV_INDEX, OOV_INDEX]
    records = rows[spec.feature_names].astype(object).where(rows[spec.feature_names].notna(), None).to_dict("records")
    assert spec.record_encoder().encode(records)[1][:, col].tolist() == [OOV_INDEX, OOV_INDEX]
