"""The scaling benchmark's larger tables: k times the rows, deterministic, copy 0 the reference itself, the label
rates of the reference, and readable through the config it writes (a parquet source)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import scale
from components.config.schema import load_config
from components.data.tables import load_source, with_labels
from tests.conftest import FLIGHTS


def test_scaled_table_is_k_copies_with_the_reference_labels(tmp_path: Path) -> None:
    cfg = load_config(FLIGHTS)
    reference = load_source(cfg.data)
    reference = reference[reference["sched_dep"] < "2013-03-01"].reset_index(drop=True)  # two months: cheap
    as_written = tmp_path / "reference.parquet"
    scale.write_source(iter([reference]), as_written)
    reference = pd.read_parquet(as_written)  # nulls as parquet gives them back, to compare like with like
    k = 3
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    assert scale.write_source(scale.scaled_table(reference, cfg, k), first) == k * len(reference)
    scale.write_source(scale.scaled_table(reference, cfg, k), second)
    table = pd.read_parquet(first)
    pd.testing.assert_frame_equal(table, pd.read_parquet(second))  # deterministic
    assert len(table) == k * len(reference) and table["flight_id"].is_unique

    copies = [table.iloc[c * len(reference):(c + 1) * len(reference)].reset_index(drop=True) for c in range(k)]
    pd.testing.assert_frame_equal(copies[0], reference)  # 1x is the reference itself
    ranges = {n.name: (n.min, n.max) for n in cfg.features.numeric}
    for copy in copies[1:]:
        for col in scale.JITTERED:
            x, ref = copy[col].to_numpy(float), reference[col].to_numpy(float)
            assert np.array_equal(np.isnan(x), np.isnan(ref))  # nulls kept
            seen = ~np.isnan(ref)
            assert not np.array_equal(x[seen], ref[seen])  # jittered ...
            assert np.nanmax(np.abs(x - ref)) < 0.1 * np.nanstd(ref)  # ... a little
            low, high = ranges[col]
            assert (low is None or np.nanmin(x) >= low) and (high is None or np.nanmax(x) <= high)
        unchanged = [c for c in reference.columns if c not in (*scale.JITTERED, "flight_id")]
        pd.testing.assert_frame_equal(copy[unchanged], reference[unchanged])

    scaled_cfg = scale.source_config(cfg, first, tmp_path / "remote", epochs=1)
    read_back = with_labels(load_source(scaled_cfg.data), scaled_cfg)
    labels = with_labels(reference, cfg)
    assert len(read_back) == k * len(labels)
    for t in cfg.tasks:
        col = f"label__{t.name}"
        assert read_back[col].mean() == labels[col].mean()  # k copies of every label: the same rates
