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

import dataclasses
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from evoked.data.decode import DEFAULT_MAX_PIXELS, DRAFT_ABOVE_PIXELS
from evoked.errors import EvokedError
from evoked.features.store import OK, STATUS_NAMES
from evoked.retrieve import Hit, Retriever
from evoked.serve import api, browse
from evoked.serve.images import ImageSource, ImageSources, checked_root
from evoked.serve.security import SecurityMiddleware, allowed_hosts, content_security_policy
from evoked.serve.thumbs import ThumbnailCache, thumb_dir_for

log = logging.getLogger(__name__)


#: A query image is resized to a few hundred pixels: a larger PNG costs seconds and gigabytes for nothing
UPLOAD_MAX_PIXELS = DRAFT_ABOVE_PIXELS


@dataclass
class ServeConfig:
    store: str
    feature: str
    index: str | None = None
    predictions: np.ndarray | None = None  # (N, 2) predicted VA per store row, NaN where none
    prediction_kind: np.ndarray | None = None  # (N,) a runfolder.KINDS name per row, "" where none
    run_name: str | None = None
    query_model: Any = None  # serve.predictions.QueryModel: predicts the VA of an uploaded image
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_upload_pixels: int = UPLOAD_MAX_PIXELS  # uploads other than JPEG (decoded at full size)
    thumb_size: int = 256
    thumb_cache_items: int = 4096
    thumb_dir: str | None = None  # disk cache of thumbnails; None: STORE.thumbs/ beside the store
    device: str = "cpu"
    host: str = "127.0.0.1"  # the bound host: with loopback names, the only Host header answered
    allow_hosts: tuple[str, ...] = ()  # more Host names to answer (a reverse proxy's name)
    workers: int = 2  # image decodes and model calls run at once, off the event loop


class ServeState:
    """What the handlers share, at ``app.state.evoked``: the retriever (store, index, query backbone),
    the run's predictions, the limits, the caches and the page."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.retriever = Retriever(cfg.store, cfg.feature, index_path=cfg.index, device=cfg.device)
        self.lock = threading.Lock()  # h5py and the query backbone are used one request at a time
        self.limiter = anyio.CapacityLimiter(max(1, cfg.workers))
        store = self.retriever.store
        self.root = checked_root(store.root, cfg.store)
        self.images = ImageSources(self.root, str(store.attrs.get("dataset_kind", "")) == "webdataset")
        self.ok_rows = np.flatnonzero(store.status == OK)
        thumb_dir = cfg.thumb_dir or thumb_dir_for(cfg.store, cfg.thumb_size)
        self.thumbs = ThumbnailCache(cfg.thumb_size, cfg.thumb_cache_items, thumb_dir)
        spec = str(store.extractors[self.retriever.extractor].get("spec", ""))
        self.text_search = cfg.feature.endswith("/embed") and spec.startswith("clip:")
        n = len(store)
        if cfg.predictions is not None and cfg.predictions.shape != (n, 2):
            raise EvokedError(f"predictions have shape {cfg.predictions.shape}, the store has {n} rows")
        self.html = resources.files("evoked.serve").joinpath("static/index.html").read_text("utf-8")
        self.columns = browse.Columns(self)
        self._points: tuple[bytes, bytes] | None = None
        self._points_lock = threading.Lock()

    def points_bytes(self) -> tuple[bytes, bytes]:
        """/api/points as (JSON, gzip), encoded by the first request that needs it and kept: the
        store and the predictions do not change while the server runs."""
        with self._points_lock:
            if self._points is None:
                self._points = api.encode_points(self)
            return self._points

    async def run(self, fn: Callable, *args: Any, heavy: bool = True) -> Any:
        """Run blocking work in a worker thread: `heavy` work (decoding, a model) a bounded number at
        a time, light work (a file read, an index lookup) in the shared thread pool."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter if heavy else None)

    def image_of(self, row: int) -> ImageSource:
        """Where the image of an ok row is (a file inside the dataset root after symlinks, or a tar
        member of a webdataset shard); else a 4xx."""
        store = self.retriever.store
        if not 0 <= row < len(store):
            raise HTTPException(404, f"no item at row {row}")
        status = int(self.retriever.status[row])
        if status != OK:
            raise HTTPException(
                404, f"row {row} has no usable image (status {STATUS_NAMES.get(status, status)})"
            )
        return self.images.of(row, str(self.retriever.paths[row]))

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


_GET = {
    "/": api.page,
    "/api/info": api.info,
    "/api/points": api.points,
    "/api/search/item": api.search_item,
    "/api/search/text": api.search_text,
    "/api/search/va": api.search_va,
    "/api/image/{row}": api.image,
    "/api/thumb/{row}": api.thumb,
    "/api/plane": browse.plane,
    "/api/plane/ids": browse.plane_ids,
    "/api/browse": browse.browse,
    "/api/item/{row}": browse.item,
    "/api/provenance": browse.provenance,
    "/api/export.csv": browse.export,
    "/api/map": browse.embedding_map,
}
ROUTES = [
    *(Route(path, fn) for path, fn in _GET.items()),
    Route("/api/search/image", api.search_image, methods=["POST"]),
]


def create_app(cfg: ServeConfig, warm: bool = False) -> Starlette:
    """The app. With `warm`, the query backbone is built now rather than at the first image query."""
    state = ServeState(cfg)
    if warm:
        state.retriever.backbone()
    state.columns.encode_in_background()
    security = Middleware(
        SecurityMiddleware,
        hosts=allowed_hosts(cfg.host, cfg.allow_hosts),
        csp=content_security_policy(state.html),
    )
    app = Starlette(
        routes=ROUTES,
        middleware=[security],
        exception_handlers={HTTPException: api.http_error, Exception: api.server_error},
    )
    app.state.evoked = state  # what every handler reads (serve.api.state_of)
    return app


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
        cfg = dataclasses.replace(cfg, host=host)
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg, warm=True), host=host, port=port, log_level="warning")
    )
    if server_box is not None:
        server_box.append(server)
    if on_ready is not None:
        threading.Thread(target=_announce, args=(server, host, port, on_ready), daemon=True).start()
    server.run()


def _announce(server: Any, host: str, port: int, on_ready: Callable[[str], None]) -> None:
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
