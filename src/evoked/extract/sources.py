"""Sources: where the runner's reader finds the bytes of each row's image.

As in clip-retrieval's runner, the input is built by a factory chosen by the input's kind, and
the loop only sees the result: a torch ``Dataset`` whose item ``row`` is the decoded image of
manifest row ``row`` (or its JPEG bytes, or why it failed; see `evoked.extract.reader`). A new
input format is one decorated factory here::

    @register_source("webdataset")
    def tar_members(manifest, *, device_jpeg, max_pixels) -> Dataset: ...

Manifests of any other kind are read as image files.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

from evoked.data.decode import DEFAULT_MAX_PIXELS
from evoked.data.manifest import Manifest
from evoked.data.webdataset import image_refs
from evoked.errors import DecodeError
from evoked.extract.reader import ImageFiles
from evoked.registry import Registry

SourceFactory = Callable[..., Dataset]

#: Reader factories by the dataset kind of the manifest they read.
SOURCES: Registry[SourceFactory] = Registry("source")


def register_source(*kinds: str) -> Callable[[SourceFactory], SourceFactory]:
    """Register a reader factory for manifests of the given dataset kinds."""
    return SOURCES.register(kinds[0], aliases=kinds[1:])


def open_source(
    source: Manifest | Sequence[str], *, device_jpeg: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Dataset:
    """The reader for a manifest (by its kind), or for a plain list of image paths."""
    if not isinstance(source, Manifest):
        return ImageFiles(list(source), device_jpeg=device_jpeg, max_pixels=max_pixels)
    if source.kind not in SOURCES:
        paths = [str(p) for p in source.abspaths()]
        return ImageFiles(paths, device_jpeg=device_jpeg, max_pixels=max_pixels, root=str(source.root))
    return SOURCES.load(source.kind)(source, device_jpeg=device_jpeg, max_pixels=max_pixels)


#: members closer than this are read in one request (skipping the bytes between is slower)
_GAP_BYTES = 1 << 20
_SPAN_BYTES = 64 << 20


class TarMembers(ImageFiles):
    """Images straight from webdataset tars: a batch's members are read in contiguous spans.

    Rows of a block are consecutive members of a shard, so a block is one sequential read per
    shard it touches; over a run every image byte is read once and nothing is unpacked to disk.
    """

    def __init__(
        self, manifest: Manifest, *, device_jpeg: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
    ):
        super().__init__(
            [str(p) for p in manifest.abspaths()], device_jpeg=device_jpeg, max_pixels=max_pixels
        )
        self.refs = image_refs(manifest)
        self._bytes: dict[int, bytes | DecodeError] = {}

    def __getitems__(self, rows: list[int]) -> list[dict]:
        """The DataLoader fetches a whole block through here (torch's batched fetch)."""
        self._bytes = self._read_spans(rows)
        try:
            return [self[r] for r in rows]
        finally:
            self._bytes = {}

    def read(self, row: int) -> bytes:
        data = self._bytes.get(row)
        if data is None:
            data = self._read_spans([row])[row]
        if isinstance(data, DecodeError):
            raise data
        return data

    def _read_spans(self, rows: Sequence[int]) -> dict[int, bytes | DecodeError]:
        out: dict[int, bytes | DecodeError] = {}
        todo = []
        for r in rows:
            ref = self.refs[r]
            if ref.error is not None:
                out[r] = DecodeError(self.paths[r], ref.error)
            elif ref.size == 0:
                out[r] = DecodeError(self.paths[r], "empty tar member (0 bytes)")
            else:
                todo.append(r)
        todo.sort(key=lambda r: (self.refs[r].shard, self.refs[r].offset))
        for shard, group in itertools.groupby(todo, key=lambda r: self.refs[r].shard):
            try:
                fd = os.open(shard, os.O_RDONLY)
            except OSError as e:
                for r in group:
                    out[r] = DecodeError(self.paths[r], f"cannot open its tar: {e.strerror or e}")
                continue
            try:
                for span in _spans(list(group), self.refs):
                    start = self.refs[span[0]].offset
                    stop = max(self.refs[r].offset + self.refs[r].size for r in span)
                    buf = memoryview(os.pread(fd, stop - start, start))
                    for r in span:
                        ref = self.refs[r]
                        data = bytes(buf[ref.offset - start : ref.offset - start + ref.size])
                        out[r] = (
                            data
                            if len(data) == ref.size
                            else DecodeError(
                                self.paths[r],
                                f"tar ends inside this member ({len(data)} of {ref.size} bytes)",
                            )
                        )
            finally:
                os.close(fd)
        return out


def _spans(rows: list[int], refs) -> list[list[int]]:
    spans: list[list[int]] = []
    for r in rows:
        if spans:
            first, last = refs[spans[-1][0]], refs[spans[-1][-1]]
            end = last.offset + last.size
            if (
                refs[r].offset - end <= _GAP_BYTES
                and refs[r].offset + refs[r].size - first.offset <= _SPAN_BYTES
            ):
                spans[-1].append(r)
                continue
        spans.append([r])
    return spans


@register_source("webdataset")
def tar_members(
    manifest: Manifest, *, device_jpeg: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Dataset:
    return TarMembers(manifest, device_jpeg=device_jpeg, max_pixels=max_pixels)
