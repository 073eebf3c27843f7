"""A client of the running service: send a DataFrame's records, get back what the service
logged for them (the prediction log's rows, in the frame's order)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import pandas as pd

from components.artifacts.predictions import read_prediction_log


def to_records(df: pd.DataFrame, feature_names: list[str]) -> list[dict]:
    """JSON-ready records: missing values as null, numpy scalars as Python values."""
    rows = df[feature_names].astype(object).to_dict(orient="records")
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]


def score_through_service(url: str, df: pd.DataFrame, feature_names: list[str], log_dir: Path,
                          chunk: int = 1000, timeout_s: float = 120) -> pd.DataFrame:
    """POST the frame to /predict in chunks; return the logged rows of those requests, in order."""
    ids = []
    with httpx.Client(base_url=url, timeout=120) as client:
        records = to_records(df, feature_names)
        for i in range(0, len(records), chunk):
            r = client.post("/predict", json={"records": records[i:i + chunk]})
            r.raise_for_status()
            ids.append(r.json()["request_id"])
    order = {rid: i for i, rid in enumerate(ids)}
    deadline = time.monotonic() + timeout_s
    while True:  # the service flushes its log in the background
        log = read_prediction_log(log_dir)
        log = log[log["request_id"].isin(order)] if len(log) else log
        if len(log) == len(df):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"the prediction log in {log_dir} holds {len(log)} of {len(df)} records")
        time.sleep(0.5)
    log = log.assign(_order=log["request_id"].map(order)).sort_values(["_order", "record_index"])
    return log.drop(columns="_order").reset_index(drop=True)


def reload(url: str, token: str) -> httpx.Response:
    """Ask the service to serve the store's current champion (POST /admin/reload)."""
    return httpx.post(f"{url.rstrip('/')}/admin/reload", headers={"Authorization": f"Bearer {token}"}, timeout=120)
