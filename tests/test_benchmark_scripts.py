"""Every benchmark starts as its docs run it, `python -m benchmarks.NAME --help`: its imports resolve and its help
renders (a broken import or an unescaped `%` in a help string otherwise shows only when someone runs the
benchmark). `benchmarks.common` holds what they share and has no command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__", "common"))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_the_benchmark_imports_and_prints_its_help(name: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
