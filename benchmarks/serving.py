"""Serving: this service against the plainest FastAPI app and ONNX Runtime in-process.

    python benchmarks/serving.py [--quick]

Side by side in one run, same model, same images (the built-in digits), closed-loop httpx
clients on 127.0.0.1 in their own process (its CPU share is reported: on a 2-core machine the
clients take cores the servers would use), fixed duration per point:
  (a) in_process  decode + preprocess + ONNX Runtime, batch 1, one thread: the limit
  (b) plain       benchmarks/serving_plain_app.py, one uvicorn worker, no metrics, no log
  (c) service     python -m components serve: serve.workers = CPUs, metrics, log at 1.0
At concurrency 1, 8 and 32: requests/s, p50, p99, failed. Then: (c) with the log off,
a champion swap and a rollback under load, and the same points for a heavier fp32 ResNet.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import mlflow
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import ROOT, digits_dataset, emit, machine
from components.io import sha256_file

MODEL = "bench-served"
CONCURRENCY = (1, 8, 32)


def _load(
    url: str, concurrency: int, seconds: float, images: list[bytes]
) -> dict[str, Any]:
    """Closed-loop clients (each sends one image, waits, sends the next) for `seconds`."""
    import httpx

    async def client(session: Any, index: int, latencies: list[float],
                     failed: list[int], versions: list[str], end: float) -> None:  # fmt: skip
        while time.perf_counter() < end:
            image = images[index % len(images)]
            index += concurrency
            started = time.perf_counter()
            try:
                answer = await session.post(
                    url, files=[("files", ("d.png", image, "image/png"))]
                )
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            if not ok:
                failed.append(1)
            elif "model" in (body := answer.json()):
                versions.append(body["model"]["version"])

    async def main() -> tuple[list[float], list[int], list[str], float]:
        latencies: list[float] = []
        failed: list[int] = []
        versions: list[str] = []
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as session:
            await session.post(
                url, files=[("files", ("d.png", images[0], "image/png"))]
            )
            start = time.perf_counter()
            end = start + seconds
            await asyncio.gather(*(client(session, i, latencies, failed, versions, end)
                                   for i in range(concurrency)))  # fmt: skip
            return latencies, failed, versions, time.perf_counter() - start

    cpu = resource.getrusage(resource.RUSAGE_SELF)
    latencies, failed, versions, wall = asyncio.run(main())
    used = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime) / wall
    return {**_summary(latencies, wall), "failed": len(failed),
            "client_cpu_cores": round(client_cpu, 2),
            "versions": sorted(set(versions))}  # fmt: skip


def _summary(latencies: list[float], wall: float) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"requests": len(ordered), "throughput_rps": round(len(ordered) / wall, 1),
            "p50_ms": round(statistics.median(ordered) * 1e3, 3),
            "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e3, 3)}  # fmt: skip


def _in_process(
    model_dir: Path, images: list[bytes], seconds: float
) -> dict[str, float]:
    from components.onnx_model import cpu_session
    from components.preprocess import normalise, to_pixels
    from components.spec import ModelSpec

    spec = ModelSpec.read(model_dir)
    session = cpu_session(str(model_dir / "model.onnx"), threads=1)
    name = session.get_inputs()[0].name
    latencies, index, start = [], 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        began = time.perf_counter()
        batch = normalise(to_pixels(images[index % len(images)], spec)[None], spec)
        session.run(None, {name: batch})
        latencies.append(time.perf_counter() - began)
        index += 1
    return _summary(latencies, time.perf_counter() - start)


def _wait(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "server exited"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


@contextmanager
def _server(command: list[str], ready_url: str, env: dict[str, str]) -> Iterator[None]:
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait(ready_url, process)
        yield
    finally:
        process.terminate()
        process.wait(timeout=60)


def _register(model_dir: Path, scratch: Path) -> str:
    """A registry version whose source is `model_dir`, tagged as promote tags it."""
    from components.registry_aliases import MODEL_ARTIFACTS, ONNX_SHA256_TAG

    client = mlflow.MlflowClient()
    if not client.search_registered_models(f"name='{MODEL}'"):
        client.create_registered_model(MODEL)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), artifact_path=MODEL_ARTIFACTS)
    version = client.create_model_version(
        MODEL, source=f"runs:/{run.info.run_id}/{MODEL_ARTIFACTS}", run_id=run.info.run_id,
        tags={ONNX_SHA256_TAG: sha256_file(model_dir / "model.onnx")})  # fmt: skip
    return str(version.version)


def _export(arch: str, image_size: int, channels: list[int], folder: Path) -> Path:
    import torch

    from components.model import ModelSpec, build_model, save_model
    from components.onnx_model import export_onnx

    spec = ModelSpec(arch=arch, classes=[str(d) for d in range(10)], in_channels=1,
                     image_size=image_size, channels=channels, hidden=128, dropout=0.0,
                     mean=0.3, std=0.4)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(spec).eval()
    save_model(model, spec, folder)
    export_onnx(model, torch.zeros(1, 1, image_size, image_size), folder / "model.onnx")
    return folder


class _Bench:
    def __init__(self, scratch: Path, images: list[bytes], seconds: float) -> None:
        self.scratch, self.images, self.seconds = scratch, images, seconds
        self.pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
        self.port = 18000

    def load(
        self, url: str, concurrency: int, seconds: float | None = None
    ) -> dict[str, Any]:
        future = self.pool.submit(_load, f"{url}/predict", concurrency,
                                  seconds or self.seconds, self.images)  # fmt: skip
        return future.result()

    @contextmanager
    def plain(self, model_dir: Path) -> Iterator[str]:
        self.port += 1
        url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "uvicorn", "benchmarks.serving_plain_app:app",
                   "--port", str(self.port), "--no-access-log"]  # fmt: skip
        with _server(command, f"{url}/docs", {"BENCH_MODEL_DIR": str(model_dir)}):
            yield url

    @contextmanager
    def service(self, **serve: Any) -> Iterator[str]:
        self.port += 1
        url = f"http://127.0.0.1:{self.port}"
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["promote"]["model_name"] = MODEL
        params["serve"].update({"log": str(self.scratch / "log"), "reload_seconds": 0.5,
                                **serve})  # fmt: skip
        path = self.scratch / f"params-{self.port}.yaml"
        path.write_text(yaml.safe_dump(params))
        command = [sys.executable, "-m", "components", "serve", "--port", str(self.port),
                   "--params", str(path)]  # fmt: skip
        with _server(command, f"{url}/ready", {"PYTHONPATH": str(ROOT)}):
            yield url


def _compare(bench: _Bench, model_dir: Path, levels: tuple[int, ...]) -> dict[str, Any]:
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(
        MODEL, "champion", _register(model_dir, bench.scratch)
    )
    rows: dict[str, Any] = {
        "in_process": _in_process(model_dir, bench.images, bench.seconds)
    }
    with bench.plain(model_dir) as url:
        rows["plain"] = {f"c{c}": bench.load(url, c) for c in levels}
    with bench.service() as url:
        rows["service"] = {f"c{c}": bench.load(url, c) for c in levels}
    return rows


def _swap(bench: _Bench, model_dir: Path) -> dict[str, Any]:
    """Load at concurrency 8; the champion moves to a new version after a third of the
    run and back (a rollback) after two thirds."""
    client = mlflow.MlflowClient()
    first = client.get_model_version_by_alias(MODEL, "champion").version
    second = _register(model_dir, bench.scratch)
    seconds = max(6.0, 2 * bench.seconds)
    with bench.service() as url:
        steady = bench.load(url, 8, seconds)

        def move() -> None:
            time.sleep(seconds / 3)
            client.set_registered_model_alias(MODEL, "champion", second)
            time.sleep(seconds / 3)
            client.set_registered_model_alias(MODEL, "champion", first)

        mover = threading.Thread(target=move)
        mover.start()
        swapping = bench.load(url, 8, seconds)
        mover.join()
    return {"steady_c8": steady, "swap_and_rollback_c8": swapping,
            "failed_requests": swapping["failed"],
            "p99_ratio": round(swapping["p99_ms"] / steady["p99_ms"], 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="about a minute on 2 cores"
    )
    quick = parser.parse_args().quick
    seconds = 3.0 if quick else 10.0
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        scratch = Path(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"
        data = digits_dataset(scratch)
        images = [p.read_bytes() for p in sorted((data / "images").rglob("*.png"))]
        bench = _Bench(scratch, images, seconds)
        cnn = _export("cnn", 16, [32, 64], scratch / "cnn")
        digits = _compare(bench, cnn, CONCURRENCY)
        with bench.service(log_sample_rate=0.0) as url:
            log_off = bench.load(url, 32)
        swap = _swap(bench, cnn)
        resnet_dir = _export("resnet", 32, [32, 64, 128], scratch / "resnet")
        resnet = _compare(bench, resnet_dir, (1, 32) if quick else CONCURRENCY)
        bench.pool.shutdown()
    c32, c1 = digits["service"]["c32"], digits["service"]["c1"]
    emit("serving", {
        "machine": machine(), "quick": quick, "seconds_per_point": seconds,
        "units": {"throughput_rps": "requests/s", "p50_ms": "ms", "p99_ms": "ms",
                  "client_cpu_cores": "cores used by the load generator"},
        "throughput_ratio_c32": round(c32["throughput_rps"]
                                      / digits["plain"]["c32"]["throughput_rps"], 3),
        "p50_overhead_ms_c1": round(c1["p50_ms"] - digits["plain"]["c1"]["p50_ms"], 3),
        "log_overhead": round(c32["throughput_rps"] / log_off["throughput_rps"], 3),
        "failed_requests_swap": swap["failed_requests"],
        "swap_p99_ratio": swap["p99_ratio"],
        "resnet_throughput_ratio_c32": round(resnet["service"]["c32"]["throughput_rps"]
                                             / resnet["plain"]["c32"]["throughput_rps"], 3),
        "load_average": os.getloadavg(),
        "digits_cnn": digits, "service_log_off_c32": log_off, "swap": swap,
        "resnet": resnet,
    })  # fmt: skip


if __name__ == "__main__":
    main()
