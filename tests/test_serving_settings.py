"""The service's settings: the config's `serving:` section, read once, overridden by MTLOPS_<OPTION>
variables and by `mtlops serve` flags; and a service module that imports without a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.config.schema import ServingSpec, config_to_yaml, load_config
from pipelines.cli import main as cli
from serving.launch import PROJECT
from serving.runtime import SETTINGS_VARIABLE, ServingSettings, override_variables
from tests.conftest import TXHOUSING


def test_the_service_module_imports_without_settings_or_a_model(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTLOPS_")} | {"BENTOML_HOME": str(tmp_path)}
    imported = subprocess.run([sys.executable, "-c", "import serving.service"], cwd=PROJECT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    # the service itself is built on first use, and that is what needs the model's name
    built = subprocess.run([sys.executable, "-c", "import serving.service; serving.service.MultiTaskModelService"],
                           cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
    assert built.returncode != 0 and "MTLOPS_MODEL_NAME is not set" in built.stderr, built.stderr


def _served_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, serving: dict, args: list[str],
                env: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    """`mtlops serve` on a config with `serving`, stopped where it would become the server: its exit
    code, its output and the environment the server would get."""
    cfg = load_config(TXHOUSING).model_copy(update={"serving": ServingSpec.model_validate(serving)})
    (tmp_path / "config.yaml").write_text(config_to_yaml(cfg))
    for name in override_variables():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen: dict[str, str] = {}
    monkeypatch.setattr(os, "execve", lambda path, cmd, child_env: seen.update(child_env))
    result = CliRunner().invoke(cli.app, ["serve", "--config", str(tmp_path / "config.yaml"), *args])
    return result.exit_code, result.output, seen


def test_serve_reads_the_config_section_and_variables_then_flags_override_it(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Path) -> None:
    code, output, env = _served_env(
        monkeypatch, tmp_path, {"max_rows": 7, "max_batch_size": 64, "stall_seconds": 3, "canary": {"share": 0.2}},
        ["--max-rows", "11", "--no-access-log"],
        {"MTLOPS_MAX_ROWS": "9", "MTLOPS_MAX_BATCH_SIZE": "32", "MTLOPS_ACCESS_LOG": "1"})
    assert code == 0, output
    resolved = json.loads(env[SETTINGS_VARIABLE])
    assert (resolved["max_rows"], resolved["max_batch_size"], resolved["stall_seconds"], resolved["access_log"],
            resolved["canary"]["share"]) == (11, 32, 3.0, False, 0.2)  # flag, variable, config, flag, config
    assert not set(env) & set(override_variables())  # folded in: the server cannot apply them a second time
    settings = ServingSettings.from_env(env)
    assert (settings.max_rows, settings.max_batch_size, settings.model_name) == (11, 32, "txhousing-mtl")
    assert settings.workers >= 1 and settings.ort_threads >= 1  # 0 in the config: resolved to counts


def test_a_bad_variable_or_flag_is_refused_naming_the_option_and_its_source(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    code, output, env = _served_env(monkeypatch, tmp_path, {}, [], {"MTLOPS_CANARY_SHARE": "1.5"})
    assert code == 2 and not env
    assert "serving.canary.share (from MTLOPS_CANARY_SHARE)" in output and "less than or equal to 1" in output
    code, output, env = _served_env(monkeypatch, tmp_path, {}, [], {"MTLOPS_MAX_LATENCY_MS": "soon"})
    assert code == 2 and "serving.max_latency_ms (from MTLOPS_MAX_LATENCY_MS)" in output, output
