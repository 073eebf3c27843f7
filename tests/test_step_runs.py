"""What a step's status line may say, and when a step is retried: real kfp.local runs through
`run_local` (SubprocessRunner, each step a real process) of a one-step pipeline whose step fails
the ways real steps do: an exception (permanent), killed by a signal (transient), an exit 0 before
its executor wrote its outputs. The Docker side of the same rules is in tests/test_containers.py."""

# no `from __future__ import annotations`: kfp reads the component's annotations as types

from pathlib import Path

import pytest
from kfp import dsl
from kfp.dsl import Artifact, Output

from components.config.schema import ProjectConfig
from pipelines.local import PipelineFailed, run_local
from pipelines.steplog import ANSI


def failing_op(counter: str, behaviour: str, out: Output[Artifact]) -> None:
    import os
    import signal
    from pathlib import Path

    path = Path(counter)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    if behaviour == "killed-once" and attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if behaviour == "exit-0-early":
        os._exit(0)  # before the executor writes its output file
    raise PermissionError(13, "Permission denied", f"/remote/files/attempt-{attempt}")


def one_step_pipeline():  # type: ignore[no-untyped-def]
    step = dsl.component(failing_op, base_image="unused-by-the-subprocess-runner", install_kfp_package=False)

    @dsl.pipeline(name="one-step")
    def pipeline(config_yaml: str, data_root: str, git_revision: str, counter: str, behaviour: str) -> None:
        task = step(counter=counter, behaviour=behaviour)
        task.set_retry(num_retries=2, backoff_duration="1s", backoff_factor=1.0)
        task.set_caching_options(False)

    return pipeline


def run_failing(cfg: ProjectConfig, tmp_path: Path, behaviour: str,
                capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    """Runs the step until the pipeline fails: (attempts, terminal lines, kfp.log)."""
    counter = tmp_path / "attempts"
    with pytest.raises(PipelineFailed) as failed:
        run_local(cfg, tmp_path, tmp_path / "runs", builder=one_step_pipeline, counter=str(counter),
                  behaviour=behaviour)
    terminal = capsys.readouterr().out
    assert not ANSI.search(terminal) and not ANSI.search(str(failed.value))  # no terminal here: no colour codes
    assert failed.value.step == "failing-op"
    return int(counter.read_text()), terminal.splitlines(), failed.value.log.read_text()


def test_an_exception_is_not_retried_and_its_message_is_on_the_step_line_and_in_the_log(
        flights_cfg: ProjectConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    attempts, lines, log = run_failing(flights_cfg, tmp_path, "permanent", capsys)
    assert attempts == 1  # kfp.local alone would run it 3 times, 1 s apart
    reason = "PermissionError: [Errno 13] Permission denied: '/remote/files/attempt-1'"
    failure = [line for line in lines if line.startswith("FAILURE")]
    assert len(failure) == 1 and "failing-op" in failure[0] and reason in failure[0], lines
    assert "not retried" in failure[0] and not any(line.startswith("RETRY") for line in lines)
    assert reason in log and "not retried" in log


def test_a_killed_step_is_retried_and_the_retry_is_announced_with_its_reason(
        flights_cfg: ProjectConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    attempts, lines, log = run_failing(flights_cfg, tmp_path, "killed-once", capsys)
    assert attempts == 2  # killed, retried; then an exception: not retried again
    retry = [line for line in lines if line.startswith("RETRY")]
    assert len(retry) == 1 and "failing-op" in retry[0] and "attempt 2 of 3" in retry[0], lines
    assert "killed by signal 9" in retry[0]
    failure = [line for line in lines if line.startswith("FAILURE")]
    assert len(failure) == 1 and "Permission denied: '/remote/files/attempt-2'" in failure[0], lines
    assert "retrying in 1 s (attempt 2 of 3): killed by signal 9" in log


def test_a_step_that_exits_0_without_its_outputs_is_a_failure_not_a_success(
        flights_cfg: ProjectConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    attempts, lines, log = run_failing(flights_cfg, tmp_path, "exit-0-early", capsys)
    assert attempts == 1
    assert not any(line.startswith("SUCCESS") for line in lines), lines
    failure = [line for line in lines if line.startswith("FAILURE")]
    assert len(failure) == 1 and "exited 0 but its executor wrote no" in failure[0], lines
    assert "executor_output.json" in failure[0] and "exited 0 but its executor wrote no" in log
