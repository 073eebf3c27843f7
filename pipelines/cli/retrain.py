"""The retrain trigger: run the retraining pipeline for a new window, here or on a cluster.

Locally it runs through kfp.local (or its steps in this process) and waits; with a KFP host it
submits the compiled pipeline with the same parameters and returns the run id. A failed run (an error, a parity failure)
or a gate rejection leaves the champion serving; the outcome says which.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from components.artifacts import registry
from components.config.schema import ProjectConfig, config_to_yaml
from components.data.versioning import git_revision
from pipelines.continual import build_pipeline, run_in_process

Status = Literal["promoted", "shadowed", "rejected", "failed", "submitted"]
StepRunner = Literal["kfp", "in-process"]


@dataclass
class RetrainOutcome:
    status: Status
    champion_before: str | None
    tag: str | None = None  # the version this run registered
    reasons: list[str] = field(default_factory=list)
    error: str | None = None
    run_id: str | None = None  # cluster runs
    seconds: float = 0.0
    train_flops: float = 0.0
    gate: dict = field(default_factory=dict)  # {"challenger"|"champion": {"new.<task>"|"old.<task>": metric}}


def retrain(cfg: ProjectConfig, data_root: Path, new_start: str, new_end: str, pipeline_root: Path,
            kfp_host: str | None = None, client: Any = None, steps: StepRunner = "kfp") -> RetrainOutcome:
    """`steps="in-process"` runs the pipeline's steps in this Python (`run_in_process`) instead of
    one kfp.local process per step: the same run, without six Python starts."""
    current = registry.champion(cfg.registry.model_name)
    before = str(current.tag) if current else None
    t0 = time.perf_counter()
    if kfp_host or client:
        return _submit(cfg, data_root, new_start, new_end, before, kfp_host, client)
    from pipelines.local import run_local

    try:
        if steps == "in-process":
            run = run_in_process(cfg, data_root, pipeline_root, new_start, new_end, git_revision(data_root))
        else:
            run = run_local(cfg, data_root, pipeline_root, builder=build_pipeline, new_start=new_start,
                            new_end=new_end)
    except Exception as exc:  # kfp.local raises its own error types; the step's log is above
        return RetrainOutcome("failed", before, error=f"{type(exc).__name__}: {exc}",
                              seconds=time.perf_counter() - t0)
    d = run.decision
    status = "promoted" if d["promoted"] else "shadowed" if d.get("shadowed") else "rejected"
    return RetrainOutcome(status, before, run.tag, d["reasons"],
                          seconds=time.perf_counter() - t0, train_flops=run.train_metrics.get("train_flops", 0.0),
                          gate={k: d.get(k, {}) for k in ("challenger", "champion")})


def _submit(cfg: ProjectConfig, data_root: Path, new_start: str, new_end: str, before: str | None,
            kfp_host: str | None, client: Any) -> RetrainOutcome:
    import kfp

    from pipelines.compile import compile_pipelines
    from pipelines.remote import submit

    client = client or kfp.Client(host=kfp_host)
    package = compile_pipelines(Path(tempfile.mkdtemp(prefix="mtlops-retrain-")), ["retraining"])["retraining"]
    arguments = {"config_yaml": config_to_yaml(cfg), "data_root": str(data_root), "new_start": new_start,
                 "new_end": new_end, "git_revision": git_revision(data_root)}
    run = submit(client, package, "mtlops-retraining", "mtlops", arguments, arguments["git_revision"])
    return RetrainOutcome("submitted", before, run_id=run.run_id)
