"""From reader batches to decoded images on the device, overlapped with the models on CUDA.

On CUDA, a thread takes batch i+1 from the reader, copies it to the GPU and decodes its JPEGs
(nvJPEG) on a CUDA stream of its own while the models run batch i on the default stream. On the
CPU the images are already decoded by the reader: the main thread only collects them.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import torch

from evoked.extract.reader import decode_jpegs_on_device

Gathered = tuple[list[torch.Tensor], list[int], dict[int, str]]
_DONE = object()


def gather_images(batch: dict, dev: torch.device, max_pixels: int) -> Gathered:
    """Decoded images on the device (in batch order), their positions, and failures by position."""
    errors: dict[int, str] = {}
    images: dict[int, torch.Tensor] = {}
    jpeg_pos = [k for k, j in enumerate(batch["jpeg"]) if j is not None]
    for k, (img, err) in enumerate(zip(batch["image"], batch["error"])):
        if err is not None:
            errors[k] = err
        elif img is not None:
            images[k] = img.to(dev, non_blocking=True)
    if jpeg_pos:
        decoded = decode_jpegs_on_device(
            [batch["jpeg"][k] for k in jpeg_pos],
            [batch["orientation"][k] for k in jpeg_pos],
            [batch["path"][k] for k in jpeg_pos],
            dev,
            max_pixels,
        )
        for k, res in zip(jpeg_pos, decoded):
            if isinstance(res, str):
                errors[k] = res
            else:
                images[k] = res
    positions = sorted(images)
    return [images[k] for k in positions], positions, errors


def gathered_batches(batches: Iterator[dict], dev: torch.device, max_pixels: int, depth: int = 2) -> Iterator[Gathered]:
    """`gather_images` of every batch, in order; on CUDA `depth` batches ahead in a thread."""
    if dev.type != "cuda":
        for batch in batches:
            yield gather_images(batch, dev, max_pixels)
        return
    yield from _CudaPrefetch(batches, dev, max_pixels, depth)


class _CudaPrefetch:
    def __init__(self, batches: Iterator[dict], dev: torch.device, max_pixels: int, depth: int):
        self.batches, self.dev, self.max_pixels = batches, dev, max_pixels
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="evoked-device-decode")
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            with torch.cuda.device(self.dev):
                stream = torch.cuda.Stream(self.dev)
                with torch.cuda.stream(stream):
                    for batch in self.batches:
                        images, positions, errors = gather_images(batch, self.dev, self.max_pixels)
                        stream.synchronize()  # the images are ready before the models see them
                        if not self._put((images, positions, errors)):
                            return
            self._put(_DONE)
        except BaseException as e:  # re-raised in the consuming thread
            self._put(e)

    def __iter__(self) -> Iterator[Gathered]:
        main = torch.cuda.current_stream(self.dev)
        try:
            while True:
                item = self.queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                for img in item[0]:
                    img.record_stream(main)  # allocated on the decode stream, used and freed on this one
                yield item
        finally:
            self.stop.set()
            self.thread.join(timeout=30)
