"""Reading images for extraction: DataLoader workers read files and decode them once.

Two decode paths, chosen per run:

- ``cpu``: workers decode every image with the project's safe decoder (`evoked.data.decode`);
- ``device``: workers read the bytes and parse only the header; baseline/progressive RGB or grey
  JPEGs are then decoded in batches on the compute device (nvJPEG on CUDA through
  ``torchvision.io.decode_jpeg``), everything else is decoded by the workers as above.

Either way, a file that cannot be read becomes a recorded failure with its reason.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from evoked.data.decode import DEFAULT_MAX_PIXELS, DRAFT_ABOVE_PIXELS, decode_rgb, probe, read_bytes
from evoked.errors import DecodeError

log = logging.getLogger(__name__)

_DEVICE_JPEG_MODES = ("RGB", "L")  # nvJPEG decodes these; CMYK/YCCK go through the CPU decoder


class ImageFiles(Dataset):
    """Item `row` of a manifest: its decoded image, or its JPEG bytes, or the reason it failed."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        device_jpeg: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        root: str | None = None,
    ):
        self.paths = list(paths)
        self.root = root  # the dataset root: a file leading outside it (a symlink) is refused at read time
        self.device_jpeg = device_jpeg
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> dict:
        t0 = time.perf_counter()
        path = self.paths[row]
        item: dict[str, Any] = {"row": row, "image": None, "jpeg": None, "orientation": 1, "error": None}
        try:
            data = self.read(row)
            if self.device_jpeg:
                info = probe(data, path, self.max_pixels)
                small = info.width * info.height <= DRAFT_ABOVE_PIXELS  # huge ones: reduced-scale CPU decode
                if info.format == "JPEG" and info.mode in _DEVICE_JPEG_MODES and small:
                    item["jpeg"] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                    item["orientation"] = info.orientation
                    item["path"] = path
            if item["jpeg"] is None:
                arr = decode_rgb(data, path, self.max_pixels)
                item["image"] = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        except DecodeError as e:
            item["error"] = e.reason
        item["seconds"] = time.perf_counter() - t0
        return item

    def read(self, row: int) -> bytes:
        """The bytes of item `row` (a source that keeps images elsewhere overrides this)."""
        return read_bytes(self.paths[row], root=self.root)


def collate(items: list[dict]) -> dict:
    """Keep images as a list: they have different sizes until each backbone resizes them."""
    return {
        key: [it.get(key) for it in items]
        for key in ("row", "image", "jpeg", "orientation", "error", "seconds", "path")
    }


def apply_orientation(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Turn a (C, H, W) image upright according to its EXIF orientation tag (as PIL does)."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-2, -1)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(img, k=-1, dims=(-2, -1))
    if orientation == 7:
        return img.flip(-2, -1).transpose(-2, -1)
    if orientation == 8:
        return torch.rot90(img, k=1, dims=(-2, -1))
    return img


def _decode_jpeg(data, device: torch.device):
    with warnings.catch_warnings():
        # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec; they still work
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_jpegs_on_device(
    jpegs: Sequence[torch.Tensor],
    orientations: Sequence[int],
    paths: Sequence[str],
    device: torch.device,
    max_pixels: int,
) -> list[torch.Tensor | str]:
    """Decode JPEG bytes in one batch on `device`; per image, a (3, H, W) uint8 tensor or a failure reason.

    If the batch call fails, images are retried one by one, and an image the device decoder rejects
    falls back to the CPU decoder (which gives the reason when it fails too).
    """
    if not jpegs:
        return []

    try:
        decoded = _decode_jpeg(list(jpegs), device)
        results: list[torch.Tensor | str] = list(decoded)
    except RuntimeError:
        results = []
        for data in jpegs:
            try:
                results.append(_decode_jpeg(data, device))
            except RuntimeError:
                results.append("")  # retried on the CPU below
    out: list[torch.Tensor | str] = []
    for res, data, o, path in zip(results, jpegs, orientations, paths):
        if isinstance(res, torch.Tensor):
            out.append(apply_orientation(res, o))
            continue
        try:
            arr = decode_rgb(data.numpy().tobytes(), path, max_pixels)
            out.append(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).to(device))
        except DecodeError as e:
            out.append(e.reason)
    return out
