"""Where `evoked serve` finds a row's image bytes: a file under the dataset root, or a tar member.

A store records each row's path relative to its ``dataset_root``. A plain dataset's path is a file,
served only when it is a regular file inside the root after symlinks, checked again when it is read
(`evoked.data.decode.read_bytes` with the root), so a file swapped for a symlink in between is still
refused. A webdataset store's path is ``SHARD.tar/MEMBER``: the image is read from the shard at the
member's offset, never from a file on disk named like the member (a member ``../outside.jpg`` names
nothing outside the tar). A root of ``/`` is refused, as manifests refuse it: it would let any file
of the disk be served.
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from starlette.exceptions import HTTPException

from evoked.data.decode import read_bytes
from evoked.data.manifest import unescape_name
from evoked.data.webdataset import ImageRef, image_ref, list_shard
from evoked.errors import ConfigError, DecodeError

TAR_SEP = ".tar/"


@dataclass(frozen=True)
class ImageSource:
    """A row's image: `path` is the file (the shard, for a tar member), whose size and modification
    time key the thumbnail cache; `size` < 0 reads the whole file."""

    path: Path
    root: Path
    offset: int = 0
    size: int = -1

    def read(self) -> bytes:
        """The image bytes; `DecodeError` when they cannot be read (or now lead outside the root)."""
        if self.size < 0:
            return read_bytes(self.path, root=self.root)
        try:
            with open(self.path, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise DecodeError(str(self.path), "the shard is no longer a regular file")
                fh.seek(self.offset)
                data = fh.read(self.size)
        except OSError as e:
            raise DecodeError(str(self.path), f"cannot read the shard: {e.strerror or e}") from e
        if len(data) != self.size:
            raise DecodeError(str(self.path), "the shard is shorter than its listing (changed since?)")
        return data


def checked_root(root: str | os.PathLike, store: str) -> Path:
    """The store's dataset root, resolved; a `ConfigError` for ``/`` (or a drive's root)."""
    real = Path(os.path.realpath(os.path.abspath(root)))
    if real == Path(real.anchor):
        raise ConfigError(
            f"{store}: its dataset_root is {str(root)!r}, the root of the disk; serving it would let any file "
            "be read. Make the store again from a manifest whose images share a folder below it"
        )
    return real


class ImageSources:
    """Row path -> `ImageSource` for one store (plain files, or webdataset shards)."""

    def __init__(self, root: Path, webdataset: bool):
        self.root, self.webdataset = root, webdataset
        self._shards: dict[Path, tuple[int, int, dict[str, ImageRef]]] = {}
        self._lock = threading.Lock()

    def inside(self, rel: str, what: str) -> Path:
        """`rel` under the root, after symlinks; a 403 when it leads outside, a 404 when not a file."""
        path = Path(os.path.realpath(self.root / rel))
        if not path.is_relative_to(self.root):
            raise HTTPException(403, f"the {what} is outside the dataset root")
        if not path.is_file():
            raise HTTPException(404, f"the {what} is missing on disk")
        return path

    def of(self, row: int, rel: str) -> ImageSource:
        rel = unescape_name(rel)
        if not self.webdataset:
            return ImageSource(self.inside(rel, f"image of row {row}"), self.root)
        shard_rel, sep, member = rel.partition(TAR_SEP)
        if not sep:
            raise HTTPException(404, f"row {row} names no tar member ({rel!r})")
        shard = self.inside(shard_rel + ".tar", f"shard of row {row}")
        ref = self._members(shard).get(member)
        if ref is None:
            raise HTTPException(404, f"{shard.name} holds no image member {member!r} (row {row}); the shard "
                                     "changed since the store was made")  # fmt: skip
        if ref.error is not None:
            raise HTTPException(404, f"row {row} has no usable image: {ref.error}")
        return ImageSource(shard, self.root, ref.offset, ref.size)

    def _members(self, shard: Path) -> dict[str, ImageRef]:
        """Image member name -> where it is, for the samples with one usable image (listed once per
        shard version)."""
        st = shard.stat()
        if not stat.S_ISREG(st.st_mode):
            raise HTTPException(404, f"{shard.name} is not a regular file")
        with self._lock:
            hit = self._shards.get(shard)
            if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns):
                return hit[2]
        try:
            listing = list_shard(shard)
        except Exception as e:  # a shard that cannot be listed now: this row is not served
            raise HTTPException(404, f"{shard.name} cannot be read: {e}") from None
        refs = {s.images[0].name: image_ref(listing, s) for s in listing.samples if len(s.images) == 1}
        with self._lock:
            self._shards[shard] = (st.st_size, st.st_mtime_ns, refs)
        return refs
