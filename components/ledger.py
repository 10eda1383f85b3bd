"""The promotion ledger: an append-only record of every decision and rollback.

A local path gets one JSON line per entry, appended with a single O_APPEND write and fsync'd.
`s3://bucket/prefix` gets one object per entry (S3 has no append): the key starts with the
UTC time, so listing the prefix reads the entries in order, and ends with a random id, so two
writers never overwrite each other; bucket versioning (infra/) keeps even a deleted entry.
"""

from __future__ import annotations

import getpass
import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def append_ledger(location: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Record `entry` with the time and the actor; returns the record written."""
    now = datetime.now(UTC)
    record = {"time": now.isoformat(timespec="seconds"), "actor": actor(), **entry}
    body = json.dumps(record, sort_keys=True, default=str)
    if location.startswith("s3://"):
        import boto3

        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        key = f"{prefix.strip('/')}/{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{uuid.uuid4().hex}.json"
        boto3.client("s3").put_object(
            Bucket=bucket, Key=key.lstrip("/"), Body=body.encode(),
            ContentType="application/json",
        )  # fmt: skip
        return record
    path = Path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (body + "\n").encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return record


def read_ledger(location: str) -> list[dict[str, Any]]:
    """Every entry, oldest first."""
    if location.startswith("s3://"):
        import boto3

        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        client = boto3.client("s3")
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix.strip("/") + "/"
        )
        keys = sorted(
            item["Key"] for page in pages for item in page.get("Contents", [])
        )
        return [
            json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
            for key in keys
        ]
    path = Path(location)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def actor() -> str:
    """Who acts: the GitHub user in Actions, else the local user."""
    return os.environ.get("GITHUB_ACTOR") or getpass.getuser()
