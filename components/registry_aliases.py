"""The registry's names shared by the promotion gate (writes them) and the service (reads
them), where the registry is, and the one read both do: which version an alias points at.
Light on purpose: the serving process imports it, and neither torch nor Ray."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION, PREVIOUS = "champion", "previous"
# A candidate that passed the floors without being promoted: the service's canary serves it.
CHALLENGER = "challenger"
# The shipped model.onnx's sha256, recorded when the version is registered; the service
# refuses a download that does not match it.
ONNX_SHA256_TAG = "model.onnx_sha256"
MODEL_ARTIFACTS = "compression"  # where compress logs the shipped variant on the run


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version at `alias`, or None when the model or the alias does not exist."""
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def tracking_uri() -> str:
    """MLflow's URI with a relative SQLite path made absolute (other processes, other cwd)."""
    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri
