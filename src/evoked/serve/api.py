"""The page and the JSON API's handlers besides browsing (serve/browse.py): info, points, search, images.

Each handler reads what it needs from the app's `ServeState` (`params.state_of`); blocking work
(an index lookup, a decode, a model call) runs in worker threads through `ServeState.run`.
"""

from __future__ import annotations

import logging

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from evoked.data.decode import decode_rgb, read_bytes
from evoked.errors import DecodeError, EvokedError
from evoked.retrieve import Hit
from evoked.serve.params import k_param, read_upload, row_param, source_param, state_of, va_param
from evoked.serve.security import image_payload

log = logging.getLogger(__name__)


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


def _rounded(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


async def points(request: Request) -> Response:
    state = state_of(request)
    r, rows, cfg = state.retriever, state.ok_rows, state.cfg
    out = {
        "row": rows.tolist(),
        "id": [str(i) for i in r.ids[rows]],
        "category": [str(c) for c in r.category[rows]],
        "valence": _rounded(r.valence[rows]),
        "arousal": _rounded(r.arousal[rows]),
    }
    if cfg.predictions is not None:
        p = cfg.predictions[rows]
        out["pred_valence"], out["pred_arousal"] = _rounded(p[:, 0]), _rounded(p[:, 1])
        if cfg.prediction_kind is not None:
            out["pred_kind"] = [str(k) or None for k in cfg.prediction_kind[rows]]
    return JSONResponse(out)


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


async def search_image(request: Request) -> Response:
    state, k = state_of(request), k_param(request)
    data, name = await read_upload(request, state.cfg.max_upload_bytes)

    def search() -> list[Hit]:
        try:
            image = decode_rgb(data, name, state.cfg.max_pixels)
        except DecodeError as e:
            raise HTTPException(415, f"not a usable image: {e.reason}") from None
        with state.lock:
            return state.retriever.search_vectors(state.retriever.embed_image(image), k)[0]

    return _hits(request, await state.run(search), {"image": name, "k": k})


async def image(request: Request) -> Response:
    state, row = state_of(request), row_param(request)
    path = state.file_of(row)

    def payload() -> tuple[bytes, str]:
        try:
            return image_payload(read_bytes(path), f"row {row}", state.cfg.max_pixels)
        except DecodeError as e:
            raise HTTPException(422, f"row {row} is no longer a usable image: {e.reason}") from None

    data, kind = await state.run(payload, heavy=False)
    return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})


async def thumb(request: Request) -> Response:
    state, row = state_of(request), row_param(request)
    path = state.file_of(row)

    def make() -> bytes:
        try:
            return state.thumbs.get(row, path, state.cfg.max_pixels, key=str(state.retriever.ids[row]))
        except DecodeError as e:
            raise HTTPException(422, f"cannot make a thumbnail: {e.reason}") from None

    data = state.thumbs.cached(row)
    if data is None:
        data = await state.run(make)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


async def http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("error serving %s", request.url.path)
    return JSONResponse({"error": "internal error (see the server log)", "status": 500}, status_code=500)
