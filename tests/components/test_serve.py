"""The service (`python -m components serve`, two uvicorn workers) against a real MLflow
server: readiness without a champion, predictions, every kind of bad input, /metrics summed
over workers, swaps and rollbacks under load, the canary, the prediction log and its drain."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from PIL import Image

from components.config import PromoteConfig
from components.registry import promote, rollback
from components.registry_aliases import ONNX_SHA256_TAG
from tests import servers
from tests.conftest import tiny_params
from tests.registered import log_candidate

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    root: Path
    model: Path  # a shipped variant: model.onnx + spec.json
    images: list[bytes]  # PNGs of the dataset's test split
    env: dict[str, str]
    gate: PromoteConfig

    def promote(self, name: str, errors: int = 2, **rules: object) -> str | None:
        evaluation, shipped = log_candidate(self.root, name, errors, self.model)
        result = promote(self.gate.model_copy(update=rules), evaluation_dir=evaluation,
                         shipped_dir=shipped, report_path=self.root / f"{name}.json")  # fmt: skip
        return result.candidate_version


@pytest.fixture
def setup(mlflow_uri: str, compressed_model, tiny_dataset, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("serve-tests")
    gate = PromoteConfig(model_name=f"serve-{tmp_path.name}"[:60], min_accuracy=0.8,
                         min_slice_accuracy=0.5, min_slice_items=5, min_paired_items=20,
                         ledger=str(tmp_path / "ledger.jsonl"))  # fmt: skip
    data = tiny_dataset.out_dir
    images = [p.read_bytes() for p in sorted((data / "images").rglob("*.png"))]
    yield Setup(tmp_path, compressed_model[1], images,
                {"MLFLOW_TRACKING_URI": mlflow_uri}, gate)  # fmt: skip
    mlflow.set_tracking_uri(None)


def _params(setup: Setup, **serve: object) -> Path:
    return tiny_params(setup.root, promote={"model_name": setup.gate.model_name},
                       serve={"log": str(setup.root / "log"), **serve})  # fmt: skip


def _service(setup: Setup, **serve: object):
    return servers.model_service(setup.root / "service", _params(setup, **serve),
                                 setup.env)  # fmt: skip


def _wait(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _poll(read, accept, timeout: float = 60):
    """The first value `read()` returns that `accept` takes (one reading: two workers may
    answer two requests differently)."""
    deadline = time.monotonic() + timeout
    while not accept(value := read()):
        assert time.monotonic() < deadline, f"not accepted in time: {value}"
        time.sleep(0.1)
    return value


def _version(url: str) -> str | None:
    answer = httpx.get(f"{url}/ready", timeout=10)
    return answer.json()["model"]["version"] if answer.status_code == 200 else None


def _files(images: list[bytes], names: list[str] | None = None) -> list:
    names = names or [f"img-{i}.png" for i in range(len(images))]
    return [
        ("files", (n, data, "image/png")) for n, data in zip(names, images, strict=True)
    ]


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(
            f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()
        ):
            total += float(match.group(2))
    return total


def _assert_not_ready(url: str, setup: Setup, reason: str) -> None:
    """/ready says why (`reason` in its text) and /predict refuses with 503 no_model."""
    ready = httpx.get(f"{url}/ready", timeout=10)
    assert ready.status_code == 503 and reason in ready.json()["reason"]
    refused = httpx.post(f"{url}/predict", files=_files(setup.images[:1]), timeout=10)
    assert refused.status_code == 503 and refused.json()["error"] == "no_model"


def test_no_champion_then_predictions_and_metrics(setup: Setup) -> None:
    with _service(setup) as url:
        _assert_not_ready(url, setup, "champion")

        version = setup.promote("first")
        _wait(lambda: _version(url) == version)
        answer = httpx.post(
            f"{url}/predict", files=_files(setup.images[:3]), timeout=10
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == {"name": setup.gate.model_name, "version": version,
                                 "alias": "champion"}  # fmt: skip
        spec = json.loads((setup.model / "spec.json").read_text())
        for index, prediction in enumerate(body["predictions"]):
            assert prediction["file"] == f"img-{index}.png"
            assert set(prediction["probabilities"]) == set(spec["classes"])
            assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-5
            top = max(prediction["probabilities"], key=prediction["probabilities"].get)
            assert prediction["label"] == top and prediction["request_id"]

        encoded = [base64.b64encode(data).decode() for data in setup.images[:3]]
        as_json = httpx.post(f"{url}/predict", json={"images": encoded}, timeout=10)
        assert as_json.status_code == 200
        assert [p["probabilities"] for p in as_json.json()["predictions"]] == [
            p["probabilities"] for p in body["predictions"]]  # fmt: skip

        schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
        content = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json"}
        assert httpx.get(f"{url}/docs", timeout=10).status_code == 200

        model = httpx.get(f"{url}/model", timeout=10).json()
        assert model["champion"]["tags"]["lineage.git_commit"] == "abc"
        assert model["champion"]["sha256"] == model["champion"]["tags"][ONNX_SHA256_TAG]

        for _ in range(20):  # spread over both workers
            httpx.post(f"{url}/predict", files=_files(setup.images[:2]), timeout=10)
        text = httpx.get(f"{url}/metrics", timeout=10).text
        ok = _metric(text, "mlops_serve_requests_total", endpoint="/predict",
                     status="200", model_version=version)  # fmt: skip
        assert ok == 22  # 2 + 20, whichever worker answered each
        assert _metric(text, "mlops_serve_predictions_total",
                       model_version=version) == 3 + 3 + 40  # fmt: skip
        assert _metric(text, "mlops_serve_confidence_count", alias="champion") == 46
        assert (
            _metric(text, "mlops_serve_batch_size_count", model_version=version) == 22
        )
        assert _metric(text, "mlops_serve_model_version", alias="champion") == int(
            version
        )
        assert _metric(text, "mlops_serve_ready") == 1
        assert _metric(text, "mlops_serve_errors_total", kind="no_model") == 1


def _png(pixels: np.ndarray) -> bytes:
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, format="PNG")
    return stream.getvalue()


def test_bad_input_is_refused_by_name_and_counted(setup: Setup) -> None:
    setup.promote("first")
    good = setup.images[0]
    big = _png(np.zeros((1000, 1000), np.uint8))  # 1e6 pixels > validate.max_pixels
    cases = {
        "not_an_image": ({"files": [("files", ("notes.txt", b"hello", "text/plain"))]},
                         422, "notes.txt"),
        "truncated": ({"files": _files([good[: len(good) // 2]], ["cut.png"])},
                      422, "cut.png"),
        "image_too_large": ({"files": _files([big], ["bomb.png"])}, 413, "bomb.png"),
        "image_size": ({"files": _files([_png(np.zeros((4, 4), np.uint8))], ["dot.png"])},
                       422, "dot.png"),
        "too_many_images": ({"files": _files([good] * 5)}, 413, "at most 4"),
        "empty": ({"content": b"", "headers": {"content-type": "application/json"}},
                  400, "empty"),
        "content_type": ({"content": good, "headers": {"content-type": "image/png"}},
                         415, "image/png"),
        "bad_base64": ({"json": {"images": ["***"]}}, 400, "images[0]"),
        "too_large": ({"content": b"x" * 2_000_001,
                       "headers": {"content-type": "application/json"}}, 413, "exceeds"),
    }  # fmt: skip
    with _service(setup) as url:
        _wait(lambda: _version(url) is not None)
        for kind, (request, status, named) in cases.items():
            answer = httpx.post(f"{url}/predict", timeout=10, **request)
            assert answer.status_code == status, (kind, answer.text)
            assert answer.json()["error"] == kind and named in answer.json()["detail"]
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # still alive
        text = httpx.get(f"{url}/metrics", timeout=10).text
        for kind in cases:
            assert _metric(text, "mlops_serve_errors_total", kind=kind) == 1, kind
        assert _metric(text, "mlops_serve_requests_total", status="500") == 0


def _client_loop(url: str, images: list[bytes], stop: threading.Event,
                 answers: list, failures: list) -> None:  # fmt: skip
    with httpx.Client(timeout=30) as client:
        index = 0
        while not stop.is_set():
            image = images[index % len(images)]
            index += 1
            try:
                answer = client.post(f"{url}/predict", files=_files([image]))
                if answer.status_code != 200:
                    failures.append(answer.text)
                else:
                    answers.append(answer.json()["model"]["version"])
            except httpx.HTTPError as error:
                failures.append(repr(error))


def test_swap_and_rollback_under_load_drop_nothing(setup: Setup) -> None:
    first = setup.promote("first")
    stop, answers, failures = threading.Event(), [], []
    with _service(setup) as url:
        _wait(lambda: _version(url) == first)
        clients = [threading.Thread(target=_client_loop, daemon=True,
                                    args=(url, setup.images, stop, answers, failures))
                   for _ in range(4)]  # fmt: skip
        for client in clients:
            client.start()
        try:
            _wait(lambda: len(answers) > 50)
            second = setup.promote("second")
            _wait(lambda: answers[-20:] == [second] * 20)
            rollback(setup.gate)
            _wait(lambda: answers[-20:] == [first] * 20)
        finally:
            stop.set()
            for client in clients:
                client.join()
    assert failures == []
    assert set(answers) == {first, second} and len(answers) > 100


def test_an_unreachable_registry_is_reported_not_fatal(setup: Setup) -> None:
    # A port held bound but never listening: connections are refused, and no other server
    # of the test session can take it meanwhile (a free port merely probed could be).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        setup.env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{held.getsockname()[1]}"
        with _service(setup) as url:
            _assert_not_ready(url, setup, "127.0.0.1")
            assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_a_rejected_candidate_never_reaches_the_service(setup: Setup) -> None:
    first = setup.promote("first")
    with _service(setup) as url:
        _wait(lambda: _version(url) == first)
        rejected = setup.promote("worse", errors=12)  # significantly worse: rejected
        assert rejected is not None and rejected != first
        time.sleep(3 * 0.3)  # three registry reads (serve.reload_seconds)
        model = httpx.get(f"{url}/model", timeout=10).json()
        assert model["champion"]["version"] == first and model["challenger"] is None
        answer = httpx.post(
            f"{url}/predict", files=_files(setup.images[:1]), timeout=10
        )
        assert answer.json()["model"]["version"] == first


def test_canary_splits_by_image_and_labels_metrics(setup: Setup) -> None:
    champion = setup.promote("champion")
    # Floors pass, not significantly worse, but not better: a challenger, not a champion.
    challenger = setup.promote("challenger", require_improvement=True)
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias(setup.gate.model_name,
                                             "challenger").version == challenger  # fmt: skip
    with _service(setup, canary_fraction=0.5) as url:
        _wait(lambda: httpx.get(f"{url}/model", timeout=10).json()["challenger"])
        first = {}
        for image in setup.images[:60]:
            for _ in range(2):  # a retry lands on the same model
                answer = httpx.post(f"{url}/predict", files=_files([image]), timeout=10)
                model = answer.json()["model"]
                assert first.setdefault(image, model["version"]) == model["version"]
        served = list(first.values())
        assert 0.25 < served.count(challenger) / len(served) < 0.75
        assert set(served) == {champion, challenger}
        text = httpx.get(f"{url}/metrics", timeout=10).text
        assert _metric(text, "mlops_serve_confidence_count", alias="challenger") == 2 * (
            served.count(challenger))  # fmt: skip
        assert _metric(text, "mlops_serve_model_version",
                       alias="challenger") == int(challenger)  # fmt: skip


def test_a_version_whose_file_does_not_match_is_never_served(setup: Setup) -> None:
    first = setup.promote("first")
    second = setup.promote("second")
    client = mlflow.MlflowClient()
    client.set_model_version_tag(
        setup.gate.model_name, first, ONNX_SHA256_TAG, "0" * 64
    )
    with _service(setup) as url:
        _wait(lambda: _version(url) == second)
        rollback(setup.gate)  # champion -> the tampered version
        model = _poll(lambda: httpx.get(f"{url}/model", timeout=10).json(),
                      lambda model: model["last_registry_error"])  # fmt: skip
        assert "sha256" in model["last_registry_error"]
        assert model["champion"]["version"] == second  # the old one keeps answering
        answer = httpx.post(
            f"{url}/predict", files=_files(setup.images[:1]), timeout=10
        )
        assert answer.json()["model"]["version"] == second


def test_prediction_log_is_drained_on_shutdown(setup: Setup) -> None:
    version = setup.promote("first")
    params = _params(setup, log_flush_seconds=600, log_flush_records=10_000)
    # SERVE_LOG overrides serve.log (in the cluster: the S3 prefix from a ConfigMap)
    log = setup.root / "from-env"
    env = {**setup.env, "SERVE_LOG": str(log)}
    with servers.model_service(setup.root / "service", params, env) as url:
        _wait(lambda: _version(url) == version)
        for index in range(30):
            answer = httpx.post(f"{url}/predict", timeout=10,
                                files=_files(setup.images[index : index + 2]))  # fmt: skip
            assert answer.status_code == 200
        assert not (log / "records").exists()  # still buffered
    # the context sent SIGTERM: uvicorn finished, each worker drained its buffer
    lines = [json.loads(line) for path in (log / "records").rglob("*.jsonl")
             for line in path.read_text().splitlines()]  # fmt: skip
    assert len(lines) == 60
    assert set(lines[0]) == {"time", "request_id", "sha256", "image", "model_name",
                             "model_version", "alias", "label", "confidence",
                             "probabilities"}  # fmt: skip
    for line in lines:
        stored = (log / line["image"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == line["sha256"]
        assert stored in setup.images[:31] and line["model_version"] == version
