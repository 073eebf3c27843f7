"""How each step's process runs under kfp.local, and what its status may say.

kfp.local (2.17) decides a step's status from one number, the exit status its runner's function
returns, and two of its answers are wrong for us:
- DockerRunner removes the container as it exits (auto_remove) and counts a container already gone
  when it asks for the exit status as exit 0: a failed step could read SUCCESS.
- its retry loop retries every failure with the pipeline's backoff (30 s, then 60 s), also a step
  that raised an exception and can only fail again, and it tells nobody why.

So for a local run, `owned_step_runs` takes the pipeline's retry policies out of kfp's hands and
runs every step through `run_step_container` (DockerRunner) or `run_step_subprocess`
(SubprocessRunner), which
- keep the container until its exit status is read (gone before that: a failure, never a success);
- count a step as succeeded only when it exited 0 and its executor wrote its output file and every
  output artifact;
- retry only a step that did not finish on its own (killed by a signal: OOM, a preempted node; or
  lost by the engine). A step that exited with a Python exception failed for good: not retried;
- print each retry and each failure's cause as a `mtlops: <task>: ...` line, which
  `pipelines.steplog.StepLog` shows on the terminal.
On a cluster the compiled pipeline keeps its retry policies (Kubernetes restarts what it lost)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import docker

NOTE_PREFIX = "mtlops: "  # `mtlops: <task>: <message>` lines: what StepLog shows on the terminal
PYTHON_EXCEPTION = 1  # the exit status of a Python process that ended with an uncaught exception
CONTAINER_LOST = -1  # the exit status when the engine could not say one
# artifacts kept in the executor output's metadata, never written as files (Output[Metrics] and kin)
METADATA_ONLY = {"system.Metrics", "system.ClassificationMetrics", "system.SlicedClassificationMetrics"}


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    backoff_s: float
    factor: float

    def delay(self, attempt: int) -> float:
        """Seconds before attempt `attempt + 1` (attempt counts from 0)."""
        return self.backoff_s * self.factor ** attempt


NO_RETRY = RetryPolicy(0, 0.0, 1.0)


def note(task: str, message: str) -> None:
    print(f"{NOTE_PREFIX}{task}: {message}", flush=True)


def exit_cause(code: int) -> str | None:
    """Why a step with this exit status did not succeed; None for success."""
    if code == 0:
        return None
    if code == CONTAINER_LOST:
        return "the container was gone before its exit status could be read"
    if code < 0 or code >= 128:  # Popen: -signal; a container's shell convention: 128 + signal
        signal_no = -code if code < 0 else code - 128
        return f"killed by signal {signal_no}" + (" (out of memory?)" if signal_no == 9 else "")
    return f"exited with status {code}"


def transient(code: int) -> bool:
    """A step that did not run to its own end (killed, lost) may succeed when run again; one that
    exited by itself with a failure (a Python exception, a failed check) would fail the same way."""
    return code == CONTAINER_LOST or code < 0 or code >= 128


@dataclass(frozen=True)
class StepOutputs:
    """What a step's executor must leave behind, read from the `--executor_input` of its command:
    its output file and every output artifact that is a file or folder."""

    task: str
    executor_output: Path
    artifacts: tuple[Path, ...]

    @classmethod
    def of(cls, command: list[str]) -> StepOutputs:
        executor_input = json.loads(command[command.index("--executor_input") + 1])
        outputs = executor_input["outputs"]
        output_file = Path(outputs["outputFile"])
        artifacts = tuple(Path(a["uri"]) for spec in outputs.get("artifacts", {}).values() for a in spec["artifacts"]
                          if a.get("type", {}).get("schemaTitle") not in METADATA_ONLY)
        return cls(output_file.parent.name, output_file, artifacts)

    def missing(self) -> list[str]:
        return [str(p) for p in (self.executor_output, *self.artifacts) if not p.exists()]


def _run_with_retries(command: list[str], run_once: Callable[[], int]) -> int:
    """Run a step until it succeeds, fails for good, or its retries are spent; a success needs its outputs."""
    outputs = StepOutputs.of(command)
    policy = _policies.get(outputs.task, NO_RETRY)
    attempt = 0
    while True:
        outputs.executor_output.unlink(missing_ok=True)  # an earlier attempt's must not count
        code = run_once()
        if code == 0 and (missing := outputs.missing()):
            note(outputs.task, f"failed: exited 0 but its executor wrote no {', '.join(missing)}")
            return CONTAINER_LOST
        cause = exit_cause(code)
        if cause is None:
            return 0
        if not transient(code) or attempt >= policy.retries:
            note(outputs.task, f"failed: {cause}" + ("" if transient(code) else " (not retried: it would fail again)"))
            return code
        delay = policy.delay(attempt)
        note(outputs.task, f"retrying in {delay:.0f} s (attempt {attempt + 2} of {policy.retries + 1}): {cause}")
        time.sleep(delay)
        attempt += 1


def run_step_container(client: docker.DockerClient, image: str, command: list[str], volumes: dict[str, Any],
                       **container_run_args: Any) -> int:
    """kfp's `run_docker_container` with a true exit status: the container is kept until its status is
    read, then removed; a container that is gone by then counts as lost (CONTAINER_LOST), not as 0."""
    import docker.errors
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    image = add_latest_tag_if_not_present(image)
    if not client.images.list(name=image):
        print(f"Pulling image {image!r}")
        client.images.pull(image)

    def run_once() -> int:
        container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                          volumes=volumes, **container_run_args)
        try:
            with contextlib.suppress(docker.errors.NotFound):  # gone already: exit_status says so
                for chunk in container.logs(stream=True, follow=True):
                    print(chunk.decode(errors="replace"), end="")
            return exit_status(container)
        finally:
            remove_container(container)

    return _run_with_retries(command, run_once)


def exit_status(container: docker.models.containers.Container) -> int:
    """The container's exit status, CONTAINER_LOST when it is gone before that could be read."""
    import docker.errors

    try:
        return int(container.wait()["StatusCode"])
    except docker.errors.NotFound:
        return CONTAINER_LOST


def remove_container(container: docker.models.containers.Container) -> None:
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True)


def run_step_subprocess(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
    """kfp's `run_local_subprocess`, with the outputs check and retries of `_run_with_retries`."""
    return _run_with_retries(full_command, lambda: _kfp_run_local_subprocess(full_command, env_vars))


def _kfp_run_local_subprocess(full_command: list[str], env_vars: dict[str, str] | None) -> int:
    from kfp.local import subprocess_task_handler

    return _originals[subprocess_task_handler, "run_local_subprocess"](full_command, env_vars)


_policies: dict[str, RetryPolicy] = {}
_originals: dict[tuple[object, str], Callable[..., int]] = {}


def retry_policies(pipeline: Any) -> dict[str, RetryPolicy]:
    """Each task's retry policy in the pipeline's spec (`set_retry`)."""
    tasks = pipeline.component_spec.implementation.graph.root.dag.tasks
    return {name: RetryPolicy(t.retry_policy.max_retry_count, float(t.retry_policy.backoff_duration.seconds),
                              t.retry_policy.backoff_factor or 2.0)
            for name, t in tasks.items() if t.HasField("retry_policy")}


@contextlib.contextmanager
def owned_step_runs(pipeline: Any) -> Iterator[None]:
    """While the pipeline runs locally: its retry policies applied here (and removed from the spec
    kfp.local reads), every step run by `run_step_container` / `run_step_subprocess`."""
    from kfp.local import docker_task_handler, subprocess_task_handler

    _policies.clear()
    _policies.update(retry_policies(pipeline))
    for task in pipeline.component_spec.implementation.graph.root.dag.tasks.values():
        task.ClearField("retry_policy")
    ours = {(docker_task_handler, "run_docker_container"): run_step_container,
            (subprocess_task_handler, "run_local_subprocess"): run_step_subprocess}
    for (module, name), function in ours.items():
        _originals[module, name] = getattr(module, name)
        setattr(module, name, function)
    try:
        yield
    finally:
        for (module, name), function in _originals.items():
            setattr(module, name, function)
        _originals.clear()
        _policies.clear()
