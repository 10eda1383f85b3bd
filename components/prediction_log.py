"""The prediction log: what the service answered, written for the drift monitor to read.

Layout under the log's root (serve.log: a folder, or s3://bucket/prefix):
    images/<sha256[:2]>/<sha256>.<ext>                the image bytes as received, by content
    records/<YYYY-MM-DD>/<HH>/<time>-<pid>-<id>.jsonl  one JSON line per answered image

Records are written in batches by a background thread; an object appears whole or not at
all (a local file is renamed into place; an S3 PUT is atomic), and the images of a batch
are written before its records, so a record never names an image that is not there. No
client address, header or other detail of the caller is ever part of a record.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

RECORDS, IMAGES = "records", "images"
# Image keys remembered as written (writing one again is harmless, only wasted): bounded,
# so a long-running service does not grow without limit.
_REMEMBERED_IMAGES = 100_000


@dataclass(frozen=True)
class LoggedPrediction:
    time: str  # ISO 8601, UTC
    request_id: str
    sha256: str
    image: str  # key of the image under the log's root
    model_name: str
    model_version: str
    alias: str  # champion | challenger
    label: str
    confidence: float
    probabilities: dict[str, float] = field(repr=False)


class Store(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def keys(self, prefix: str) -> Iterator[str]: ...
    def get(self, key: str) -> bytes: ...


def open_store(location: str) -> Store:
    """A folder, or s3://bucket/prefix (boto3; endpoint and credentials from the AWS
    environment, as ingest)."""
    if location.startswith("s3://"):
        return _S3Store(location)
    return _LocalStore(Path(location))


def image_key(sha256: str, extension: str) -> str:
    return f"{IMAGES}/{sha256[:2]}/{sha256}.{extension}"


class PredictionLogWriter:
    """Buffers records and their images in memory; a thread flushes them every
    `flush_seconds`, or sooner once `flush_records` wait. A failed flush is retried
    `retries` times with backoff, then kept for the next flush (beyond `max_pending`
    records the oldest are dropped, and beyond `max_pending_bytes` of images waiting new
    records are, each counted: memory stays bounded through a long storage outage);
    `close()` drains what is left."""

    def __init__(self, store: Store, *, flush_records: int, flush_seconds: float,
                 retries: int, max_pending: int, max_pending_bytes: int = 256 << 20,
                 on_failure: Callable[[], None] = lambda: None,
                 on_written: Callable[[int], None] = lambda n: None,
                 on_dropped: Callable[[int], None] = lambda n: None) -> None:  # fmt: skip
        self._store = store
        self._flush_records, self._flush_seconds = flush_records, flush_seconds
        self._retries, self._max_pending = retries, max_pending
        self._max_bytes = max_pending_bytes
        self._on_failure, self._on_written, self._on_dropped = (
            on_failure, on_written, on_dropped)  # fmt: skip
        self._records: list[LoggedPrediction] = []
        self._images: dict[str, bytes] = {}  # key -> bytes, not yet written
        self._image_bytes = 0  # in self._images
        self._written: set[str] = set()  # image keys this process already wrote
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="prediction-log",
                                        daemon=True)  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def add(self, record: LoggedPrediction, image: bytes) -> None:
        """Queue one record (never blocks on I/O)."""
        with self._lock:
            new_image = record.image not in self._written | self._images.keys()
            if new_image and self._image_bytes + len(image) > self._max_bytes:
                self._on_dropped(1)
                return
            self._records.append(record)
            if new_image:
                self._images[record.image] = image
                self._image_bytes += len(image)
            waiting = len(self._records)
        if waiting >= self._flush_records:
            self._wake.set()

    def close(self) -> None:
        """Stop the thread after a last flush of everything queued."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        else:
            self.flush()

    def flush(self) -> bool:
        """Write what is queued; False (and everything kept) when the store refused."""
        with self._lock:
            records, images = self._records, self._images
            self._records, self._images, self._image_bytes = [], {}, 0
        if not records and not images:
            return True
        for attempt in range(self._retries + 1):
            try:
                self._write(records, images)
                self._on_written(len(records))
                return True
            except Exception as error:  # any storage error: keep answering requests
                self._on_failure()
                log.warning("prediction log flush failed (attempt %d): %s",
                            attempt + 1, error)  # fmt: skip
                if attempt < self._retries:
                    time.sleep(min(0.2 * 2**attempt, 5.0))
        self._requeue(records, images)
        return False

    def _write(self, records: list[LoggedPrediction], images: dict[str, bytes]) -> None:
        if len(self._written) > _REMEMBERED_IMAGES:
            self._written.clear()
        for key, data in images.items():
            self._store.put(key, data)
            self._written.add(key)
        now = datetime.now(UTC)
        name = f"{now:%Y%m%dT%H%M%S%f}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        lines = "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in records)
        self._store.put(f"{RECORDS}/{now:%Y-%m-%d}/{now:%H}/{name}", lines.encode())

    def _requeue(
        self, records: list[LoggedPrediction], images: dict[str, bytes]
    ) -> None:
        with self._lock:
            self._records = records + self._records
            self._images = {**images, **self._images}
            self._image_bytes = sum(len(data) for data in self._images.values())
            excess = len(self._records) - self._max_pending
            if excess > 0:
                del self._records[:excess]
        if excess > 0:
            self._on_dropped(excess)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            self.flush()
        self.flush()


def is_prediction_log(location: str) -> bool:
    store = open_store(location)
    return next(iter(store.keys(f"{RECORDS}/")), None) is not None


def read_predictions(location: str, *, window: timedelta) -> list[dict[str, Any]]:
    """Every record logged within `window` of now, oldest first."""
    store = open_store(location)
    since = datetime.now(UTC) - window
    hours = sorted({f"{since + timedelta(hours=h):%Y-%m-%d/%H}"
                    for h in range(int(window.total_seconds() // 3600) + 2)})  # fmt: skip
    records = []
    # Only the window's hour folders are listed: the log grows for as long as it serves.
    for key in (key for hour in hours for key in store.keys(f"{RECORDS}/{hour}/")):
        for number, line in enumerate(store.get(key).decode().splitlines(), start=1):
            try:
                record = json.loads(line)
                logged_at = datetime.fromisoformat(record["time"])
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{location}/{key} line {number}: {error}") from error
            if logged_at >= since:
                records.append(record)
    return sorted(records, key=lambda record: record["time"])


def fetch_images(
    location: str, records: list[dict[str, Any]], target: Path
) -> list[Path]:
    """One local path per record (an image sent twice is fetched once, counted twice)."""
    store = open_store(location)
    paths: dict[str, Path] = {}
    for record in records:
        key = record["image"]
        if key not in paths:
            path = target / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(store.get(key))
            paths[key] = path
    return [paths[record["image"]] for record in records]


class _LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)

    def keys(self, prefix: str) -> Iterator[str]:
        folder = self.root / prefix
        if folder.is_dir():
            for path in folder.rglob("*"):  # lazily: is_prediction_log needs only one
                if path.is_file() and not path.name.startswith("."):
                    yield path.relative_to(self.root).as_posix()

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


class _S3Store:
    def __init__(self, uri: str) -> None:
        import boto3  # only the S3 store needs it

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client("s3")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def keys(self, prefix: str) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix)
        )
        strip = len(self._key(""))
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"][strip:]

    def get(self, key: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        data: bytes = body.read()
        return data


def served_over_time(
    records: list[dict[str, Any]], window: timedelta
) -> dict[str, Any]:
    """What the service answered, per hour and model version: images, mean confidence,
    and the share of each label (the monitor reports it beside the drift verdict)."""
    hours: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        hour = f"{record['time'][:13]}:00"
        hours.setdefault((hour, str(record["model_version"])), []).append(record)
    rows = []
    for (hour, version), items in sorted(hours.items()):
        labels = [item["label"] for item in items]
        rows.append({
            "hour": hour, "model_version": version, "images": len(items),
            "mean_confidence": sum(item["confidence"] for item in items) / len(items),
            "labels": {label: labels.count(label) / len(labels)
                       for label in sorted(set(labels))},
        })  # fmt: skip
    return {"window_hours": window.total_seconds() / 3600, "records": len(records),
            "versions": sorted({row["model_version"] for row in rows}),
            "by_hour": rows}  # fmt: skip
