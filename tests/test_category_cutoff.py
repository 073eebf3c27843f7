"""The categorical cut-off sweep: it sets `min_frequency` on the columns it names and no other, refuses a column
the config does not have, and a real sweep (a few percent of the rows, one epoch) reports each cut-off's
vocabulary, validation and test metrics, and resumes from its journal."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import category_cutoff as cutoff
from components.config.schema import load_config
from tests.conftest import FLIGHTS


def test_the_cutoff_lands_on_the_named_columns_only_and_an_unknown_column_is_named() -> None:
    cfg = load_config(FLIGHTS)
    swept = cutoff.with_cutoff(cfg, ["tailnum", "flight_number"], 123)
    frequencies = {f.name: f.min_frequency for f in swept.features.categorical}
    assert frequencies["tailnum"] == frequencies["flight_number"] == 123
    assert {n: f for n, f in frequencies.items() if n not in ("tailnum", "flight_number")} == {
        f.name: f.min_frequency for f in cfg.features.categorical if f.name not in ("tailnum", "flight_number")}
    with pytest.raises(SystemExit, match=r"--columns: \['aircraft'\] are not categorical features"):
        cutoff.with_cutoff(cfg, ["tailnum", "aircraft"], 10)


def test_a_sweep_reports_each_cutoffs_vocabulary_and_metrics_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "cutoff"
    argv = ["--cutoffs", "1", "100000", "--seeds", "1", "--fraction", "0.03", "--threads", "1",
            "--training", "epochs=1", "--out", str(out)]
    cutoff.main(argv)
    rows = [line for line in out.with_suffix(".md").read_text().splitlines() if line.startswith("| 1")]
    kept_all, kept_none = rows
    assert "tailnum 0, flight_number 0" in kept_none
    assert "tailnum 0" not in kept_all.split("|")[2]
    for row in rows:  # validation primary + four test metrics, each a mean ± std
        assert row.count("±") == 5
    assert "Best on the validation window: min_frequency" in out.with_suffix(".md").read_text()
    journal = out.parent / "journals" / "cutoff.runs.jsonl"
    assert len(journal.read_text().splitlines()) == 2
    cutoff.main(argv)
    assert len(journal.read_text().splitlines()) == 2  # both runs taken from the journal
