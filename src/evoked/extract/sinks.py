"""Sinks: where the runner's writer thread puts each finished block.

The loop hands every block to a sink (clip-retrieval's writer factory, here one object with a
`write` method), so another output is added without touching the loop. The HDF5 feature store is
the sink that resume, merge and the indexes stand on; other formats are exported from it
(`evoked features export`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from evoked.features.store import FeatureStore


@dataclass
class Block:
    """One processed block: its rows, the features of its ok rows, and the failures by row."""

    index: int
    rows: np.ndarray
    features: dict[str, np.ndarray]  # "extractor/output" -> (ok rows, D)
    ok: np.ndarray  # (len(rows),) bool
    errors: dict[int, str]  # row -> reason
    read_s: float
    model_s: float


class Sink(Protocol):
    def write(self, block: Block) -> None: ...


class StoreSink:
    """Blocks into the HDF5 store, with their timings recorded against the run."""

    def __init__(self, store: FeatureStore, run: int):
        self.store, self.run = store, run

    def write(self, block: Block) -> None:
        t0 = time.perf_counter()
        self.store.write_block(block.rows, block.features, block.ok, block.errors)
        write_s = time.perf_counter() - t0
        self.store.record_timing(block.index, self.run, len(block.rows), block.read_s, block.model_s, write_s)
