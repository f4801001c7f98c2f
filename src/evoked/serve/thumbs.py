"""Thumbnails made with the safe decoder and kept in a bounded in-memory LRU cache."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from evoked.data.decode import decode_rgb, read_bytes


class ThumbnailCache:
    def __init__(self, size: int = 256, max_items: int = 4096):
        self.size, self.max_items = size, max_items
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def cached(self, row: int) -> bytes | None:
        """The thumbnail if it is made already (no decoding: cheap enough for the event loop)."""
        with self._lock:
            if row in self._items:
                self._items.move_to_end(row)
                self.hits += 1
                return self._items[row]
        return None

    def get(self, row: int, path: Path, max_pixels: int) -> bytes:
        with self._lock:
            if row in self._items:
                self._items.move_to_end(row)
                self.hits += 1
                return self._items[row]
        self.misses += 1
        img = Image.fromarray(decode_rgb(read_bytes(path), str(path), max_pixels))
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        data = buf.getvalue()
        with self._lock:
            self._items[row] = data
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return data
