"""Adding and retiring a task on a trained model: the warm start keeps what the old model learnt, a new head
learns alone first, a retired head leaves, and nothing changes by accident."""

from __future__ import annotations

import copy
from pathlib import Path

import bentoml
import httpx
import pandas as pd
import pytest
import torch
import yaml
from pydantic import ValidationError

from components import steps
from components.artifacts import registry
from components.config.schema import ProjectConfig, config_to_yaml, parse_config
from components.data.features import FeatureSpec
from components.training.train import CHECKPOINT, SPEC, WEIGHTS, train
from monitoring.windows import monitor_window, monitored_config
from pipelines.cli.retrain import retrain
from serving.launch import ServerProcess
from serving.runtime import ServedModel, record_model, request_model, retired_task_asked
from tests.conftest import FLIGHTS, allow_smoke_model, raw_config, window
from tests.test_pipeline_e2e import mtlops, repo_with_data

OLD_TASKS = ("arr_delayed", "dep_delay", "air_time")


def tasks_config(names: tuple[str, ...], **training: object) -> ProjectConfig:
    """configs/flights.yaml with only the tasks `names` (its order), a small network and `training` set."""
    raw = copy.deepcopy(raw_config(FLIGHTS))
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in names]
    raw["model"] = {**raw.get("model", {}), "hidden": [32, 16]}
    raw["training"] = {**raw["training"], "epochs": 1, "threads": 2, **training}
    raw["registry"]["retire_tasks"] = [t for t in OLD_TASKS if t not in names]
    raw["leakage"]["allow_leaky"] = [a for a in raw["leakage"]["allow_leaky"] if a.get("task") in (None, *names)]
    raw.pop("alerts", None)
    return parse_config(raw, "<tasks>")


@pytest.fixture(scope="module")
def three_task_run(flights_frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tasks_config(OLD_TASKS)
    out = tmp_path_factory.mktemp("three-tasks")
    train(cfg, window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation"), out, progress=False)
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / WEIGHTS, weights_only=True)


def test_an_added_task_gets_a_new_head_trained_alone_before_the_trunk_moves(
        flights_frame: pd.DataFrame, three_task_run: Path, tmp_path: Path) -> None:
    cfg = tasks_config((*OLD_TASKS, "cancelled"), warm_start=str(three_task_run), new_task_head_epochs=1, epochs=2)
    result = train(cfg, window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation"), tmp_path,
                   progress=False)
    assert [h["tasks"] for h in result.history] == [["cancelled"], [t.name for t in cfg.tasks]]
    new_auc = [h["validation"]["cancelled"]["roc_auc"] for h in result.history]  # the new task picks the epoch
    assert result.best_epoch == 1 + max(range(len(new_auc)), key=new_auc.__getitem__)
    old_spec, new_spec = FeatureSpec.load(three_task_run / SPEC), FeatureSpec.load(tmp_path / SPEC)
    new_targets = {t.name: t for t in new_spec.targets}
    assert all(new_targets[t.name] == t for t in old_spec.targets)  # old heads keep the scale they learnt in
    assert "cancelled" in new_targets and new_spec.numeric == old_spec.numeric

    head_only = tasks_config((*OLD_TASKS, "cancelled"), warm_start=str(three_task_run), epochs=1)
    train(head_only, window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation"),
          tmp_path / "head-only", progress=False)
    before, after = _weights(three_task_run), _weights(tmp_path / "head-only")
    joint = torch.load(tmp_path / CHECKPOINT, weights_only=True)["model"]  # the last epoch's, selected or not
    assert before.keys() < after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # trunk and old heads frozen in the head stage
    assert any(k.startswith("heads.cancelled.") for k in after)
    assert not all(torch.equal(before[k], joint[k]) for k in before)  # then everything trains


def test_a_retired_task_loses_its_head_and_the_rest_is_warm_started(
        flights_frame: pd.DataFrame, three_task_run: Path, tmp_path: Path) -> None:
    cfg = tasks_config(("arr_delayed", "dep_delay"), warm_start=str(three_task_run), epochs=1, lr=1e-12)
    train(cfg, window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation"), tmp_path,
          progress=False)
    before, after = _weights(three_task_run), _weights(tmp_path)
    assert not any("air_time" in k for k in after)
    assert after.keys() == {k for k in before if "air_time" not in k}
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in after)  # lr ~0: the champion's weights
    assert [t.name for t in FeatureSpec.load(tmp_path / SPEC).targets] == ["arr_delayed", "dep_delay"]


def test_a_task_that_changes_type_or_a_warm_start_of_another_architecture_is_refused(
        flights_frame: pd.DataFrame, three_task_run: Path, tmp_path: Path) -> None:
    raw = copy.deepcopy(raw_config(FLIGHTS))
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in OLD_TASKS]
    air = next(t for t in raw["tasks"] if t["name"] == "air_time")
    air.update(type="binary", label={"column": "air_time", "op": "gt", "value": 120}, metric="roc_auc")
    air.pop("loss")
    raw["model"] = {**raw.get("model", {}), "hidden": [32, 16]}
    raw["training"] = {**raw["training"], "epochs": 1, "threads": 2, "warm_start": str(three_task_run)}
    raw["leakage"]["allow_leaky"] = [a for a in raw["leakage"]["allow_leaky"] if a.get("task") in (None, *OLD_TASKS)]
    raw.pop("alerts", None)
    cfg = parse_config(raw, "<type change>")
    train_df, val_df = window(flights_frame, cfg, "train"), window(flights_frame, cfg, "validation")
    with pytest.raises(ValueError, match="task 'air_time' is regression in the warm start's model and binary"):
        train(cfg, train_df, val_df, tmp_path / "a", progress=False)
    wider = tasks_config(OLD_TASKS, warm_start=str(three_task_run))
    wider = parse_config({**wider.model_dump(mode="json", exclude_none=True),
                          "model": {**wider.model.model_dump(mode="json", exclude_none=True), "hidden": [64]}}, "<w>")
    with pytest.raises(ValueError, match="its weights do not fit this architecture"):
        train(wider, train_df, val_df, tmp_path / "b", progress=False)


def test_retiring_a_task_must_be_said_and_cannot_keep_it() -> None:
    with pytest.raises(ValueError, match=r"registry.retire_tasks names tasks the config still has: \['air_time'\]"):
        raw = copy.deepcopy(raw_config(FLIGHTS))
        raw["registry"]["retire_tasks"] = ["air_time"]
        parse_config(raw, "<retire kept>")


# --- the lifecycle through the real retraining, registry, service and monitor -------------------------------

NEW_WINDOW = ("2013-07-01", "2013-08-01")


def repo_config(names: tuple[str, ...], root: Path, **registry: object) -> ProjectConfig:
    raw = allow_smoke_model(copy.deepcopy(raw_config(FLIGHTS)))
    raw["data"].update(sample_fraction=0.1, dvc_remote=str(root.parent / "remote"))
    raw["tasks"] = [t for t in raw["tasks"] if t["name"] in names]
    raw["model"] = {**raw.get("model", {}), "hidden": [32, 16]}
    raw["training"].update(epochs=2, threads=2)
    raw["retraining"] = {**raw.get("retraining", {}), "replay_rows": 3000}
    raw["registry"] = {**raw["registry"], "model_name": "task-lifecycle", **registry}
    raw["registry"]["allow_below_baseline"] = [a for a in raw["registry"]["allow_below_baseline"] if a["task"] in names]
    raw["leakage"]["allow_leaky"] = [a for a in raw["leakage"]["allow_leaky"] if a.get("task") in (None, *names)]
    return parse_config(raw, "<lifecycle>")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A flights data repo (DVC-tracked) and a three-task champion trained by the training pipeline's steps."""
    root = tmp_path_factory.mktemp("lifecycle")
    cfg = repo_config(OLD_TASKS, root)
    repo_with_data(root, yaml.safe_load(config_to_yaml(cfg)), "lifecycle")
    work, text = root / "first", config_to_yaml(cfg)
    work.mkdir()
    p = {n: str(work / n) for n in ("data", "train", "validation", "test", "model", "metrics", "onnx", "decision")}
    steps.ingest(text, str(root), p["data"])
    steps.split(text, p["data"], p["train"], p["validation"], p["test"])
    steps.train_model(text, p["train"], p["validation"], p["model"])
    steps.evaluate_model(p["model"], p["train"], p["test"], p["metrics"])
    steps.export_model(text, p["model"], p["train"], p["test"], p["onnx"])
    out = steps.register_model(text, p["onnx"], p["metrics"], p["test"], {"data_version": "first"}, p["decision"])
    assert out["promoted"], out["reasons"]
    return root, out["tag"]


def _serve(cfg: ProjectConfig, folder: Path) -> ServerProcess:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(config_to_yaml(cfg))
    server = ServerProcess(folder / "config.yaml", folder / "server.out", env={"MTLOPS_ORT_THREADS": "1"})
    server.wait_ready()
    return server


def old_client(url: str, records: list[dict]) -> list[tuple[float, float, float]]:
    """A client written against the three-task response: each record's delay probability, delay and air time."""
    r = httpx.post(url + "/predict", json={"records": records}, timeout=60)
    r.raise_for_status()
    return [(p["arr_delayed"]["probability"], p["dep_delay"]["value"], p["air_time"]["value"])
            for p in r.json()["predictions"]]


def _records(root: Path, cfg: ProjectConfig, n: int = 5) -> list[dict]:
    rows = pd.read_parquet(root / "first" / "test").head(n)
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()}
            for row in rows[cfg.features.names].astype(object).to_dict("records")]


def test_a_config_task_the_champion_lacks_is_not_monitored_until_a_model_answers_it(
        repo: tuple[Path, str], tmp_path: Path) -> None:
    root, champion = repo
    cfg = repo_config((*OLD_TASKS, "cancelled"), root)
    summary = monitor_window(cfg, "2013-07", tmp_path / "report", data_root=root, labels=True,
                             workspace=tmp_path / "workspace")
    assert summary.model_version == champion
    assert set(summary.prediction_scores) == set(summary.quality) == set(OLD_TASKS)
    watched = monitored_config(cfg, Path(bentoml.models.get(champion).path))
    assert [t.name for t in watched.tasks] == [t.name for t in cfg.tasks if t.name != "cancelled"]


def test_adding_a_task_warm_starts_from_the_champion_and_clients_of_the_old_response_keep_working(
        repo: tuple[Path, str], tmp_path: Path) -> None:
    root, champion = repo
    three = repo_config(OLD_TASKS, root)
    server = _serve(three, tmp_path / "before")
    try:
        records = _records(root, three)
        before = old_client(server.url, records)
    finally:
        server.stop()

    four = repo_config((*OLD_TASKS, "cancelled"), root, passing_challenger="shadow")
    out = retrain(four, root, *NEW_WINDOW, tmp_path / "runs", steps="in-process")
    assert out.status in ("promoted", "rejected"), out  # never shadowed: a shadow must answer the champion's tasks
    assert out.status == "rejected" or any(r.startswith("promoted without a shadow phase") for r in out.reasons)
    model = bentoml.models.get(out.tag)
    meta = model.info.metadata
    assert meta["task_changes"] == {"against": champion, "added": ["cancelled"], "retired": []}
    assert meta["task_introduced"] == {**dict.fromkeys(OLD_TASKS, champion), "cancelled": out.tag}
    assert meta["lineage"]["warm_start"] == champion
    assert any(r.startswith("task added: cancelled") for r in out.reasons), out.reasons
    assert sum("cancelled: new task, no champion score" in r for r in out.reasons) == 2  # old and new windows
    if out.status == "rejected":  # a smoke model may not hold the old tasks: promote it by hand for the service
        registry.promote(four.registry.model_name, out.tag)

    server = _serve(four, tmp_path / "after")
    try:
        after = old_client(server.url, records)  # the old client, unchanged
        assert len(after) == len(before) and all(0 <= p <= 1 for p, _, _ in after)
        body = httpx.post(server.url + "/predict", json={"records": records}, timeout=60).json()
        assert set(body["predictions"][0]) == {*OLD_TASKS, "cancelled"}  # additive: one more key per record
        info = httpx.get(server.url + "/model", timeout=10).json()
        assert {t["name"]: t["introduced_by"] for t in info["tasks"]} == meta["task_introduced"]
        only = httpx.post(server.url + "/predict", json={"records": records, "tasks": ["cancelled"]}, timeout=60)
        assert set(only.json()["predictions"][0]) == {"cancelled"}
    finally:
        server.stop()


def test_a_task_is_retired_only_on_purpose_and_then_the_service_names_it(
        repo: tuple[Path, str], tmp_path: Path) -> None:
    root, _ = repo
    champion = str(registry.champion("task-lifecycle").tag)
    kept = ("arr_delayed", "dep_delay", "cancelled")
    unsaid = repo_config(kept, root)
    cfg_path = tmp_path / "unsaid.yaml"
    cfg_path.write_text(config_to_yaml(unsaid))
    versions = len(registry.versions("task-lifecycle"))
    refused = mtlops("retrain", "--config", str(cfg_path), "--root", str(root), "--new-start", NEW_WINDOW[0],
                     "--new-end", NEW_WINDOW[1], "--pipeline-root", str(tmp_path / "runs"), cwd=root, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "['air_time']" in refused.stdout and "--retire-task" in refused.stdout
    assert len(registry.versions("task-lifecycle")) == versions  # nothing trained, nothing registered
    with pytest.raises(registry.TaskRetirementRefused, match="air_time"):
        retrain_or_raise(unsaid, root, tmp_path)

    out = retrain(repo_config(kept, root, retire_tasks=["air_time"]), root, *NEW_WINDOW, tmp_path / "runs",
                  steps="in-process")
    assert out.status in ("promoted", "rejected"), out
    meta = bentoml.models.get(out.tag).info.metadata
    assert meta["retired_tasks"] == {"air_time": out.tag}
    assert (meta["task_changes"]["against"], meta["task_changes"]["retired"]) == (champion, ["air_time"])
    assert any(r.startswith("task retired: air_time") for r in out.reasons), out.reasons
    assert [t.name for t in FeatureSpec.load(Path(bentoml.models.get(out.tag).path) / SPEC).targets] == list(kept)
    if out.status == "rejected":
        registry.promote("task-lifecycle", out.tag)

    server = _serve(repo_config(kept, root, retire_tasks=["air_time"]), tmp_path / "retired")
    try:
        records = _records(root, unsaid)
        r = httpx.post(server.url + "/predict", json={"records": records, "tasks": ["dep_delay", "air_time"]},
                       timeout=60)
        assert r.status_code == 400
        (detail,) = r.json()["detail"]
        assert detail["msg"].startswith(f"task 'air_time' was retired by model version {out.tag}")
        assert (detail["loc"], detail["type"]) == (["tasks", 1], "retired_task")
        unknown = httpx.post(server.url + "/predict", json={"records": records, "tasks": ["nope"]}, timeout=60)
        assert unknown.status_code == 400 and unknown.json()["detail"][0]["loc"] == ["tasks", 0]
        info = httpx.get(server.url + "/model", timeout=10).json()
        assert info["retired_tasks"] == [{"name": "air_time", "retired_by": out.tag}]
    finally:
        server.stop()


def retrain_or_raise(cfg: ProjectConfig, root: Path, tmp_path: Path) -> None:
    """The retraining's first step, which refuses an unannounced retirement before any training."""
    paths = [str(tmp_path / n) for n in ("train", "validation", "new_test", "old_test")]
    steps.prepare_continual(config_to_yaml(cfg), str(root), *NEW_WINDOW, *paths)


def test_the_add_task_benchmark_runs_every_arm_and_a_head_only_run_leaves_the_old_tasks_as_they_were(
        tmp_path: Path) -> None:
    from benchmarks import task_lifecycle as bench
    results = bench.main(["--fraction", "0.03", "--epochs", "1", "--seeds", "1", "--rounds", "5", "--head-epochs",
                          "1", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    text = (tmp_path / "out.md").read_text()
    assert "## Adding `cancelled`" in text and "## Adding `arr_delayed_60`" in text
    assert (tmp_path / "out.png").stat().st_size > 0
    for new, runs in results.items():
        assert list(runs) == [bench.BEFORE, "from scratch", "warm, 1 head epoch", "STL", "LightGBM"]
        before, warm = runs[bench.BEFORE][0].metrics, runs["warm, 1 head epoch"][0].metrics
        old = [k for k in before if k.split(bench.SEP)[1:2] in ([t] for t in OLD_TASKS)]
        assert old and all(warm[k] == pytest.approx(before[k], rel=1e-6) for k in old), new  # one epoch: heads only
        assert any(k.split(bench.SEP)[1] == new for k in warm)


def test_a_retired_task_is_named_in_the_400_and_any_other_bad_tasks_item_is_left_to_the_schema(
        three_task_run: Path) -> None:
    spec = FeatureSpec.load(three_task_run / SPEC)
    served = ServedModel("m:new", three_task_run, spec, {"retired_tasks": {"cancelled": "m:old"}})
    body = request_model(record_model(spec), spec, 10)
    record = {n.name: n.mean for n in spec.numeric} | {c.name: "x" for c in spec.categorical}
    for tasks, expected in ((["air_time", "cancelled"], ("task 'cancelled' was retired by model version m:old",
                                                          ["tasks", 1])),
                            ([{}], None), ([["cancelled"]], None), (["nope"], None)):
        with pytest.raises(ValidationError) as caught:
            body.model_validate({"records": [record], "tasks": tasks})
        found = retired_task_asked(caught.value, served)
        if expected is None:
            assert found is None, tasks  # the schema's own 400
        else:
            assert found is not None and found[0].startswith(expected[0]) and found[1] == expected[1], tasks
