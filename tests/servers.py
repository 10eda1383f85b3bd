"""Starting the real local services the tests talk to, on 127.0.0.1 and free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str, process: subprocess.Popen, log: Path, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited ({process.returncode}): {log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout}s: {log.read_text()[-3000:]}")


@contextmanager
def serve(
    command: list[str],
    health_url: str,
    workdir: Path,
    env: dict[str, str] | None = None,
) -> Iterator[None]:
    """Run a server process until the block ends; its output goes to workdir/server.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "server.log"
    with log.open("w") as stream:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        wait_http(health_url, process, log)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def mlflow_server(
    workdir: Path, artifacts: str | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`artifacts`: where the server keeps artifacts (a folder in `workdir` by default, or
    e.g. s3://bucket/prefix with the AWS variables in `env`); clients upload through it."""
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts or str(workdir / "artifacts"),
        "--workers",
        "1",
    ]
    with serve(command, f"http://127.0.0.1:{port}/health", workdir, env):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def prefect_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    command = [
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {
        "PREFECT_HOME": str(workdir),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
    }
    api = f"http://127.0.0.1:{port}/api"
    with serve(command, f"{api}/health", workdir, env):
        yield api


@contextmanager
def moto_server(workdir: Path) -> Iterator[str]:
    port = free_port()
    command = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with serve(command, f"http://127.0.0.1:{port}/moto-api/", workdir):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def model_service(
    workdir: Path, params: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`python -m components serve` with `params`; yields its base URL once /health
    answers (a champion may not be loaded yet: poll /ready for that)."""
    port = free_port()
    command = [sys.executable, "-m", "components", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--params", str(params)]  # fmt: skip
    root = str(Path(__file__).resolve().parents[1])
    variables = {"PYTHONPATH": root, **(env or {})}
    url = f"http://127.0.0.1:{port}"
    with serve(command, f"{url}/health", workdir, variables):
        yield url
