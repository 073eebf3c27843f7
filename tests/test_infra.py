"""Infra checked statically, as this machine allows (no Docker engine, registry or cluster): the
Dockerfile linted by hadolint, every kustomize overlay rendered by kubectl, each object validated
against the Kubernetes schema (the TrainJob against Kubeflow Trainer's API models), a security
lint by checkov, and the wiring between manifests, serving's interface and the pipelines' cluster
settings. The tools come from the test extra (hadolint, kubectl) and `make test` (checkov)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from components.config.schema import PrometheusSpec
from pipelines.cluster import load_cluster_settings
from serving.runtime import ServingSettings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHECKOV = REPO / ".venv-lint" / "bin" / "checkov"  # its own venv: it pins packages the project uses
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"  # the KServe SDK's venv (`make test`): its pins clash too
DOCKERFILE = REPO / "infra" / "docker" / "Dockerfile"
OVERLAYS = ("local", "gpu")
SECRET_TEMPLATES = sorted((REPO / "infra" / "k8s" / "secrets").glob("*.example.yaml"))
KUBERNETES_VERSION = "1.32"
WORKLOADS = ("Deployment", "Job", "StatefulSet", "DaemonSet")


def tool(path: Path) -> str:
    assert path.is_file(), f"{path} is missing: `make test` installs it (test extra / {CHECKOV.parent.parent.name})"
    return str(path)


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """overlay -> its objects, as `kubectl kustomize` renders them (also written to files for checkov)."""
    out_dir = tmp_path_factory.mktemp("rendered")
    objects = {}
    for overlay in OVERLAYS:
        proc = run([tool(BIN / "kubectl"), "kustomize", str(REPO / "infra" / "k8s" / "overlays" / overlay)])
        assert proc.returncode == 0, f"kustomize {overlay}: {proc.stderr}"
        (out_dir / f"{overlay}.yaml").write_text(proc.stdout)
        objects[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    objects["_dir"] = out_dir  # type: ignore[assignment]
    return objects


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_passes_hadolint_which_catches_a_bad_one(tmp_path: Path) -> None:
    hadolint = tool(BIN / "hadolint")
    proc = run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install gcc\n")
    proc = run([hadolint, "--failure-threshold", "warning", str(bad)])
    assert proc.returncode != 0 and "DL3007" in proc.stdout  # `latest` is caught: the lint is live


def test_dockerfile_pins_its_base_runs_non_root_and_keeps_build_steps_out_of_the_final_images() -> None:
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1)), "base image not pinned by exact tag"
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))
    # serving first: the legacy builder builds every stage before the target
    assert list(stages) == ["serving-build", "project", "runtime", "serving", "build", "component"]
    for name in ("runtime", "component", "serving"):  # the images that ship
        assert "pip install" not in stages[name] and "apt-get" not in stages[name], f"build tools in {name}"
    for name in ("component", "serving"):
        assert re.search(r"^USER 10001:10001$", stages[name], re.M), name
    assert "--chown=10001:10001 /src/data" in stages["component"]  # dvc pull writes there as the user
    assert "torch==" not in stages["serving-build"]  # serving runs the graph in ONNX Runtime
    ignore = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*", ".dockerignore must be an allowlist: exclude everything, then name what goes in"
    allowed = [line[1:] for line in ignore if line.startswith("!")]
    assert not [a for a in allowed if a.startswith((".git", "runs", ".venv", "build")) or a.endswith(".parquet")]
    assert "data/**/*.dvc" in allowed and ".dvc/config" in allowed  # the data version goes in, the data not


def test_make_images_without_a_docker_engine_says_so_and_fails(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "HOME": str(tmp_path)}
    proc = subprocess.run(["make", "-s", "images"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "no Docker engine here" in proc.stdout + proc.stderr


# --- Kubernetes manifests -------------------------------------------------------------------


def validate_trainjob(obj: dict) -> None:
    """No Kubernetes schema covers the CRD: Kubeflow Trainer's own API models check the types, and
    a round trip shows every field was known (the models drop unknown ones silently)."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    assert obj["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    parsed = TrainerV1alpha1TrainJob.from_dict(obj).to_dict()

    def unknown(given: object, kept: object, path: str) -> list[str]:
        if isinstance(given, dict):
            kept = kept if isinstance(kept, dict) else {}
            return [p for k, v in given.items() for p in
                    ([f"{path}.{k}"] if k not in kept else unknown(v, kept[k], f"{path}.{k}"))]
        if isinstance(given, list):
            return [p for i, v in enumerate(given) for p in unknown(v, kept[i] if i < len(kept) else None,
                                                                   f"{path}[{i}]")]
        return []

    assert unknown(obj, parsed, "TrainJob") == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_its_schema(rendered: dict, overlay: str) -> None:
    objects = rendered[overlay]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim",
            "ConfigMap", "NetworkPolicy"} <= kinds
    assert ("Job" in kinds) == (overlay == "local")  # MinIO's bucket, local only
    assert ("TrainJob" in kinds) == (overlay == "gpu")
    for obj in objects:
        assert obj["metadata"]["namespace"] == "kubeflow", obj["metadata"]["name"]
        if obj["kind"] == "TrainJob":
            validate_trainjob(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def kserve_problems(obj: dict) -> list[str]:
    """What tests/kserve_schema.py, in the KServe SDK's venv, finds wrong with `obj` (an InferenceService)."""
    proc = subprocess.run([tool(KSERVE_PYTHON), str(REPO / "tests" / "kserve_schema.py")], input=json.dumps(obj),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_the_kserve_inference_service_validates_and_runs_the_deployments_container(rendered: dict) -> None:
    """The InferenceService of infra/README.md's KServe mapping, rendered by kustomize, against the KServe SDK's
    API models (a wrong type or an unknown field fails, as shown), and wired like the serving Deployment: the
    same image, volumes, probes' paths, limits and security settings; the canary revision answers with the shadow."""
    proc = run([tool(BIN / "kubectl"), "kustomize", str(REPO / "infra" / "k8s" / "kserve")])
    assert proc.returncode == 0, proc.stderr
    [isvc] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert (isvc["kind"], isvc["metadata"]["namespace"]) == ("InferenceService", "kubeflow")
    assert kserve_problems(isvc) == []
    broken = json.loads(json.dumps(isvc))
    broken["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    broken["spec"]["predictor"]["containers"][0]["envv"] = []
    assert kserve_problems(broken) == [
        "InferenceService.spec.predictor.canaryTrafficPercent: 'ten' is not int",
        "InferenceService.spec.predictor.containers[0].envv: not a field of V1Container"]

    predictor = isvc["spec"]["predictor"]
    assert 0 < predictor["canaryTrafficPercent"] < 100
    [ours] = predictor["containers"]
    deployment = pod_spec(find(rendered["gpu"], "Deployment", "mtlops-serving"))
    [theirs] = deployment["containers"]
    assert ours["image"].split(":")[0] == theirs["image"].split(":")[0]
    assert ours["args"][:5] == theirs["args"][:5] and ours["args"][6:] == theirs["args"][6:]  # but the port
    for key in ("resources", "securityContext", "volumeMounts"):
        assert ours[key] == theirs[key], key
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ours[probe]["httpGet"]["path"] == theirs[probe]["httpGet"]["path"], probe
    for key in ("volumes", "securityContext", "automountServiceAccountToken", "terminationGracePeriodSeconds"):
        assert predictor[key] == deployment[key], key
    env = {e["name"]: e.get("value") for e in ours["env"]}
    assert env["MTLOPS_CANARY_SHARE"] == "1" and env["MTLOPS_SHADOW_SHARE"] == "0"
    assert {e["name"] for e in ours["env"]} == {e["name"] for e in theirs["env"]}


def test_secret_templates_validate_and_hold_no_values() -> None:
    assert {p.name for p in SECRET_TEMPLATES} == {"storage.example.yaml", "serving-admin.example.yaml"}
    for path in SECRET_TEMPLATES:
        secret = yaml.safe_load(path.read_text())
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
        assert set(secret["stringData"].values()) == {"REPLACE_ME"}, path.name


def test_a_bad_manifest_fails_schema_validation() -> None:
    broken = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
              "spec": {"ports": [{"port": "eighty"}], "selectr": {}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


# Each accepted checkov finding, with why; anything else fails the test.
ACCEPTED = {
    "CKV_K8S_43": ("image by digest: images are pinned by exact tag; the digest exists only after "
                   "`make push-images`, then `kustomize edit set image NAME@sha256:...` (infra/README.md)",
                   lambda overlay, resource: True),
    "CKV_K8S_35": ("secret as env var: serving reads its admin token from an env var (its interface), MinIO "
                   "its root credentials, mc its host alias (MC_HOST_<alias>)",
                   lambda overlay, resource: resource.endswith((".mtlops-serving", ".mtlops-minio",
                                                                ".mtlops-minio-bucket"))),
    "CKV_K8S_15": ("imagePullPolicy Always: the local overlay runs images loaded into the kind/minikube node, "
                   "there is no registry to pull from",
                   lambda overlay, resource: overlay == "local"),
}
# what the issue asks the lint to enforce: non-root, limits, no latest tag, no privileged
REQUIRED_CHECKS = {"CKV_K8S_23": "non-root", "CKV_K8S_40": "high UID", "CKV_K8S_11": "CPU limit",
                   "CKV_K8S_13": "memory limit", "CKV_K8S_14": "no latest tag", "CKV_K8S_16": "not privileged",
                   "CKV_K8S_20": "no privilege escalation", "CKV_K8S_22": "read-only root filesystem"}


def test_security_lint_passes_with_only_the_named_exceptions(rendered: dict) -> None:
    proc = run([tool(CHECKOV), "-d", str(rendered["_dir"]), "--framework", "kubernetes", "--skip-download",
                "-o", "json"])
    report = json.loads(proc.stdout)
    assert report["summary"]["parsing_errors"] == 0
    failed = [(c["check_id"], Path(c["file_path"]).stem, c["resource"]) for c in report["results"]["failed_checks"]]
    unexpected = [f for f in failed if f[0] not in ACCEPTED or not ACCEPTED[f[0]][1](f[1], f[2])]
    assert unexpected == [], unexpected
    passed = {(c["check_id"], c["resource"]) for c in report["results"]["passed_checks"]}
    workloads = {f"{o['kind']}.kubeflow.{o['metadata']['name']}" for overlay in OVERLAYS
                 for o in rendered[overlay] if o["kind"] in WORKLOADS}
    for check, what in REQUIRED_CHECKS.items():
        for workload in workloads:
            assert (check, workload) in passed, f"{workload}: {what} ({check}) not passed"


def test_serving_wiring_probes_service_autoscaling_and_read_only_model_store(rendered: dict) -> None:
    for overlay in OVERLAYS:
        objects = rendered[overlay]
        deployment = find(objects, "Deployment", "mtlops-serving")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (container,) = pod_spec(deployment)["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        # the drain rule reads the probe's settings: the env the service reads is the probe itself
        env = {e["name"]: e.get("value") for e in container["env"]}
        probe = container["readinessProbe"]
        assert float(env["MTLOPS_READINESS_PERIOD_SECONDS"]) == probe["periodSeconds"]
        assert int(env["MTLOPS_READINESS_FAILURE_THRESHOLD"]) == probe["failureThreshold"]
        assert 0.0 <= float(env["MTLOPS_SHADOW_SHARE"]) <= 1.0  # the deployment carries the shadow setting
        # the log keeps what the monitor reads: a window of one schedule, and a run that is one schedule late
        assert int(env["MTLOPS_LOG_RETENTION_DAYS"]) * 24 >= 2 * PrometheusSpec().monitor_every_hours
        drain = ServingSettings(model_name="m", readiness_period_seconds=probe["periodSeconds"],
                                readiness_failure_threshold=probe["failureThreshold"]).drain_seconds
        assert probe["periodSeconds"] * probe["failureThreshold"] < drain
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= drain + 10  # + the log flush and exit
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["ports"] == [{"name": "http", "containerPort": 3000}]
        assert container["image"].startswith("ghcr.io/mtlops/mtlops-serving:")
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        store = next(m for m in container["volumeMounts"] if m["name"] == "model-store")
        assert store["readOnly"] is True and store["mountPath"] == "/home/mtlops/bentoml/models"
        service = find(objects, "Service", "mtlops-serving")
        assert service["spec"]["selector"].items() <= labels.items()
        assert find(objects, "PodDisruptionBudget", "mtlops-serving")["spec"]["selector"]["matchLabels"].items() \
            <= labels.items()
        assert find(objects, "HorizontalPodAutoscaler", "mtlops-serving")["spec"]["scaleTargetRef"]["name"] == \
            "mtlops-serving"
        ui = pod_spec(find(objects, "Deployment", "mtlops-evidently-ui"))["containers"][0]
        assert ui["command"] == ["evidently", "ui", "--workspace", "/workspace", "--host", "0.0.0.0", "--port", "8000"]


def referenced(obj: dict) -> set[tuple[str, str]]:
    """(kind, name) of every Secret, ConfigMap and PVC an object's pods use."""
    refs = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if key in node:
                    refs.add((kind, node[key]["name"]))
            if "secretName" in node:
                refs.add(("Secret", node["secretName"]))
            if "claimName" in node:
                refs.add(("PersistentVolumeClaim", node["claimName"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj.get("spec", {}))
    return refs


@pytest.mark.parametrize(("overlay", "settings_file"), [("local", "cluster-local.yaml"), ("gpu", "cluster.yaml")])
def test_every_reference_and_every_pipeline_cluster_setting_names_an_existing_object(
        rendered: dict, overlay: str, settings_file: str) -> None:
    settings = load_cluster_settings(REPO / "infra" / "kfp" / settings_file)
    templates = {("Secret", yaml.safe_load(p.read_text())["metadata"]["name"]) for p in SECRET_TEMPLATES}
    from_pipelines = ({("Secret", s.name) for s in settings.secret_env}
                      | {("ConfigMap", c.name) for c in settings.config_map_env}
                      | {("PersistentVolumeClaim", v.pvc) for v in settings.volumes})
    objects = rendered[overlay]
    existing = {(o["kind"], o["metadata"]["name"]) for o in objects} | templates
    wanted = set().union(*(referenced(o) for o in objects)) | from_pipelines
    assert wanted - existing == set()
    config = find(objects, "ConfigMap", "mtlops-config")["data"]
    assert all(key in config for c in settings.config_map_env if c.name == "mtlops-config" for key in c.keys)


def test_trainjob_runs_the_trainer_under_torchrun_on_gpu_nodes(rendered: dict) -> None:
    job = find(rendered["gpu"], "TrainJob", "mtlops-train")
    trainer = job["spec"]["trainer"]
    assert trainer["command"][:4] == ["torchrun", "-m", "pipelines.cli", "train"]
    assert trainer["image"].startswith("ghcr.io/mtlops/mtlops-cuda:")
    assert trainer["numNodes"] >= 2
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed"
    (patched,) = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = patched["template"]["spec"]["template"]["spec"]
    gpu = load_cluster_settings(REPO / "infra" / "kfp" / "cluster.yaml").gpu
    assert pod["nodeSelector"] == gpu.node_selector  # the same GPU nodes as the pipeline's training step
    assert [t["key"] for t in pod["tolerations"]] == [t.key for t in gpu.tolerations]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["privileged"] is False
