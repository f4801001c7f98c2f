"""The page and the JSON API besides browsing (serve/browse.py): checked parameters, handlers, errors.

Handlers are module-level functions that read what they need from the app's `ServeState`
(`state_of(request)`); blocking work (an index lookup, a decode, a model call) runs in worker
threads through `ServeState.run`. A bad parameter is a 400 naming it. Uploads are counted while
they arrive, through a `Request` over a receive channel that raises `PayloadTooLarge` past the
limit, so a chunked upload without a length is cut off at the limit rather than read in full.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Message

from evoked.data.decode import decode_rgb, probe
from evoked.errors import ConfigError, DecodeError, EvokedError
from evoked.retrieve import Hit
from evoked.serve.security import image_payload
from evoked.va_point import va_point

if TYPE_CHECKING:
    from evoked.serve.app import ServeState

log = logging.getLogger(__name__)

MAX_ITEMS = 200  # hits, neighbours or browse items in one answer
MAX_WHOLE = 2**53  # a whole-number parameter past this is no row, offset or count of this server
MULTIPART_ENVELOPE = 16384  # the boundaries and part headers around the file itself


class PayloadTooLarge(HTTPException):
    """A request body past the upload limit: always a 413, whatever part of the reading noticed."""

    def __init__(self, limit: int):
        super().__init__(413, f"upload larger than {limit / 2**20:.1f} MiB; send a smaller image")


def state_of(request: Request) -> ServeState:
    return request.app.state.evoked


def rounded(x: np.ndarray, digits: int = 3) -> list[float | None]:
    """Floats for JSON, NaN as null."""
    return [None if math.isnan(v) else v for v in np.round(np.asarray(x, dtype=float), digits).tolist()]


def number(request: Request, name: str, default: Any = None, *, whole: bool = False) -> Any:
    """A finite number from the query string (an int if `whole`), `default` when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    shown = raw if len(raw) <= 40 else f"{raw[:20]}...({len(raw)} characters)"
    if len(raw) > 400:  # int() of a long digit string is slow and numpy overflows on it anyway
        raise HTTPException(400, f"{name}={shown} is too long; give a number of at most 400 characters")
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        raise HTTPException(400, f"{name}={shown!r} is not a {'whole number' if whole else 'number'}") from None
    if whole and abs(value) > MAX_WHOLE:  # before isfinite, which overflows on a huge int
        raise HTTPException(400, f"{name}={shown} is out of range; give a whole number below {MAX_WHOLE}")
    if not math.isfinite(value):
        raise HTTPException(400, f"{name}={shown!r} is not finite")
    return value


def whole_number(request: Request, name: str, default: int, lo: int, hi: int | None = None) -> int:
    value = number(request, name, default, whole=True)
    if value < lo or (hi is not None and value > hi):
        allowed = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise HTTPException(400, f"{name}={value} must be {allowed}")
    return value


def k_param(request: Request) -> int:
    return whole_number(request, "k", 12, 1, MAX_ITEMS)


def row_param(request: Request) -> int:
    raw = request.path_params["row"]
    try:
        row = int(raw) if len(raw) <= 20 else None
    except ValueError:
        row = None
    if row is None:
        shown = raw if len(raw) <= 40 else f"{raw[:20]}...({len(raw)} characters)"
        raise HTTPException(400, f"row {shown!r} is not a row number; give a whole number from /api/browse")
    return row


def source_param(request: Request, has_predictions: bool) -> str:
    """Which VA a search or filter reads: the rated labels or the run's predictions."""
    source = request.query_params.get("source", "labels")
    if source not in ("labels", "predictions"):
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


# -- the handlers -----------------------------------------------------------------------------
async def page(request: Request) -> Response:
    return HTMLResponse(state_of(request).html)


async def info(request: Request) -> Response:
    state = state_of(request)
    store, cfg = state.retriever.store, state.cfg
    return JSONResponse(
        {
            "dataset": store.attrs.get("dataset"),
            "items": len(store),
            "ok": int(state.ok_rows.size),
            "feature": cfg.feature,
            "index": state.retriever.kind,
            "text_search": state.text_search,
            "predictions": cfg.predictions is not None,
            "run": cfg.run_name,
            "max_upload_bytes": cfg.max_upload_bytes,
        }
    )


def encode_points(state: ServeState) -> tuple[bytes, bytes]:
    """The /api/points answer as compact JSON and its gzip: built once, in a worker thread (a
    300,000-item store is megabytes of JSON, too slow for the event loop)."""
    r, rows, cfg = state.retriever, state.ok_rows, state.cfg
    out = {
        "row": rows.tolist(),
        "id": [str(i) for i in r.ids[rows]],
        "category": [str(c) for c in r.category[rows]],
        "valence": rounded(r.valence[rows], 4),
        "arousal": rounded(r.arousal[rows], 4),
    }
    if cfg.predictions is not None:
        p = cfg.predictions[rows]
        out["pred_valence"], out["pred_arousal"] = rounded(p[:, 0], 4), rounded(p[:, 1], 4)
        if cfg.prediction_kind is not None:
            out["pred_kind"] = [str(k) or None for k in cfg.prediction_kind[rows]]
    raw = json.dumps(out, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return raw, gzip.compress(raw, compresslevel=5, mtime=0)


async def points(request: Request) -> Response:
    state = state_of(request)
    raw, packed = await state.run(state.points_bytes, heavy=False)
    headers = {"Vary": "Accept-Encoding", "Cache-Control": "no-cache"}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        return Response(packed, media_type="application/json", headers={**headers, "Content-Encoding": "gzip"})
    return Response(raw, media_type="application/json", headers=headers)


def _hits(request: Request, found: list[Hit], query: dict) -> JSONResponse:
    return JSONResponse({"query": query, "hits": [state_of(request).hit_json(h) for h in found]})


async def search_item(request: Request) -> Response:
    state, item = state_of(request), request.query_params.get("id")
    if not item:
        raise HTTPException(400, "missing query parameter 'id'")
    k = k_param(request)

    def search() -> list[Hit]:
        with state.lock:
            try:
                return state.retriever.by_id(item, k)
            except EvokedError as e:
                raise HTTPException(404, str(e)) from None

    return _hits(request, await state.run(search, heavy=False), {"id": item, "k": k})


async def search_text(request: Request) -> Response:
    state, text = state_of(request), (request.query_params.get("q") or "").strip()
    if not text:
        raise HTTPException(400, "missing query parameter 'q'")
    if len(text) > 300:
        raise HTTPException(400, "the text query is longer than 300 characters")
    if not state.text_search:
        raise HTTPException(
            400, f"text search needs CLIP embed features; this page serves {state.cfg.feature}"
        )
    k = k_param(request)

    def search() -> list[Hit]:
        with state.lock:
            return state.retriever.by_text(text, k)

    return _hits(request, await state.run(search), {"text": text, "k": k})


async def search_va(request: Request) -> Response:
    state = state_of(request)
    (v, a), k = va_param(request), k_param(request)
    source = source_param(request, state.cfg.predictions is not None)
    try:
        found = state.retriever.by_va(v, a, k, va=state.cfg.predictions if source == "predictions" else None)
    except EvokedError as e:
        raise HTTPException(400, str(e)) from None
    return _hits(request, found, {"valence": v, "arousal": a, "source": source, "k": k})


def decode_upload(data: bytes, name: str, max_pixels: int, max_upload_pixels: int) -> np.ndarray:
    """An upload decoded for a query: a JPEG at reduced scale when it is large (`decode_rgb`'s
    draft mode), any other format only up to `max_upload_pixels` (PNG and the rest cannot be
    decoded smaller, and a tiny file can hold a huge image)."""
    info = probe(data, name, max_pixels)
    pixels = info.width * info.height
    if info.format != "JPEG" and pixels > max_upload_pixels:
        raise HTTPException(
            413,
            f"the {info.format or 'image'} upload is {info.width}x{info.height} = {pixels:,} pixels, above the "
            f"upload limit of {max_upload_pixels:,}; resize it, or send it as a JPEG",
        )
    return decode_rgb(data, name, max_pixels)


async def search_image(request: Request) -> Response:
    state, k = state_of(request), k_param(request)
    data, name = await read_upload(request, state.cfg.max_upload_bytes)

    query: dict[str, Any] = {"image": name, "k": k}

    def search() -> list[Hit]:
        try:
            image = decode_upload(data, name, state.cfg.max_pixels, state.cfg.max_upload_pixels)
        except DecodeError as e:
            raise HTTPException(415, f"not a usable image: {e.reason}") from None
        with state.lock:
            hits = state.retriever.search_vectors(state.retriever.embed_image(image), k)[0]
            model = state.cfg.query_model
            if model is not None:  # the run's model on the query itself: always unseen
                va = model.predict(image)
                query["pred_valence"], query["pred_arousal"] = va if va is not None else (None, None)
                query["pred_kind"] = "unseen"
        return hits

    return _hits(request, await state.run(search), query)


async def image(request: Request) -> Response:
    state, row = state_of(request), row_param(request)
    source = state.image_of(row)

    def payload() -> tuple[bytes, str]:
        try:
            return image_payload(source.read(), f"row {row}", state.cfg.max_pixels)
        except DecodeError as e:
            raise HTTPException(422, f"row {row} is no longer a usable image: {e.reason}") from None

    data, kind = await state.run(payload, heavy=False)
    return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})


async def thumb(request: Request) -> Response:
    state, row = state_of(request), row_param(request)
    source = state.image_of(row)

    def make() -> bytes:
        try:
            key = str(state.retriever.ids[row])
            return state.thumbs.get(row, source.path, state.cfg.max_pixels, key=key, read=source.read)
        except DecodeError as e:
            raise HTTPException(422, f"cannot make a thumbnail: {e.reason}") from None

    data = state.thumbs.cached(row)
    if data is None:
        data = await state.run(make)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # the handler of HTTPException (PayloadTooLarge is one)
    return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("error serving %s", request.url.path)
    return JSONResponse({"error": "internal error (see the server log)", "status": 500}, status_code=500)
