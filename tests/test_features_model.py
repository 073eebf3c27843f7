"""FeatureSpec (fit on train only, JSON round trip, OOV and nulls) and the multi-head model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.config.schema import ProjectConfig, parse_config
from components.data.features import FIRST_VALUE_INDEX, NULL_INDEX, OOV_INDEX, FeatureSpec
from components.training.architectures.hps import HardSharingModel
from tests.conftest import TXHOUSING, config_with, window


def test_feature_spec_is_fitted_on_train_only_and_round_trips(flights_frame: pd.DataFrame,
                                                             flights_cfg: ProjectConfig) -> None:
    train = window(flights_frame, flights_cfg, "train")
    spec = FeatureSpec.fit(train, flights_cfg)
    temp = next(n for n in spec.numeric if n.name == "temp")
    assert np.isclose(temp.mean, train["temp"].mean())  # not the mean over all months
    assert not np.isclose(temp.mean, flights_frame["temp"].mean(), atol=0.5)
    again = FeatureSpec.from_json(spec.to_json())
    assert again == spec
    np.testing.assert_array_equal(again.transform_numeric(train.head(50)), spec.transform_numeric(train.head(50)))


def test_nulls_rare_and_unseen_values(flights_frame: pd.DataFrame, flights_cfg: ProjectConfig) -> None:
    train = window(flights_frame, flights_cfg, "train")
    raw = flights_cfg.model_dump(mode="json", exclude_none=True)
    next(f for f in raw["features"]["categorical"] if f["name"] == "tailnum")["min_frequency"] = 5
    spec = FeatureSpec.fit(train, parse_config(raw))
    tail = next(v for v in spec.categorical if v.name == "tailnum")
    counts = train["tailnum"].value_counts()
    assert set(tail.values) == set(counts[counts >= 5].index)  # min_frequency from the config
    assert 0 < len(tail.values) < counts.size
    rows = train.head(3).copy()
    rows["tailnum"] = [tail.values[0], "N-NEVER-SEEN", None]
    rows["temp"] = [np.nan, 50.0, np.inf]
    cat, oov = spec.transform_categorical(rows)
    col = [v.name for v in spec.categorical].index("tailnum")
    assert cat[:, col].tolist() == [FIRST_VALUE_INDEX, OOV_INDEX, NULL_INDEX]
    assert oov["tailnum"] == 1
    num = spec.transform_numeric(rows)
    t = [n.name for n in spec.numeric].index("temp")
    null_col = len(spec.numeric) + t
    assert num[:, null_col].tolist() == [1.0, 0.0, 1.0]
    assert num[0, t] == 0.0 and np.isfinite(num).all()


def test_every_task_type_gets_its_head() -> None:
    cfg = config_with(TXHOUSING)
    df = pd.DataFrame({"month": [1, 2, 3, 4], "listings": [10.0, None, 30.0, 40.0], "inventory": [1.0, 2, 3, 4],
                       "city": ["a", "b", "a", "c"], "label__price_band": ["low", "mid", "high", None],
                       "label__sales": [1.0, 2.0, np.nan, 4.0], "label__busy_month": [0.0, 1.0, 0.0, 1.0]})
    spec = FeatureSpec.fit(df, cfg)
    assert next(t for t in spec.targets if t.name == "price_band").classes == ["low", "mid", "high"]
    model = HardSharingModel(spec, cfg.model)
    cat, _ = spec.transform_categorical(df)
    out = model(torch.from_numpy(spec.transform_numeric(df)), torch.from_numpy(cat))
    assert out["price_band"].shape == (4, 3) and out["sales"].shape == (4,) and out["busy_month"].shape == (4,)
    only = model(torch.from_numpy(spec.transform_numeric(df)), torch.from_numpy(cat), tasks=["sales"])
    assert list(only) == ["sales"]
    y = spec.transform_targets(df)
    assert y["price_band"].tolist()[:3] == [0.0, 1.0, 2.0] and np.isnan(y["price_band"][3])
    assert np.isclose(np.nanmean(y["sales"]), 0.0, atol=1e-6)  # regression heads learn standardised targets


NUMBERS = st.none() | st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-10**6, 10**6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_record_encoder_matches_the_batch_path(flights_frame: pd.DataFrame, flights_cfg: ProjectConfig,
                                                data: st.DataObject) -> None:
    """Property: serving's NumPy encoder gives the arrays the training path gives, for any records —
    nulls, unknown and known categories, integers as categories, extreme and tiny values."""
    spec = FeatureSpec.fit(window(flights_frame, flights_cfg, "train").head(5000), flights_cfg)
    category = {c.name: st.none() | st.sampled_from(c.values[:20] or ["x"]) | st.text(max_size=4) |
                st.integers(-2**63, 2**63 - 1) for c in spec.categorical}
    records = data.draw(st.lists(st.fixed_dictionaries({n.name: NUMBERS for n in spec.numeric} | category),
                                 min_size=1, max_size=16))
    numeric, categorical, oov = spec.record_encoder().encode(records)
    frame = pd.DataFrame(records, columns=spec.feature_names)
    for n in spec.numeric:
        frame[n.name] = frame[n.name].astype("float64")
    expected_cat, expected_oov = spec.transform_categorical(frame)
    np.testing.assert_array_equal(numeric, spec.transform_numeric(frame))
    np.testing.assert_array_equal(categorical, expected_cat)
    assert dict(zip(spec.record_encoder().categorical_names, oov.tolist(), strict=True)) == expected_oov
    # what the prediction log keeps: the values as received (numbers as float64, categories as strings)
    received = spec.record_encoder().encode_records(records)
    np.testing.assert_array_equal(received.raw_numeric, frame[[n.name for n in spec.numeric]].to_numpy())
    assert received.raw_categorical == [[None if r[c.name] is None else str(r[c.name]) for r in records]
                                        for c in spec.categorical]
