"""The shadow decision as a kfp component and a one-step pipeline, for a Kubeflow recurring run beside the
monitoring one: with `registry.passing_challenger: shadow` the retraining pipeline leaves a passing
challenger as the registry's shadow; this step promotes it once every task is shown not worse than the
champion on enough labelled live records, rejects it when one is shown worse, and otherwise keeps
shadowing (`monitoring.shadow.decide`, the same as `mtlops shadow decide`).

    mtlops compile -p shadow [--cluster infra/kfp/cluster.yaml]   # build/pipelines/shadow_pipeline.yaml

The step needs the model store (`BENTOML_HOME`), the prediction log the service writes and a labels
file keyed by request_id, record_index, mounted as the monitoring steps have them.
"""

# no `from __future__ import annotations`: kfp reads the annotations as types

from kfp import dsl
from kfp.dsl import Metrics, Output

from pipelines.cluster import ClusterSettings, apply_cluster_settings
from pipelines.training import component, images

PIPELINE_NAME = "mtlops-shadow-decision"


def shadow_decision_op(config_yaml: str, prediction_log: str, labels_file: str, min_labelled: int,
                       confidence: float, metrics: Output[Metrics]) -> str:
    """Returns "promoted", "rejected" or "undecided"; the paired comparison per task goes to `metrics`."""
    import math
    from pathlib import Path

    from components.config.schema import config_from_yaml
    from monitoring.shadow import decide

    cfg = config_from_yaml(config_yaml, "<pipeline parameter config_yaml>")
    decision = decide(cfg, Path(prediction_log), Path(labels_file), min_labelled, confidence)
    for t in decision.comparison.tasks:
        metrics.log_metric(f"{t.task}.labelled", float(t.labelled))
        if not math.isnan(t.change):
            metrics.log_metric(f"{t.task}.{t.metric}.relative_change", float(t.change))
    print(f"{decision.outcome} {decision.tag or ''}: {decision.reason}")
    return decision.outcome


def build_shadow_pipeline(image: str | None = None, gpu_image: str | None = None,  # type: ignore[no-untyped-def]
                          cluster: ClusterSettings | None = None):
    decide_c = component(shadow_decision_op, images(image, gpu_image)[0])

    @dsl.pipeline(name=PIPELINE_NAME, description="Promote or reject the shadow version on labelled live records.")
    def shadow_pipeline(config_yaml: str, prediction_log: str, labels_file: str, min_labelled: int = 1000,
                        confidence: float = 0.95) -> str:
        decide_t = decide_c(config_yaml=config_yaml, prediction_log=prediction_log, labels_file=labels_file,
                            min_labelled=min_labelled, confidence=confidence)
        decide_t.set_caching_options(False)  # the log, its labels and the registry change between runs
        if cluster:
            apply_cluster_settings(cluster, [decide_t])
        return decide_t.outputs["Output"]

    return shadow_pipeline
