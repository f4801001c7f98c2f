"""`evoked serve`: a small web app to browse images by emotion, and the JSON API behind it.

Safety: the server binds to 127.0.0.1 unless told otherwise; images are addressed by row number,
never by path, and only files under the dataset root are served; uploads are size-limited and
decoded with the project's safe decoder; a bad request gets a 4xx with a JSON message, and an
unexpected error a 500 without a traceback (it is logged).
"""

from __future__ import annotations

import logging
import mimetypes
import os
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from evoked.data.decode import DEFAULT_MAX_PIXELS, decode_rgb
from evoked.errors import DecodeError, EvokedError
from evoked.features.store import OK
from evoked.retrieve import Hit, Retriever
from evoked.serve.thumbs import ThumbnailCache

log = logging.getLogger(__name__)

MAX_K = 200


@dataclass
class ServeConfig:
    store: str
    feature: str
    index: str | None = None
    predictions: np.ndarray | None = None  # (N, 2) predicted VA per store row, NaN where none
    prediction_kind: np.ndarray | None = None  # (N,) oof, held-out, transfer or fitted (serve/predictions.py)
    run_name: str | None = None
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    thumb_size: int = 256
    thumb_cache_items: int = 4096
    device: str = "cpu"


class _State:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.retriever = Retriever(cfg.store, cfg.feature, index_path=cfg.index, device=cfg.device)
        self.lock = threading.Lock()  # h5py and the query backbone are used one request at a time
        store = self.retriever.store
        self.root = Path(os.path.abspath(store.root))
        self.ok_rows = np.flatnonzero(store.status == OK)
        self.thumbs = ThumbnailCache(cfg.thumb_size, cfg.thumb_cache_items)
        extractor = store.extractors[self.retriever.extractor]
        self.text_search = cfg.feature.endswith("/embed") and str(extractor.get("spec", "")).startswith(
            "clip:"
        )
        n = len(store)
        if cfg.predictions is not None and cfg.predictions.shape != (n, 2):
            raise EvokedError(f"predictions have shape {cfg.predictions.shape}, the store has {n} rows")

    def file_of(self, row: int) -> Path:
        store = self.retriever.store
        if not 0 <= row < len(store):
            raise HTTPException(404, f"no item at row {row}")
        path = Path(os.path.realpath(self.root / str(self.retriever.paths[row])))
        if not path.is_relative_to(os.path.realpath(self.root)):
            raise HTTPException(403, "that file is outside the dataset root")
        if not path.is_file():
            raise HTTPException(404, f"the image of row {row} is missing on disk")
        return path

    def hit_json(self, h: Hit) -> dict:
        d = h.to_dict()
        pred = self.cfg.predictions
        if pred is not None and not np.isnan(pred[h.row]).any():
            d["pred_valence"], d["pred_arousal"] = float(pred[h.row, 0]), float(pred[h.row, 1])
            if self.cfg.prediction_kind is not None:
                d["pred_kind"] = str(self.cfg.prediction_kind[h.row])
        d["thumb"] = f"/api/thumb/{h.row}"
        d["image"] = f"/api/image/{h.row}"
        return d


def _k(request: Request) -> int:
    raw = request.query_params.get("k", "12")
    try:
        k = int(raw)
    except ValueError:
        raise HTTPException(400, f"k={raw!r} is not a whole number") from None
    if not 1 <= k <= MAX_K:
        raise HTTPException(400, f"k={k} must be between 1 and {MAX_K}")
    return k


def _float(request: Request, name: str) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        raise HTTPException(400, f"missing query parameter {name!r}")
    try:
        value = float(raw)
    except ValueError:
        raise HTTPException(400, f"{name}={raw!r} is not a number") from None
    if not np.isfinite(value):
        raise HTTPException(400, f"{name}={raw!r} is not finite")
    return value


def create_app(cfg: ServeConfig, warm: bool = False) -> Starlette:
    """The app. With `warm`, the query backbone is built now rather than at the first image query."""
    state = _State(cfg)
    if warm:
        state.retriever.backbone()

    async def page(request: Request) -> Response:
        html = resources.files("evoked.serve").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(html)

    async def info(request: Request) -> Response:
        store = state.retriever.store
        a = store.attrs
        return JSONResponse(
            {
                "dataset": a.get("dataset"),
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

    async def points(request: Request) -> Response:
        r = state.retriever
        rows = state.ok_rows
        out = {
            "row": rows.tolist(),
            "id": [str(i) for i in r.ids[rows]],
            "category": [str(c) for c in r.category[rows]],
            "valence": [None if np.isnan(v) else round(float(v), 4) for v in r.valence[rows]],
            "arousal": [None if np.isnan(v) else round(float(v), 4) for v in r.arousal[rows]],
        }
        if cfg.predictions is not None:
            p = cfg.predictions[rows]
            out["pred_valence"] = [None if np.isnan(v) else round(float(v), 4) for v in p[:, 0]]
            out["pred_arousal"] = [None if np.isnan(v) else round(float(v), 4) for v in p[:, 1]]
            if cfg.prediction_kind is not None:
                out["pred_kind"] = [str(k) or None for k in cfg.prediction_kind[rows]]
        return JSONResponse(out)

    def hits(found: list[Hit], query: dict) -> JSONResponse:
        return JSONResponse({"query": query, "hits": [state.hit_json(h) for h in found]})

    async def search_item(request: Request) -> Response:
        item = request.query_params.get("id")
        if not item:
            raise HTTPException(400, "missing query parameter 'id'")
        k = _k(request)
        with state.lock:
            try:
                found = state.retriever.by_id(item, k)
            except EvokedError as e:
                raise HTTPException(404, str(e)) from None
        return hits(found, {"id": item, "k": k})

    async def search_text(request: Request) -> Response:
        text = (request.query_params.get("q") or "").strip()
        if not text:
            raise HTTPException(400, "missing query parameter 'q'")
        if len(text) > 300:
            raise HTTPException(400, "the text query is longer than 300 characters")
        if not state.text_search:
            raise HTTPException(400, f"text search needs CLIP embed features; this page serves {cfg.feature}")
        k = _k(request)
        with state.lock:
            found = state.retriever.by_text(text, k)
        return hits(found, {"text": text, "k": k})

    async def search_va(request: Request) -> Response:
        v, a, k = _float(request, "v"), _float(request, "a"), _k(request)
        source = request.query_params.get("source", "labels")
        if source not in ("labels", "predictions"):
            raise HTTPException(400, f"source={source!r}: use labels or predictions")
        if source == "predictions" and cfg.predictions is None:
            raise HTTPException(400, "no predictions: start the server with --run runs/NAME")
        try:
            found = state.retriever.by_va(v, a, k, va=cfg.predictions if source == "predictions" else None)
        except EvokedError as e:
            raise HTTPException(400, str(e)) from None
        return hits(found, {"valence": v, "arousal": a, "source": source, "k": k})

    async def search_image(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_upload_bytes + 4096:
            raise HTTPException(413, f"upload larger than {cfg.max_upload_bytes // 2**20} MiB")
        k = _k(request)
        try:
            async with request.form(max_files=1, max_fields=4, max_part_size=cfg.max_upload_bytes) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise HTTPException(400, "send the image as a multipart form field named 'file'")
                data = await upload.read()
                name = upload.filename or "upload"
        except HTTPException:
            raise
        except Exception as e:  # multipart parser errors: a malformed or oversized request
            status = 413 if "size" in str(e).lower() or "large" in str(e).lower() else 400
            raise HTTPException(status, f"cannot read the upload: {e}") from None
        if len(data) > cfg.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {cfg.max_upload_bytes // 2**20} MiB")
        try:
            image = decode_rgb(data, name, cfg.max_pixels)
        except DecodeError as e:
            raise HTTPException(415, f"not a usable image: {e.reason}") from None
        with state.lock:
            found = state.retriever.search_vectors(state.retriever.embed_image(image), k)[0]
        return hits(found, {"image": name, "k": k})

    async def image(request: Request) -> Response:
        path = state.file_of(_row(request))
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Response(path.read_bytes(), media_type=kind, headers={"Cache-Control": "max-age=3600"})

    async def thumb(request: Request) -> Response:
        row = _row(request)
        path = state.file_of(row)
        try:
            data = state.thumbs.get(row, path, cfg.max_pixels)
        except DecodeError as e:
            raise HTTPException(422, f"cannot make a thumbnail: {e.reason}") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("error serving %s", request.url.path)
        return JSONResponse({"error": "internal error (see the server log)", "status": 500}, status_code=500)

    routes = [
        Route("/", page),
        Route("/api/info", info),
        Route("/api/points", points),
        Route("/api/search/item", search_item),
        Route("/api/search/text", search_text),
        Route("/api/search/va", search_va),
        Route("/api/search/image", search_image, methods=["POST"]),
        Route("/api/image/{row}", image),
        Route("/api/thumb/{row}", thumb),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.evoked = state
    return app


def _row(request: Request) -> int:
    raw = request.path_params["row"]
    try:
        return int(raw)
    except ValueError:
        raise HTTPException(400, f"row {raw!r} is not a whole number") from None


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can browse the dataset", host)
    uvicorn.run(create_app(cfg, warm=True), host=host, port=port, log_level="warning")
