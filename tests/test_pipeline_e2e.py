"""The whole lifecycle through the real CLI and kfp.local: DVC data -> pipeline -> registry."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bentoml
import pandas as pd
import pytest
import torch
import yaml

from components import steps
from components.artifacts import registry
from components.artifacts.export import export_onnx
from components.artifacts.predictions import REFERENCE_FILE, REFERENCE_ROWS
from components.config.schema import ProjectConfig, config_to_yaml, load_config, parse_config
from components.data.features import SPEC_FILE
from components.data.tables import select_window, with_labels
from components.data.versioning import data_version, dvc_md5
from components.steps import prepare_continual
from components.training.train import WEIGHTS, load_trained, train
from pipelines.cli.retrain import retrain
from pipelines.cli.simulate import simulate, timeline_markdown
from pipelines.local import run_local
from pipelines.steplog import ANSI, LOG_FILE
from tests.config_reads import ConfigReads
from tests.conftest import FLIGHTS, TXHOUSING, allow_smoke_model, config_with, raw_config

MTLOPS = [sys.executable, "-m", "pipelines.cli"]
pytestmark = pytest.mark.slow


def mtlops(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*MTLOPS, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    if check:
        assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc


def repo_with_data(root: Path, raw: dict, name: str) -> tuple[Path, str]:
    """A git repo at `root` with the config `raw` as configs/<name>.yaml, its data built by `mtlops data
    build` (DVC-tracked, pushed) and committed. Returns the config's path and what the build printed."""
    cfg_path = root / "configs" / f"{name}.yaml"
    cfg_path.parent.mkdir()
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "ci@example.com"],
                ["git", "config", "user.name", "ci"]):
        subprocess.run(cmd, cwd=root, check=True)
    out = mtlops("data", "build", "--config", str(cfg_path), "--root", str(root), cwd=root)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "commit", "-qm", "data"], cwd=root, check=True)
    return cfg_path, out.stdout


@pytest.fixture(scope="module")
def flights_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A git repo with a small-slice flights config, its data built, DVC-tracked and committed."""
    root = tmp_path_factory.mktemp("repo")
    raw = copy.deepcopy(raw_config(FLIGHTS))
    raw["data"].update(sample_fraction=0.15, dvc_remote=str(root.parent / "remote"))
    raw["training"].update(epochs=2, threads=2)
    raw["registry"]["model_name"] = "e2e-flights"
    cfg_path, built = repo_with_data(root, allow_smoke_model(raw), "quick")
    assert "12 partitions" in built
    return root, cfg_path


def test_pipeline_trains_exports_and_registers_with_lineage(flights_repo: tuple[Path, Path]) -> None:
    root, cfg_path = flights_repo
    out = mtlops("run", "--config", str(cfg_path), "--root", str(root), "--pipeline-root", str(root / "runs"),
                 cwd=root).stdout
    assert "promoted to champion" in out and "arr_delayed (primary)" in out
    steps = ["configure-op", "ingest-op", "validate-op", "split-op", "train-op", "export-op", "evaluate-op",
             "register-op"]
    step_lines = [line.split() for line in out.splitlines() if line.startswith("SUCCESS ")]
    assert sorted(line[1] for line in step_lines) == sorted(steps)  # one line per step, with its time
    assert all(line[-1] == "s" and float(line[-2]) > 0 for line in step_lines)
    assert "Executing task" not in out and "executorInput" not in out and "parameterValues" not in out

    run_dir = next((root / "runs").iterdir())
    kfp_log = ANSI.sub("", (run_dir / LOG_FILE).read_text())  # kfp.local's own output went to the run folder
    assert all(f"Executing task '{step}'" in kfp_log for step in steps)
    onnx_dir = next(run_dir.glob("export-op/onnx_model"))
    for name in ("model.onnx", "feature_spec.json", "config.yaml", "parity.json"):
        assert (onnx_dir / name).is_file(), name
    parity = json.loads((onnx_dir / "parity.json").read_text())
    assert parity["ok"] and parity["rows"] == 1000 and max(parity["max_abs_diff"].values()) <= 1e-4
    metrics = json.loads(next(run_dir.glob("evaluate-op/metrics_json")).read_text())
    for task, values in metrics["test"].items():
        assert all(math.isfinite(v) for v in values.values()), (task, values)
    assert metrics["test"]["arr_delayed"]["roc_auc"] > 0.55
    assert metrics["test"]["air_time"]["mae"] < metrics["baseline"]["air_time"]["mae"]
    assert json.loads(next(run_dir.glob("validate-op/report")).read_text())  # the validation report is kept
    reference = pd.read_parquet(onnx_dir / REFERENCE_FILE)  # monitoring's reference, scored by the graph
    assert len(reference) == min(REFERENCE_ROWS, len(pd.read_parquet(next(run_dir.glob("split-op/train")))))
    assert {"arr_delayed__proba", "air_time__value", "label__arr_delayed", "carrier", "sched_dep"} <= set(reference)
    assert reference["sched_dep"].max() < pd.Timestamp(load_config(cfg_path).data.windows.train.end)

    models = json.loads(mtlops("models", "--config", str(cfg_path), "--json", cwd=root).stdout)
    assert [m["stage"] for m in models] == ["champion"]
    parts = {f"data/flights/2013-0{m}.parquet": dvc_md5(root / f"data/flights/2013-0{m}.parquet")
             for m in range(1, 7)}
    assert models[0]["data_version"] == data_version(parts)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    assert models[0]["git_revision"] == head

    # a second run is a challenger: gated against the champion on the same test rows
    out = mtlops("run", "--config", str(cfg_path), "--root", str(root), "--pipeline-root", str(root / "runs"),
                 cwd=root).stdout
    assert "primary arr_delayed roc_auc" in out
    models = json.loads(mtlops("models", "--config", str(cfg_path), "--json", cwd=root).stdout)
    assert len(models) == 2 and models[1]["gate"][0].startswith("primary arr_delayed roc_auc")
    assert sorted(m["stage"] for m in models) in (["champion", "retired"], ["champion", "rejected"])


def test_train_command_alone_and_its_resume(flights_repo: tuple[Path, Path]) -> None:
    root, cfg_path = flights_repo
    out = root / "runs" / "iterate"
    log = mtlops("train", "--config", str(cfg_path), "--root", str(root), "--out", str(out), cwd=root).stdout
    assert "validation metrics at best epoch" in log and "arr_delayed" in log
    weights = torch.load(out / "model.pt", weights_only=True)
    # resuming a finished run continues from its last checkpoint and ends with the same weights
    log = mtlops("train", "--config", str(cfg_path), "--root", str(root), "--out", str(out), "--resume",
                 cwd=root).stdout
    assert "resuming from" in log and "after epoch 2 of 2" in log
    resumed = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)


def test_a_data_violation_stops_the_pipeline_with_a_report(flights_repo: tuple[Path, Path]) -> None:
    root, cfg_path = flights_repo
    raw = yaml.safe_load(cfg_path.read_text())
    raw["features"]["numeric"][3]["max"] = 100  # distance up to 100 miles: the data disagrees
    bad = root / "configs" / "strict.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = mtlops("run", "--config", str(bad), "--root", str(root), "--pipeline-root", str(root / "runs-bad"),
                  cwd=root, check=False)
    assert proc.returncode == 1
    log = proc.stdout + proc.stderr
    assert "[FAIL] range       distance" in log and "values outside [0.0, 100.0]" in log
    assert not list((root / "runs-bad").glob("*/train-op"))  # stopped before training


def test_bad_config_fails_before_any_work(tmp_path: Path) -> None:
    raw = raw_config(FLIGHTS)
    raw["tasks"][2]["type"] = "probability"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    proc = mtlops("run", "--config", str(bad), "--root", str(tmp_path), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "tasks[2].type" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_another_table_and_tasks_by_yaml_only(tmp_path: Path) -> None:
    """txhousing (multiclass + regression + binary) through the same pipeline, no code change."""
    from components.steps import build_dataset

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    cfg = config_with(TXHOUSING, data={"dvc_remote": str(tmp_path / "remote")},
                      registry={"model_name": "e2e-txhousing"}, training={"threads": 2})
    build_dataset(cfg, tmp_path)
    result = run_local(cfg, tmp_path, tmp_path / "runs")
    assert result.decision["promoted"]
    test, base = result.metrics["test"], result.metrics["baseline"]
    assert test["price_band"]["macro_f1"] > base["price_band"]["macro_f1"]
    assert test["sales"]["mae"] < base["sales"]["mae"]
    assert test["busy_month"]["roc_auc"] > 0.9
    assert load_config(FLIGHTS).registry.model_name != "e2e-txhousing"


def _champion_of(cfg_path: Path, root: Path) -> bentoml.Model:
    name = load_config(cfg_path).registry.model_name
    if registry.champion(name) is None:
        mtlops("run", "--config", str(cfg_path), "--root", str(root), "--pipeline-root", str(root / "runs"), cwd=root)
    return registry.champion(name)


def test_continual_retraining_warm_starts_replays_and_gates_on_old_and_new(flights_repo: tuple[Path, Path]) -> None:
    root, cfg_path = flights_repo
    champion = _champion_of(cfg_path, root)
    cfg = load_config(cfg_path)
    cfg = cfg.model_copy(update={"retraining": cfg.retraining.model_copy(update={"replay_rows": 3000})})
    out = retrain(cfg, root, "2013-07-01", "2013-08-01", root / "runs-continual")
    assert out.status in ("promoted", "rejected"), out
    assert out.champion_before == str(champion.tag)
    assert any(r.startswith("primary [new window") for r in out.reasons), out.reasons
    assert sum("[old window" in r for r in out.reasons) == len(cfg.tasks), out.reasons
    new = bentoml.models.get(out.tag)
    assert new.info.metadata["lineage"]["replay_rows"] == 3000
    assert new.info.metadata["lineage"]["warm_start"] == str(champion.tag)
    assert new.info.labels["stage"] == ("champion" if out.status == "promoted" else "rejected")
    assert str(registry.champion(cfg.registry.model_name).tag) == (out.tag if out.status == "promoted"
                                                                   else str(champion.tag))
    # warm start: the challenger kept the champion's vocabularies (its weights index them)
    assert (Path(new.path) / SPEC_FILE).read_text() == (Path(champion.path) / SPEC_FILE).read_text()
    assert new.info.metadata["gate"]["champion"].keys() == new.info.metadata["gate"]["challenger"].keys()


def test_continual_gate_rejects_a_challenger_that_forgets_a_task(flights_repo: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    root, cfg_path = flights_repo
    champion = _champion_of(cfg_path, root)
    model, _, cfg = load_trained(Path(champion.path))
    with torch.no_grad():  # forget air_time: its head now answers the training mean for every flight
        for p in model.heads["air_time"].parameters():
            p.zero_()
    forgetful = tmp_path / "model"
    shutil.copytree(champion.path, forgetful)
    torch.save(model.state_dict(), forgetful / WEIGHTS)
    flights = pd.concat(pd.read_parquet(p) for p in sorted((root / "data" / "flights").glob("2013-0[67].parquet")))
    flights = with_labels(flights, cfg)
    old = select_window(flights, cfg.data.time_column, "2013-06-01", "2013-07-01")
    new = select_window(flights, cfg.data.time_column, "2013-07-01", "2013-08-01")
    export_onnx(forgetful, tmp_path / "onnx", old)
    decision = registry.gate_continual(cfg, tmp_path / "onnx", Path(champion.path), new, old)
    assert not decision.promote
    assert any(r.startswith("[old window") and "air_time" in r and "BEYOND" in r for r in decision.reasons)
    assert decision.champion["old.air_time"] < decision.challenger["old.air_time"]  # MAE: lower is better


def test_a_failed_retrain_leaves_the_champion_serving(flights_repo: tuple[Path, Path]) -> None:
    root, cfg_path = flights_repo
    champion = _champion_of(cfg_path, root)
    out = retrain(load_config(cfg_path), root, "2014-01-01", "2014-02-01", root / "runs-failed")  # no such data
    assert out.status == "failed" and out.error and out.tag is None
    assert str(registry.champion(champion.tag.name).tag) == str(champion.tag)


def test_a_retrain_in_process_trains_and_gates_the_challenger_kfp_local_does(flights_repo: tuple[Path, Path],
                                                                             tmp_path: Path) -> None:
    """`steps="in-process"` (what the policy replay uses) calls the retraining pipeline's steps in this
    Python: from scratch on the same rows it trains the same challenger as kfp.local, the gate scores it
    the same, and it registers the same lineage."""
    root, cfg_path = flights_repo
    _champion_of(cfg_path, root)
    cfg = _with(load_config(cfg_path), retraining={"train_on": "sliding", "sliding_months": 1})
    runs = [retrain(cfg, root, "2013-08-01", "2013-09-01", tmp_path / steps, steps=steps)
            for steps in ("kfp", "in-process")]
    assert [r.status in ("promoted", "rejected") for r in runs] == [True, True], runs
    kfp_run, in_process = runs
    assert in_process.train_flops == kfp_run.train_flops > 0
    assert in_process.gate["challenger"].keys() == kfp_run.gate["challenger"].keys()
    for key, value in kfp_run.gate["challenger"].items():
        assert in_process.gate["challenger"][key] == pytest.approx(value, rel=1e-6), key
    lineage = [bentoml.models.get(r.tag).info.metadata["lineage"] for r in runs]
    assert lineage[0] == lineage[1] and lineage[1]["train_on"] == "sliding"
    assert [p.name.startswith("mtlops-retraining-in-process-") for p in (tmp_path / "in-process").iterdir()] == [True]


def _with(cfg: ProjectConfig, **sections: dict) -> ProjectConfig:
    raw = cfg.model_dump(mode="json", exclude_none=True)
    for name, fields in sections.items():
        raw[name].update(fields)
    return parse_config(raw, "<test>")


@pytest.mark.parametrize("train_on", ["warm_replay", "sliding", "expanding"])
def test_retraining_data_per_policy_keeps_the_gate_rows_after_every_training_row(
        flights_repo: tuple[Path, Path], tmp_path: Path, train_on: str) -> None:
    root, cfg_path = flights_repo
    champion = _champion_of(cfg_path, root)
    cfg = _with(load_config(cfg_path), retraining={"train_on": train_on, "replay_rows": 2000, "sliding_months": 2})
    paths = {k: str(tmp_path / f"{k}.parquet") for k in ("train", "validation", "new_test", "old_test")}
    out = prepare_continual(config_to_yaml(cfg), str(root), "2013-09-01", "2013-10-01", paths["train"],
                            paths["validation"], paths["new_test"], paths["old_test"])
    parts = {k: pd.read_parquet(p) for k, p in paths.items()}
    time, ids = cfg.data.time_column, cfg.data.id_column
    train_t = parts["train"][time]
    assert parts["new_test"][time].min() >= max(train_t.max(), parts["validation"][time].max())
    assert not set(parts["new_test"][ids]) & set(parts["train"][ids])
    assert not (train_t.between(pd.Timestamp("2013-06-01"), pd.Timestamp("2013-07-01"), inclusive="left")).any()
    history = parts["train"][train_t < pd.Timestamp("2013-09-01")]
    if train_on == "warm_replay":
        assert len(history) == out["replay_rows"] == 2000 and out["warm_start"] == str(champion.tag)
    elif train_on == "sliding":  # the new month and the one before it
        assert history[time].min() >= pd.Timestamp("2013-08-01") and out["warm_start"] is None
    else:  # everything since the training window began, the old test window excepted
        assert history[time].min() < pd.Timestamp("2013-01-08") and out["warm_start"] is None
        assert history[time].dt.month.nunique() == 7
    assert parse_config(yaml.safe_load(out["config_yaml"]), "<out>").training.warm_start == (
        champion.path if train_on == "warm_replay" else None)


def test_the_gate_rejects_a_challenger_that_only_wins_on_its_own_training_rows(
        flights_repo: tuple[Path, Path], tmp_path: Path) -> None:
    """An overfit challenger beats the champion on the rows it trained on and loses on the later
    held-out rows: the continual gate scores the later rows, so it is rejected and the champion
    keeps serving."""
    root, cfg_path = flights_repo
    champion = _champion_of(cfg_path, root)
    cfg = load_config(cfg_path)
    july = with_labels(pd.read_parquet(root / "data" / "flights" / "2013-07.parquet"), cfg)
    july = july.sort_values(cfg.data.time_column, kind="stable").reset_index(drop=True)
    seen, later = july.iloc[: int(len(july) * 0.6)].sample(n=300, random_state=0), july.iloc[int(len(july) * 0.75):]
    june = with_labels(pd.read_parquet(root / "data" / "flights" / "2013-06.parquet"), cfg)
    overfit = _with(cfg, training={"epochs": 60, "batch_size": 32, "lr": 0.01, "weight_decay": 0.0,
                                   "early_stopping_patience": 60, "warm_start": champion.path},
                    model={"dropout": 0.0})
    train(overfit, seen, seen, tmp_path / "model", progress=False)  # "validated" on its own rows
    export_onnx(tmp_path / "model", tmp_path / "onnx", seen)
    primary = cfg.primary_task.name
    wins = [registry.score(cfg, folder, seen)[primary] for folder in (tmp_path / "onnx", Path(champion.path))]
    assert wins[0] > wins[1], wins  # it does win where it trained

    tag = registry.register(tmp_path / "onnx", cfg, {}, {"test": "overfit"})
    decision = registry.promote_if_better(cfg, tag, later, june)
    assert not decision.promote
    assert any(r.startswith(f"primary [new window, {len(later):,} rows]") and "WORSE" in r for r in decision.reasons)
    assert bentoml.models.get(tag).info.labels["stage"] == "rejected"
    assert str(registry.champion(cfg.registry.model_name).tag) == str(champion.tag)


def test_simulate_compares_every_retraining_policy_through_kfp_local(flights_repo: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """`mtlops simulate --policy` on two tiny months, every trigger and every `train_on` at least once:
    each policy replays from its own copy of the seed's initial model store, retrains through the real
    retraining pipeline, and lands in one table; two replays run at once (`--jobs 2`)."""
    root, cfg_path = flights_repo
    cheap = _with(load_config(cfg_path), monitoring={"sample_size": 3000, "calibration_draws": 20})
    small_path = tmp_path / "policies.yaml"
    small_path.write_text(config_to_yaml(cheap))
    out = tmp_path / "policies"
    policies = "never,scheduled/sliding,scheduled/expanding,alert/warm_replay"
    result = mtlops("simulate", "--config", str(small_path), "--root", str(root), "--months", "2013-07..2013-08",
                    "--policy", policies, "--seeds", "0", "--jobs", "2", "--steps", "kfp", "--out", str(out),
                    cwd=root).stdout
    records = json.loads((out / "records.json").read_text())
    assert [r["policy"] for r in records] == policies.split(",")
    by_policy = {r["policy"]: r["rows"] for r in records}
    assert [row["month"] for row in by_policy["never"]] == ["2013-07", "2013-08"]
    assert all(row["retrain"] == "" for row in by_policy["never"])
    alerted = by_policy["alert/warm_replay"][0]["alert"] == "alert"
    for name, retrained in (("scheduled/sliding", True), ("scheduled/expanding", True),
                            ("alert/warm_replay", alerted)):
        july, august = by_policy[name]
        assert july["served"] == by_policy["never"][0]["served"]  # July is served by the same initial model
        assert august["retrain"] == "", "the last month's retrain would serve outside the replay"
        if not retrained:
            assert july["retrain"] == ""
            continue
        assert july["retrain"] in ("promoted", "rejected") and july["train_flops"] > 0, (name, july)
        assert {"new.arr_delayed", "old.arr_delayed"} <= july["gate"]["challenger"].keys()
        if july["retrain"] == "rejected":
            assert august["served"] == by_policy["never"][1]["served"]
        store = out / "seed-0" / name.replace("/", "-") / "store" / "models" / cheap.registry.model_name
        lineages = [yaml.safe_load(p.read_text())["metadata"]["lineage"] for p in store.glob("*/model.yaml")]
        retrains = [x for x in lineages if "train_on" in x]
        assert len(retrains) == 1 and retrains[0]["train_on"] == name.split("/")[1], lineages
        assert ("warm_start" in retrains[0]) == (name == "alert/warm_replay")
    assert "| scheduled/sliding |" in (out / "policies.md").read_text() and (out / "policies.png").stat().st_size
    # a replay writes its config.yaml as it starts and wall_s as it ends: the first two both wait on the
    # seed's initial champion, so with two workers they run side by side
    spans = [tuple((out / "seed-0" / name.replace("/", "-") / f).stat().st_mtime for f in ("config.yaml", "wall_s"))
             for name in policies.split(",")]
    assert spans[1][0] < spans[0][1] and spans[0][0] < spans[1][1], spans
    assert "months worse than never" in result
    bad = mtlops("simulate", "--config", str(small_path), "--policy", "never", "--steps", "docker", cwd=root,
                 check=False)
    assert bad.returncode == 2 and "--steps" in bad.stderr and "'docker'" in bad.stderr, bad.stderr


def test_the_monitoring_pipeline_retrains_in_its_dsl_if_branch_only_when_the_alert_acts(
        flights_repo: tuple[Path, Path], tmp_path: Path) -> None:
    """The recurring run's pipeline through kfp.local: monitor -> policy -> `dsl.If` retraining.
    July's served traffic carries a unit bug (`distance` × 10): the first run alerts and its
    branch registers a challenger trained on July; the second, inside the cool-down, only logs."""
    from kfp import local

    from components.artifacts.inference import OnnxModel
    from components.artifacts.predictions import score_frame, write_log_part
    from monitoring.alerts import read_alerts
    from monitoring.windows import champion_model
    from pipelines.monitoring import build_monitoring_pipeline

    root, cfg_path = flights_repo
    _champion_of(cfg_path, root)
    cfg = _with(load_config(cfg_path), retraining={"replay_rows": 3000},
                alerts={"action": "retrain", "cooldown_days": 30, "features": ["distance"]})
    champ = champion_model(cfg)
    july = pd.read_parquet(root / "data" / "flights" / "2013-07.parquet")
    faulty = july.assign(distance=july["distance"] * 10)
    write_log_part(score_frame(OnnxModel(champ.folder), faulty, champ.tag).assign(
        timestamp=pd.Timestamp("2013-07-15", tz="UTC")), tmp_path / "log")
    versions = {str(m.tag) for m in bentoml.models.list(cfg.registry.model_name)}
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True)
    pipeline = build_monitoring_pipeline(scheduled=False)
    args = {"config_yaml": config_to_yaml(cfg), "window": "2013-07", "data_root": str(root),
            "prediction_log": str(tmp_path / "log"), "workspace": str(tmp_path / "ws"),
            "alert_log": str(tmp_path / "alerts.jsonl"), "git_revision": "test"}
    pipeline(**args)
    alerts = read_alerts(tmp_path / "alerts.jsonl")
    assert len(alerts) == 1 and alerts[0].acts, alerts
    assert any("distance" in r for r in alerts[0].reasons), alerts[0].reasons
    new = {str(m.tag) for m in bentoml.models.list(cfg.registry.model_name)} - versions
    assert len(new) == 1, new  # the branch ran: one challenger, promoted or rejected by the gate
    challenger = bentoml.models.get(new.pop())
    assert challenger.info.metadata["lineage"]["warm_start"] == champ.tag
    assert challenger.info.metadata["gate"]["challenger"]

    pipeline(**args)  # the same window again: inside the cool-down
    alerts = read_alerts(tmp_path / "alerts.jsonl")
    assert len(alerts) == 2 and alerts[1].suppressed and not alerts[1].acts
    assert len(bentoml.models.list(cfg.registry.model_name)) == len(versions) + 1  # the branch was skipped


def test_each_step_reads_only_what_the_pipelines_hand_it(flights_repo: tuple[Path, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The training steps, then the retraining steps (a champion to gate against, a warm start), run on
    the parts of the config the pipelines hand them, read what `STEP_READS` says, nothing else: a step
    that starts reading another part (which it would get at its defaults) fails here instead of silently
    ignoring the user's setting; a part no run reads any longer fails too."""
    root, cfg_path = flights_repo
    cfg = _with(load_config(cfg_path), registry={"model_name": "e2e-step-reads"})
    reads = ConfigReads(monkeypatch)
    p = {name: str(tmp_path / name) for name in ("dataset", "report", "train", "validation", "test", "model",
                                                 "metrics", "onnx", "decision", "new_test", "old_test")}

    def model_steps(given: dict[str, str], test: str, lineage: dict, old_test: str = "") -> dict:
        with reads.step("validate"):
            steps.validate(given["validate"], p["train"], p["report"])
        with reads.step("train"):
            steps.train_model(given["train"], p["train"], p["validation"], p["model"])
        steps.evaluate_model(p["model"], p["train"], test, p["metrics"])
        with reads.step("export"):
            steps.export_model(given["export"], p["model"], p["train"], test, p["onnx"])
        with reads.step("register"):
            return steps.register_model(given["register"], p["onnx"], p["metrics"], test, lineage, p["decision"],
                                        old_test)

    given = steps.step_configs(config_to_yaml(cfg))
    with reads.step("ingest"):
        lineage = steps.ingest(given["ingest"], str(root), p["dataset"])
    with reads.step("split"):
        steps.split(given["split"], p["dataset"], p["train"], p["validation"], p["test"])
    first = model_steps(given, p["test"], lineage)
    prepared = prepare_continual(config_to_yaml(cfg), str(root), "2013-07-01", "2013-08-01", p["train"],
                                 p["validation"], p["new_test"], p["old_test"])
    retrained = model_steps(prepared["step_configs"], p["new_test"], {k: prepared[k] for k in steps.CONTINUAL_LINEAGE},
                            p["old_test"])
    assert first["promoted"]  # the retraining's gate then compares with it, on the old window too
    assert retrained["champion"].keys() >= {"old." + t.name for t in cfg.tasks}

    assert [m for step, declared in steps.STEP_READS.items() if step != "pbt"
            for m in reads.mismatches(step, declared, cfg)] == []


def test_simulate_with_a_shadow_policy_promotes_the_shadow_on_the_next_months_labels(
        flights_repo: tuple[Path, Path], tmp_path: Path) -> None:
    """`registry.passing_challenger: shadow` in the replay: July's retrain passes the gate and becomes the shadow
    (July's champion keeps serving), August's labelled records judge it beside the champion, and promoted it
    serves September. Every tolerance is wide here so that the path, not the model, is under test."""
    root, cfg_path = flights_repo
    raw = load_config(cfg_path).model_dump(mode="json", exclude_none=True)
    raw["registry"].update(model_name="e2e-shadow-replay", passing_challenger="shadow", default_tolerance=1.0)
    raw["retraining"].update(trigger="scheduled", train_on="warm_replay", replay_rows=3000)
    raw["monitoring"].update(sample_size=3000, calibration_draws=20, workspace=str(tmp_path / "evidently"))
    for task in raw["tasks"]:
        task["tolerance"] = 1.0
    cfg = parse_config(raw, "<shadow replay>")
    path = tmp_path / "shadow.yaml"
    path.write_text(config_to_yaml(cfg))
    initial = _champion_of(path, root)
    rows = simulate(cfg, root, ["2013-07", "2013-08", "2013-09"], tmp_path / "replay", progress=False,
                    steps="in-process")
    july, august, september = rows
    assert (july.retrain, july.shadow) == ("shadowed", "")
    assert july.champion == str(initial.tag).split(":")[-1]  # the shadow answers no one
    assert august.shadow == "promoted", august
    shadow_tag = august.champion
    assert shadow_tag != july.champion and september.served != august.served
    promoted = bentoml.models.get(f"{cfg.registry.model_name}:{shadow_tag}")
    decision = promoted.info.metadata["shadow_decision"]
    assert decision["window"] == "2013-08" and {t["task"] for t in decision["tasks"]} == {t.name for t in cfg.tasks}
    assert all(t["labelled"] >= 1000 and t["verdict"] == "not worse" for t in decision["tasks"])
    assert "| shadow |" in timeline_markdown(rows, cfg)
