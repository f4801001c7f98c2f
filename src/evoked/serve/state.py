"""What the app's handlers share: the configuration and the state built from it once, at start.

`create_app` puts a `ServeState` at ``app.state.evoked``; handlers read it with `params.state_of`.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from starlette.exceptions import HTTPException

from evoked.data.decode import DEFAULT_MAX_PIXELS
from evoked.data.manifest import unescape_name
from evoked.errors import EvokedError
from evoked.features.store import OK, STATUS_NAMES
from evoked.retrieve import Hit, Retriever
from evoked.serve.browse import Columns
from evoked.serve.thumbs import ThumbnailCache, thumb_dir_for


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


class ServeState:
    """The retriever (store, index, query backbone), predictions, limits, caches and the page."""

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
        self.html = resources.files("evoked.serve").joinpath("static/index.html").read_text("utf-8")
        self.columns = Columns(self)

    async def run(self, fn: Callable, *args: Any, heavy: bool = True) -> Any:
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
