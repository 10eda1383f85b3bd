"""Helpers for tests that drive a real Prefect server: its client API, and the CLI."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from prefect.client.orchestration import PrefectClient, get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

T = TypeVar("T")


def call_api(api: str, call: Callable[[PrefectClient], Awaitable[T]]) -> T:
    """Run one client call against the server at `api`."""

    async def main() -> T:
        async with get_client() as client:
            return await call(client)

    with temporary_settings({PREFECT_API_URL: api}):
        return asyncio.run(main())


def run_ok(command: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Run `command`; fail the test with its output unless it exits 0."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip
    assert done.returncode == 0, (
        f"{command}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done.stdout
