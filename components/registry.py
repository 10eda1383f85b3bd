"""promote and rollback at the edge: evidence in, the pure decision (promotion.py) applied to
the MLflow registry, every step recorded.

- Every evaluated candidate becomes a registry version, tagged with the decision and reasons.
- Promotion moves the `champion` alias; the old champion keeps a `previous` alias.
- The alias move is a compare-and-set under a registry-wide lock: the lock is a registered
  model named `<model>.promotion-lock`, which the server creates atomically or refuses
  (RESOURCE_ALREADY_EXISTS), so it holds across machines. Inside it the champion is read again;
  if another promotion moved it since this gate read it, this one is rejected. Of two racing
  promotions judged against the same champion, exactly one wins.
- Any registry error raises RegistryError before the champion moves: the gate fails closed.
- The ledger (promote.ledger) gets one JSON line per decision and per rollback.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.config import PromoteConfig
from components.io import read_json, sha256_file, write_json
from components.ledger import actor, append_ledger
from components.promotion import Decision, Evidence, Metric, decide
from components.registry_aliases import (
    CHALLENGER,
    CHAMPION,
    MODEL_ARTIFACTS,
    ONNX_SHA256_TAG,
    PREVIOUS,
    alias_version,
)
from components.spec import LINEAGE_FILE, ONNX_FILE
from components.tracking import tracking_uri

EVALUATION_ARTIFACTS = "evaluation"  # where evaluate logs its files on the training run


class RegistryError(RuntimeError):
    """The registry is unreachable or refused an operation; the champion did not move."""


@dataclass(frozen=True)
class PromotionResult:
    decision: str  # "promoted" | "rejected"
    reasons: list[str]
    champion_before: str | None
    champion_after: str | None
    candidate_version: str | None
    run_id: str
    comparison: dict[str, Any] | None = None


def promote(
    cfg: PromoteConfig,
    *,
    evaluation_dir: Path,
    shipped_dir: Path,
    report_path: Path,
    dry_run: bool = False,
) -> PromotionResult:
    """Judge the evaluated shipped variant against the champion and apply the decision
    (with `dry_run`, as a pull request's check does: decide and report, change nothing)."""
    candidate = read_evidence(evaluation_dir)
    lineage = read_json(shipped_dir / LINEAGE_FILE)
    run_id = lineage.get("mlflow_run_id")
    if not run_id:
        raise RegistryError(f"{shipped_dir / LINEAGE_FILE}: no MLflow run to register")
    with _registry_errors():
        client = MlflowClient(tracking_uri())
        before = alias_version(client, cfg.model_name, CHAMPION)
        champion = _champion_evidence(client, cfg.model_name, before)
        decision = decide(candidate, champion, cfg)
        version, after = None, before
        if not dry_run:
            version = _register(client, cfg.model_name, run_id, lineage,
                                sha256_file(shipped_dir / ONNX_FILE))  # fmt: skip
            after, decision = _apply(client, cfg, version, before, decision)
            _tag_decision(client, cfg.model_name, version, decision, before)
    verdict = "promoted" if decision.promote else "rejected"
    result = PromotionResult(
        decision=f"would be {verdict}" if dry_run else verdict,
        reasons=decision.reasons,
        champion_before=before,
        champion_after=after,
        candidate_version=version,
        run_id=run_id,
        comparison=asdict(decision.comparison) if decision.comparison else None,
    )
    if not dry_run:
        append_ledger(cfg.ledger, {"action": result.decision,
                                         "model": cfg.model_name, **asdict(result),
                                         "lineage": lineage})  # fmt: skip
    write_json(report_path, asdict(result))
    return result


def rollback(cfg: PromoteConfig, *, to_version: str | None = None) -> PromotionResult:
    """Move `champion` back to `previous` (or `to_version`); the demoted version becomes
    `previous`, so a second rollback undoes the first."""
    with _registry_errors(), registry_lock(MlflowClient(tracking_uri()), cfg) as client:
        current = alias_version(client, cfg.model_name, CHAMPION)
        target = to_version or alias_version(client, cfg.model_name, PREVIOUS)
        if current is None or target is None:
            raise RegistryError(
                f"{cfg.model_name}: nothing to roll back (champion {current}, "
                f"target {target})"
            )
        client.get_model_version(cfg.model_name, target)  # exists, or raises
        client.set_registered_model_alias(cfg.model_name, CHAMPION, target)
        client.set_registered_model_alias(cfg.model_name, PREVIOUS, current)
        client.set_model_version_tag(cfg.model_name, current, "promotion.rolled_back",
                                     _now())  # fmt: skip
        run_id = client.get_model_version(cfg.model_name, target).run_id or ""
    result = PromotionResult(
        decision="rolled_back",
        reasons=[f"champion moved back from version {current} to {target}"],
        champion_before=current,
        champion_after=target,
        candidate_version=target,
        run_id=run_id,
    )
    append_ledger(cfg.ledger, {"action": "rollback", "model": cfg.model_name,
                                     **asdict(result)})  # fmt: skip
    return result


def read_evidence(evaluation_dir: Path) -> Evidence:
    """Evidence from evaluate's files (metrics.json, slices.json, predictions.parquet), as
    evaluate writes them now and as it did before segmentation (a champion registered then):
    no "task" (classification), slices' "accuracy" for "score", predictions' bool "correct"
    for the float "quality"."""
    metrics = read_json(evaluation_dir / "metrics.json")
    slices = read_json(evaluation_dir / "slices.json")
    predictions = pd.read_parquet(evaluation_dir / "predictions.parquet")
    task = metrics.get("task", "classification")
    if task not in _TASK_METRICS:
        raise ValueError(f"{evaluation_dir / 'metrics.json'}: unknown task {task!r}")
    metric, headline = _TASK_METRICS[task]
    quality = predictions["quality" if "quality" in predictions else "correct"]
    return Evidence(
        score=float(metrics[headline]),
        slices={
            name: (
                float(entry["score" if "score" in entry else "accuracy"]),
                int(entry["count"]),
            )
            for name, entry in slices.items()
        },
        items=dict(
            zip(
                predictions["sha256"].astype(str).tolist(),
                quality.astype(float).tolist(),
                strict=True,
            )
        ),
        metric=metric,
        per_class={
            key.removeprefix("iou_"): float(value)
            for key, value in metrics.items()
            if metric == "miou" and key.startswith("iou_")
        },
    )


# evaluate's metrics.json "task" -> (the metric the gate judges, its headline key)
_TASK_METRICS: dict[str, tuple[Metric, str]] = {
    "classification": ("accuracy", "test_accuracy"),
    "segmentation": ("miou", "test_miou"),
}


@contextmanager
def registry_lock(client: MlflowClient, cfg: PromoteConfig) -> Iterator[MlflowClient]:
    """Hold the registry-wide promotion lock (see the module docstring)."""
    name = f"{cfg.model_name}.promotion-lock"
    deadline = time.monotonic() + cfg.lock_timeout_s
    while True:
        try:
            client.create_registered_model(name, description=f"held by {actor()}")
            break
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        _break_if_stale(client, name, cfg.lock_stale_s)
        if time.monotonic() > deadline:
            raise RegistryError(
                f"{name}: another promotion has held the lock for over "
                f"{cfg.lock_timeout_s} s"
            )
        time.sleep(0.2)
    try:
        yield client
    finally:
        client.delete_registered_model(name)


def _break_if_stale(client: MlflowClient, name: str, stale_s: float) -> None:
    try:
        held_since = client.get_registered_model(name).creation_timestamp or 0
    except MlflowException:
        return  # released meanwhile
    if time.time() - held_since / 1000 > stale_s:
        client.delete_registered_model(name)


def _apply(
    client: MlflowClient,
    cfg: PromoteConfig,
    version: str,
    before: str | None,
    decision: Decision,
) -> tuple[str | None, Decision]:
    """Compare-and-set the champion alias; returns the champion after and the decision
    (turned into a rejection when another promotion moved the champion meanwhile)."""
    if not decision.promote:
        if decision.challenger:
            client.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
        return before, decision
    with registry_lock(client, cfg):
        now = alias_version(client, cfg.model_name, CHAMPION)
        if now != before:
            lost = (
                f"the champion moved from {before} to {now} while this gate ran "
                "(a concurrent promotion won); re-run the gate against the new champion"
            )
            return now, Decision(False, [lost], decision.comparison)
        if before is not None:
            client.set_registered_model_alias(cfg.model_name, PREVIOUS, before)
        client.set_registered_model_alias(cfg.model_name, CHAMPION, version)
        if alias_version(client, cfg.model_name, CHALLENGER) is not None:
            # The canary compared the old champion with a candidate; both are gone.
            client.delete_registered_model_alias(cfg.model_name, CHALLENGER)
    return version, decision


def _register(
    client: MlflowClient, name: str, run_id: str, lineage: dict[str, Any],
    onnx_sha256: str,
) -> str:  # fmt: skip
    try:
        client.create_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    tags = {f"lineage.{k}": str(v) for k, v in lineage.items()}
    tags[ONNX_SHA256_TAG] = onnx_sha256
    version = client.create_model_version(
        name, source=f"runs:/{run_id}/{MODEL_ARTIFACTS}", run_id=run_id, tags=tags
    )
    return str(version.version)


def _tag_decision(client: MlflowClient, name: str, version: str, decision: Decision,
                  before: str | None) -> None:  # fmt: skip
    tags = {
        "promotion.decision": "promoted" if decision.promote else "rejected",
        "promotion.reasons": json.dumps(decision.reasons),
        "promotion.champion_before": str(before),
        "promotion.decided_at": _now(),
        "promotion.actor": actor(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _champion_evidence(
    client: MlflowClient, name: str, version: str | None
) -> Evidence | None:
    if version is None:
        return None
    run_id = client.get_model_version(name, version).run_id
    with tempfile.TemporaryDirectory() as scratch:
        folder = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=EVALUATION_ARTIFACTS, dst_path=scratch,
            tracking_uri=tracking_uri(),
        )  # fmt: skip
        return read_evidence(Path(folder))


@contextmanager
def _registry_errors() -> Iterator[None]:
    try:
        yield
    except RegistryError:
        raise
    except Exception as error:  # connection refused, HTTP 5xx, auth: all fail closed
        raise RegistryError(f"registry error, nothing promoted: {error}") from error


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
