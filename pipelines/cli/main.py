"""`mtlops`: the command line of the product."""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

from components.config.schema import ConfigError, ProjectConfig, config_to_yaml, load_config
from components.data.validate import DataValidationError

if TYPE_CHECKING:
    from monitoring.summary import MonitorSummary
    from pipelines.cli.retrain import StepRunner
    from pipelines.cluster import ClusterSettings

app = typer.Typer(help="One multi-task model in production.", no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build and version datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=200)  # messages beside a --json answer on stdout

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Project YAML.")]
RootOpt = Annotated[Path, typer.Option("--root", help="Repository root holding data/ and .dvc/.")]
DEFAULT_CONFIG = Path("configs/flights.yaml")


def _load(path: Path, root: Path | None = None) -> ProjectConfig:
    """The validated config; with `root`, also every column it names checked against the data's schema."""
    try:
        cfg = load_config(path)
        if root is not None:
            from components.data.columns import check_columns

            check_columns(cfg, root, str(path))
        return cfg
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


def _fmt(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def test_split_title(cfg: ProjectConfig) -> str:
    """What the test metrics were measured on: the time window, or the share of a random / hash / group split."""
    w = cfg.data.windows
    if w is not None:
        return f"test window {w.test.start:%Y-%m-%d} .. {w.test.end:%Y-%m-%d}"
    split = cfg.data.split
    on = f" of {cfg.data.split_column}" if cfg.data.split_column else f", seed {split.seed}"
    return f"test split: {split.test:.0%} of the rows ({split.method}{on})"


def metrics_table(cfg: ProjectConfig, metrics: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("task", "type", "metric", "model", "baseline", "rows"):
        table.add_column(col, justify="left" if col in ("task", "type", "metric") else "right")
    for t in cfg.tasks:
        test, base = metrics["test"].get(t.name, {}), metrics["baseline"].get(t.name, {})
        names = [t.metric] + [m for m in test if m not in ("n", t.metric)]
        for i, m in enumerate(names):
            table.add_row(f"{t.name}{' (primary)' if t.primary and i == 0 else ''}" if i == 0 else "",
                          t.type if i == 0 else "", m + (" *" if m == t.metric else ""),
                          _fmt(test.get(m)), _fmt(base.get(m)), f"{int(test.get('n', 0)):,}" if i == 0 else "")
    table.caption = "* gated metric; baseline = train prevalence / class frequencies / median"
    return table


@data_app.command("build")
def data_build(config: ConfigOpt = DEFAULT_CONFIG, root: RootOpt = Path("."),
               track: Annotated[bool, typer.Option(help="Version with DVC and push to the remote.")] = True) -> None:
    """Materialise the config's source into parquet partitions (by month, year, or one file), tracked by DVC."""
    from components.steps import build_dataset

    cfg = _load(config, root)
    t0 = time.perf_counter()
    with console.status(f"building {cfg.data.name} partitions"):
        md5s = build_dataset(cfg, root, track=track)
    table = Table(title=f"{cfg.data.name}: {len(md5s)} partitions ({time.perf_counter() - t0:.1f}s)")
    table.add_column("partition")
    table.add_column("dvc md5")
    for path, md5 in md5s.items():
        table.add_row(path, md5 or "(not tracked)")
    console.print(table)
    if track:
        console.print(f"DVC remote: {cfg.data.dvc_remote}")
        console.print(f"The .dvc pointers are staged: commit them so a model's lineage names a clean git revision "
                      f"(not <rev>-dirty): git commit -m 'data: {cfg.data.name}' {cfg.data.dir}/")


@app.command()
def run(config: ConfigOpt = DEFAULT_CONFIG, root: RootOpt = Path("."),
        pipeline_root: Annotated[Path, typer.Option(help="Where kfp.local writes artifacts.")] = Path("runs/kfp"),
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show kfp.local's own output too.")] = False,
        runner: Annotated[str, typer.Option(help="subprocess: every step in this Python; docker: every step "
                                                 "in a container of the component image.")] = "subprocess",
        image: Annotated[str | None, typer.Option(help="The component image for --runner docker "
                                                       "(default: $MTLOPS_IMAGE).")] = None,
        ) -> None:
    """Run the whole training pipeline locally (kfp.local, no cluster): a line per step, then the results."""
    from pipelines.local import PipelineFailed, run_local

    if runner not in ("subprocess", "docker"):
        console.print(f"[red]--runner: expected 'subprocess' or 'docker', got {runner!r}[/red]")
        raise typer.Exit(2)
    cfg = _load(config, root)
    t0 = time.perf_counter()
    try:
        result = run_local(cfg, root, pipeline_root, verbose=verbose, runner=runner, image=image)  # type: ignore[arg-type]
    except PipelineFailed as err:
        if not verbose:
            console.print(err.output, markup=False, highlight=False)
        console.print(f"[red]pipeline failed: {err}[/red]\nkfp.local's log: {err.log}")
        raise typer.Exit(1) from None
    console.print(metrics_table(cfg, result.metrics, test_split_title(cfg)))
    d = result.decision
    verdict = "[green]promoted to champion[/green]" if d["promoted"] else \
        "[cyan]shadow: scored beside the champion until `mtlops shadow decide`[/cyan]" if d.get("shadowed") else \
        "[yellow]rejected (not promoted)[/yellow]"
    console.print(f"registered [bold]{result.tag}[/bold]: {verdict}")
    for reason in d["reasons"]:
        console.print(f"  - {reason}")
    table = Table(title=f"artifacts ({time.perf_counter() - t0:.0f}s)",
                  caption=f"run folder: {result.run_dir}; kfp.local's log: <run folder>/{result.log.name}")
    table.add_column("step/output")
    table.add_column("path")
    for name in result.artifacts:
        table.add_row(name, f"<run folder>/{name}")
    table.add_row("registered model", _model_store_path(result.tag))
    console.print(table)


def _model_store_path(tag: str) -> str:
    import bentoml

    return str(bentoml.models.get(tag).path)


ClusterOpt = Annotated[Path | None, typer.Option(
    "--cluster", help="Kubernetes settings to compile in (secrets, volumes, GPU placement, timeouts).")]
PipelineOpt = Annotated[list[str] | None, typer.Option("--pipeline", "-p", help="Pipeline name (repeatable).")]


def _cluster(path: Path | None) -> ClusterSettings | None:
    from pipelines.cluster import load_cluster_settings

    try:
        return load_cluster_settings(path) if path else None
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


def _compile(out_dir: Path, names: list[str] | None, settings: ClusterSettings | None) -> dict[str, Path]:
    from pipelines.compile import compile_pipelines

    try:
        return compile_pipelines(out_dir, names, settings)
    except ValueError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None


@app.command("compile")
def compile_(out_dir: Annotated[Path, typer.Option(help="Folder for <name>_pipeline.yaml.")] = Path("build/pipelines"),
             pipeline: PipelineOpt = None, cluster: ClusterOpt = None) -> None:
    """Compile the pipelines to IR YAML for a Kubeflow cluster (images from MTLOPS_IMAGE / MTLOPS_GPU_IMAGE)."""
    for name, path in _compile(out_dir, pipeline, _cluster(cluster)).items():
        console.print(f"{name}: wrote {path}" + (f" (cluster settings {cluster})" if cluster else ""))


HostOpt = Annotated[str, typer.Option("--host", help="Kubeflow Pipelines API, e.g. http://localhost:8080.")]
ExperimentOpt = Annotated[str, typer.Option(help="KFP experiment the runs go to.")]
NamespaceOpt = Annotated[str, typer.Option(help="Kubernetes namespace of the KFP profile.")]
ParamOpt = Annotated[list[str] | None, typer.Option("--param", help="NAME=VALUE of a pipeline parameter (repeatable).")]
DEFAULT_CLUSTER = Path("infra/kfp/cluster.yaml")


def _remote_job(name: str, config: Path, cluster: Path, params: list[str] | None, host: str, namespace: str,
                tmp: Path) -> tuple:
    """Compile `name` for the cluster, resolve its arguments and open the client."""
    import os

    import kfp

    from components.data.versioning import git_revision
    from pipelines.remote import resolve_arguments

    settings = _cluster(cluster)
    package = _compile(tmp, [name], settings)[name]
    explicit = {}
    for item in params or []:
        key, sep, value = item.partition("=")
        if not sep:
            console.print(f"[red]--param {item!r}: expected NAME=VALUE[/red]")
            raise typer.Exit(2)
        explicit[key] = value
    revision = git_revision(Path("."))
    known = {"config_yaml": config_to_yaml(_load(config)), "data_root": settings.data_root, "git_revision": revision}
    try:
        arguments = resolve_arguments(package, known, explicit)
    except ValueError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    client = kfp.Client(host=host, namespace=namespace, existing_token=os.environ.get("MTLOPS_KFP_TOKEN"))
    return client, package, arguments, revision


@app.command()
def submit(host: HostOpt, pipeline: Annotated[str, typer.Option(help="Pipeline to run.")] = "training",
           config: ConfigOpt = DEFAULT_CONFIG, cluster: ClusterOpt = DEFAULT_CLUSTER,
           experiment: ExperimentOpt = "mtlops", namespace: NamespaceOpt = "kubeflow", param: ParamOpt = None) -> None:
    """Compile a pipeline for the cluster, upload it as a new version and run it once (token: $MTLOPS_KFP_TOKEN)."""
    from pipelines.remote import submit as do_submit

    with tempfile.TemporaryDirectory() as tmp:
        client, package, arguments, revision = _remote_job(pipeline, config, cluster, param, host, namespace,
                                                           Path(tmp))
        out = do_submit(client, package, f"mtlops-{pipeline}", experiment, arguments, revision)
    console.print(f"submitted {pipeline}: run {out.run_id} (pipeline {out.pipeline_id}, version {out.version_id}, "
                  f"experiment {experiment})")


@app.command()
def schedule(host: HostOpt, cron: Annotated[str, typer.Option(help="KFP cron, 6 fields: '0 0 6 * * *' = daily 06:00.")],
             pipeline: Annotated[str, typer.Option(help="Pipeline to run on the schedule.")] = "monitoring",
             config: ConfigOpt = DEFAULT_CONFIG, cluster: ClusterOpt = DEFAULT_CLUSTER,
             experiment: ExperimentOpt = "mtlops", namespace: NamespaceOpt = "kubeflow", param: ParamOpt = None,
             ) -> None:
    """Create a recurring run (one at a time, no catch-up) of a pipeline, by default monitoring."""
    from pipelines.remote import check_cron
    from pipelines.remote import schedule as do_schedule

    try:
        check_cron(cron)
    except ValueError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    with tempfile.TemporaryDirectory() as tmp:
        client, package, arguments, revision = _remote_job(pipeline, config, cluster, param, host, namespace,
                                                           Path(tmp))
        out = do_schedule(client, package, f"mtlops-{pipeline}", experiment, arguments, revision, cron)
    console.print(f"scheduled {pipeline} ({cron}): recurring run {out.run_id} (pipeline {out.pipeline_id}, "
                  f"version {out.version_id})")


@app.command()
def train(config: ConfigOpt = DEFAULT_CONFIG, root: RootOpt = Path("."),
          out: Annotated[Path, typer.Option(help="Model folder (checkpoint, weights, FeatureSpec).")] = Path(
              "runs/train"),
          resume: Annotated[bool, typer.Option(help="Continue from out/checkpoint.pt.")] = False) -> None:
    """Ingest, validate, split and train in this process: the training step alone, for iteration."""
    from components import steps

    cfg = _load(config, root)
    text = config_to_yaml(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        p = {k: str(Path(tmp) / f"{k}.parquet") for k in ("all", "train", "validation", "test")}
        try:
            steps.ingest(text, str(root), p["all"])
            steps.validate(text, p["all"], str(Path(tmp) / "report.json"))
        except DataValidationError as err:
            console.print(f"[red]{err}[/red]")
            raise typer.Exit(1) from None
        steps.split(text, p["all"], p["train"], p["validation"], p["test"])
        summary = steps.train_model(text, p["train"], p["validation"], str(out), resume=resume)
    table = Table(title=f"validation metrics at best epoch {summary['best_epoch']} of {summary['epochs_run']} "
                        f"({summary['samples_per_s']:,.0f} samples/s)")
    table.add_column("task")
    table.add_column("metrics")
    for task, values in summary["validation"].items():
        table.add_row(task, "  ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k != "n"))
    console.print(table)
    console.print(f"model folder: {out}")


@app.command()
def models(config: ConfigOpt = DEFAULT_CONFIG,
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Registered versions with their stage, metrics and lineage."""
    from components.artifacts.registry import versions

    cfg = _load(config)
    rows = []
    for m in versions(cfg.registry.model_name):
        md = m.info.metadata
        test = md.get("metrics", {}).get("test", {})
        lineage = md.get("lineage", {})
        rows.append({
            "tag": str(m.tag), "stage": m.info.labels.get("stage", ""),
            "created": m.info.creation_time.strftime("%Y-%m-%d %H:%M:%S"),
            "metrics": {t.name: test.get(t.name, {}).get(t.metric) for t in cfg.tasks},
            "data_version": lineage.get("data_version", ""), "git_revision": lineage.get("git_revision", ""),
            "gate": md.get("gate", {}).get("reasons", []),
        })
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    table = Table(title=f"{cfg.registry.model_name}: {len(rows)} versions")
    table.add_column("tag", no_wrap=True)
    for col in ("stage", "created", *[f"{t.name} {t.metric}" for t in cfg.tasks], "data", "git"):
        table.add_column(col)
    for r in rows:
        git = r["git_revision"][:12] + ("-dirty" if r["git_revision"].endswith("-dirty") else "")
        table.add_row(r["tag"], r["stage"], r["created"], *[_fmt(v) for v in r["metrics"].values()],
                      r["data_version"][:10], git)
    console.print(table)
    for r in rows:
        if r["gate"]:
            console.print(f"[bold]{r['tag']}[/bold] gate ({r['stage']}):")
            for reason in r["gate"]:
                console.print(f"  - {reason}")


@app.command()
def rollback(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Make the previous champion the champion again (a relabel)."""
    from components.artifacts.registry import rollback as do_rollback

    console.print(f"champion is now {do_rollback(_load(config).registry.model_name)}")


shadow_app = typer.Typer(help="A second version scored on live traffic beside the champion, answering no one.",
                         no_args_is_help=True)
app.add_typer(shadow_app, name="shadow")


@shadow_app.command("start")
def shadow_start(tag: Annotated[str, typer.Argument(help="The registered version to score beside the champion.")],
                 config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Make TAG the shadow; a running `mtlops serve` picks it up on `mtlops reload` (or at its next start)."""
    from components.artifacts.registry import start_shadow

    try:
        previous = start_shadow(_load(config).registry.model_name, tag)
    except (ValueError, LookupError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    console.print(f"shadow is now {tag}" + (f" (was {previous})" if previous else ""))


@shadow_app.command("stop")
def shadow_stop(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """No shadow any more (the version goes back to challenger)."""
    from components.artifacts.registry import stop_shadow

    stopped = stop_shadow(_load(config).registry.model_name)
    console.print(f"stopped shadowing {stopped}" if stopped else "there was no shadow")


@shadow_app.command("report")
def shadow_report(config: ConfigOpt = DEFAULT_CONFIG,
                  log: Annotated[Path, typer.Option(help="The prediction log folder `mtlops serve` writes.")] = Path(
                      "runs/predictions"),
                  window: Annotated[str, typer.Option(help="Only this window: a month (2013-07), a day or a year; "
                                                           "default all of the log.")] = "",
                  labels_file: Annotated[Path | None, typer.Option(help="Labels keyed by request_id, record_index "
                                                                        "(parquet/CSV): adds the paired test.")] = None,
                  confidence: Annotated[float, typer.Option(help="Of the paired bootstrap (one-sided).")] = 0.95,
                  as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
                  ) -> None:
    """Champion vs shadow on the records both scored: per-task agreement, and with labels the paired test."""
    from monitoring.shadow import compare, paired_log
    from monitoring.windows import read_labels, window_bounds

    cfg = _load(config)
    start, end = window_bounds(window) if window else (None, None)
    try:
        labels = read_labels(cfg, labels_file) if labels_file else None
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    champion, shadow = paired_log(log, start, end, labels)
    if champion.empty:
        console.print(f"[red]no record in {log} was scored by both the champion and a shadow[/red]")
        raise typer.Exit(1)
    result = compare(cfg, champion, shadow, confidence)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return
    table = Table(title=f"champion {result.champion_version} vs shadow {result.shadow_version}")
    for column in ("task", "records", "label flips", "mean |Δ|", "output drift", "labelled", "metric",
                   "champion", "shadow", "change [low, high]", "verdict"):
        table.add_column(column)
    for t in result.tasks:
        table.add_row(t.task, f"{t.records:,}", _fmt(t.label_flip_rate), _fmt(t.mean_abs_difference),
                      _fmt(t.output_drift), f"{t.labelled:,}", t.metric, _fmt(t.champion), _fmt(t.shadow),
                      f"{t.change:+.2%} [{t.change_low:+.2%}, {t.change_high:+.2%}]" if t.labelled else "",
                      t.verdict)
    console.print(table)


@shadow_app.command("decide")
def shadow_decide(config: ConfigOpt = DEFAULT_CONFIG,
                  log: Annotated[Path, typer.Option(help="The prediction log folder `mtlops serve` writes.")] = Path(
                      "runs/predictions"),
                  labels_file: Annotated[Path, typer.Option(help="Labels keyed by request_id, record_index "
                                                                 "(parquet/CSV).")] = ...,
                  min_labelled: Annotated[int, typer.Option(help="Labelled records both scored, per task, "
                                                                 "before deciding.")] = 1000,
                  confidence: Annotated[float, typer.Option(help="Of the paired bootstrap (one-sided).")] = 0.95,
                  ) -> None:
    """Promote the shadow when every task is shown not worse than the champion beyond its tolerance on
    at least --min-labelled live records; reject it when a task is shown worse; otherwise keep shadowing
    (exit 3). The decision and its numbers go into the shadow's metadata."""
    from monitoring.shadow import decide

    cfg = _load(config)
    try:
        decision = decide(cfg, log, labels_file, min_labelled, confidence)
    except (ValueError, FileNotFoundError, LookupError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    for t in decision.comparison.tasks:
        console.print(f"{t.task}: {t.labelled:,} labelled, {t.metric} {_fmt(t.champion)} -> {_fmt(t.shadow)}, "
                      f"change {t.change:+.2%} [{t.change_low:+.2%}, {t.change_high:+.2%}], tolerance "
                      f"{t.tolerance:.1%}: {t.verdict}")
    if decision.outcome == "undecided":
        console.print(f"[yellow]undecided: keep shadowing ({decision.reason})[/yellow]")
        raise typer.Exit(3)
    colour, after = ("green", " (`mtlops reload` serves it)") if decision.outcome == "promoted" else ("red", "")
    console.print(f"[{colour}]{decision.outcome} {decision.tag}: {decision.reason}[/{colour}]{after}")


def _confirm_task_changes(cfg: ProjectConfig, retire: list[str]) -> ProjectConfig:
    """The config with `retire` (and the retirements confirmed on a terminal) in registry.retire_tasks; the task
    changes against the champion printed. Exits (2) when a task would go unconfirmed."""
    from components.artifacts import registry

    current = registry.champion(cfg.registry.model_name)
    changes = registry.task_changes(cfg, current)
    if stray := sorted(set(retire) - set(changes.retired)):
        console.print(f"[red]--retire-task {stray}: not a task the champion {changes.against} has and the config "
                      "dropped[/red]")
        raise typer.Exit(2)
    said = [*cfg.registry.retire_tasks, *retire]
    for task in changes.retired:
        if task not in said and sys.stdin.isatty() and typer.confirm(
                f"The config no longer has the task '{task}' that the champion {changes.against} answers. Retire "
                "it (its head and output leave the model for every client)?", default=False):
            said.append(task)
    retiring = cfg.registry.model_copy(update={"retire_tasks": list(dict.fromkeys(said))})
    cfg = cfg.model_copy(update={"registry": retiring})
    try:
        registry.check_retirements(cfg, current)
    except registry.TaskRetirementRefused as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    for task in changes.added:
        console.print(f"adding task {task}: a new head on {changes.against}'s trunk, trained alone for "
                      f"{cfg.training.new_task_head_epochs} epoch(s), then with every task")
    for task in changes.retired:
        console.print(f"retiring task {task}: its head leaves the model")
    return cfg


@app.command("retrain")
def retrain_(config: ConfigOpt = DEFAULT_CONFIG, root: RootOpt = Path("."),
             new_start: Annotated[str, typer.Option(help="First day of the new window (YYYY-MM-DD).")] = ...,
             new_end: Annotated[str, typer.Option(help="Day after the new window (YYYY-MM-DD).")] = ...,
             pipeline_root: Annotated[Path, typer.Option(help="Where kfp.local writes artifacts.")] = Path("runs/kfp"),
             kfp_host: Annotated[str | None, typer.Option(help="Submit to this Kubeflow Pipelines API.")] = None,
             retire_task: Annotated[list[str], typer.Option(
                 help="A task of the champion that the config no longer has, retired on purpose (adds it to "
                      "registry.retire_tasks; repeat for several). Without it a terminal asks, and a script is "
                      "refused.")] = [],  # noqa: B006 - typer reads the default, never mutates it
             ) -> None:
    """Continual retraining on a new window: warm start from the champion, replay of older data,
    promoted only if the primary task holds on new data and no task forgets the old window.
    A task added to the config gets a new head on the champion's trunk; a task removed from it must be retired
    on purpose (`--retire-task`, registry.retire_tasks, or a yes on the terminal)."""
    from pipelines.cli.retrain import retrain

    cfg = _load(config)
    if kfp_host is None:
        cfg = _confirm_task_changes(cfg, retire_task)
    out = retrain(cfg, root, new_start, new_end, pipeline_root, kfp_host)
    colour = {"promoted": "green", "shadowed": "cyan", "rejected": "yellow", "failed": "red",
              "submitted": "cyan"}[out.status]
    console.print(f"[{colour}]{out.status}[/{colour}] {out.tag or out.run_id or ''} "
                  f"(champion before: {out.champion_before}) in {out.seconds:.0f}s")
    for reason in out.reasons:
        console.print(f"  - {reason}")
    if out.error:
        console.print(f"[red]{out.error}[/red] — the champion keeps serving")
    raise typer.Exit(1 if out.status == "failed" else 0)


@app.command()
def simulate(config: ConfigOpt = DEFAULT_CONFIG, root: RootOpt = Path("."),
             months: Annotated[str, typer.Option(help="First and last month, YYYY-MM..YYYY-MM.")] = "2013-07..2013-12",
             out: Annotated[Path, typer.Option(help="Reports, workspace, alerts, timeline.")] = Path("runs/simulate"),
             serve: Annotated[bool, typer.Option(help="Score through a live `mtlops serve` (else offline).")] = False,
             policy: Annotated[str | None, typer.Option(
                 help="Compare retraining policies, comma-separated: never, <trigger>/<train_on>[/shadow] (trigger: "
                      "scheduled|alert; train_on: warm_replay|sliding|expanding; /shadow: a passing challenger is "
                      "shadow until the next month's labels promote or reject it), or `all`.")] = None,
             seeds: Annotated[str, typer.Option(help="With --policy: seeds, comma-separated.")] = "0,1,2",
             quick: Annotated[bool, typer.Option(
                 help="With --policy: Jul-Sep, 4 policies, a quarter of the rows, 3 epochs, 5,000-row "
                      "monitoring samples.")] = False,
             jobs: Annotated[int | None, typer.Option(
                 min=1, help="With --policy: replays run at once, each on cores/jobs threads "
                             "[default: the cores, at most 4]")] = None,
             steps: Annotated[str | None, typer.Option(
                 help="How a retrain runs the retraining pipeline: `kfp` (kfp.local, a process per step) or "
                      "`in-process` (the same steps in the replay's Python) [default: kfp; with --policy "
                      "in-process]")] = None,
             ) -> None:
    """Replay months of traffic: score, monitor, alert, retrain (as `retraining.trigger` and
    `train_on` say), gate — and compare each task's metric of the never-retrained model with the
    served one. With --policy: the replay once per policy and seed, one table and one plot."""
    import dataclasses

    import pandas as pd

    from pipelines.cli.simulate import LiveService, timeline_markdown, timeline_plot
    from pipelines.cli.simulate import simulate as run_simulation

    if steps not in (None, "kfp", "in-process"):
        raise typer.BadParameter(f"expected kfp or in-process, got {steps!r}", param_hint="--steps")
    comparing = policy is not None or quick
    runner = cast("StepRunner", steps or ("in-process" if comparing else "kfp"))
    cfg = _load(config)
    if comparing:
        _compare_policies(cfg, root, months, out, policy, seeds, quick, jobs, runner)
        return
    first, last = months.split("..")
    names = [str(m) for m in pd.period_range(first, last, freq="M")]
    if not serve:
        rows = run_simulation(cfg, root, names, out, steps=runner)
    else:  # the whole system: months go through a live service, promotions are hot-swapped into it
        import secrets

        from serving.launch import ServerProcess

        out.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        server = ServerProcess(config, out / "server.log", prediction_log=out / "predictions",
                               env={"MTLOPS_ADMIN_TOKEN": token})
        try:
            server.wait_ready()
            rows = run_simulation(cfg, root, names, out, service=LiveService(server.url, out / "predictions", token),
                                  steps=runner)
        finally:
            server.stop()
    (out / "rows.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
    text = timeline_markdown(rows, cfg)
    (out / "timeline.md").write_text(text)
    plot = timeline_plot(rows, cfg, out / "timeline.png")
    console.print(text)
    console.print(f"timeline: {out / 'timeline.md'}, plot: {plot}, alerts: {out / 'alerts.jsonl'}")


def _compare_policies(cfg: ProjectConfig, root: Path, months: str, out: Path, policy: str | None, seeds: str,
                      quick: bool, jobs: int | None, steps: StepRunner) -> None:
    import pandas as pd

    from pipelines.cli.policy_replay import (
        DEFAULT_POLICIES,
        QUICK_POLICIES,
        RetrainPolicy,
        available_cores,
        policy_markdown,
        policy_plot,
        replay_policies,
    )

    overrides = None
    if quick:
        months = "2013-07..2013-09"
        overrides = {"data": {"sample_fraction": 0.25}, "training": {"epochs": 3},
                     "retraining": {"replay_rows": 12_500},
                     "monitoring": {"sample_size": 5000, "calibration_draws": 50}}
    names = policy.split(",") if policy and policy != "all" else list(QUICK_POLICIES if quick else DEFAULT_POLICIES)
    try:
        policies = [RetrainPolicy.parse(n) for n in names]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--policy") from exc
    first, last = months.split("..")
    month_names = [str(m) for m in pd.period_range(first, last, freq="M")]
    records = replay_policies(cfg, root, month_names, policies, [int(s) for s in seeds.split(",")], out, overrides,
                              jobs or min(4, available_cores()), steps)
    text = policy_markdown(records, cfg)
    (out / "policies.md").write_text(text)
    plot = policy_plot(records, cfg, out / "policies.png")
    console.print(text)
    console.print(f"table: {out / 'policies.md'}, plot: {plot}, runs: {out}/seed-*/")


@app.command()
def serve(config: ConfigOpt = DEFAULT_CONFIG,
          host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
          prediction_log: Annotated[Path, typer.Option(
              help="Prediction log folder (parquet parts by date), read by monitoring.")] = Path("predictions"),
          log_retention_days: Annotated[int | None, typer.Option(
              min=0, help="Remove prediction-log days older than this (0: keep every day). Keep at least the "
                          "monitor's window.")] = None,
          max_rows: Annotated[int | None, typer.Option(min=1, help="Most records in one request.")] = None,
          workers: Annotated[int | None, typer.Option(
              min=0, help="Worker processes, each with its own ONNX session (0: the usable CPUs, a container's "
                          "limit).")] = None,
          max_batch_size: Annotated[int | None, typer.Option(min=1, help="Most rows in one ONNX call when "
                                                                    "concurrent requests are merged.")] = None,
          max_latency_ms: Annotated[float | None, typer.Option(
              min=0, help="How long a queued request waits for others to join its batch (0: dispatch when the "
                          "worker is free).")] = None,
          ort_threads: Annotated[int | None, typer.Option(min=0, help="ONNX Runtime threads per worker "
                                                                 "(0: cores / workers).")] = None,
          access_log: Annotated[bool | None, typer.Option(
              help="A log line per request (costs ~10% of throughput; the prediction log keeps every record "
                   "either way).")] = None
          ) -> None:
    """Serve the champion over HTTP (BentoML): /predict, /model, /livez, /readyz, /metrics, /admin/reload.
    Settings: the config's `serving:` section, each overridden by its MTLOPS_<OPTION> variable, then by
    these flags (unset: not overridden). POST /admin/reload needs `Authorization: Bearer $MTLOPS_ADMIN_TOKEN`."""
    import os

    from serving.runtime import SETTINGS_VARIABLE, override_variables, with_overrides

    cfg = _load(config)
    flags = {"log_retention_days": log_retention_days, "max_rows": max_rows, "workers": workers,
             "max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms, "ort_threads": ort_threads,
             "access_log": access_log}
    try:
        settings = with_overrides(cfg.serving, os.environ, flags)
    except ConfigError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(2) from None
    # the variables are folded into the settings: dropped, so a flag that overrode one stays in force
    env = {k: v for k, v in os.environ.items() if k not in override_variables()}
    env |= {"MTLOPS_MODEL_NAME": cfg.registry.model_name, "MTLOPS_PREDICTION_LOG": str(prediction_log.resolve()),
            SETTINGS_VARIABLE: settings.model_dump_json()}
    project = Path(__file__).resolve().parents[2]  # the repository: pipelines/cli/main.py
    cmd = [sys.executable, "-m", "serving.server", "serving.service:MultiTaskModelService",
           "--host", host, "--port", str(port), "--working-dir", str(project)]
    os.execve(sys.executable, cmd, env)  # the server gets our signals (SIGTERM drains and flushes the log)


@app.command()
def bento(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """Build a Bento (serving/bentofile.yaml) with the config's champion bundled; then
    `bentoml containerize <tag>` makes the image where docker exists."""
    import os

    import bentoml
    import yaml
    from bentoml._internal.bento.build_config import BentoEnvSchema

    from components.artifacts.registry import champion
    from serving.runtime import SETTINGS_VARIABLE

    cfg = _load(config)
    current = champion(cfg.registry.model_name)
    if current is None:
        console.print(f"[red]no champion for {cfg.registry.model_name}: run `mtlops run` first[/red]")
        raise typer.Exit(1)
    project = Path(__file__).resolve().parents[2]  # the repository: pipelines/cli/main.py
    spec = yaml.safe_load((project / "serving" / "bentofile.yaml").read_text())
    envs = [*spec.pop("envs", []), {"name": "MTLOPS_MODEL_NAME", "value": cfg.registry.model_name},
            {"name": SETTINGS_VARIABLE, "value": cfg.serving.model_dump_json()}]
    os.environ["MTLOPS_MODEL_NAME"] = cfg.registry.model_name  # the build imports the service, which loads it
    built = bentoml.bentos.build(**spec, envs=[BentoEnvSchema(**e) for e in envs], models=[str(current.tag)],
                                 build_ctx=str(project))
    console.print(f"built {built.tag} with {current.tag}; containerize: bentoml containerize {built.tag}")


@app.command()
def reload(url: Annotated[str, typer.Option(help="The service's base URL.")] = "http://127.0.0.1:3000") -> None:
    """Make a running service serve the current champion in every worker (after a promotion or
    `mtlops rollback`). Reads the admin token from MTLOPS_ADMIN_TOKEN."""
    import os

    import httpx

    from serving.client import reload as ask_reload

    token = os.environ.get("MTLOPS_ADMIN_TOKEN")
    if not token:
        console.print("[red]MTLOPS_ADMIN_TOKEN is not set: export the token the service was started with[/red]")
        raise typer.Exit(2)
    try:
        r = ask_reload(url, token)
    except httpx.TransportError as exc:
        console.print(f"[red]no service at {url}: {type(exc).__name__}: {exc}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{r.status_code} {r.text}")
    raise typer.Exit(0 if r.status_code == 200 else 1)


@app.command()
def monitor(config: ConfigOpt = DEFAULT_CONFIG,
            window: Annotated[str, typer.Option(help="The window to check: a month (2013-07), a day or a year.")] = "",
            log: Annotated[Path | None, typer.Option(help="Read the window from this prediction log folder.")] = None,
            data: Annotated[bool, typer.Option("--data", help="Score the window's data partitions offline with "
                                                              "the champion instead.")] = False,
            labels: Annotated[bool, typer.Option("--labels", help="With --data: attach the window's true "
                                                                  "outcomes, for per-task quality.")] = False,
            labels_file: Annotated[Path | None, typer.Option(help="With --log: labels keyed by request_id, "
                                                                  "record_index (parquet/CSV).")] = None,
            root: RootOpt = Path("."),
            out: Annotated[Path | None, typer.Option(help="Report folder (default runs/monitor/<window>).")] = None,
            workspace: Annotated[Path | None, typer.Option(help="Evidently Workspace (default: the config's "
                                                                "monitoring.workspace).")] = None,
            sample_size: Annotated[int | None, typer.Option(help="Rows per window (default: the config's).")] = None,
            alert_log: Annotated[Path, typer.Option(help="JSONL alert log the policy appends to.")] = Path(
                "runs/monitor/alerts.jsonl"),
            act: Annotated[bool, typer.Option("--act", help="On an acting alert with `alerts.action: retrain`, run "
                                                            "the retraining pipeline on the window.")] = False,
            pipeline_root: Annotated[Path, typer.Option(help="With --act: where kfp.local writes artifacts.")] = Path(
                "runs/kfp"),
            kfp_host: Annotated[str | None, typer.Option(help="With --act: submit the retraining to this Kubeflow "
                                                              "Pipelines API instead.")] = None,
            as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False) -> None:
    """Drift (features, task outputs), estimated and, with labels, realized per-task quality of the champion on a
    window (Evidently); then the alert policy: alert log, webhook, dashboard marker, and with --act retraining."""
    from monitoring.windows import apply_policy, champion_model, monitor_window, monitored_config, window_bounds

    cfg = _load(config)
    if not window or data == (log is not None):
        console.print("[red]give --window and exactly one of --log DIR or --data[/red]")
        raise typer.Exit(2)
    t0 = time.perf_counter()
    try:
        champion = champion_model(cfg)
        monitored = monitored_config(cfg, champion.folder)
        if unanswered := sorted({t.name for t in cfg.tasks} - {t.name for t in monitored.tasks}):
            err_console.print(f"the champion {champion.tag} does not answer the task(s) {unanswered} yet: they are "
                              "monitored from the promotion of a model that does")
        cfg = monitored
        with console.status(f"monitoring {window}"):
            s = monitor_window(cfg, window, out or Path("runs/monitor") / window, data_root=root if data else None,
                               log_dir=log, labels=labels, labels_file=labels_file,
                               workspace=workspace or Path(cfg.monitoring.workspace), sample_size=sample_size)
    except (LookupError, ValueError, FileNotFoundError) as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(1) from None
    start, end = window_bounds(window)
    alert = apply_policy(cfg, s, window, alert_log, workspace or Path(cfg.monitoring.workspace))
    if as_json:
        sys.stdout.write(s.to_json() + "\n")
    else:
        _print_monitor(s, window, time.perf_counter() - t0)
    say = console.print if not as_json else err_console.print
    if alert is None:
        say("no alert")
        return
    does = alert.action if alert.kind == "model" else "no retraining (broken input)"
    state = "suppressed (cool-down)" if alert.suppressed else f"{does}, webhook {alert.webhook_status or '—'}"
    say(f"[yellow]ALERT[/yellow] {window} ({alert.kind}): {state} (log {alert_log})")
    for reason in alert.all_reasons:
        say(f"  - {reason}")
    if act and alert.retrains:
        from pipelines.cli.retrain import retrain

        out = retrain(cfg, root, f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}", pipeline_root, kfp_host)
        say(f"retraining: {out.status} {out.tag or out.run_id or ''} {out.error or ''}")
        raise typer.Exit(1 if out.status == "failed" else 0)


def _print_monitor(s: MonitorSummary, window: str, seconds: float) -> None:
    table = Table(title=f"{window} vs the reference of {s.model_version} ({seconds:.0f}s)",
                  caption=f"rows {s.rows_current:,} current / {s.rows_reference:,} reference, compared "
                          f"{s.sampled_current:,} / {s.sampled_reference:,} (sampled); report {s.snapshot_html}")
    for col in ("column", "kind", "drift score", "calibrated threshold", "method", "drifted"):
        table.add_column(col)
    for f, score in sorted(s.feature_scores.items(), key=lambda kv: kv[0] not in s.drifted_features):
        kind = "context feature" if f in s.context_features else "feature"
        table.add_row(f, kind, f"{score:.4f}", _fmt(s.thresholds.get(f, float("nan"))), s.methods.get(f, ""),
                      "yes" if f in s.drifted_features else "")
    for task, score in s.prediction_scores.items():
        table.add_row(task, "prediction", f"{score:.4f}", _fmt(s.thresholds.get(task, float("nan"))), "",
                      "yes" if task in s.drifted_predictions else "")
    console.print(table)
    console.print(f"drift share {s.drift_share:.2f} ({'dataset drift' if s.dataset_drift else 'no dataset drift'})")
    q = Table(title=f"per-task quality (reference: {s.quality_reference}; estimated: CBPE/DLE, no labels)")
    for col in ("task", "estimated", "reference", "realized [bootstrap interval]", "change (+ = better)",
                "trivial baseline", "labelled rows"):
        q.add_column(col)
    for task, estimate in s.estimated.items():
        v = s.quality.get(task)
        interval = f" [{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]" if v and "ci_low" in v else ""
        q.add_row(task, _fmt(estimate), *((_fmt(v["reference"]), _fmt(v["current"]) + interval,
                                          f"{v['relative_change']:+.1%}",
                                          _fmt(v["baseline"]), f"{v['rows']:,}") if v else ("",) * 5))
    console.print(q)


@app.command()
def dashboard(config: ConfigOpt = DEFAULT_CONFIG,
              workspace: Annotated[Path | None, typer.Option(help="Evidently Workspace (default: the config's "
                                                                  "monitoring.workspace).")] = None,
              host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
              port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000) -> None:
    """Start `evidently ui` on the monitoring workspace: drift, quality and alert panels per model."""
    from monitoring.dashboard import serve as serve_ui

    cfg = _load(config)
    serve_ui(workspace or Path(cfg.monitoring.workspace), host, port)


if __name__ == "__main__":
    app()
