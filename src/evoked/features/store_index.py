"""Index one feature of a store, reading it chunk by chunk (bounded memory at any size)."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from evoked.errors import ConfigError
from evoked.features.index import IndexInfo, index_path_for, save_index
from evoked.features.index_build import DEFAULT_BUDGET, build_index_streaming
from evoked.features.store import OK, open_store

CHUNK_ROWS = 65_536
#: A chunk is at most this many bytes of float32 (its copies, normalised and raw, are held at once).
CHUNK_BYTES = 32 * 2**20


def build_store_index(
    store_path: str | os.PathLike,
    feature: str,
    *,
    kind: str = "auto",
    use_gpu: bool | str = "auto",
    memory_budget: int = DEFAULT_BUDGET,
    out: str | os.PathLike | None = None,
    chunk_rows: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[Path, IndexInfo]:
    """Index the ``ok`` rows of `feature`; row i of the store is FAISS id i. Returns (path, info)."""
    with open_store(store_path) as store:
        store.dataset(feature)
        n = int((store.status == OK).sum())
        if not n:
            raise ConfigError(f"{store_path} has no finished rows to index; run `evoked extract` first")
        d = int(store.dataset(feature).shape[1])
        chunk_rows = chunk_rows or max(1024, min(CHUNK_ROWS, CHUNK_BYTES // (4 * d)))
        chunks = partial(store.iter_chunks, feature, chunk_rows)
        index, info = build_index_streaming(
            chunks, n, d, kind, memory_budget=memory_budget, use_gpu=use_gpu, on_progress=on_progress
        )
        info.extra.update(
            {"feature": feature, "store_uuid": store.attrs.get("store_uuid"), "store": Path(store_path).name}
        )
    path = Path(out) if out else index_path_for(store_path, feature)
    save_index(index, info, path)
    return path, info
