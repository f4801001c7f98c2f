"""What a request asks for, checked: query parameters and the uploaded image; a bad one is a 4xx.

Uploads are counted while they arrive, through a `Request` over a receive channel that raises
`PayloadTooLarge` past the limit, so a chunked upload without a length is cut off at the limit
rather than read in full first; the multipart form is parsed by Starlette from that request.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message

from evoked.errors import ConfigError
from evoked.va_point import va_point

if TYPE_CHECKING:
    from evoked.serve.state import ServeState

MAX_K = 200
SOURCES = ("labels", "predictions")
MULTIPART_ENVELOPE = 16384  # the boundaries and part headers around the file itself
_REQUIRED = object()


class PayloadTooLarge(HTTPException):
    """A request body past the upload limit: always a 413, whatever part of the reading noticed."""

    def __init__(self, limit: int):
        super().__init__(413, f"upload larger than {limit / 2**20:.1f} MiB; send a smaller image")


def state_of(request: Request) -> ServeState:
    return request.app.state.evoked


def number(request: Request, name: str, default: Any = _REQUIRED, *, whole: bool = False) -> Any:
    """A finite number from the query string (an int if `whole`), `default` when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if default is _REQUIRED:
            raise HTTPException(400, f"missing query parameter {name!r}")
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        raise HTTPException(400, f"{name}={raw!r} is not a {'whole number' if whole else 'number'}") from None
    if not math.isfinite(value):
        raise HTTPException(400, f"{name}={raw!r} is not finite")
    return value


def whole_number(request: Request, name: str, default: int, lo: int, hi: int | None = None) -> int:
    value = number(request, name, default, whole=True)
    if value < lo or (hi is not None and value > hi):
        allowed = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise HTTPException(400, f"{name}={value} must be {allowed}")
    return value


def k_param(request: Request) -> int:
    return whole_number(request, "k", 12, 1, MAX_K)


def row_param(request: Request) -> int:
    raw = request.path_params["row"]
    try:
        return int(raw)
    except ValueError:
        raise HTTPException(400, f"row {raw!r} is not a whole number") from None


def source_param(request: Request, has_predictions: bool) -> str:
    """Which VA a search or filter reads: the rated labels or the run's predictions."""
    source = request.query_params.get("source", "labels")
    if source not in SOURCES:
        raise HTTPException(400, f"source={source!r}: use labels or predictions")
    if source == "predictions" and not has_predictions:
        raise HTTPException(400, "no predictions: start the server with --run runs/NAME")
    return source


def va_param(request: Request) -> tuple[float, float]:
    """The query point ``v=..&a=..``, checked by `evoked.va_point` as `evoked search --va` is."""
    v, a = request.query_params.get("v"), request.query_params.get("a")
    if v is None or a is None:
        raise HTTPException(400, "missing query parameter 'v' or 'a': give the point as v=VALENCE&a=AROUSAL")
    try:
        return va_point(v, a)
    except ConfigError as e:
        raise HTTPException(400, str(e)) from e


async def read_upload(request: Request, limit: int) -> tuple[bytes, str]:
    """(bytes, file name) of the multipart field ``file``: a 413 past `limit` bytes, a 400 if malformed."""
    length = request.headers.get("content-length")
    body_limit = limit + MULTIPART_ENVELOPE
    if length is not None and length.isdigit() and int(length) > body_limit:
        raise PayloadTooLarge(limit)
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > body_limit:
            raise PayloadTooLarge(limit)
        return message

    # Starlette answers a malformed form with a 400 HTTPException; PayloadTooLarge passes through
    async with Request(request.scope, receive).form(max_files=1, max_fields=4, max_part_size=limit) as form:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(400, "send the image as a multipart form field named 'file'")
        data = await upload.read()
    if len(data) > limit:
        raise PayloadTooLarge(limit)
    return data, upload.filename or "upload"
