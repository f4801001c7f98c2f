"""Nearest-neighbour emotion retrieval: by item, by image, by text (CLIP features), or by VA point.

A `Retriever` opens a feature store and the FAISS index beside it (built by `build_store_index`,
or exact search in memory when there is none). Image queries are extracted with exactly the
configuration recorded in the store; text queries use the same CLIP model's text tower.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evoked.data.decode import load_rgb
from evoked.device import check_device_name, resolve_device
from evoked.errors import ConfigError
from evoked.extract.registry import create_backbone
from evoked.features import index as faiss_index
from evoked.features.store import OK, open_store
from evoked.features.store_index import build_store_index  # noqa: F401  (part of this module's API)

if TYPE_CHECKING:  # torch loads with the first image or text query, not for VA or id queries
    import torch

    from evoked.extract.backbone import Backbone

log = logging.getLogger(__name__)


@dataclass
class Hit:
    rank: int
    row: int
    id: str
    path: str
    score: float
    valence: float | None
    arousal: float | None
    category: str

    def to_dict(self) -> dict:
        return asdict(self)


def backbone_for(recorded: Mapping[str, dict], extractor: str, where: str) -> Backbone:
    """Rebuild the backbone that wrote `extractor`, from the configuration `recorded` in a store
    (its ``extractors``) or copied into a model; `where` names that store in errors."""
    attrs = recorded.get(extractor)
    if attrs is None:
        raise ConfigError(f"{where} has no extractor {extractor!r}")
    cfg = attrs.get("config", {})
    w = cfg.get("weights", {})
    tag = w.get("tag")
    if tag == "file":
        path = w.get("path") or ""
        if not Path(path).is_file():
            raise ConfigError(
                f"the weights file {path} that {extractor} was extracted with is gone; put it back to query by image"
            )
        from evoked.extract.weights import sha256_of

        if w.get("sha256") and sha256_of(path) != w["sha256"]:
            raise ConfigError(
                f"the weights file {path} changed since extraction (sha256 differs); queries would not match"
            )
        weights = path
    else:
        weights = "random" if tag == "random" else "default"
    bb = create_backbone(cfg["spec"], weights, cfg.get("preprocess"), cfg.get("layer_projection"))
    if tag == "default" and w.get("sha256") and bb.weights.sha256 and bb.weights.sha256 != w["sha256"]:
        raise ConfigError(
            f"the cached pretrained weights of {extractor} differ from those used at extraction"
        )
    return bb


@dataclass
class RecordedBackbones:
    """Backbones readied as a store recorded them (`ready_backbones`), and the one way to run them."""

    backbones: list[Backbone]
    device: torch.device
    precisions: dict[str, str]  # by feature group: what each computes in, as in the store

    def run(self, images: list[torch.Tensor]) -> dict[str, np.ndarray]:
        import torch

        from evoked.extract.precision import amp_dtypes
        from evoked.extract.runner import run_backbones

        with torch.inference_mode():
            return run_backbones(images, self.backbones, self.device, amp_dtypes(self.precisions))


def ready_backbones(
    recorded: Mapping[str, dict], extractors: Sequence[str], device: str | torch.device = "cpu",
    where: str = "the store",
) -> RecordedBackbones:  # fmt: skip
    """The backbones that wrote `extractors`, computing as the store's rows were (predict, search and
    serve): configuration (`backbone_for`) and precision as `recorded` (a store's ``extractors``, or
    their copy saved with a model; fp16 is fp32 off CUDA; none: fp32), folded by `place_backbones`."""
    from evoked.extract.runner import place_backbones

    dev = resolve_device(device)
    built = [backbone_for(recorded, e, where) for e in extractors]
    asked = {bb.name: recorded.get(bb.name, {}).get("precision", "fp32") for bb in built}
    precisions = {k: "fp32" if p == "fp16" and dev.type != "cuda" else p for k, p in asked.items()}
    place_backbones(built, dev, precisions=precisions)
    return RecordedBackbones(built, dev, precisions)


class Retriever:
    """Search one feature of a store. Use as a context manager, or call `close`."""

    def __init__(
        self,
        store_path: str | os.PathLike,
        feature: str,
        *,
        index_path: str | os.PathLike | None = None,
        device: str = "cpu",
    ):
        self._device = check_device_name(device)  # a typo fails here; torch loads on the first image query
        self.store = open_store(store_path)
        self.feature = feature
        self.store.dataset(feature)
        self.extractor, self.output = feature.split("/")
        labels = self.store.labels()
        self.valence, self.arousal, self.category = labels["valence"], labels["arousal"], labels["category"]
        self.ids, self.paths = self.store.ids, self.store.paths
        self.status = self.store.status
        self._row_of = {item: i for i, item in enumerate(self.ids.tolist())}  # queries by id are frequent
        self._ready: RecordedBackbones | None = None  # the query backbone, built on first use
        path = Path(index_path) if index_path else faiss_index.index_path_for(Path(store_path), feature)
        self.index = self.info = None
        if path.is_file():
            self.index, self.info = faiss_index.load_index(path)
            uuid = self.store.attrs.get("store_uuid")
            if self.info.extra.get("store_uuid") not in (None, uuid) or self.info.n != int(
                (self.store.status == OK).sum()
            ):
                raise ConfigError(
                    f"{path} is stale (the store changed since it was built); rebuild it with "
                    f"`evoked index {store_path} --feature {feature}`"
                )
        else:
            log.info("no index at %s: searching exactly in memory", path)
            rows = np.flatnonzero(self.store.status == OK)
            self._rows = rows
            self._vectors = faiss_index.normalize(self.store.read(feature, rows=rows))

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self._device)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def kind(self) -> str:
        return self.info.kind if self.info else "exact (in memory)"

    # -- queries -------------------------------------------------------------------------------
    def search_vectors(
        self, queries: np.ndarray, k: int = 10, exclude: set[int] | None = None
    ) -> list[list[Hit]]:
        exclude = exclude or set()
        kk = k + len(exclude)
        if self.index is not None:
            scores, rows = faiss_index.search(self.index, queries, kk, self.info)
        else:
            q = faiss_index.normalize(np.atleast_2d(queries))
            scores, pos = faiss_index.exact_search(self._vectors, q, min(kk, len(self._rows)))
            rows = self._rows[pos]
        out = []
        for srow, rrow in zip(scores, rows):
            hits = [(float(s), int(r)) for s, r in zip(srow, rrow) if r >= 0 and int(r) not in exclude][:k]
            out.append([self._hit(i + 1, r, s) for i, (s, r) in enumerate(hits)])
        return out

    def by_id(self, item_id: str, k: int = 10, include_self: bool = False) -> list[Hit]:
        row = self._row_of.get(item_id)
        if row is None:
            raise ConfigError(f"{item_id!r} is not an item of {self.store.path.name}")
        if self.status[row] != OK:
            raise ConfigError(f"item {item_id!r} has no features (status {self.status[row]}); pick another")
        q = self.store.dataset(self.feature)[row : row + 1].astype(np.float32)
        return self.search_vectors(q, k, None if include_self else {row})[0]

    def backbone(self) -> Backbone:
        if self._ready is None:
            self._ready = ready_backbones(
                self.store.extractors, [self.extractor], self.device, self.store.path.name
            )
        return self._ready.backbones[0]

    def embed_image(self, image: np.ndarray) -> np.ndarray:
        """The query vector of one decoded (H, W, 3) uint8 image, computed as the store's were."""
        import torch

        bb = self.backbone()
        assert self._ready is not None  # built by backbone()
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous().to(self.device)
        return self._ready.run([tensor])[f"{bb.name}/{self.output}"]

    def by_image(self, path: str | os.PathLike, k: int = 10) -> list[Hit]:
        return self.search_vectors(self.embed_image(load_rgb(path)), k)[0]

    def by_text(self, text: str, k: int = 10) -> list[Hit]:
        import torch

        bb = self.backbone()
        if bb.encode_text is None or self.output != "embed":
            raise ConfigError(
                f"text queries need a CLIP image embedding (e.g. clip-vit-b-32/embed), not {self.feature}"
            )
        with torch.inference_mode():
            q = bb.encode_text([text]).float().cpu().numpy()
        return self.search_vectors(q, k)[0]

    def by_va(self, valence: float, arousal: float, k: int = 10, va: np.ndarray | None = None) -> list[Hit]:
        """Items whose VA (known labels, or `va` such as a run's predictions) is nearest the point."""
        points = np.stack([self.valence, self.arousal], 1) if va is None else np.asarray(va, dtype=float)
        # only rows with features: a failed row has no image to show, whatever its labels say
        known = np.flatnonzero(np.isfinite(points).all(axis=1) & (self.status == OK))
        if not known.size:
            raise ConfigError("no item has valence and arousal; pass predictions from a regression run")
        d = np.sqrt(((points[known] - [valence, arousal]) ** 2).sum(1))
        order = known[np.argsort(d, kind="stable")[:k]]
        dist = np.sqrt(((points[order] - [valence, arousal]) ** 2).sum(1))
        return [self._hit(i + 1, int(r), -float(s)) for i, (r, s) in enumerate(zip(order, dist))]

    def _hit(self, rank: int, row: int, score: float) -> Hit:
        v, a = self.valence[row], self.arousal[row]
        return Hit(
            rank,
            row,
            str(self.ids[row]),
            str(self.paths[row]),
            score,
            None if np.isnan(v) else float(v),
            None if np.isnan(a) else float(a),
            str(self.category[row]),
        )
