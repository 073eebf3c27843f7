"""A Kubeflow Pipelines cluster as seen through `kfp.Client`: upload a compiled pipeline as a
new version, run it once, or run it on a schedule."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass
class Submitted:
    pipeline_id: str
    version_id: str
    experiment_id: str
    run_id: str  # a run's id, or a recurring run's


def pipeline_parameters(package: Path) -> dict[str, dict]:
    """The compiled pipeline's parameters: name -> IR definition (parameterType, defaultValue, isOptional)."""
    spec = next(yaml.safe_load_all(package.read_text()))  # a cluster build adds a platform document
    return spec["root"].get("inputDefinitions", {}).get("parameters", {})


def resolve_arguments(package: Path, known: dict[str, str], explicit: dict[str, str]) -> dict[str, str]:
    """Arguments for the pipeline's own parameters: `explicit` (--param) wins over `known`
    (config, data root, git revision); a parameter with neither and no default is an error."""
    params = pipeline_parameters(package)
    unknown = sorted(set(explicit) - set(params))
    if unknown:
        raise ValueError(f"the pipeline has no parameter(s) {', '.join(unknown)}; it has: {', '.join(params)}")
    args = {name: explicit.get(name, known.get(name)) for name in params}
    missing = [n for n, v in args.items() if v is None and not params[n].get("isOptional")]
    if missing:
        raise ValueError(f"no value for pipeline parameter(s) {', '.join(missing)} (pass --param NAME=VALUE)")
    return {n: v for n, v in args.items() if v is not None}


def upload(client, package: Path, name: str, version: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(pipeline id, version id): a new pipeline the first time, a new version of it afterwards."""
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(str(package), pipeline_name=name).pipeline_id
        newest = client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc")
        return pipeline_id, newest.pipeline_versions[0].pipeline_version_id
    uploaded = client.upload_pipeline_version(str(package), pipeline_version_name=version, pipeline_id=pipeline_id)
    return pipeline_id, uploaded.pipeline_version_id


def version_name(git_revision: str) -> str:
    return f"{git_revision[:12]}-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"


def submit(client, package: Path, name: str, experiment: str, arguments: dict[str, str],  # type: ignore[no-untyped-def]
           git_revision: str) -> Submitted:
    version = version_name(git_revision)
    pipeline_id, version_id = upload(client, package, name, version)
    experiment_id = client.create_experiment(experiment).experiment_id
    run = client.run_pipeline(experiment_id=experiment_id, job_name=f"{name} {version}", params=arguments,
                              pipeline_id=pipeline_id, version_id=version_id)
    return Submitted(pipeline_id, version_id, experiment_id, run.run_id)


def check_cron(cron: str) -> str:
    """KFP's cron has six fields, seconds first ("0 0 6 * * *" = every day at 06:00)."""
    if len(cron.split()) != 6:
        raise ValueError(f"cron {cron!r} needs 6 fields (second minute hour day month weekday), "
                         "e.g. '0 0 6 * * *' for every day at 06:00")
    return cron


def schedule(client, package: Path, name: str, experiment: str, arguments: dict[str, str],  # type: ignore[no-untyped-def]
             git_revision: str, cron: str) -> Submitted:
    """A recurring run of a new version; one run at a time, no catch-up of missed slots."""
    check_cron(cron)
    pipeline_id, version_id = upload(client, package, name, version_name(git_revision))
    experiment_id = client.create_experiment(experiment).experiment_id
    job = client.create_recurring_run(experiment_id=experiment_id, job_name=f"{name} every {cron}",
                                      cron_expression=cron, max_concurrency=1, no_catchup=True, params=arguments,
                                      pipeline_id=pipeline_id, version_id=version_id, enabled=True)
    return Submitted(pipeline_id, version_id, experiment_id, job.recurring_run_id)
