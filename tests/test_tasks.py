"""`components.config.tasks` is the one description of the task types: what config validation accepts per type is
what the metrics compute and the trainer's losses implement, the monitored column is one the prediction log
has, and logged columns read back to the outputs they came from. The ordinal type, added by that module
alone, trains, exports to ONNX with parity and is answered by the service's decoding on a real table."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from components.artifacts.export import check_parity, export_onnx
from components.artifacts.inference import OnnxModel
from components.artifacts.predictions import monitored_column, prediction_frame, task_columns
from components.config.schema import ProjectConfig, TaskSpec, parse_config
from components.config.tasks import LOSS_NAMES, TASK_KINDS, Ordinal, head_width, kind_of
from components.data.features import FeatureSpec, TargetSpec
from components.data.leakage import leakage_scores
from components.data.tables import load_source, with_labels
from components.training.metrics import baseline_raw, task_metrics
from components.training.train import masked_loss, train
from monitoring.drift import task_quality
from monitoring.estimation import ESTIMATORS, estimate_quality
from serving.runtime import ServedModel
from serving.worker import LoadedModel
from tests.conftest import ROOT, TXHOUSING, raw_config, window

CLASSES = ["low", "mid", "high"]


def _target(task_type: str) -> TargetSpec:
    return TargetSpec("t", task_type, classes=CLASSES if TASK_KINDS[task_type].class_labels else [])


def _outputs(task_type: str, rows: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    width = head_width(task_type, len(CLASSES))
    raw = rng.normal(size=(rows, width)) if width > 1 else rng.normal(size=rows)
    labels = len(CLASSES) if TASK_KINDS[task_type].class_labels else 2
    return raw, rng.integers(0, labels, size=rows).astype(np.float64)


@pytest.mark.parametrize("task_type", sorted(TASK_KINDS))
def test_the_metrics_a_type_accepts_are_the_ones_computed_for_it(task_type: str) -> None:
    raw, y = _outputs(task_type)
    computed = set(task_metrics(_target(task_type), raw, y)) - {"n"}
    assert computed == set(TASK_KINDS[task_type].metrics)


@pytest.mark.parametrize("task_type", sorted(TASK_KINDS))
def test_the_monitored_column_is_written_to_the_prediction_log(task_type: str) -> None:
    target = _target(task_type)
    raw, _ = _outputs(task_type)
    assert monitored_column(target) in task_columns(FeatureSpec([], [], [target]), {"t": raw})


@pytest.mark.parametrize("task_type", sorted(TASK_KINDS))
def test_logged_columns_read_back_to_the_metrics_of_the_raw_outputs(task_type: str) -> None:
    """Monitoring scores the prediction log; it must get the numbers the gate gets from the raw outputs
    (regression: the log is in original units, here mean 0 / std 1)."""
    target = _target(task_type)
    raw, y = _outputs(task_type)
    kind = kind_of(target)
    frame = pd.DataFrame(kind.columns(target, raw))
    assert kind.classes_in("t", frame.columns) == target.classes
    back = kind.from_columns(target, frame)
    for name, value in task_metrics(target, raw, y).items():
        assert task_metrics(target, back, y)[name] == pytest.approx(value, abs=1e-6, nan_ok=True), name


@pytest.mark.parametrize("task_type", sorted(TASK_KINDS))
def test_the_service_answers_what_the_prediction_log_holds(task_type: str) -> None:
    target = _target(task_type)
    raw, _ = _outputs(task_type, rows=8)
    kind = kind_of(target)
    cols = kind.columns(target, raw)
    for i, answer in enumerate(kind.answers(target, raw)):
        if "label" in answer:
            assert answer["label"] == cols["t__label"][i]
        for cls, p in answer.get("probabilities", {}).items():
            assert p == pytest.approx(cols[f"t__proba__{cls}"][i])
        assert answer.get("probability", answer.get("value", 0.0)) == pytest.approx(
            cols.get("t__proba", cols.get("t__value", np.zeros(8)))[i])


@pytest.mark.parametrize("task_type", sorted(TASK_KINDS))
def test_the_trivial_baseline_has_the_heads_shape(task_type: str) -> None:
    target = _target(task_type)
    raw, y = _outputs(task_type)
    assert baseline_raw(target, y, 5).shape == ((5,) if raw.ndim == 1 else (5, raw.shape[1]))


@pytest.mark.parametrize(("task_type", "metric"), [(k, m) for k in sorted(TASK_KINDS) for m in TASK_KINDS[k].metrics])
def test_a_metric_over_bootstrap_counts_is_the_metric_of_each_resample(task_type: str, metric: str) -> None:
    """The bootstrap interval of monitored quality scores every resample at once from row counts; each
    value must be the metric of that resample's rows, ties between scores included."""
    target = TargetSpec("t", task_type, classes=CLASSES if TASK_KINDS[task_type].class_labels else [],
                        mean=0.4, std=2.0, transform="log1p")
    raw, y = _outputs(task_type, rows=300)
    raw = np.round(raw, 1)  # many ties: the rank metrics must count them as sklearn does
    if task_type == "regression":
        y = np.round(np.random.default_rng(1).normal(size=300), 1)
    rows = np.random.default_rng(2).integers(0, len(y), (20, len(y)))
    counts = np.stack([np.bincount(r, minlength=len(y)) for r in rows])
    counts[0] = 0
    counts[0, np.flatnonzero(y == y[0])] = 1  # a resample with one label only: ROC-AUC is undefined there
    expected = [TASK_KINDS[task_type].scores(target, raw[np.repeat(np.arange(len(y)), c)],
                                             y[np.repeat(np.arange(len(y)), c)]).get(metric) for c in counts]
    got = TASK_KINDS[task_type].resampled(target, metric, raw, y, counts)
    np.testing.assert_allclose(got, np.asarray(expected, dtype=np.float64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_every_loss_name_is_a_different_loss_in_the_trainer(loss: str) -> None:
    """`masked_loss` dispatches on the loss name; a name it does not know must not fall through silently."""
    task_type = next(t for t, k in TASK_KINDS.items() if loss in k.losses)
    raw, y = _outputs(task_type, rows=4)
    classes = {"classes": CLASSES} if TASK_KINDS[task_type].class_labels else {}
    spec = TaskSpec(name="t", type=task_type, label={"column": "t"}, loss=loss, **classes)  # type: ignore[arg-type]
    pred, target = torch.from_numpy(raw).float(), torch.from_numpy(y).float()
    values = {other: float(masked_loss(spec.model_copy(update={"loss": other}), pred, target))
              for other in TASK_KINDS[task_type].losses}
    assert all(np.isfinite(list(values.values())))
    assert len(set(values.values())) == len(values)  # each name computes its own loss


@pytest.mark.parametrize("task_type", sorted(TASK_KINDS))
def test_every_kind_names_an_estimator_that_reads_its_logged_prediction(task_type: str) -> None:
    """Label-free quality estimation is chosen by the kind and reads the prediction log through it."""
    target = _target(task_type)
    raw, _ = _outputs(task_type)
    kind = kind_of(target)
    assert kind.estimator in ESTIMATORS
    logged = kind.logged_prediction("t", pd.DataFrame(kind.columns(target, raw)))
    assert logged.shape == (len(raw),) and np.isfinite(logged).all()


def test_ordinal_probabilities_are_a_distribution_whose_median_is_the_label() -> None:
    kind = Ordinal()
    raw = np.array([[3.0, -3.0], [-2.0, 2.0], [4.0, 3.0], [-5.0, -6.0]])  # row 1: thresholds out of order
    p = kind.probabilities(raw)
    assert np.allclose(p.sum(axis=1), 1) and (p >= 0).all()
    assert kind.predicted(p).tolist() == [1, 0, 2, 0]  # row 1: P(y > 1) is capped at P(y > 0) < 0.5


def test_ordinal_loss_grows_with_the_distance_to_the_true_class() -> None:
    """A miss by two classes costs more than a miss by one: what makes it ordinal, not multiclass."""
    pred = torch.tensor([[6.0, 6.0]])  # confidently the top class
    losses = [float(Ordinal().loss("cumulative_bce", pred, torch.tensor([y]))) for y in (2.0, 1.0, 0.0)]
    assert losses[0] < losses[1] < losses[2]


def test_an_ordinal_task_from_identity_needs_its_class_order() -> None:
    with pytest.raises(ValueError, match="needs 'classes', in order"):
        TaskSpec(name="t", type="ordinal", label={"column": "t"})
    with pytest.raises(ValueError, match="ordinal task needs op"):
        TaskSpec(name="t", type="ordinal", label={"column": "t", "op": "gt", "value": 1})


def ordinal_raw_config() -> dict:
    """txhousing with its price band as an ordinal task (low < mid < high), no code change."""
    raw = raw_config(TXHOUSING)
    raw["tasks"] = [{**t, "type": "ordinal", "metric": "class_mae"} if t["name"] == "price_band" else t
                    for t in raw["tasks"]]
    return raw


@pytest.fixture(scope="module")
def ordinal_cfg() -> ProjectConfig:
    raw = ordinal_raw_config()
    raw["training"] |= {"epochs": 4, "threads": 2}
    return parse_config(raw, str(TXHOUSING))


def test_an_ordinal_task_trains_exports_and_is_served_end_to_end(ordinal_cfg: ProjectConfig, tmp_path: Path) -> None:
    frame = with_labels(load_source(ordinal_cfg.data), ordinal_cfg)
    train_df, val_df, test_df = (window(frame, ordinal_cfg, w) for w in ("train", "validation", "test"))
    result = train(ordinal_cfg, train_df, val_df, tmp_path / "model", progress=False)
    export_onnx(result.out_dir, tmp_path / "onnx", train_df)
    assert check_parity(result.out_dir, tmp_path / "onnx", test_df, rows=512, atol=1e-4).ok

    onnx = OnnxModel(tmp_path / "onnx")
    spec = onnx.spec
    target = next(t for t in spec.targets if t.name == "price_band")
    assert target.type == "ordinal" and target.classes == ["low", "mid", "high"] and target.width == 2
    raw = onnx.predict_frame(test_df)
    y = spec.transform_targets(test_df)["price_band"]
    got = task_metrics(target, raw["price_band"], y)
    trivial = task_metrics(target, baseline_raw(target, spec.transform_targets(train_df)["price_band"], len(y)), y)
    assert got["class_mae"] < trivial["class_mae"]  # held-out, later years: it learned the order

    # the service's path: one ONNX call stacked over all heads, decoded per task
    served = ServedModel("ordinal-test", tmp_path / "onnx", spec)
    numeric, categorical = spec.transform_numeric(test_df), spec.transform_categorical(test_df)[0]
    answers = served.outputs(LoadedModel(served).run(numeric, categorical), ["price_band"])
    logged = prediction_frame(spec, raw)
    assert [a["price_band"]["label"] for a in answers] == logged["price_band__label"].tolist()
    assert set(answers[0]["price_band"]["probabilities"]) == set(target.classes)
    # and monitoring reads the logged columns back to the same quality
    labelled = pd.concat([logged, test_df[["label__price_band"]].reset_index(drop=True)], axis=1)
    task = next(t for t in ordinal_cfg.tasks if t.name == "price_band")
    assert task_quality(task, labelled)["class_mae"] == pytest.approx(got["class_mae"])


def test_the_leakage_check_scores_an_ordinal_label_by_its_class_order() -> None:
    """An ordinal label's classes are ordered (low < mid < high), not numbers and not alphabetical: a feature
    that ranks rows in the class order is a near-copy of the label and is flagged (skill on every threshold of
    the order); one that ranks them alphabetically (high < low < mid) scores lower and is not."""
    raw = ordinal_raw_config()
    raw["features"]["numeric"] += [{"name": "band_in_order"}, {"name": "band_alphabetical"}]
    cfg = parse_config(raw, str(TXHOUSING))
    train_df = window(with_labels(load_source(cfg.data), cfg), cfg, "train")
    band = train_df["label__price_band"]
    noise = np.random.default_rng(0).normal(0, 0.05, len(band))
    planted = train_df.assign(band_in_order=band.map({"low": 0, "mid": 1, "high": 2}) + noise,
                              band_alphabetical=band.map({"high": 0, "low": 1, "mid": 2}) + noise)
    scores = {s.feature: s for s in leakage_scores(planted, cfg) if s.task == "price_band"}
    assert scores["band_in_order"].skill > 0.99 and scores["band_in_order"].leaks
    assert scores["band_alphabetical"].skill < scores["band_in_order"].skill - 0.2
    assert not scores["band_alphabetical"].leaks


TASK_TYPE_NAMES = set(TASK_KINDS)


def _names_a_task_type(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in TASK_TYPE_NAMES
    return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(_names_a_task_type(e) for e in node.elts)


def test_only_the_task_kinds_compare_task_types() -> None:
    """components/config/tasks.py is the one module that knows task types: anywhere else, a comparison with a task
    type's name (`task.type == "binary"`, `t.type in ("multiclass", "ordinal")`) is a branch a new type
    silently falls through; ask the task's kind (`kind_of(task)`) instead."""
    tasks_module = ROOT / "components" / "tasks.py"
    found = []
    for folder in ("components", "serving", "monitoring", "pipelines", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == tasks_module:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Compare) and any(map(_names_a_task_type, [node.left, *node.comparators])):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "task types compared outside components/config/tasks.py:\n" + "\n".join(found)


@pytest.mark.parametrize("task_type", ["multiclass", "ordinal"])
def test_label_free_estimates_fit_on_a_reference_whose_labels_are_class_names(task_type: str) -> None:
    """The reference stored with a model keeps the labels as the data has them: class names for txhousing's
    price band. Quality estimation fits on it for every task (here the price band's accuracy, CBPE on the
    predicted class's probability, and sales, DLE) without reading class names as numbers."""
    raw = ordinal_raw_config() if task_type == "ordinal" else raw_config(TXHOUSING)
    raw["tasks"] = [{**t, "metric": "accuracy"} if t["name"] == "price_band" else t for t in raw["tasks"]]
    cfg = parse_config(raw, str(TXHOUSING))
    frame = with_labels(load_source(cfg.data), cfg)
    train_df, test_df = window(frame, cfg, "train"), window(frame, cfg, "test")
    spec = FeatureSpec.fit(train_df, cfg)
    rng = np.random.default_rng(0)

    def logged(rows: pd.DataFrame) -> pd.DataFrame:
        """The rows with prediction columns of a model that is right more often than not."""
        y = spec.transform_targets(rows)
        outputs = {}
        for t in spec.targets:
            label = np.nan_to_num(y[t.name].astype(np.float64))
            if kind_of(t).class_labels:
                outputs[t.name] = kind_of(t).baseline(t, label, len(rows)) + rng.normal(0, 1, (len(rows), t.width))
                outputs[t.name] += 3 * (np.arange(t.width) < label[:, None] if task_type == "ordinal"
                                        else np.eye(t.width)[label.astype(int)])
            else:
                outputs[t.name] = label + rng.normal(0, 0.5, len(rows))
        return pd.concat([rows.reset_index(drop=True), prediction_frame(spec, outputs)], axis=1)

    estimated, on_reference = estimate_quality(cfg, logged(train_df), logged(test_df))
    assert set(estimated) == {t.name for t in cfg.tasks}
    assert 0.5 < estimated["price_band"] <= 1 and 0.5 < on_reference["price_band"] <= 1
    assert np.isfinite(estimated["sales"])


def test_regression_metrics_read_units_past_the_graph_and_the_head_scale_crosses_once() -> None:
    """One convention outside the trainer: a regression metric reads the graph's output and the label in the
    column's units, whatever the target's scale; the trainer's head-scale tensors cross once (`head_metrics`)."""
    from components.training.metrics import head_metrics

    target = TargetSpec("sales", "regression", mean=5.0, std=2.0, transform="log1p")
    kind = kind_of(target)
    labels = pd.Series([100.0, 2500.0, np.nan, 40.0])
    outputs = np.array([120.0, 2000.0, 7.0, 50.0])
    y = kind.label_values(target, labels)
    errors = np.abs(outputs - labels.to_numpy())[[0, 1, 3]]
    got = task_metrics(target, outputs, y)
    assert got["mae"] == pytest.approx(errors.mean()) and got["n"] == 3
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)))
    # the trainer's tensors: the head's outputs and the encoded label, the same numbers once in units
    head = head_metrics(target, kind.to_head(target, outputs), kind.encode(target, labels).astype(np.float64))
    assert head["mae"] == pytest.approx(got["mae"], rel=1e-6)
    # the trivial model is the median whatever the scale: a monotone transform keeps it
    encoded = kind.encode(target, labels.dropna()).astype(np.float64)
    assert kind.to_units(target, baseline_raw(target, encoded, 1))[0] == pytest.approx(np.median(labels.dropna()))
