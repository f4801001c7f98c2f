"""Thumbnails made with the safe decoder, kept in a bounded in-memory LRU cache and on disk.

The disk copy (a folder beside the store, `STORE.thumbs/<size>px/`) makes a thumbnail once per
image for good: a restarted server, or a second one on the same store, reads the JPEG instead of
decoding the original again. A file's name hashes the item id with the source file's size and
modification time, so an image replaced on disk gets a new thumbnail.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from evoked.data.decode import decode_rgb, read_bytes

log = logging.getLogger(__name__)


def thumb_dir_for(store: str | os.PathLike, size: int) -> Path:
    """The default disk cache of a store's thumbnails: ``feats/e6.h5`` -> ``feats/e6.thumbs/256px``."""
    return Path(store).with_suffix(".thumbs") / f"{size}px"


class ThumbnailCache:
    def __init__(self, size: int = 256, max_items: int = 4096, disk_dir: str | os.PathLike | None = None):
        self.size, self.max_items = size, max_items
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.disk_hits = 0

    def cached(self, row: int) -> bytes | None:
        """The thumbnail if it is made already (no decoding: cheap enough for the event loop)."""
        with self._lock:
            if row in self._items:
                self._items.move_to_end(row)
                self.hits += 1
                return self._items[row]
        return None

    def _disk_path(self, key: str, path: Path) -> Path | None:
        if self.disk_dir is None:
            return None
        st = path.stat()
        digest = hashlib.sha1(f"{key}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
        return self.disk_dir / digest[:2] / f"{digest}.jpg"

    def get(
        self,
        row: int,
        path: Path,
        max_pixels: int,
        key: str | None = None,
        read: Callable[[], bytes] | None = None,
    ) -> bytes:
        """The JPEG thumbnail of `row` (file `path`); `key` (the item id) names its disk copy; `read`
        gives the image bytes when they are not the whole file (a tar member)."""
        data = self.cached(row)
        if data is not None:
            return data
        disk = self._disk_path(key if key is not None else str(row), path)
        if disk is not None and disk.is_file():
            data = disk.read_bytes()
            self.disk_hits += 1
        else:
            self.misses += 1
            data = self._make(read() if read is not None else read_bytes(path), str(path), max_pixels)
            if disk is not None:
                self._save(disk, data)
        with self._lock:
            self._items[row] = data
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return data

    def _make(self, data: bytes, source: str, max_pixels: int) -> bytes:
        img = Image.fromarray(decode_rgb(data, source, max_pixels))
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        return buf.getvalue()

    def _save(self, disk: Path, data: bytes) -> None:
        """Write atomically (a reader never sees half a file); a read-only folder turns the disk cache off."""
        try:
            disk.parent.mkdir(parents=True, exist_ok=True)
            tmp = disk.with_name(f".{disk.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, disk)
        except OSError as e:
            log.warning("cannot cache thumbnails in %s (%s); keeping them in memory only", self.disk_dir, e)
            self.disk_dir = None
