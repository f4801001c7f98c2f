"""`evoked serve`: a small web app to browse images by emotion, and the JSON API behind it.

Safety: the server binds to 127.0.0.1 unless told otherwise and answers only requests whose Host
is the bound host or a loopback name; every response carries nosniff and a Content-Security-Policy
(evoked.serve.security); images are addressed by row number, never by path, only rows whose status
is ok are served, only files under the dataset root (after symlinks), with the content type of the
format the decoder finds; uploads are size-limited while they are read and decoded with the
project's safe decoder off the event loop, a bounded number at a time; a bad request gets a 4xx
with a JSON message, and an unexpected error a 500 without a traceback (it is logged).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from evoked.data.decode import DEFAULT_MAX_PIXELS, decode_rgb, read_bytes
from evoked.data.manifest import unescape_name
from evoked.errors import DecodeError, EvokedError
from evoked.features.store import OK, STATUS_NAMES
from evoked.retrieve import Hit, Retriever
from evoked.serve.browse import browse_routes
from evoked.serve.security import SecurityMiddleware, allowed_hosts, content_security_policy, image_payload
from evoked.serve.thumbs import ThumbnailCache, thumb_dir_for

log = logging.getLogger(__name__)

MAX_K = 200
VA_RANGE = (1.0, 9.0)  # the scale of every VA query


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
    thumb_dir: str | None = None  # disk cache of thumbnails; None: STORE.thumbs/ beside the store
    device: str = "cpu"
    host: str = "127.0.0.1"  # the bound host: with loopback names, the only Host header answered
    allow_hosts: tuple[str, ...] = ()  # more Host names to answer (a reverse proxy's name)
    workers: int = 2  # image decodes and model calls run at once, off the event loop


class _State:
    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.retriever = Retriever(cfg.store, cfg.feature, index_path=cfg.index, device=cfg.device)
        self.lock = threading.Lock()  # h5py and the query backbone are used one request at a time
        self.limiter = anyio.CapacityLimiter(max(1, cfg.workers))
        store = self.retriever.store
        self.root = Path(os.path.abspath(store.root))
        self.ok_rows = np.flatnonzero(store.status == OK)
        thumb_dir = cfg.thumb_dir or thumb_dir_for(cfg.store, cfg.thumb_size)
        self.thumbs = ThumbnailCache(cfg.thumb_size, cfg.thumb_cache_items, thumb_dir)
        extractor = store.extractors[self.retriever.extractor]
        self.text_search = cfg.feature.endswith("/embed") and str(extractor.get("spec", "")).startswith(
            "clip:"
        )
        n = len(store)
        if cfg.predictions is not None and cfg.predictions.shape != (n, 2):
            raise EvokedError(f"predictions have shape {cfg.predictions.shape}, the store has {n} rows")

    async def run(self, fn: Callable, *args, heavy: bool = True):
        """Run blocking work in a worker thread: `heavy` work (decoding, a model) a bounded number at
        a time, light work (a file read, an index lookup) in the shared thread pool."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter if heavy else None)

    def file_of(self, row: int) -> Path:
        """The image file of an ok row, inside the dataset root after symlinks; else a 4xx."""
        store = self.retriever.store
        if not 0 <= row < len(store):
            raise HTTPException(404, f"no item at row {row}")
        status = int(self.retriever.status[row])
        if status != OK:
            raise HTTPException(
                404, f"row {row} has no usable image (status {STATUS_NAMES.get(status, status)})"
            )
        path = Path(os.path.realpath(self.root / unescape_name(str(self.retriever.paths[row]))))
        if not path.is_relative_to(os.path.realpath(self.root)):
            raise HTTPException(403, "that file is outside the dataset root")
        if not path.is_file():
            raise HTTPException(404, f"the image of row {row} is missing on disk")
        return path

    def hit_json(self, h: Hit) -> dict:
        d = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in h.to_dict().items()
        }
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


def _va(request: Request, name: str) -> float:
    value = _float(request, name)
    lo, hi = VA_RANGE
    if not lo <= value <= hi:
        raise HTTPException(400, f"{name}={value:g} is outside the {lo:g}..{hi:g} valence/arousal scale")
    return value


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (chunked uploads included)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"upload larger than {limit / 2**20:.1f} MiB")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"upload larger than {limit / 2**20:.1f} MiB")
        parts.append(chunk)
    return b"".join(parts)


def create_app(cfg: ServeConfig, warm: bool = False) -> Starlette:
    """The app. With `warm`, the query backbone is built now rather than at the first image query."""
    state = _State(cfg)
    if warm:
        state.retriever.backbone()
    html = resources.files("evoked.serve").joinpath("static/index.html").read_text("utf-8")

    async def page(request: Request) -> Response:
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

        def search() -> list[Hit]:
            with state.lock:
                try:
                    return state.retriever.by_id(item, k)
                except EvokedError as e:
                    raise HTTPException(404, str(e)) from None

        return hits(await state.run(search, heavy=False), {"id": item, "k": k})

    async def search_text(request: Request) -> Response:
        text = (request.query_params.get("q") or "").strip()
        if not text:
            raise HTTPException(400, "missing query parameter 'q'")
        if len(text) > 300:
            raise HTTPException(400, "the text query is longer than 300 characters")
        if not state.text_search:
            raise HTTPException(400, f"text search needs CLIP embed features; this page serves {cfg.feature}")
        k = _k(request)

        def search() -> list[Hit]:
            with state.lock:
                return state.retriever.by_text(text, k)

        return hits(await state.run(search), {"text": text, "k": k})

    async def search_va(request: Request) -> Response:
        v, a, k = _va(request, "v"), _va(request, "a"), _k(request)
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
        k = _k(request)
        # the multipart envelope may add a few KiB around the file itself
        body = await _read_body(request, cfg.max_upload_bytes + 16384)
        request._body = body  # Request.form() parses what was read, not the network again
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
            raise HTTPException(413, f"upload larger than {cfg.max_upload_bytes / 2**20:.1f} MiB")

        def search() -> list[Hit]:
            try:
                image = decode_rgb(data, name, cfg.max_pixels)
            except DecodeError as e:
                raise HTTPException(415, f"not a usable image: {e.reason}") from None
            with state.lock:
                return state.retriever.search_vectors(state.retriever.embed_image(image), k)[0]

        return hits(await state.run(search), {"image": name, "k": k})

    async def image(request: Request) -> Response:
        row = _row(request)
        path = state.file_of(row)

        def payload() -> tuple[bytes, str]:
            try:
                return image_payload(read_bytes(path), f"row {row}", cfg.max_pixels)
            except DecodeError as e:
                raise HTTPException(422, f"row {row} is no longer a usable image: {e.reason}") from None

        data, kind = await state.run(payload, heavy=False)
        return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    async def thumb(request: Request) -> Response:
        row = _row(request)
        path = state.file_of(row)

        def make() -> bytes:
            try:
                return state.thumbs.get(row, path, cfg.max_pixels, key=str(state.retriever.ids[row]))
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
        *browse_routes(state),
    ]
    security = Middleware(
        SecurityMiddleware, hosts=allowed_hosts(cfg.host, cfg.allow_hosts), csp=content_security_policy(html)
    )
    app = Starlette(
        routes=routes,
        middleware=[security],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
    app.state.evoked = state
    return app


def _row(request: Request) -> int:
    raw = request.path_params["row"]
    try:
        return int(raw)
    except ValueError:
        raise HTTPException(400, f"row {raw!r} is not a whole number") from None


def serve(
    cfg: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str], None] | None = None,
    server_box: list | None = None,
) -> None:
    """Run the app with uvicorn until interrupted.

    The model is loaded first; `on_ready(url)` is called once the port answers, so a "serving on"
    line is never printed before the page can be opened. `server_box`, when given, receives the
    uvicorn server (set its ``should_exit`` to stop it).
    """
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can browse the dataset", host)
    if cfg.host != host:
        cfg = ServeConfig(**{**cfg.__dict__, "host": host})
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg, warm=True), host=host, port=port, log_level="warning")
    )
    if server_box is not None:
        server_box.append(server)
    if on_ready is not None:
        threading.Thread(target=_announce, args=(server, host, port, on_ready), daemon=True).start()
    server.run()


def _announce(server, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Call `on_ready` once uvicorn has started and a connection to the port succeeds."""
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    while not server.should_exit:
        if server.started:
            try:
                with socket.create_connection((probe_host, port), timeout=1):
                    break
            except OSError:
                pass
        time.sleep(0.05)
    else:
        return
    shown = f"[{host}]" if ":" in host else host
    on_ready(f"http://{shown}:{port}/")
