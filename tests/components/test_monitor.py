"""The drift monitor: the rule's false-alarm rate, clean and shifted batches through the real
stage (Evidently, Prometheus text, the workspace), bad batches, and the webhook alert reaching
a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from components.alerts import AlertError
from components.config import (
    MonitorConfig,
    load_params,
)
from components.data import read_split
from components.drift_features import PREDICTED_CLASS, image_statistics
from components.drift_rule import class_mix_p_value, judge
from components.images import ImageReadError
from components.monitor import MonitorInputError, monitor
from components.prediction_log import (
    LoggedPrediction,
    PredictionLogWriter,
    image_key,
    open_store,
)
from tests.conftest import TINY_PARAMS

# --- the rule, pure -----------------------------------------------------------------------


def _null_frame(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    frame = pd.DataFrame(
        rng.normal(size=(rows, 20)), columns=[f"f{i}" for i in range(20)]
    )
    frame[PREDICTED_CLASS] = pd.Categorical(
        rng.choice(list("abc"), size=rows), categories=list("abc")
    )
    return frame


def test_false_alarm_rate_stays_below_alpha_with_many_features() -> None:
    """21 features tested at once on 300 pairs of clean batches: without the correction
    about 66% of batches would alarm (1 - 0.95^21); with it, at most alpha."""
    rng = np.random.default_rng(0)
    alarms = [
        judge(_null_frame(rng, 250), _null_frame(rng, 200), alpha=0.05).drift_detected
        for _ in range(300)
    ]
    assert np.mean(alarms) <= 0.05 + 0.03  # binomial noise on 300 trials


def test_a_shifted_feature_is_named_and_decides() -> None:
    rng = np.random.default_rng(1)
    reference, current = _null_frame(rng, 300), _null_frame(rng, 300)
    current["f3"] += 1.0
    verdict = judge(reference, current, alpha=0.05)
    assert verdict.drift_detected and verdict.drifted == ["f3"]
    assert verdict.drift_share == pytest.approx(1 / 21)
    assert "Bonferroni" in verdict.rule


def test_class_mix_is_a_two_sample_test() -> None:
    """Same proportions, very different sizes: no drift (a goodness-of-fit test that took the
    small reference as exact would flag it); a changed mix: drift."""
    reference = pd.Series(list("aab") * 90)
    assert class_mix_p_value(reference, pd.Series(list("aab") * 3000)) > 0.5
    assert class_mix_p_value(reference, pd.Series(list("abb") * 100)) < 1e-6


def test_features_that_differ_are_an_error() -> None:
    rng = np.random.default_rng(2)
    reference = _null_frame(rng, 50)
    with pytest.raises(ValueError, match="f19"):
        judge(reference, reference.drop(columns="f19"), alpha=0.05)


def test_statistics_see_blur_and_noise() -> None:
    rng = np.random.default_rng(3)
    sharp = (rng.random((4, 1, 16, 16)) > 0.5).astype(np.float32)
    blurred = (sharp + np.roll(sharp, 1, axis=3) + np.roll(sharp, 1, axis=2)) / 3
    stats = image_statistics(np.concatenate([sharp, blurred]))
    assert (stats["sharpness"][:4].to_numpy() > stats["sharpness"][4:].to_numpy()).all()
    flat = image_statistics(np.full((1, 1, 8, 8), 0.5, np.float32))
    assert flat["entropy"][0] == 0 and flat["contrast"][0] == 0


# --- the stage, for real ------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(drift_reference: dict[str, Path]) -> dict[str, Path]:
    return drift_reference


def _cfg(tmp_path: Path, **update: Any) -> MonitorConfig:
    cfg = load_params("monitor", MonitorConfig, TINY_PARAMS)
    return cfg.model_copy(update={"workspace": str(tmp_path / "ws"), **update})


def _run(reference: dict[str, Path], cfg: MonitorConfig, out: Path, current: str):
    return monitor(cfg, reference_dir=reference["reference"], model_dir=reference["model"],
                   report_dir=out, data_dir=reference["data"], current=current)  # fmt: skip


def _shifted_folder(
    reference: dict[str, Path], out: Path, change: str, seed: int = 0
) -> Path:
    """The val split's images, changed as a camera or a scanner might change them."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    data = reference["data"]
    for index, path in enumerate(read_split(data, "val")["path"]):
        pixels = np.asarray(Image.open(data / path).convert("L"), dtype=np.float64)
        if change == "invert":
            pixels = 255 - pixels
        elif change == "noise":
            pixels = pixels + rng.normal(0, 60, pixels.shape)
        elif change == "dim":
            pixels = pixels * 0.4
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            out / f"{index}.png"
        )
    return out


def test_clean_batch_no_drift(reference: dict[str, Path], tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    result = _run(reference, cfg, tmp_path / "drift", "split:val")
    assert not result.drift_detected and result.drifted == []
    report = json.loads((tmp_path / "drift/drift.json").read_text())
    assert report["drift_detected"] is False and report["drift_share"] == 0.0
    assert report["images"] == len(read_split(reference["data"], "val"))
    assert set(report["scores"]) >= {"brightness", "embedding_0", "confidence",
                                     PREDICTED_CLASS}  # fmt: skip
    # Evidently ran the same tests at the same level and agrees
    assert report["evidently_drifted_count"]["count"] == 0
    assert (tmp_path / "drift/drift.html").stat().st_size > 10_000
    families = {f.name: f for f in text_string_to_metric_families(
        (tmp_path / "drift/metrics.prom").read_text())}  # fmt: skip
    detected = families["mlops_drift_detected"].samples[0]
    assert detected.value == 0 and detected.labels["model"] == cfg.model_name
    scores = families["mlops_drift_feature_score"].samples
    assert {s.labels["feature"] for s in scores} == set(report["scores"])


@pytest.mark.parametrize("change", ["invert", "noise", "dim"])
def test_strong_shifts_drift(
    reference: dict[str, Path], tmp_path: Path, change: str
) -> None:
    folder = _shifted_folder(reference, tmp_path / change, change)
    result = _run(reference, _cfg(tmp_path), tmp_path / "drift", str(folder))
    assert result.drift_detected, result
    report = json.loads((tmp_path / "drift/drift.json").read_text())
    assert report["evidently_drifted_count"]["count"] == len(report["drifted"])
    assert report["drift_share"] == pytest.approx(
        len(report["drifted"]) / len(report["scores"])
    )


def test_every_run_lands_in_the_workspace(
    reference: dict[str, Path], tmp_path: Path
) -> None:
    from evidently.ui.workspace import Workspace

    cfg = _cfg(tmp_path)
    for _ in range(2):
        _run(reference, cfg, tmp_path / "drift", "split:val")
    space = Workspace(cfg.workspace)
    (project,) = space.search_project(cfg.project)
    assert len(space.list_runs(project.id)) == 2
    titles = [panel.title for panel in space.get_dashboard(project.id).panels]
    assert "Share of drifted features" in titles


def test_too_small_a_batch_is_an_error(
    reference: dict[str, Path], tmp_path: Path
) -> None:
    folder = _shifted_folder(reference, tmp_path / "few", "noise")
    for extra in sorted(folder.iterdir())[12:]:
        extra.unlink()
    with pytest.raises(MonitorInputError, match="12 images, fewer than"):
        _run(reference, _cfg(tmp_path, min_images=50), tmp_path / "drift", str(folder))
    assert not (tmp_path / "drift").exists()


def test_a_reference_of_another_model_is_refused(
    reference: dict[str, Path], tmp_path: Path
) -> None:
    other = {**reference, "model": reference["candidate"]}  # fp32 PyTorch, not shipped
    with pytest.raises(MonitorInputError, match="written for another model"):
        _run(other, _cfg(tmp_path), tmp_path / "drift", "split:val")


def test_an_unreadable_file_is_named(
    reference: dict[str, Path], tmp_path: Path
) -> None:
    folder = _shifted_folder(reference, tmp_path / "bad", "dim")
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        _run(reference, _cfg(tmp_path), tmp_path / "drift", str(folder))


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"received": [], "status": 200})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/secret-token", handler
    server.shutdown()


def test_drift_alert_reaches_the_webhook(
    reference: dict[str, Path],
    tmp_path: Path,
    webhook: tuple[str, type[_Receiver]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, handler = webhook
    monkeypatch.setenv("DRIFT_WEBHOOK_URL", url)
    cfg = _cfg(tmp_path)
    _run(reference, cfg, tmp_path / "clean", "split:val")
    assert handler.received == []  # no drift, no alert
    folder = _shifted_folder(reference, tmp_path / "inv", "invert")
    result = _run(reference, cfg, tmp_path / "drift", str(folder))
    assert result.alerted
    (alert,) = handler.received
    assert alert["text"].startswith(":warning: Drift detected for tests-model")
    assert alert["drifted"] == result.drifted and alert["blocks"]
    written = "".join(
        p.read_text(errors="ignore") for p in (tmp_path / "drift").iterdir()
    )
    assert "secret-token" not in written  # the URL is a secret


def test_an_undelivered_alert_fails_the_run_after_the_reports(
    reference: dict[str, Path],
    tmp_path: Path,
    webhook: tuple[str, type[_Receiver]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, handler = webhook
    handler.status = 500
    monkeypatch.setenv("DRIFT_WEBHOOK_URL", url)
    folder = _shifted_folder(reference, tmp_path / "inv", "invert")
    with pytest.raises(AlertError, match=r"HTTP") as error:
        _run(reference, _cfg(tmp_path), tmp_path / "drift", str(folder))
    assert "secret-token" not in str(error.value)
    assert json.loads((tmp_path / "drift/drift.json").read_text())["drift_detected"]


def test_the_prediction_log_is_judged_over_its_window(
    reference: dict[str, Path], tmp_path: Path
) -> None:
    """The service's log as the batch: only records inside monitor.window_hours count, an
    image sent twice counts twice, and what was served is reported over time."""
    data, log = reference["data"], tmp_path / "log"
    writer = PredictionLogWriter(open_store(str(log)), flush_records=10_000,
                                 flush_seconds=60, retries=0, max_pending=10_000)  # fmt: skip
    now = datetime.now(UTC)
    paths = list(read_split(data, "val")["path"])
    for index, path in enumerate(paths + paths[:5]):
        image = (data / path).read_bytes()
        digest = hashlib.sha256(image).hexdigest()
        writer.add(LoggedPrediction(time=now.isoformat(), request_id=str(index),
                                    sha256=digest, image=image_key(digest, "png"),
                                    model_name="m", model_version="3", alias="champion",
                                    label="class_0", confidence=0.9,
                                    probabilities={"class_0": 0.9}), image)  # fmt: skip
    writer.close()
    old = log / "records/2000-01-01/00/old.jsonl"  # outside the window: never read
    old.parent.mkdir(parents=True)
    old.write_text("not even JSON\n")
    result = _run(reference, _cfg(tmp_path), tmp_path / "drift", str(log))
    assert result.images == len(paths) + 5 and not result.drift_detected
    served = json.loads((tmp_path / "drift/drift.json").read_text())["served"]
    assert served["records"] == len(paths) + 5 and served["versions"] == ["3"]
    assert served["by_hour"][0]["mean_confidence"] == pytest.approx(0.9)
