"""Every pipeline of the product, compiled to Kubeflow IR YAML.

`PIPELINES` is the one list: a builder takes (image, gpu_image, cluster) and returns the
pipeline object. A new pipeline (retraining, monitoring, shadow) is one more entry here; `mtlops
compile`, `submit` and `schedule` then know it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from kfp import compiler

from pipelines.cluster import ClusterSettings
from pipelines.continual import build_pipeline as build_retraining_pipeline
from pipelines.monitoring import build_monitoring_pipeline
from pipelines.shadow import build_shadow_pipeline
from pipelines.training import build_pipeline as build_training_pipeline

PipelineBuilder = Callable[..., object]

PIPELINES: dict[str, PipelineBuilder] = {
    "training": build_training_pipeline,
    "retraining": build_retraining_pipeline,
    "monitoring": build_monitoring_pipeline,
    "shadow": build_shadow_pipeline,
}


def pipeline_file(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}_pipeline.yaml"


def check_names(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in PIPELINES]
    if unknown:
        raise ValueError(f"unknown pipeline(s) {', '.join(unknown)}; known: {', '.join(PIPELINES)}")


def compile_pipelines(out_dir: Path, names: Sequence[str] | None = None,
                      cluster: ClusterSettings | None = None) -> dict[str, Path]:
    """Write <out_dir>/<name>_pipeline.yaml for each named pipeline (all by default).
    Images come from MTLOPS_IMAGE / MTLOPS_GPU_IMAGE."""
    names = list(names or PIPELINES)
    check_names(names)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        path = pipeline_file(out_dir, name)
        compiler.Compiler().compile(PIPELINES[name](cluster=cluster), package_path=str(path))
        written[name] = path
    return written
