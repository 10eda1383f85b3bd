"""promote and rollback against a real MLflow server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import mlflow
import pandas as pd
import pytest

import components.registry as registry
from components.config import PromoteConfig
from components.promotion import compare
from components.registry import RegistryError, promote, read_evidence, rollback
from components.registry_aliases import ONNX_SHA256_TAG
from tests.registered import log_candidate as _candidate

pytestmark = pytest.mark.slow


@pytest.fixture
def gate(mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("registry-tests")
    cfg = PromoteConfig(model_name=f"m-{tmp_path.name}", min_accuracy=0.8,
                        min_slice_accuracy=0.5, min_slice_items=5, alpha=0.05,
                        min_paired_items=20, ledger=str(tmp_path / "ledger.jsonl"),
                        lock_timeout_s=30)  # fmt: skip
    yield cfg
    mlflow.set_tracking_uri(None)


def _promote(cfg: PromoteConfig, root: Path, name: str, errors: int):
    evaluation, shipped = _candidate(root, name, errors)
    return promote(cfg, evaluation_dir=evaluation, shipped_dir=shipped,
                   report_path=root / name / "promotion.json")  # fmt: skip


def _ledger(cfg: PromoteConfig) -> list[dict]:
    return [json.loads(line) for line in Path(cfg.ledger).read_text().splitlines()]


def test_promote_reject_and_rollback(gate: PromoteConfig, tmp_path: Path) -> None:
    client = mlflow.MlflowClient()
    first = _promote(gate, tmp_path, "first", errors=2)
    assert (first.decision, first.champion_before, first.champion_after) == (
        "promoted", None, first.candidate_version)  # fmt: skip
    report = json.loads((tmp_path / "first" / "promotion.json").read_text())
    assert report["decision"] == "promoted" and report["reasons"]
    registered = client.get_model_version(gate.model_name, first.candidate_version)
    shipped = (tmp_path / "first" / "compressed" / "model.onnx").read_bytes()
    assert registered.tags[ONNX_SHA256_TAG] == hashlib.sha256(shipped).hexdigest()

    evaluation, shipped = _candidate(tmp_path, "dry", errors=12)
    versions = len(client.search_model_versions(f"name='{gate.model_name}'"))
    dry = promote(gate, evaluation_dir=evaluation, shipped_dir=shipped,
                  report_path=tmp_path / "dry.json", dry_run=True)  # fmt: skip
    assert dry.decision == "would be rejected" and dry.candidate_version is None
    assert len(client.search_model_versions(f"name='{gate.model_name}'")) == versions
    assert len(_ledger(gate)) == 1  # a dry run records nothing

    worse = _promote(gate, tmp_path, "worse", errors=12)  # 0.8 accuracy, 10 more wrong
    assert worse.decision == "rejected"
    assert any("significantly worse" in reason for reason in worse.reasons)
    assert worse.champion_after == first.candidate_version
    tags = client.get_model_version(gate.model_name, worse.candidate_version).tags
    assert tags["promotion.decision"] == "rejected"
    assert "significantly worse" in tags["promotion.reasons"]

    improve = gate.model_copy(update={"require_improvement": True})
    same = _promote(improve, tmp_path, "same", errors=2)  # no worse, not better
    assert same.decision == "rejected"
    challenger = client.get_model_version_by_alias(gate.model_name, "challenger")
    assert challenger.version == same.candidate_version

    second = _promote(gate, tmp_path, "second", errors=2)
    assert second.decision == "promoted"
    with pytest.raises(mlflow.exceptions.MlflowException):  # promotion ends the canary
        client.get_model_version_by_alias(gate.model_name, "challenger")
    champion = client.get_model_version_by_alias(gate.model_name, "champion")
    previous = client.get_model_version_by_alias(gate.model_name, "previous")
    assert (champion.version, previous.version) == (second.candidate_version,
                                                    first.candidate_version)  # fmt: skip

    back = rollback(gate)
    assert (back.champion_before, back.champion_after) == (
        second.candidate_version, first.candidate_version)  # fmt: skip
    champion = client.get_model_version_by_alias(gate.model_name, "champion")
    assert champion.version == first.candidate_version

    actions = [entry["action"] for entry in _ledger(gate)]
    assert actions == ["promoted", "rejected", "rejected", "promoted", "rollback"]
    assert all(entry["actor"] and entry["time"] for entry in _ledger(gate))


def test_registry_down_fails_closed(
    gate: PromoteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation, shipped = _candidate(tmp_path, "candidate", errors=1)
    from tests.servers import free_port

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    mlflow.set_tracking_uri(dead)
    report = tmp_path / "promotion.json"
    with pytest.raises(RegistryError, match="nothing promoted"):
        promote(
            gate, evaluation_dir=evaluation, shipped_dir=shipped, report_path=report
        )
    assert not report.exists() and not Path(gate.ledger).exists()


def test_two_racing_promotions_one_wins(
    gate: PromoteConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _promote(gate, tmp_path, "base", errors=2)
    # Both gates read the same champion and decide before either moves the alias.
    barrier = threading.Barrier(2, timeout=60)
    real_decide = registry.decide

    def decide_together(*args, **kwargs):
        decision = real_decide(*args, **kwargs)
        barrier.wait()
        return decision

    monkeypatch.setattr(registry, "decide", decide_together)
    candidates = [_candidate(tmp_path, f"racer-{i}", errors=2) for i in range(2)]
    results: list = [None, None]

    def run(index: int) -> None:
        evaluation, shipped = candidates[index]
        results[index] = promote(gate, evaluation_dir=evaluation, shipped_dir=shipped,
                                 report_path=tmp_path / f"race-{index}.json")  # fmt: skip

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    decisions = sorted(result.decision for result in results)
    assert decisions == ["promoted", "rejected"]
    winner = next(r for r in results if r.decision == "promoted")
    loser = next(r for r in results if r.decision == "rejected")
    assert "concurrent promotion won" in loser.reasons[0]
    champion = mlflow.MlflowClient().get_model_version_by_alias(
        gate.model_name, "champion"
    )
    assert champion.version == winner.candidate_version


def test_read_evidence_reads_both_tasks_and_the_old_files(tmp_path: Path) -> None:
    """evaluate's files now (a task, "score" slices, float "quality") and before
    segmentation (a champion registered then: no task, "accuracy", bool "correct")."""
    old, seg, cls = tmp_path / "old", tmp_path / "seg", tmp_path / "cls"
    for folder in (old, seg, cls):
        folder.mkdir()
    (old / "metrics.json").write_text(json.dumps({"test_accuracy": 0.5}))
    (old / "slices.json").write_text(
        json.dumps({"brightness:low": {"accuracy": 0.5, "count": 2}})
    )
    pd.DataFrame({"sha256": ["a", "b"], "correct": [True, False]}).to_parquet(
        old / "predictions.parquet"
    )
    (seg / "metrics.json").write_text(json.dumps({
        "task": "segmentation", "test_miou": 0.75, "iou_background": 0.9,
        "iou_square": 0.6, "test_pixel_accuracy": 0.95}))  # fmt: skip
    (seg / "slices.json").write_text(json.dumps({"size:small": {"score": 0.7,
                                                                "count": 2}}))  # fmt: skip
    pd.DataFrame({"sha256": ["a", "b"], "quality": [0.8, 0.7]}).to_parquet(
        seg / "predictions.parquet"
    )
    (cls / "metrics.json").write_text(
        json.dumps({"task": "classification", "test_accuracy": 1.0})
    )
    (cls / "slices.json").write_text(json.dumps({"all": {"score": 1.0, "count": 2}}))
    pd.DataFrame({"sha256": ["a", "b"], "quality": [1.0, 1.0]}).to_parquet(
        cls / "predictions.parquet"
    )

    before = read_evidence(old)
    assert (before.metric, before.score, before.per_class) == ("accuracy", 0.5, {})
    assert before.slices == {"brightness:low": (0.5, 2)}
    assert before.items == {"a": 1.0, "b": 0.0}
    assert all(type(value) is float for value in before.items.values())
    segmentation = read_evidence(seg)
    assert (segmentation.metric, segmentation.score) == ("miou", 0.75)
    assert segmentation.per_class == {"background": 0.9, "square": 0.6}
    assert segmentation.slices == {"size:small": (0.7, 2)}
    assert segmentation.items == {"a": 0.8, "b": 0.7}
    classification = read_evidence(cls)
    assert (classification.metric, classification.score) == ("accuracy", 1.0)
    assert classification.items == {"a": 1.0, "b": 1.0}
    # a classification candidate is compared with an old champion as before
    assert compare(classification, before).test == "mcnemar"

    (old / "metrics.json").write_text(json.dumps({"task": "detection"}))
    with pytest.raises(ValueError, match="unknown task 'detection'"):
        read_evidence(old)
