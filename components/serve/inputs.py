"""Reading the images of a /predict request, and refusing bad ones with the reason.

Two encodings: multipart/form-data with one or more parts in field `files`, or JSON
`{"images": ["<base64>", ...]}` for clients that cannot send multipart. Every refusal is a
`BadInput` with an HTTP status, a kind (the label of mlops_serve_errors_total) and a message
that names the offending part.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import numpy as np
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from components.images import (
    ImageReadError,
    ImageSizeError,
    ImageTooLargeError,
    UndecodableImageError,
)
from components.preprocess import normalise, to_pixels
from components.spec import ModelSpec

FIELD = "files"


class BadInput(ValueError):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


@dataclass(frozen=True)
class Upload:
    name: str  # the part's file name, or images[i] for JSON
    data: bytes


@dataclass(frozen=True)
class ImageLimits:
    """validate's limits: the service accepts what the pipeline would have accepted."""

    max_pixels: int
    min_side: int
    max_side: int


async def read_uploads(request: Request, *, max_images: int,
                       max_body_bytes: int) -> list[Upload]:  # fmt: skip
    """The request's images, or BadInput naming what is wrong with it."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("multipart/form-data", "application/json"):
        raise BadInput(415, "content_type", f"content type {kind or 'none'!r}: send "
                       f"multipart/form-data (field {FIELD!r}) or application/json")  # fmt: skip
    body = await _body(request, max_body_bytes)
    if not body:
        raise BadInput(400, "empty", "the request body is empty")
    if kind == "application/json":
        uploads = _from_json(body, max_images)
    else:
        uploads = await _from_multipart(request, body, max_images)
    if not uploads:
        raise BadInput(400, "empty", f"no images: send one or more in field {FIELD!r}")
    for upload in uploads:
        if not upload.data:
            raise BadInput(400, "empty", f"{upload.name}: the file is empty")
    return uploads


def to_batch(uploads: list[Upload], spec: ModelSpec, limits: ImageLimits) -> np.ndarray:
    """The normalised (N, C, H, W) batch, preprocessed exactly as in evaluate."""
    sides = (limits.min_side, limits.max_side)
    try:
        pixels = [to_pixels(upload.data, spec, max_pixels=limits.max_pixels,
                            sides=sides, name=upload.name) for upload in uploads]  # fmt: skip
    except ImageTooLargeError as error:
        raise BadInput(413, "image_too_large", str(error)) from None
    except ImageSizeError as error:
        raise BadInput(422, "image_size", str(error)) from None
    except UndecodableImageError as error:
        raise BadInput(422, "truncated", str(error)) from None
    except ImageReadError as error:
        raise BadInput(422, "not_an_image", str(error)) from None
    return normalise(np.stack(pixels), spec)


def upload_size(upload: Upload) -> tuple[int, int]:
    """The upload's width and height, from its header (to_batch has already decoded it)."""
    with Image.open(io.BytesIO(upload.data)) as image:
        width, height = image.size
    return int(width), int(height)


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadInput(413, "too_large", f"body of {declared} bytes exceeds {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadInput(413, "too_large", f"body exceeds {limit} bytes")
    return bytes(body)


def _from_json(body: bytes, max_images: int) -> list[Upload]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadInput(
            400, "bad_json", f"the body is not valid JSON ({error})"
        ) from None
    images = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(images, list):
        raise BadInput(400, "bad_json", 'expected {"images": ["<base64>", ...]}')
    if len(images) > max_images:
        raise BadInput(413, "too_many_images",
                       f"{len(images)} images; at most {max_images} per request")  # fmt: skip
    uploads = []
    for index, text in enumerate(images):
        name = f"images[{index}]"
        try:
            if not isinstance(text, str):
                raise ValueError("not a string")
            uploads.append(Upload(name, base64.b64decode(text, validate=True)))
        except (ValueError, binascii.Error) as error:
            raise BadInput(400, "bad_base64", f"{name}: not base64 ({error})") from None
    return uploads


async def _from_multipart(request: Request, body: bytes,
                          max_images: int) -> list[Upload]:  # fmt: skip
    async def once() -> AsyncGenerator[bytes, None]:
        yield body

    parser = MultiPartParser(request.headers, once(), max_files=max_images,
                             max_fields=max_images)  # fmt: skip
    try:
        form = await parser.parse()
    except MultiPartException as error:
        status, kind = (
            (413, "too_many_images") if "Too many files" in error.message
            else (400, "bad_multipart"))  # fmt: skip
        detail = error.message
        if kind == "too_many_images":
            detail = f"{detail}: at most {max_images} images per request"
        raise BadInput(status, kind, detail) from None
    uploads = []
    for index, part in enumerate(form.getlist(FIELD)):
        if not isinstance(part, UploadFile):
            raise BadInput(400, "not_a_file", f"{FIELD}[{index}] is a text field, "
                           "not a file")  # fmt: skip
        uploads.append(Upload(part.filename or f"{FIELD}[{index}]", await part.read()))
    await form.close()
    return uploads
