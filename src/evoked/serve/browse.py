"""Browsing the whole collection: the plane's columns, filtered and sorted pages, one item in full.

Routed by `evoked.serve.app`. Filters and sorting run on numpy columns read once at start, so a
page of a 100,000-item store answers in milliseconds; the plane's columns are encoded once and the
bytes kept, since every page load asks for them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from evoked.errors import EvokedError
from evoked.features.store import OK, STATUS_NAMES
from evoked.retrieve import Hit
from evoked.runfolder import KINDS
from evoked.serve.api import MAX_ITEMS, number, rounded, row_param, source_param, state_of, whole_number
from evoked.serve.embedmap import MapCache

if TYPE_CHECKING:
    from evoked.serve.app import ServeState

SORTS = ("row", "valence", "arousal", "residual", "similarity")
SIMILARITY_POOL = 5000  # similarity ranks the nearest items of the index, not the whole store
NO_SPLIT = "none"  # the spelling of "no split" in a filter (the store writes "")
#: what a residual is read from unless a kind filter says otherwise: predictions of items the model
#: never saw, so that in-sample (fitted) residuals are never mixed in silently
HELD_OUT = tuple(k for k in KINDS if k != "fitted")
EXPORT_COLUMNS = ("row", "id", "path", "category", "split", "status", "valence", "arousal", "pred_valence",
                  "pred_arousal", "pred_kind", "residual", "map_x", "map_y")  # fmt: skip


@dataclass
class Query:
    category: list[str]
    split: list[str]
    status: list[str]
    box: tuple[float, ...] | None  # v_min, v_max, a_min, a_max
    source: str
    residual_min: float | None
    residual_max: float | None
    kind: list[str]  # prediction kinds kept ([] = all)
    kind_default: bool  # `kind` is HELD_OUT because the view reads residuals and no kind was asked
    map_box: tuple[float, ...] | None  # x_min, x_max, y_min, y_max on the embedding map
    sort: str
    order: str
    like: str | None
    offset: int
    limit: int


class Columns:
    """Per-row arrays the filters read; built once from the retriever and the run's predictions."""

    def __init__(self, state: ServeState):
        r = state.retriever
        self.state = state
        self.n = len(r.ids)
        self.category = np.asarray(r.category, dtype=object).astype(str)
        labels = r.store.labels()
        self.split = np.asarray(labels["split"], dtype=object).astype(str)
        self.distribution = labels.get("distribution")
        self.dist_categories: list[str] = list(labels.get("categories", []))
        self.status = np.asarray(r.status)
        self.rated = np.stack([r.valence, r.arousal], 1)
        pred = state.cfg.predictions
        self.pred = None if pred is None else np.asarray(pred, dtype=float)
        self.residual = None if self.pred is None else np.hypot(*(self.pred - self.rated).T)
        kind = state.cfg.prediction_kind
        self.kind = None if kind is None or self.pred is None else np.asarray(kind, dtype=object).astype(str)
        self.map = MapCache(state.cfg.store, state.cfg.feature)
        self.categories = sorted(set(self.category.tolist()) - {""})
        self.splits = sorted(set(self.split.tolist()) - {""})
        self._plane: bytes | None = None
        self._ids: bytes | None = None
        self._map_json: bytes | None = None
        self._lock = threading.Lock()

    def va(self, source: str) -> np.ndarray:
        return self.pred if source == "predictions" and self.pred is not None else self.rated

    # -- the plane -----------------------------------------------------------------------------
    def plane_bytes(self) -> bytes:
        with self._lock:
            if self._plane is None:
                self._plane = json.dumps(self._plane_json(), separators=(",", ":")).encode("utf-8")
            return self._plane

    def encode_in_background(self) -> None:
        """Every page load asks for the plane: encode it now, off the request path."""
        threading.Thread(
            target=lambda: (self.plane_bytes(), self.ids_bytes()), name="evoked-plane", daemon=True
        ).start()

    def ids_bytes(self) -> bytes:
        with self._lock:
            if self._ids is None:
                ids = [str(i) for i in self.state.retriever.ids]
                self._ids = json.dumps({"id": ids}, separators=(",", ":")).encode("utf-8")
            return self._ids

    def _plane_json(self) -> dict:
        cat_code = {c: i for i, c in enumerate(self.categories)}
        split_code = {s: i for i, s in enumerate(self.splits)}
        out = {
            "n": self.n,
            "categories": self.categories,
            "category": [cat_code.get(c, -1) for c in self.category.tolist()],
            "splits": self.splits,
            "split": [split_code.get(s, -1) for s in self.split.tolist()],
            "statuses": [STATUS_NAMES[k] for k in sorted(STATUS_NAMES)],
            "status": self.status.astype(int).tolist(),
            "valence": rounded(self.rated[:, 0]),
            "arousal": rounded(self.rated[:, 1]),
        }
        if self.pred is not None:
            out["pred_valence"] = rounded(self.pred[:, 0])
            out["pred_arousal"] = rounded(self.pred[:, 1])
        if self.kind is not None:
            kind_code = {k: i for i, k in enumerate(KINDS)}
            out["kinds"] = list(KINDS)
            out["kind"] = [kind_code.get(k, -1) for k in self.kind.tolist()]
        return out

    def map_bytes(self) -> bytes:
        """The embedding map as JSON (computed on first use: call off the event loop)."""
        m = self.map.get()
        with self._lock:
            if self._map_json is None:
                body = {"n": self.n, "feature": self.state.cfg.feature, "method": m.method,
                        "x": rounded(m.x, 3), "y": rounded(m.y, 3)}  # fmt: skip
                self._map_json = json.dumps(body, separators=(",", ":")).encode("utf-8")
            return self._map_json

    # -- filters and sorting -------------------------------------------------------------------
    def mask(self, q: Query) -> np.ndarray:
        keep = np.ones(self.n, bool)
        if q.category:
            keep &= np.isin(self.category, q.category)
        if q.split:
            keep &= np.isin(self.split, ["" if s == NO_SPLIT else s for s in q.split])
        if q.status:
            codes = [k for k, name in STATUS_NAMES.items() if name in q.status]
            keep &= np.isin(self.status, codes)
        if q.box is not None:
            v0, v1, a0, a1 = q.box
            va = self.va(q.source)
            with np.errstate(invalid="ignore"):
                keep &= (va[:, 0] >= v0) & (va[:, 0] <= v1) & (va[:, 1] >= a0) & (va[:, 1] <= a1)
        if self.residual is not None:
            with np.errstate(invalid="ignore"):
                if q.residual_min is not None:
                    keep &= self.residual >= q.residual_min
                if q.residual_max is not None:
                    keep &= self.residual <= q.residual_max
        if q.kind and self.kind is not None:
            keep &= np.isin(self.kind, q.kind)
        if q.map_box is not None:
            m, (x0, x1, y0, y1) = self.map.get(), q.map_box
            with np.errstate(invalid="ignore"):
                keep &= (m.x >= x0) & (m.x <= x1) & (m.y >= y0) & (m.y <= y1)
        return keep

    def ordered(self, q: Query, keep: np.ndarray) -> tuple[np.ndarray, dict[int, float]]:
        """Rows that pass, in the requested order (unknown values last), and similarities if asked."""
        if q.sort == "similarity":
            return self._by_similarity(q, keep)
        rows = np.flatnonzero(keep)
        if q.sort == "row":
            return (rows if q.order == "asc" else rows[::-1]), {}
        if q.sort == "residual":
            assert self.residual is not None  # parse_query refuses it without predictions
            key = self.residual[rows]
        else:
            key = self.va(q.source)[rows, 0 if q.sort == "valence" else 1]
        known = ~np.isnan(key)
        sign = 1.0 if q.order == "asc" else -1.0
        first = rows[known][np.argsort(sign * key[known], kind="stable")]
        return np.concatenate([first, rows[~known]]), {}

    def _by_similarity(self, q: Query, keep: np.ndarray) -> tuple[np.ndarray, dict[int, float]]:
        r = self.state.retriever
        pool = min(SIMILARITY_POOL, int((self.status == OK).sum()))
        assert q.like is not None  # parse_query asks for it with sort=similarity
        with self.state.lock:
            try:
                hits = r.by_id(q.like, pool, include_self=True)
            except EvokedError as e:
                raise HTTPException(404, str(e)) from None
        rows = np.array([h.row for h in hits], dtype=np.int64)
        scores = {h.row: h.score for h in hits}
        rows = rows[keep[rows]] if rows.size else rows
        return (rows if q.order == "desc" else rows[::-1]), scores


# -- request parsing --------------------------------------------------------------------------
def _list(request: Request, name: str, allowed: list[str]) -> list[str]:
    raw = request.query_params.get(name, "")
    values = [v for v in raw.split(",") if v]
    bad = [v for v in values if v not in allowed]
    if bad:
        shown = ", ".join(allowed[:20]) + (" ..." if len(allowed) > 20 else "")
        raise HTTPException(400, f"{name}={bad[0]!r} is not one of the store's values: {shown}")
    return values


def _box(request: Request, name: str, axes: str) -> tuple[float, ...] | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        box = tuple(float(x) for x in raw.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not all(math.isfinite(x) for x in box) or box[0] > box[1] or box[2] > box[3]:
        raise HTTPException(400, f"{name}={raw!r}: give {axes} with min <= max")
    return box


def _kinds(request: Request, cols: Columns, reads_residual: bool) -> tuple[list[str], bool]:
    """The kinds asked for (``kind=all`` for every kind), else HELD_OUT when the view reads residuals."""
    raw = request.query_params.get("kind", "")
    if raw == "all":
        return [], False
    kinds = _list(request, "kind", list(KINDS))
    if kinds and cols.kind is None:
        raise HTTPException(400, "a kind filter needs predictions with kinds: start the server with --run runs/NAME")
    if not kinds and reads_residual and cols.kind is not None:
        return list(HELD_OUT), True
    return kinds, False


def parse_query(request: Request, cols: Columns) -> Query:
    source = source_param(request, cols.pred is not None)
    residual_min = number(request, "residual_min", None)
    residual_max = number(request, "residual_max", None)
    if (residual_min is not None or residual_max is not None) and cols.residual is None:
        raise HTTPException(400, "a residual filter needs predictions: start the server with --run runs/NAME")
    sort = request.query_params.get("sort", "row")
    if sort not in SORTS:
        raise HTTPException(400, f"sort={sort!r}: use one of {', '.join(SORTS)}")
    if sort == "residual" and cols.residual is None:
        raise HTTPException(
            400, "sorting by residual needs predictions: start the server with --run runs/NAME"
        )
    like = request.query_params.get("like") or None
    if sort == "similarity" and not like:
        raise HTTPException(400, "sort=similarity needs like=ITEM_ID, the item to compare with")
    default_order = "desc" if sort in ("residual", "similarity") else "asc"
    order = request.query_params.get("order", default_order)
    if order not in ("asc", "desc"):
        raise HTTPException(400, f"order={order!r}: use asc or desc")
    reads_residual = sort == "residual" or residual_min is not None or residual_max is not None
    kind, kind_default = _kinds(request, cols, reads_residual)
    return Query(
        category=_list(request, "category", cols.categories),
        split=_list(request, "split", cols.splits + [NO_SPLIT]),
        status=_list(request, "status", list(STATUS_NAMES.values())),
        box=_box(request, "box", "v_min,v_max,a_min,a_max"),
        source=source,
        residual_min=residual_min,
        residual_max=residual_max,
        kind=kind,
        kind_default=kind_default,
        map_box=_box(request, "map_box", "x_min,x_max,y_min,y_max"),
        sort=sort,
        order=order,
        like=like,
        offset=whole_number(request, "offset", 0, 0),
        limit=whole_number(request, "limit", 60, 1, MAX_ITEMS),
    )


async def selected(request: Request) -> tuple[Query, np.ndarray, dict[int, float]]:
    """The query and the rows it selects, in order (the map, if asked for, is made off the event loop)."""
    state = state_of(request)
    q = parse_query(request, state.columns)
    if q.map_box is not None and not state.columns.map.ready:
        await state.run(state.columns.map.get)
    rows, scores = state.columns.ordered(q, state.columns.mask(q))
    return q, rows, scores


# -- the handlers -----------------------------------------------------------------------------
def item_json(state: ServeState, row: int, score: float | None = None) -> dict:
    """A hit's fields for one row (without rank), with its split, status and residual."""
    r, cols = state.retriever, state.columns
    v, a = (None if np.isnan(x) else float(x) for x in (r.valence[row], r.arousal[row]))
    hit = Hit(0, row, str(r.ids[row]), str(r.paths[row]), score, v, a, str(r.category[row]))  # type: ignore[arg-type]
    d = state.hit_json(hit)
    d.pop("rank", None)
    d["split"] = cols.split[row]
    d["status"] = STATUS_NAMES.get(int(cols.status[row]), "unknown")
    if d["status"] != "ok":
        d["thumb"] = None  # thumbnails are made for ok rows only
    if cols.residual is not None and not np.isnan(cols.residual[row]):
        d["residual"] = round(float(cols.residual[row]), 4)
    return d


async def plane(request: Request) -> Response:
    return Response(state_of(request).columns.plane_bytes(), media_type="application/json")


async def plane_ids(request: Request) -> Response:
    return Response(state_of(request).columns.ids_bytes(), media_type="application/json")


async def browse(request: Request) -> Response:
    state = state_of(request)
    q, rows, scores = await selected(request)
    page = rows[q.offset : q.offset + q.limit]
    out = {
        "total": int(rows.size),
        "offset": q.offset,
        "limit": q.limit,
        "sort": q.sort,
        "order": q.order,
        "source": q.source,
        "items": [item_json(state, int(i), scores.get(int(i))) for i in page],
    }
    if q.kind:
        out["kind"] = q.kind
    notes = []
    if q.kind_default:
        notes.append("residuals of predictions for items the model never saw (add kind=all or kind=fitted "
                     "for in-sample ones)")  # fmt: skip
    if q.sort == "similarity":
        notes.append(f"similarity ranks the {SIMILARITY_POOL:,} items nearest to {q.like} at most")
    if notes:
        out["note"] = "; ".join(notes)
    return JSONResponse(out)


async def export(request: Request) -> Response:
    """The selection (every row that passes the filters, in the browse order) as CSV."""
    state = state_of(request)
    q, rows, _ = await selected(request)
    body = await state.run(export_csv, state, rows, heavy=False)
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="evoked-selection.csv"'})  # fmt: skip


def export_csv(state: ServeState, rows: np.ndarray) -> bytes:
    """CSV of `rows`: ids, ratings, predictions with their kind, residual and map position (blank: unknown)."""
    r, cols = state.retriever, state.columns
    m = cols.map.get() if cols.map.ready else None
    num = lambda x: "" if x is None or not math.isfinite(x) else repr(round(float(x), 4))  # noqa: E731
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(EXPORT_COLUMNS)
    for i in rows.tolist():
        pred = (None, None) if cols.pred is None else cols.pred[i]
        w.writerow([
            i, str(r.ids[i]), str(r.paths[i]), cols.category[i], cols.split[i],
            STATUS_NAMES.get(int(cols.status[i]), "unknown"), num(cols.rated[i, 0]), num(cols.rated[i, 1]),
            num(pred[0]), num(pred[1]), "" if cols.kind is None else cols.kind[i],
            "" if cols.residual is None else num(cols.residual[i]),
            "" if m is None else num(m.x[i]), "" if m is None else num(m.y[i]),
        ])  # fmt: skip
    return out.getvalue().encode("utf-8")


async def embedding_map(request: Request) -> Response:
    """The 2-D map of the served feature (computed once, then read from beside the store)."""
    state = state_of(request)
    return Response(await state.run(state.columns.map_bytes), media_type="application/json")


async def item(request: Request) -> Response:
    state, row = state_of(request), row_param(request)
    cols, r = state.columns, state.retriever
    if not 0 <= row < cols.n:
        raise HTTPException(404, f"no item at row {row}; the store has {cols.n} rows")
    k = whole_number(request, "k", 12, 0, MAX_ITEMS)
    d = item_json(state, row)
    if d["status"] == "failed":
        d["error"] = r.store.errors().get(d["id"], "")
    if cols.distribution is not None and np.isfinite(cols.distribution[row]).all():
        d["distribution"] = dict(zip(cols.dist_categories, np.round(cols.distribution[row], 4).tolist()))
    d["neighbours"] = []
    if k and d["status"] == "ok":
        with state.lock:
            found = r.by_id(d["id"], k)
        d["neighbours"] = [state.hit_json(h) for h in found]
    return JSONResponse(d)


async def provenance(request: Request) -> Response:
    return JSONResponse(provenance_of(state_of(request)))


def provenance_of(state: ServeState) -> dict:
    """Model, weights, feature and index of the served feature, with a warning for random weights."""
    r = state.retriever
    attrs = r.store.extractors.get(r.extractor, {})
    weights = attrs.get("weights_tag") or attrs.get("config", {}).get("weights", {}).get("tag") or "unknown"
    sha = attrs.get("weights_sha256") or ""
    out = {
        "dataset": r.store.attrs.get("dataset"),
        "model": attrs.get("model") or attrs.get("spec") or r.extractor,
        "spec": attrs.get("spec"),
        "weights": weights,
        "weights_sha256": sha[:12] or None,
        "feature": state.cfg.feature,
        "index": r.kind,
        "run": state.cfg.run_name,
        "warning": None,
    }
    if weights == "random":
        out["warning"] = (
            f"{r.extractor} was extracted with RANDOM weights: neighbours and predictions show no learned "
            "similarity (a smoke run); extract again with --weights default or a weights file"
        )
    return out
