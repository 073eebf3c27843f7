"""Run a pipeline (training by default) on this machine through `kfp.local`, or compile it.

kfp.local prints every step's executor input and output JSON and its log (~1,000 lines for the training
pipeline): that goes to `kfp.log` in the run folder, and the terminal gets one line per step (`step_lines`)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kfp import compiler

from components.config.schema import ProjectConfig, config_to_yaml
from components.data.versioning import REMOTE_URL_ENV, git_revision, local_remote_path
from pipelines.steplog import ANSI, LOG_FILE, failed_step_output, step_lines
from pipelines.steprun import owned_step_runs
from pipelines.training import build_pipeline, images

Runner = Literal["subprocess", "docker"]


@dataclass
class LocalRun:
    tag: str
    run_dir: Path
    artifacts: dict[str, Path]  # "<task>/<output>" -> path
    decision: dict
    metrics: dict
    train_metrics: dict  # the train step's Metrics artifact: epochs, wall_s, train_flops, validation.*

    @property
    def log(self) -> Path:
        return self.run_dir / LOG_FILE


class PipelineFailed(RuntimeError):
    """A step failed: which one, its part of kfp.local's log, and where the whole log is."""

    def __init__(self, step: str | None, output: str, log: Path, cause: Exception) -> None:
        super().__init__(f"step {step or '(unknown)'} failed: {ANSI.sub('', str(cause))}")
        self.step, self.output, self.log = step, output, log


def _newest_run(pipeline_root: Path, before: set[Path]) -> Path | None:
    runs = [p for p in pipeline_root.iterdir() if p.is_dir() and p not in before]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def run_local(cfg: ProjectConfig, data_root: Path, pipeline_root: Path,
              builder: Callable[..., Callable[..., Any]] = build_pipeline, verbose: bool = False,
              runner: Runner = "subprocess", image: str | None = None, **arguments: str) -> LocalRun:
    """Execute every step as a subprocess of this Python (SubprocessRunner), or with runner="docker" as a
    container of the component image (`image`, default $MTLOPS_IMAGE); retries and step status as
    pipelines/steprun.py says.
    `builder` makes the pipeline (training by default); `arguments` are its extra parameters. kfp.local's output
    goes to the run folder's `kfp.log` (and to the terminal too with `verbose`); raises `PipelineFailed`."""
    import warnings

    from kfp import local

    # locally every step runs in this Python, which has the project installed, as the image does
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom")

    pipeline_root = pipeline_root.resolve()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    step_data_root = data_root.resolve()
    if runner == "docker":
        image = image or images()[0]
        step_data_root = stage_data_pointers(data_root.resolve(), pipeline_root / ".data")
        local.init(runner=docker_runner(cfg, data_root.resolve()), pipeline_root=str(pipeline_root),
                   raise_on_error=True)
        pipeline = builder(image=image, gpu_image=image)
    else:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
                   raise_on_error=True)
        pipeline = builder()
    before = set(pipeline_root.iterdir())
    log = pipeline_root / f".{uuid.uuid4().hex}.{LOG_FILE}"  # the run folder is named by kfp once it starts
    try:
        with step_lines(log, verbose) as steps, owned_step_runs(pipeline):
            task = pipeline(config_yaml=config_to_yaml(cfg), data_root=str(step_data_root),
                            git_revision=git_revision(data_root), **arguments)
    except Exception as err:
        run_dir = _newest_run(pipeline_root, before)
        kept = log.rename(run_dir / LOG_FILE) if run_dir else log
        raise PipelineFailed(steps.failed, failed_step_output(kept, steps.failed), kept, err) from err
    run_dir = _newest_run(pipeline_root, before)
    if run_dir is None:
        raise RuntimeError(f"kfp.local wrote no run folder under {pipeline_root}")
    log.rename(run_dir / LOG_FILE)
    artifacts = {str(p.relative_to(run_dir)): p for p in sorted(run_dir.glob("*/*"))
                 if p.name not in ("executor_output.json", "Output")}
    decision = json.loads(next(run_dir.glob("register*/decision")).read_text())
    metrics = json.loads(next(run_dir.glob("evaluate*/metrics_json")).read_text())
    train_out = json.loads(next(run_dir.glob("train*/executor_output.json")).read_text())
    train_metrics = train_out["artifacts"]["train_metrics"]["artifacts"][0]["metadata"]
    return LocalRun(tag=str(task.output), run_dir=run_dir, artifacts=artifacts, decision=decision, metrics=metrics,
                    train_metrics=train_metrics)


def stage_data_pointers(data_root: Path, stage: Path) -> Path:
    """A git-less project folder for containerized steps, as in the image: `.dvc/config` and the
    `.dvc` pointers of `data_root` only. The steps `dvc pull` those versions into it from the
    mounted remote; its DVC cache is kept between runs, pulled data never (a pointer may change)."""
    shutil.rmtree(stage / "data", ignore_errors=True)
    (stage / ".dvc").mkdir(parents=True, exist_ok=True)
    shutil.copy2(data_root / ".dvc" / "config", stage / ".dvc" / "config")
    for pointer in data_root.glob("data/**/*.dvc"):
        target = stage / pointer.relative_to(data_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pointer, target)
    return stage


def docker_runner(cfg: ProjectConfig, data_root: Path):  # type: ignore[no-untyped-def]
    """kfp.local's DockerRunner with what a step may see: the pipeline root (kfp mounts it) and the
    model store read-write, the DVC remote read-only (named by $MTLOPS_DVC_REMOTE_URL), each at
    its path here; no network, no capabilities, no privilege gain.

    A step runs as the user who runs `mtlops run` (its uid:gid, root included), as it would with
    --runner subprocess: it can read the remote and write the model store that user can, in the
    user's home or anywhere else, and what it writes belongs to that user. Nothing of the user's
    changes owner or mode. (The image's own user, 10001, could write a root-owned store only if the
    store were handed to it.) For root that is uid 0 without capabilities: it writes where root
    owns, and nothing else."""
    from docker.types import Mount
    from kfp import local

    model_store = Path(os.environ.get("BENTOML_HOME", "~/bentoml")).expanduser().resolve()
    remote = local_remote_path(data_root, cfg.data.dvc_remote)
    model_store.mkdir(parents=True, exist_ok=True)
    env = {"BENTOML_HOME": str(model_store), REMOTE_URL_ENV: str(remote)}
    if os.getuid() != 0:
        # a user the image does not know has no home and no name there: DVC asks for the name
        # (getpass: $USER before the passwd file, where the uid is missing)
        env.update(HOME="/tmp", USER=getpass.getuser())
    mounts = [Mount(str(model_store), str(model_store), type="bind"),
              Mount(str(remote), str(remote), type="bind", read_only=True)]
    return local.DockerRunner(mounts=mounts, environment=env, user=f"{os.getuid()}:{os.getgid()}",
                              network_mode="none", cap_drop=["ALL"], security_opt=["no-new-privileges"])


def compile_pipeline(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(), package_path=str(path))
    return path
