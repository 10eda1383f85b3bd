"""What the service computes without a server: the input it builds is bit for bit the one
evaluate scores, and the canary split is deterministic and of the configured size."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from components.data import ImageDataset, read_split
from components.serve.inputs import BadInput, ImageLimits, Upload, to_batch
from components.serve.models import LoadedModel, NotReadyError, Routing, request_key
from components.spec import ModelSpec

LIMITS = ImageLimits(max_pixels=250_000, min_side=8, max_side=512)


def test_served_input_is_bit_identical_to_evaluation(
    tiny_dataset, compressed_model
) -> None:
    data = tiny_dataset.out_dir
    spec = ModelSpec.read(compressed_model[1])
    rows = read_split(data, "test")
    evaluated = ImageDataset(data, rows, spec)
    uploads = [Upload(path, (data / path).read_bytes()) for path in rows["path"]]
    served = to_batch(uploads, spec, LIMITS)
    expected = np.stack([evaluated[i][0].numpy() for i in range(len(evaluated))])
    assert served.dtype == expected.dtype == np.float32
    assert np.array_equal(served, expected)


def test_an_undecodable_upload_is_named(compressed_model) -> None:
    spec = ModelSpec.read(compressed_model[1])
    with pytest.raises(BadInput, match=r"scan-7\.png") as refused:
        to_batch([Upload("scan-7.png", b"\x89PNG\r\n\x1a\n garbage")], spec, LIMITS)
    assert refused.value.status == 422


def _model(version: str, alias: str) -> LoadedModel:
    spec = ModelSpec("cnn", ["a"], 1, 8, [8], 8, 0.0, 0.5, 0.2)
    return LoadedModel("m", version, alias, spec, None, "", {}, "")  # type: ignore[arg-type]


def test_canary_split_is_deterministic_and_sized() -> None:
    routing = Routing(_model("1", "champion"), _model("2", "challenger"), 0.2)
    keys = [request_key([hashlib.sha256(str(i).encode()).hexdigest()])
            for i in range(5000)]  # fmt: skip
    versions = [routing.route(key).version for key in keys]
    assert versions == [routing.route(key).version for key in keys]
    assert 0.18 < versions.count("2") / len(versions) < 0.22
    alone = Routing(_model("1", "champion"), None, 0.2)
    assert {alone.route(key).version for key in keys} == {"1"}
    with pytest.raises(NotReadyError, match="no champion yet"):
        Routing(None, not_ready="no champion yet").route(keys[0])
