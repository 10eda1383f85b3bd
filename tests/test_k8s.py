"""k8s/: schemas, workload security, kustomize wiring, alert rules and the dashboard.

Overlays are rendered with `kubectl kustomize` (kustomize v5 built into kubectl); the
rendered objects and every resource file are validated against the Kubernetes 1.33 schemas
(kubernetes-validate, strict). Custom resources (RayCluster, PrometheusRule, ServiceMonitor)
are validated against the trimmed schemas in k8s/schemas/, whose pod templates and container
fields point into the same Kubernetes schemas. Alert rules go through promtool
(scripts/install-test-tools.sh puts it in the venv; `make test` runs that first).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
MONITORING = K8S / "base" / "monitoring"
RULES = MONITORING / "drift-rules.yaml"
RULE_TESTS = MONITORING / "drift-rules.test.yaml"
SERVE_RULES = MONITORING / "serve-rules.yaml"
SERVE_RULE_TESTS = MONITORING / "serve-rules.test.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMETHEUS_RULE = K8S / "components" / "prometheus-operator" / "prometheusrule.yaml"
ADAPTER = K8S / "components" / "prometheus-adapter"
ADAPTER_VALUES = ADAPTER / "adapter-values.yaml"  # Helm values, not a kustomize input
JOB_TEMPLATE = K8S / "base" / "prefect-worker" / "base-job-template.json"
OVERLAYS = ["dev", "prod"]
KUBERNETES_VERSION = "1.33.0"

# What the drift monitor pushes (job="drift-monitor", labels model and dataset).
DRIFT_METRICS = {
    "mlops_drift_detected",
    "mlops_drift_share",
    "mlops_drift_feature_score",
    "mlops_drift_feature_drifted",
    "mlops_drift_batch_images",
    "mlops_drift_last_run_timestamp_seconds",
}
# What every serve pod's /metrics exposes (components/serve/metrics.py), scraped as
# job="serve"; histograms as the series Prometheus stores.
SERVE_METRICS = {
    "mlops_serve_requests_total",
    "mlops_serve_predictions_total",
    "mlops_serve_errors_total",
    "mlops_serve_model_version",
    "mlops_serve_ready",
    "mlops_serve_model_loads_total",
    "mlops_serve_log_records_total",
    "mlops_serve_log_flush_failures_total",
    "mlops_serve_log_dropped_total",
} | {
    f"mlops_serve_{histogram}_{suffix}"
    for histogram in ("request_seconds", "batch_size", "confidence")
    for suffix in ("bucket", "sum", "count")
}
# Rule file -> the PrometheusRule (components/prometheus-operator) holding its groups.
RULE_FILES = {RULES: "mlops-drift", SERVE_RULES: "mlops-serve"}
CUSTOM_SCHEMAS = {
    ("ray.io/v1", "RayCluster"): "raycluster.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
# Flow-run pods write stage outputs under the image's working directory, as `dvc repro`
# does on a laptop; the pod is thrown away after the run.
WRITABLE_ROOT_ALLOWED = {"prefect flow-run job/prefect-job"}


# --- helpers ---------------------------------------------------------------------------


def _tool(name: str) -> str:
    venv_bin = Path(sys.executable).parent / name  # where install-test-tools.sh puts it
    path = shutil.which(name) or (str(venv_bin) if venv_bin.is_file() else None)
    if path is None:
        pytest.fail(
            f"{name} not found: promtool comes from scripts/install-test-tools.sh "
            "(make test runs it); kubectl ships kustomize (on the project's machines)"
        )
    return path


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"kustomize build {overlay} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _named(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def _references(kustomization: Path) -> Iterator[tuple[str, Path]]:
    """Every file or folder a kustomization names: (field, path)."""
    spec = yaml.safe_load(kustomization.read_text())
    base = kustomization.parent
    for field in ("resources", "components"):
        for entry in spec.get(field, []):
            yield field, base / entry
    for patch in spec.get("patches", []):
        if "path" in patch:
            yield "patches", base / patch["path"]
    for field in ("configMapGenerator", "secretGenerator"):
        for generator in spec.get(field, []):
            for entry in generator.get("files", []):
                yield field, base / entry.split("=", 1)[-1]


def reference_problems(kustomization: Path) -> list[str]:
    problems = []
    for field, path in _references(kustomization):
        if path.is_dir():
            if not (path / "kustomization.yaml").is_file():
                problems.append(
                    f"{kustomization}: {field}: {path} has no kustomization.yaml"
                )
        elif not path.is_file():
            problems.append(f"{kustomization}: {field}: {path} does not exist")
    return problems


def _resource_files() -> list[Path]:
    """The plain manifest files the kustomizations list as resources."""
    files = {
        path.resolve()
        for kustomization in _kustomizations()
        for field, path in _references(kustomization)
        if field == "resources" and path.is_file()
    }
    return sorted(files)


@functools.cache
def _crd_validator(schema_name: str) -> Draft202012Validator:
    schema_dir = importlib.resources.files("kubernetes_validate").joinpath(
        "kubernetes-json-schema", f"v{KUBERNETES_VERSION}-local-strict"
    )
    definitions = json.loads(schema_dir.joinpath("_definitions.json").read_text())
    registry = Registry().with_resource(
        definitions["$id"], Resource.from_contents(definitions)
    )
    schema = json.loads((K8S / "schemas" / schema_name).read_text())
    return Draft202012Validator(schema, registry=registry)


def schema_problems(doc: dict[str, Any]) -> list[str]:
    """Strict schema validation of one object; the custom kinds against k8s/schemas/."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if key in CUSTOM_SCHEMAS:
        errors = _crd_validator(CUSTOM_SCHEMAS[key]).iter_errors(doc)
        return [
            f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in errors
        ]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(map(str, error.absolute_path))
        return [f"{name}: {path}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{name}: {error.message}"]
    return []


def _pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind, name = doc["kind"], doc["metadata"]["name"]
    if kind in POD_KINDS:
        yield f"{kind}/{name}", doc["spec"]["template"]["spec"]
    elif kind == "CronJob":
        yield f"{kind}/{name}", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "RayCluster":
        yield f"{kind}/{name} head", doc["spec"]["headGroupSpec"]["template"]["spec"]
        for group in doc["spec"].get("workerGroupSpecs", []):
            yield f"{kind}/{name} group {group['groupName']}", group["template"]["spec"]


def _image_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    last = image.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


def container_problems(
    where: str, pod: dict[str, Any], container: dict[str, Any]
) -> list[str]:
    """What a container breaks of the rules every workload here keeps."""
    pod_context = pod.get("securityContext", {})
    context = container.get("securityContext", {})
    label = f"{where}/{container['name']}"
    problems = []

    def effective(key: str) -> Any:
        return context.get(key, pod_context.get(key))

    if effective("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if effective("runAsUser") == 0:
        problems.append("runs as uid 0")
    if context.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation is not false")
    if context.get("privileged"):
        problems.append("privileged")
    if "ALL" not in context.get("capabilities", {}).get("drop", []):
        problems.append("capabilities do not drop ALL")
    if context.get("capabilities", {}).get("add"):
        problems.append("adds capabilities")
    if context.get("readOnlyRootFilesystem") is not True and label not in (
        WRITABLE_ROOT_ALLOWED
    ):
        problems.append("readOnlyRootFilesystem is not true")
    if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile is not RuntimeDefault")
    resources = container.get("resources", {})
    for section in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in resources.get(section, {}):
                problems.append(f"no {section}.{resource}")
    if "image" in container and not _image_pinned(container["image"]):
        problems.append(f"image {container['image']} is not pinned to a tag or digest")
    return [f"{label}: {problem}" for problem in problems]


def workload_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    for where, pod in _pod_specs(doc):
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                problems.append(f"{where}: {flag}")
        for volume in pod.get("volumes", []):
            if "hostPath" in volume:
                problems.append(f"{where}: hostPath volume {volume['name']}")
        for container in pod.get("initContainers", []) + pod["containers"]:
            problems += container_problems(where, pod, container)
    if doc["kind"] == "RayCluster" and doc["spec"].get("enableInTreeAutoscaling"):
        # KubeRay adds the autoscaler sidecar to the head; its settings live here.
        head_pod = doc["spec"]["headGroupSpec"]["template"]["spec"]
        sidecar = {"name": "autoscaler", **doc["spec"].get("autoscalerOptions", {})}
        problems += container_problems(
            f"RayCluster/{doc['metadata']['name']}", head_pod, sidecar
        )
    return problems


_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_PROMQL_KEYWORDS |= {"bool", "and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )
    names = set()
    for match in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match[0] in _PROMQL_KEYWORDS:
            continue
        names.add(match[0])
    return names


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


# --- kustomize wiring ------------------------------------------------------------------


def test_every_kustomization_reference_exists() -> None:
    assert len(_kustomizations()) >= 4
    problems = [p for k in _kustomizations() for p in reference_problems(k)]
    assert not problems, "\n".join(problems)


def test_reference_check_reports_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [gone.yaml]\nconfigMapGenerator:\n- name: x\n  files: [k=missing.json]\n"
    )
    problems = reference_problems(tmp_path / "kustomization.yaml")
    assert (
        len(problems) == 2
        and "gone.yaml" in problems[0]
        and "missing.json" in problems[1]
    )


def test_no_yaml_file_is_orphaned() -> None:
    referenced = {
        path.resolve() for k in _kustomizations() for _, path in _references(k)
    }
    referenced |= {p.resolve() for p in _kustomizations()}
    referenced |= {p.resolve() for p in (RULE_TESTS, SERVE_RULE_TESTS, ADAPTER_VALUES)}
    orphans = [p for p in K8S.rglob("*.y*ml") if p.resolve() not in referenced]
    assert not orphans, f"YAML files no kustomization uses: {orphans}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_the_expected_objects(overlay: str) -> None:
    docs = _render(overlay)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Deployment", "prefect-worker"),
        ("Deployment", "mlflow"),
        ("Deployment", "evidently-ui"),
        ("Deployment", "pushgateway"),
        ("RayCluster", "mlops-ray"),
        ("Service", "ray-head"),
        ("ConfigMap", "prometheus-drift-rules"),
        ("ConfigMap", "grafana-dashboard-mlops-drift"),
        ("Deployment", "serve"),
        ("Service", "serve"),
        ("ServiceAccount", "serve"),
        ("PodDisruptionBudget", "serve"),
        ("HorizontalPodAutoscaler", "serve"),
        ("ConfigMap", "prometheus-serve-rules"),
    ]:
        assert expected in kinds, f"{overlay}: {expected} missing"
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"mlops"}
    assert not [d for d in docs if d["kind"] == "Secret"], (
        "secrets are created out of band"
    )
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


# --- schemas ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", _resource_files(), ids=lambda p: str(p.relative_to(K8S))
)
def test_resource_file_validates(path: Path) -> None:
    problems = [p for doc in _load_all(path) for p in schema_problems(doc)]
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_validates(overlay: str) -> None:
    problems = [p for doc in _render(overlay) for p in schema_problems(doc)]
    assert not problems, f"overlays/{overlay}:\n" + "\n".join(problems)


def test_schema_validation_rejects_bad_objects() -> None:
    deployment = _load_all(K8S / "base" / "monitoring" / "pushgateway.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = (
        "Always"
    )
    assert schema_problems(deployment)
    ray = _load_all(K8S / "base" / "ray" / "raycluster.yaml")[0]
    ray["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0][
        "resources"
    ] = {"limits": {"cpu": ["4"]}}
    assert schema_problems(ray)
    ray = _load_all(K8S / "base" / "ray" / "raycluster.yaml")[0]
    ray["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    assert schema_problems(ray)
    assert schema_problems(
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {}}
    )


# --- workload security -----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_locked_down_and_sized(overlay: str) -> None:
    workloads = [d for d in _render(overlay) if list(_pod_specs(d))]
    assert len(workloads) >= 6 and ("Deployment", "serve") in {
        (d["kind"], d["metadata"]["name"]) for d in workloads
    }
    problems = [p for doc in workloads for p in workload_problems(doc)]
    assert not problems, f"overlays/{overlay}:\n" + "\n".join(problems)


def test_flow_run_job_template_is_locked_down() -> None:
    template = json.loads(JOB_TEMPLATE.read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    variables = template["variables"]["properties"]
    container = {
        **pod["containers"][0],
        "image": variables["image"]["default"],
        "resources": {
            section: {
                r: variables[f"{r}_{section[:-1]}"]["default"]
                for r in ("cpu", "memory")
            }
            for section in ("requests", "limits")
        },
    }
    problems = container_problems("prefect flow-run job", pod, container)
    assert not problems, "\n".join(problems)
    for overlay in OVERLAYS:
        docs = _render(overlay)
        namespace = _named(docs, "Deployment", "mlflow")["metadata"]["namespace"]
        assert variables["namespace"]["default"] == namespace
        _named(docs, "ServiceAccount", variables["service_account_name"]["default"])
        env_from = pod["containers"][0]["envFrom"]
        _named(docs, "ConfigMap", env_from[0]["configMapRef"]["name"])
    assert (
        env_from[1]["secretRef"]["name"] == "ray-auth"
    )  # RAY_AUTH_TOKEN for Ray Client


def _fill_job_template(node: Any, values: dict[str, Any]) -> Any:
    """The job manifest with each "{{ variable }}" replaced, as the worker does."""
    if isinstance(node, dict):
        return {key: _fill_job_template(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_fill_job_template(item, values) for item in node]
    if isinstance(node, str) and (match := re.fullmatch(r"\{\{ (\w+) \}\}", node)):
        return values[match[1]]
    if isinstance(node, str):
        return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(values[m[1]]), node)
    return node


def test_flow_run_job_from_the_template_validates() -> None:
    template = json.loads(JOB_TEMPLATE.read_text())
    variables = template["variables"]["properties"]
    values = {name: spec.get("default") for name, spec in variables.items()}
    values |= {"name": "training-run", "command": ["python", "-m", "flows.training"]}
    values |= {"env": [{"name": "PREFECT__FLOW_RUN_ID", "value": "0"}]}
    values |= {"labels": {"prefect.io/flow-run-id": "0"}, "annotations": {}}
    job = _fill_job_template(template["job_configuration"]["job_manifest"], values)
    job["metadata"]["name"] = job["metadata"].pop("generateName") + "x"
    # prefect-kubernetes refuses a manifest without these two keys under the pod spec (its
    # default template has them there); the API server drops them as unknown pod fields.
    pod = job["spec"]["template"]["spec"]
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    problems = schema_problems(job)
    assert not problems, "\n".join(problems)


def test_security_check_catches_each_violation() -> None:
    pod = {"securityContext": {"runAsUser": 0}}
    container = {
        "name": "bad",
        "image": "busybox:latest",
        "securityContext": {"privileged": True, "capabilities": {"add": ["NET_ADMIN"]}},
        "resources": {"limits": {"cpu": "1"}},
    }
    problems = "\n".join(container_problems("Deployment/x", pod, container))
    for expected in [
        "runAsNonRoot",
        "uid 0",
        "allowPrivilegeEscalation",
        "privileged",
        "drop ALL",
        "adds capabilities",
        "readOnlyRootFilesystem",
        "seccompProfile",
        "no requests.cpu",
        "no limits.memory",
        "not pinned",
    ]:
        assert expected in problems
    assert not _image_pinned("ghcr.io/example/app") and _image_pinned("a/b@sha256:00")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_is_written_into_a_manifest(overlay: str) -> None:
    secret_like = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY", re.IGNORECASE)
    leaks = []
    for doc in _render(overlay):
        for where, pod in _pod_specs(doc):
            for container in pod["containers"]:
                for env in container.get("env", []):
                    if secret_like.search(env["name"]) and "value" in env:
                        leaks.append(f"{where}/{container['name']}: {env['name']}")
    assert not leaks, leaks


# --- the services ----------------------------------------------------------------------


def test_prefect_worker_is_least_privilege() -> None:
    docs = _render("dev")
    worker = _named(docs, "Deployment", "prefect-worker")["spec"]["template"]["spec"]
    container = worker["containers"][0]
    command = " ".join(container["command"] + container["args"])
    assert "prefect worker start --pool k8s-pool --type kubernetes" in command
    env = {e["name"]: e for e in container["env"]}
    for name, key in [("PREFECT_API_URL", "api-url"), ("PREFECT_API_KEY", "api-key")]:
        reference = env[name]["valueFrom"]["secretKeyRef"]
        assert (reference["name"], reference["key"]) == ("prefect-api", key)
    assert worker["serviceAccountName"] == "prefect-worker"
    role = _named(docs, "Role", "prefect-worker")
    granted = {
        (resource, verb)
        for rule in role["rules"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    assert {
        ("jobs", "create"),
        ("jobs", "watch"),
        ("pods", "watch"),
        ("pods/log", "get"),
    } <= (granted)
    assert ("events", "list") in granted
    assert not {r for r, _ in granted} & {
        "secrets",
        "configmaps",
        "roles",
        "rolebindings",
    }
    binding = _named(docs, "RoleBinding", "prefect-worker")
    assert binding["roleRef"]["name"] == "prefect-worker"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prefect-worker", "namespace": "mlops"}
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_cluster_scales_gpu_workers_from_zero(overlay: str) -> None:
    docs = _render(overlay)
    ray = _named(docs, "RayCluster", "mlops-ray")["spec"]
    assert ray["enableInTreeAutoscaling"] is True
    gpu = next(g for g in ray["workerGroupSpecs"] if g["groupName"] == "gpu")
    pod = gpu["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    assert gpu["minReplicas"] == 0
    assert gpu["maxReplicas"] == (1 if overlay == "dev" else 8)
    assert {
        "key": "nvidia.com/gpu",
        "operator": "Exists",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    assert pod["nodeSelector"] == {"mlops.example.com/node-pool": "gpu"}
    assert "cuda" in pod["containers"][0]["image"]


def test_ray_address_reaches_the_head_service() -> None:
    docs = _render("dev")
    endpoints = _named(docs, "ConfigMap", "pipeline-endpoints")["data"]
    match = re.fullmatch(r"ray://([a-z0-9-]+):(\d+)", endpoints["RAY_ADDRESS"])
    assert match, endpoints["RAY_ADDRESS"]
    service = _named(docs, "Service", match[1])
    assert int(match[2]) in {p["port"] for p in service["spec"]["ports"]}
    head = {"ray.io/cluster": "mlops-ray", "ray.io/node-type": "head"}
    assert service["spec"]["selector"] == head
    assert endpoints["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    _named(docs, "Service", "mlflow")
    host, port = endpoints["PROMETHEUS_PUSHGATEWAY"].split(":")
    assert int(port) in {
        p["port"] for p in _named(docs, "Service", host)["spec"]["ports"]
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_serves_s3_artifacts_from_postgres_with_irsa(overlay: str) -> None:
    docs = _render(overlay)
    deployment = _named(docs, "Deployment", "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert container["command"] == ["mlflow", "server"] and "--serve-artifacts" in args
    env = {e["name"]: e for e in container["env"]}
    config_name = env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["configMapKeyRef"][
        "name"
    ]
    config = _named(docs, "ConfigMap", config_name)["data"]
    assert args[args.index("--backend-store-uri") + 1] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert config["backend-store-uri"].startswith("postgresql://mlflow@")
    assert ":" not in config["backend-store-uri"].split("@")[0].removeprefix(
        "postgresql://"
    )
    assert config["artifacts-destination"] == f"s3://mlops-{overlay}-artifacts/mlflow"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    statefulsets = {d["metadata"]["name"] for d in docs if d["kind"] == "StatefulSet"}
    if overlay == "prod":
        assert "sslmode=require" in config["backend-store-uri"] and not statefulsets
        assert deployment["spec"]["replicas"] == 2
    else:
        assert "@postgres:5432/" in config["backend-store-uri"] and statefulsets == {
            "postgres"
        }
        postgres = _named(docs, "StatefulSet", "postgres")["spec"]["template"]["spec"]
        env = {e["name"]: e for e in postgres["containers"][0]["env"]}
        assert (
            env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
        )
    for account in ("mlflow", "ray", "prefect-flow-run"):
        annotations = _named(docs, "ServiceAccount", account)["metadata"]["annotations"]
        arn = annotations["eks.amazonaws.com/role-arn"]
        assert re.fullmatch(
            rf"arn:aws:iam::\d{{12}}:role/mlops-{overlay}-{account}", arn
        ), arn
    assert pod["serviceAccountName"] == "mlflow"


def test_evidently_ui_serves_a_persistent_workspace() -> None:
    docs = _render("dev")
    pod = _named(docs, "Deployment", "evidently-ui")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] + container["args"] == [
        "evidently", "ui", "--workspace", "/workspace", "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts["/workspace"])
    _named(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    _named(docs, "Service", "evidently-ui")


# --- the model service -----------------------------------------------------------------


def _serve(overlay: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The rendered serve Deployment, its pod spec and its one container."""
    deployment = _named(_render(overlay), "Deployment", "serve")
    pod = deployment["spec"]["template"]["spec"]
    return deployment, pod, pod["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_runs_the_cli_on_the_project_image(overlay: str) -> None:
    docs = _render(overlay)
    _, pod, container = _serve(overlay)
    assert container["args"] == [
        "python", "-m", "components", "serve", "--host", "0.0.0.0", "--port", "8000",
    ]  # fmt: skip
    assert "command" not in container  # the image has no ENTRYPOINT: args replace CMD
    worker = _named(docs, "Deployment", "prefect-worker")["spec"]["template"]["spec"]
    assert container["image"] == worker["containers"][0]["image"]  # the overlay's tag
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    env = {e["name"]: e for e in container["env"]}
    reference = env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]
    endpoints = _named(docs, "ConfigMap", reference["name"])["data"]
    assert endpoints[reference["key"]] == "http://mlflow:5000"
    # The prediction log goes to this environment's bucket, the prefix its role may write.
    log = env["SERVE_LOG"]["valueFrom"]["configMapKeyRef"]
    assert endpoints[log["key"]] == f"s3://mlops-{overlay}-inference-log/serving-log"
    # Every uvicorn worker's metric files: a writable emptyDir (the root is read-only).
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env["PROMETHEUS_MULTIPROC_DIR"]["value"] == "/tmp/prometheus"
    for path in ("/tmp/prometheus", "/tmp"):
        assert "emptyDir" in volumes[mounts[path]], path
    assert pod["serviceAccountName"] == "serve"
    account = _named(docs, "ServiceAccount", "serve")
    arn = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(rf"arn:aws:iam::\d{{12}}:role/mlops-{overlay}-serve", arn), arn
    assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_gets_traffic_only_when_ready_and_drains_on_shutdown(
    overlay: str,
) -> None:
    deployment, pod, container = _serve(overlay)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    probes = {
        kind: (probe["httpGet"]["path"], ports[probe["httpGet"]["port"]])
        for kind in ("startup", "readiness", "liveness")
        for probe in [container[f"{kind}Probe"]]
    }
    assert probes == {
        "startup": ("/health", 8000),
        "readiness": ("/ready", 8000),
        "liveness": ("/health", 8000),
    }
    # A busy pod answers /health late: several misses in a row before a restart.
    liveness = container["livenessProbe"]
    assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 30
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    # The Service drops the pod during the preStop sleep; then uvicorn's graceful
    # shutdown (30 s at most, components/serve) and the prediction log's last flush.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5 and pod["terminationGracePeriodSeconds"] >= pre_stop + 30 + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_service_disruption_budget_and_spread(overlay: str) -> None:
    docs = _render(overlay)
    deployment, pod, _ = _serve(overlay)
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= labels.items()

    service = _named(docs, "Service", "serve")["spec"]
    assert selects(service["selector"])
    assert service["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    budget = _named(docs, "PodDisruptionBudget", "serve")["spec"]
    assert selects(budget["selector"]["matchLabels"])
    # A drain may always evict one pod (minAvailable: 1 would block it at one replica).
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    nodes = spread["kubernetes.io/hostname"]
    assert (nodes["maxSkew"], nodes["whenUnsatisfiable"]) == (1, "DoNotSchedule")
    assert nodes["nodeTaintsPolicy"] == "Honor"  # empty GPU nodes do not count
    assert selects(nodes["labelSelector"]["matchLabels"])
    assert selects(
        spread["topology.kubernetes.io/zone"]["labelSelector"]["matchLabels"]
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_scales_on_cpu_and_in_prod_on_the_request_rate(overlay: str) -> None:
    hpa = _named(_render(overlay), "HorizontalPodAutoscaler", "serve")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "serve",
    }
    expected = (1, 2) if overlay == "dev" else (3, 12)
    assert (spec["minReplicas"], spec["maxReplicas"]) == expected
    metrics = {metric["type"]: metric for metric in spec["metrics"]}
    cpu = metrics["Resource"]["resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    assert 0 < cpu["target"]["averageUtilization"] <= 80
    # Utilisation is of the request; equal to the limit, it is of what a pod may use.
    resources = _serve(overlay)[2]["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    if overlay == "prod":
        pods = metrics["Pods"]["pods"]
        assert pods["metric"]["name"] == "mlops_serve_requests_per_second"
        assert pods["target"]["type"] == "AverageValue"
    else:
        assert set(metrics) == {"Resource"}, "dev has no Prometheus adapter"


def test_the_adapter_rule_serves_the_metric_the_hpa_reads() -> None:
    patch = yaml.safe_load((ADAPTER / "hpa-requests-per-second.yaml").read_text())
    assert [op["path"] for op in patch] == ["/spec/metrics/-"]
    metric = patch[0]["value"]["pods"]["metric"]["name"]
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    rule = next(rule for rule in rules if rule["name"]["as"] == metric)
    assert re.fullmatch(rule["name"]["matches"], "mlops_serve_requests_total")
    assert metric_names(rule["seriesQuery"]) == {"mlops_serve_requests_total"}
    assert 'job="serve"' in rule["seriesQuery"]
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    query = rule["metricsQuery"]
    assert query.startswith("sum by (<<.GroupBy>>)")
    assert "rate(<<.Series>>{<<.LabelMatchers>>" in query
    assert 'endpoint="/predict"' in query  # predictions, not probes or scrapes


def test_serve_pods_are_scraped_as_job_serve() -> None:
    docs = _render("prod")
    monitor = _named(docs, "ServiceMonitor", "serve")["spec"]
    service = _named(docs, "Service", "serve")
    assert monitor["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items()
    )
    endpoint = monitor["endpoints"][0]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # The operator labels every target with `endpoint` (the port's name): without
    # honorLabels the service's own `endpoint` (the route) becomes exported_endpoint.
    assert endpoint["honorLabels"] is True
    # No jobLabel: the job is the Service's name, which the rules and dashboard select.
    assert "jobLabel" not in monitor and service["metadata"]["name"] == "serve"


# --- alert rules -----------------------------------------------------------------------

RULE_CASES = [(RULES, RULE_TESTS, 5), (SERVE_RULES, SERVE_RULE_TESTS, 11)]
# (rules, their tests, a threshold, where it moves to, the alert that notices)
THRESHOLD_MOVES = [
    (RULES, RULE_TESTS, "> 93600", "> 99999", "DriftMonitorStale"),
    (SERVE_RULES, SERVE_RULE_TESTS, "> 0.05", "> 0.1", "ServeHighLatency"),
    (SERVE_RULES, SERVE_RULE_TESTS, "> 0.02", "> 0.05", "ServeHighErrorRate"),
]


def _rules(path: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())["groups"][0]["rules"]


@pytest.mark.parametrize(
    ("rules", "tests", "count"), RULE_CASES, ids=["drift", "serve"]
)
def test_promtool_accepts_the_rules(rules: Path, tests: Path, count: int) -> None:
    result = _promtool("check", "rules", rules.name, cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {count} rules found" in result.stdout


@pytest.mark.parametrize(
    ("rules", "tests", "count"), RULE_CASES, ids=["drift", "serve"]
)
def test_promtool_rule_unit_tests_pass(rules: Path, tests: Path, count: int) -> None:
    result = _promtool("test", "rules", tests.name, cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("rules", "threshold", "alert"),
    [
        (RULES, "> 93600", "DriftMonitorStale"),
        (SERVE_RULES, "> 0.05", "ServeHighLatency"),
    ],
    ids=["drift", "serve"],
)
def test_promtool_rejects_a_broken_rule_file(
    tmp_path: Path, rules: Path, threshold: str, alert: str
) -> None:
    (tmp_path / rules.name).write_text(rules.read_text().replace(threshold, "> "))
    result = _promtool("check", "rules", rules.name, cwd=tmp_path)
    assert result.returncode != 0
    assert alert in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("rules", "tests", "threshold", "moved", "alert"),
    THRESHOLD_MOVES,
    ids=[case[-1] for case in THRESHOLD_MOVES],
)
def test_rule_unit_tests_fail_when_a_threshold_moves(
    tmp_path: Path, rules: Path, tests: Path, threshold: str, moved: str, alert: str
) -> None:
    assert rules.read_text().count(threshold) == 1
    (tmp_path / rules.name).write_text(rules.read_text().replace(threshold, moved))
    shutil.copy(tests, tmp_path / tests.name)
    result = _promtool("test", "rules", tests.name, cwd=tmp_path)
    assert result.returncode != 0 and alert in result.stdout + result.stderr


def test_rules_cover_the_drift_alerts_and_read_only_drift_metrics() -> None:
    rules = _rules(RULES)
    by_name = {rule["alert"]: rule for rule in rules}
    assert {"DriftDetected", "HighDriftShare", "DriftMonitorStale"} <= set(by_name)
    assert "93600" in by_name["DriftMonitorStale"]["expr"]
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= DRIFT_METRICS, (rule["alert"], names)
        assert 'job="drift-monitor"' in rule["expr"], rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}


def _selectors_without(job: str, expr: str) -> list[str]:
    """The pipeline metrics an expression reads without that job matcher."""
    return [
        match[0]
        for match in re.finditer(r"\bmlops_\w+(\{[^}]*\})?", expr)
        if job not in (match[1] or "")
    ]


def test_serve_rules_cover_the_alerts_and_read_only_serve_metrics() -> None:
    rules = _rules(SERVE_RULES)
    by_name = {rule["alert"]: rule for rule in rules}
    assert {
        "ServeHighErrorRate",
        "ServeHighClientErrorRate",
        "ServeHighLatency",
        "ServeLowConfidence",
        "ServeConfidenceDrop",
        "ServeNotReady",
        "ServeDown",
        "ServeLogFlushFailing",
        "ServeLogRecordsDropped",
    } <= set(by_name)
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names and names <= SERVE_METRICS, (rule["alert"], names - SERVE_METRICS)
        assert not _selectors_without('job="serve"', rule["expr"]), rule["alert"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
    assert 'status=~"5.."' in by_name["ServeHighErrorRate"]["expr"]
    assert 'status=~"4.."' in by_name["ServeHighClientErrorRate"]["expr"]
    latency = by_name["ServeHighLatency"]["expr"]
    assert latency.startswith("histogram_quantile(0.99,")
    assert metric_names(latency) == {"mlops_serve_request_seconds_bucket"}
    # The objective lives in params.yaml; the rule holds the same figure in seconds.
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    threshold = float(re.search(r">\s*([\d.]+)$", latency)[1])
    assert threshold == params["serve"]["p99_objective_ms"] / 1000
    for name in ("ServeLowConfidence", "ServeConfidenceDrop"):
        assert metric_names(by_name[name]["expr"]) == {
            "mlops_serve_confidence_sum",
            "mlops_serve_confidence_count",
        }
    assert "offset 1d" in by_name["ServeConfidenceDrop"]["expr"]
    assert by_name["ServeDown"]["expr"].startswith("absent(")


def test_every_serve_alert_has_a_test_that_fires_and_one_that_stays_quiet() -> None:
    alerts = {rule["alert"] for rule in _rules(SERVE_RULES)}
    fires, quiet = set(), set()
    for case in yaml.safe_load(SERVE_RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fires == alerts, alerts - fires
    assert quiet == alerts, alerts - quiet


@pytest.mark.parametrize("rules", list(RULE_FILES), ids=["drift", "serve"])
def test_prometheus_rule_holds_the_same_groups_as_the_plain_file(rules: Path) -> None:
    name = RULE_FILES[rules]
    resource = next(
        doc for doc in _load_all(PROMETHEUS_RULE) if doc["metadata"]["name"] == name
    )
    assert resource["spec"] == yaml.safe_load(rules.read_text()), (
        f"PrometheusRule {name} differs from {rules.name}: copy the groups over"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rules_and_dashboard_configmaps_carry_the_files(overlay: str) -> None:
    docs = _render(overlay)
    for name, path in [
        ("prometheus-drift-rules", RULES),
        ("prometheus-serve-rules", SERVE_RULES),
    ]:
        rules = _named(docs, "ConfigMap", name)
        assert rules["data"] == {path.name: path.read_text()}
        assert rules["metadata"]["labels"]["prometheus_rule"] == "1"
    dashboard = _named(docs, "ConfigMap", "grafana-dashboard-mlops-drift")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"] == {DASHBOARD.name: DASHBOARD.read_text()}


def test_metric_name_extraction() -> None:
    expr = 'sum by (model) (rate(foo_total{job="x", a=~"$m"}[5m])) / on(model) bar > bool 1'
    assert metric_names(expr) == {"foo_total", "bar"}
    assert metric_names("time() - max(mlops_x offset 1h)") == {"mlops_x"}
    assert _selectors_without('job="serve"', 'mlops_a{job="serve"} / mlops_b') == [
        "mlops_b"
    ]


# --- dashboard -------------------------------------------------------------------------


def _panels() -> list[dict[str, Any]]:
    """The dashboard's panels, without its rows."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [panel for panel in panels if panel["type"] != "row"]


def _exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel["targets"]]


def test_dashboard_panels_read_only_the_pipelines_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    every_metric = set()
    for panel in _panels():
        assert _exprs(panel), f"panel {panel['title']!r} has no query"
        for expr in _exprs(panel):
            names = metric_names(expr)
            every_metric |= names
            drift = names <= DRIFT_METRICS
            assert names and (drift or names <= SERVE_METRICS), (panel["title"], names)
            job = 'job="drift-monitor"' if drift else 'job="serve"'
            assert not _selectors_without(job, expr), (panel["title"], expr)
    assert every_metric >= DRIFT_METRICS
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric = re.match(r"label_values\((\w+)", variable["query"]["query"])
            assert metric and metric[1] in DRIFT_METRICS, variable["name"]


def test_dashboard_shows_the_drift_views_asked_for() -> None:
    panels = _panels()
    timeseries = {p["title"]: p for p in panels if p["type"] == "timeseries"}
    share = next(p for t, p in timeseries.items() if "Share" in t)
    assert "mlops_drift_share" in share["targets"][0]["expr"]
    per_feature = next(
        p for p in timeseries.values() if "feature_score" in p["targets"][0]["expr"]
    )
    assert per_feature["targets"][0]["legendFormat"] == "{{feature}}"
    since = next(p for p in panels if "last_run_timestamp" in p["targets"][0]["expr"])
    assert since["targets"][0]["expr"].startswith("time() -")
    assert since["fieldConfig"]["defaults"]["unit"] == "s"


def test_dashboard_shows_the_serving_views_on_call_needs() -> None:
    panels = _panels()

    def panel_with(*fragments: str, kind: str = "timeseries") -> dict[str, Any]:
        found = [
            panel
            for panel in panels
            if panel["type"] == kind
            and any(all(f in expr for f in fragments) for expr in _exprs(panel))
        ]
        assert found, (kind, fragments)
        return found[0]

    requests = panel_with("sum by (status) (rate(mlops_serve_requests_total")
    assert requests["targets"][0]["legendFormat"] == "{{status}}"
    latency = panel_with(
        "histogram_quantile(0.5,", "mlops_serve_request_seconds_bucket"
    )
    quantiles = {
        re.match(r"histogram_quantile\(([\d.]+),", e)[1] for e in _exprs(latency)
    }
    assert quantiles == {"0.5", "0.99"}
    errors = panel_with('status=~"5.."')
    assert any('status=~"4.."' in e for e in _exprs(errors))
    panel_with("sum by (kind) (rate(mlops_serve_errors_total")
    classes = panel_with("sum by (label) (rate(mlops_serve_predictions_total")
    assert classes["targets"][0]["legendFormat"] == "{{label}}"
    version = panel_with("by (alias) (mlops_serve_model_version", kind="stat")
    assert version["targets"][0]["legendFormat"] == "{{alias}}"
    # Canary: the champion and the challenger side by side, rate and confidence.
    rate = panel_with("sum by (alias) (rate(mlops_serve_predictions_total")
    confidence = panel_with(
        "sum by (alias) (rate(mlops_serve_confidence_sum",
        "/ sum by (alias) (rate(mlops_serve_confidence_count",
    )
    for panel in (rate, confidence):
        assert panel["targets"][0]["legendFormat"] == "{{alias}}"
    assert rate["gridPos"]["y"] == confidence["gridPos"]["y"]
    assert rate["gridPos"]["x"] + rate["gridPos"]["w"] == confidence["gridPos"]["x"]
    # The p99 stat turns red where ServeHighLatency fires.
    p99 = next(p for p in panels if p["type"] == "stat" and "p99" in p["title"])
    steps = p99["fieldConfig"]["defaults"]["thresholds"]["steps"]
    alert = next(r for r in _rules(SERVE_RULES) if r["alert"] == "ServeHighLatency")
    assert steps[-1]["value"] == float(alert["expr"].rsplit(">", 1)[1])


def test_dashboard_layout_keeps_the_drift_panels_without_overlaps() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids) and set(range(1, 10)) <= set(ids)
    taken: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, (panel["title"], taken.get((x, y)))
                taken[(x, y)] = panel["title"]
