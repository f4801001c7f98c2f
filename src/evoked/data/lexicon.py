"""Category-derived VA: emotion words turned into valence/arousal through published word norms.

Two tables ship with the package (``nrc`` and ``warriner``, from ``resources/category_vad.csv``):

- ``nrc``: the NRC VAD Lexicon v1 (Mohammad, ACL 2018), 0..1, mapped to 1..9 as ``v * 8 + 1`` as the
  two-stage paper does;
- ``warriner``: Warriner, Kuperman and Brysbaert (2013), already on 1..9.

A user can also load the full NRC VAD file (tab-separated ``word valence arousal dominance``) or a
generic ``word,valence,arousal`` CSV on the 1..9 scale. Every result records which table it used
(`Lexicon.describe`), because the tables disagree on some words (awe: NRC 4.75, Warriner 6.85).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from evoked.data.text import parse_float, read_rows, read_utf8
from evoked.errors import LabelError

#: Category vocabularies of the datasets this field uses.
CATEGORY_SETS: dict[str, tuple[str, ...]] = {
    # Mikels et al. (2005): FI, FlickrLDL, TwitterLDL
    "mikels8": ("amusement", "awe", "contentment", "excitement", "anger", "disgust", "fear", "sadness"),
    # Ekman's six with Emotion6's words (joy for happiness), plus neutral
    "ekman7": ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"),
    # sentiment polarity: Flickr, Instagram (You et al.)
    "polarity": ("positive", "negative", "neutral"),
}

BUILTIN_LEXICONS = ("nrc", "warriner")
_LEXICON_FLAG = "--lexicon nrc|warriner|PATH"


def normalize_word(word: str) -> str:
    return " ".join(str(word).strip().lower().split())


@dataclass(frozen=True)
class Lexicon:
    """A word -> (valence, arousal) table on the 1..9 scale."""

    name: str
    source: str
    table: Mapping[str, tuple[float, float]]
    scale: str = "1-9"
    sha256: str | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)

    @property
    def words(self) -> list[str]:
        return sorted(self.table)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and self._key(word) in self.table

    def _key(self, word: str) -> str:
        w = normalize_word(word)
        return normalize_word(self.aliases.get(w, w))

    def with_aliases(self, aliases: Mapping[str, str]) -> Lexicon:
        """A copy that maps dataset labels to lexicon words first (e.g. ``{"happy": "joy"}``)."""
        merged = dict(self.aliases)
        merged.update({normalize_word(k): normalize_word(v) for k, v in aliases.items()})
        for src, dst in merged.items():
            if dst not in self.table:
                raise LabelError(self._unknown_message(dst, f"(the alias target of {src!r})"))
        return Lexicon(self.name, self.source, self.table, self.scale, self.sha256, merged)

    def _unknown_message(self, word: str, what: str = "") -> str:
        known = self.words
        shown = (
            ", ".join(known) if len(known) <= 40 else ", ".join(known[:40]) + f", ... ({len(known)} words)"
        )
        return (
            f"unknown emotion category {word!r} {what}for lexicon {self.name!r}. Known words: {shown}. "
            f"Fix the label, map it to a known word with --category-map {word}=WORD, "
            f"or pass {_LEXICON_FLAG} with a table that has it."
        ).replace("  ", " ")

    def va(self, word: str) -> np.ndarray:
        """(valence, arousal) of one word. Raises `LabelError` naming the known words."""
        key = self._key(word)
        try:
            return np.asarray(self.table[key], dtype=np.float64)
        except KeyError:
            raise LabelError(self._unknown_message(word)) from None

    def check(self, words: Iterable[str]) -> None:
        """Fail early, listing every unknown word at once."""
        unknown = sorted({w for w in words if w and self._key(w) not in self.table})
        if unknown:
            raise LabelError(self._unknown_message(", ".join(unknown)))

    def hard(self, labels: Sequence[str | None]) -> np.ndarray:
        """(N, 2) VA of hard labels. A missing label (None or "") gives a NaN row."""
        labels = list(labels)
        self.check(w for w in labels if w)
        out = np.full((len(labels), 2), np.nan)
        for i, w in enumerate(labels):
            if w:
                out[i] = self.va(w)
        return out

    def matrix(self, categories: Sequence[str]) -> np.ndarray:
        """(K, 2) VA of a category vocabulary, in its order."""
        self.check(categories)
        return np.stack([self.va(c) for c in categories]) if categories else np.zeros((0, 2))

    def soft(self, distribution: np.ndarray, categories: Sequence[str]) -> np.ndarray:
        """(N, 2) expected VA, sum_k p_k VA_k, of label distributions over `categories`.

        Rows are renormalised to sum to 1; an all-NaN row stays NaN.
        """
        p = np.asarray(distribution, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(categories):
            raise LabelError(
                f"distribution has shape {p.shape} but {len(categories)} categories were named "
                f"({', '.join(categories)}); each row needs one probability per category"
            )
        m = self.matrix(categories)
        missing = np.isnan(p).all(axis=1)
        q = np.nan_to_num(p)
        if (q < 0).any():
            raise LabelError("a label distribution has a negative value; distributions must be >= 0")
        total = q.sum(axis=1, keepdims=True)
        bad = (~missing) & (total[:, 0] <= 0)
        if bad.any():
            raise LabelError(f"{int(bad.sum())} label distribution rows sum to 0; they need a positive mass")
        out = (q / np.where(total > 0, total, 1.0)) @ m
        out[missing] = np.nan
        return out

    def nearest(self, va: np.ndarray, categories: Sequence[str], metric: str = "cosine") -> np.ndarray:
        """The category whose VA is nearest to each predicted VA point.

        ``cosine`` compares directions of the raw 1..9 vectors, as the two-stage paper does;
        ``euclidean`` takes the closest point. NaN inputs give "".
        """
        points = np.asarray(va, dtype=np.float64).reshape(-1, 2)
        m = self.matrix(categories)
        if metric == "cosine":
            pn = points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)
            mn = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
            idx = np.argmax(pn @ mn.T, axis=1)
        elif metric == "euclidean":
            d = ((points[:, None, :] - m[None, :, :]) ** 2).sum(-1)
            idx = np.argmin(d, axis=1)
        else:
            raise LabelError(f"unknown metric {metric!r} for nearest category; use 'cosine' or 'euclidean'")
        out = np.array([categories[i] for i in idx], dtype=object)
        out[np.isnan(points).any(axis=1)] = ""
        return out

    def describe(self) -> dict:
        """What to record beside every result that used this table."""
        d: dict[str, object] = {"name": self.name, "source": self.source, "scale": self.scale}
        if self.sha256:
            d["sha256"] = self.sha256
        if self.aliases:
            d["aliases"] = dict(self.aliases)
        return d


def _builtin_rows() -> list[dict[str, str]]:
    text = resources.files("evoked").joinpath("resources/category_vad.csv").read_text("utf-8")
    return list(csv.DictReader(text.splitlines()))


def _builtin(name: str) -> Lexicon:
    rows = _builtin_rows()
    if name == "nrc":
        table = {r["word"]: (float(r["nrc_valence"]) * 8 + 1, float(r["nrc_arousal"]) * 8 + 1) for r in rows}
        source = "NRC VAD Lexicon v1 (Mohammad 2018), category words, scaled v*8+1"
    else:
        table = {r["word"]: (float(r["warriner_valence"]), float(r["warriner_arousal"])) for r in rows}
        source = "Warriner, Kuperman & Brysbaert (2013), category words, 1-9"
    return Lexicon(name=name, source=source, table=table)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_repeat(table: dict, word: str, path: Path, lineno: int) -> None:
    """A word given twice is an error: which of its two rows was meant cannot be guessed."""
    if word in table:
        raise LabelError(f"{path}:{lineno}: word {word!r} is given a second time; keep one row per word")


def _load_nrc_file(path: Path) -> Lexicon:
    """The NRC VAD file: tab-separated word, valence, arousal, dominance; v1 is 0..1, v2 is -1..1."""
    raw: dict[str, tuple[float, float]] = {}
    lines = read_utf8(path, "lexicon", LabelError).splitlines()
    for lineno, line in enumerate(lines, 1):
        parts = line.rstrip("\n").split("\t")
        if not line.strip():
            continue
        if len(parts) < 3:
            raise LabelError(
                f"{path}:{lineno}: expected tab-separated 'word valence arousal dominance', got {line!r}"
            )
        if lineno == 1 and parts[1].strip().lower() == "valence":
            continue  # header
        _no_repeat(raw, normalize_word(parts[0]), path, lineno)
        raw[normalize_word(parts[0])] = (
            _cell(parts[1], f"{path}:{lineno}", "valence"),
            _cell(parts[2], f"{path}:{lineno}", "arousal"),
        )
    if not raw:
        raise LabelError(f"{path}: no entries found; expected tab-separated 'word valence arousal dominance'")
    values = np.array(list(raw.values()))
    lo, hi = values.min(), values.max()
    if lo >= 0 and hi <= 1:
        table = {w: (v * 8 + 1, a * 8 + 1) for w, (v, a) in raw.items()}
        scale = "NRC VAD v1 (0..1) scaled v*8+1"
    elif lo >= -1 and hi <= 1:
        table = {w: ((v + 1) * 4 + 1, (a + 1) * 4 + 1) for w, (v, a) in raw.items()}
        scale = "NRC VAD v2 (-1..1) scaled (v+1)*4+1"
    else:
        raise LabelError(
            f"{path}: values range from {lo} to {hi}; an NRC VAD file has values in 0..1 (v1) or -1..1 (v2). "
            "For a table already on the 1..9 scale, save it as a .csv with columns word,valence,arousal"
        )
    return Lexicon(name=path.name, source=str(path), table=table, scale=scale, sha256=_sha256(path))


def _cell(value: object, where: str, column: str) -> float:
    """Every word needs both values (no missing token is accepted)."""
    return parse_float(value, where, column, error=LabelError, required=True)


def _load_csv(path: Path) -> Lexicon:
    """A generic ``word,valence,arousal`` CSV on the 1..9 scale (extra columns are ignored)."""
    rows, _ = read_rows(path, "lexicon", LabelError, short_rows=True)
    fields = {normalize_word(c): c for c in (rows[0] if rows else {}) if c != "__line__"}
    if any(n not in fields for n in ("word", "valence", "arousal")):
        raise LabelError(
            f"{path}: a lexicon CSV needs the columns word,valence,arousal (1..9 scale); "
            f"found {', '.join(fields.values()) or 'no rows'}"
        )
    table: dict[str, tuple[float, float]] = {}
    for row in rows:
        where = f"{path}:{row['__line__']}"
        v, a = (
            _cell(row[fields["valence"]], where, "valence"),
            _cell(row[fields["arousal"]], where, "arousal"),
        )
        if not (1 <= v <= 9 and 1 <= a <= 9):
            raise LabelError(
                f"{where}: valence {v} / arousal {a} outside 1..9; a lexicon CSV is on the 1..9 "
                "scale (an NRC VAD file in 0..1 should be given as its tab-separated .txt)"
            )
        word = normalize_word(row[fields["word"]] or "")
        if not word:
            raise LabelError(f"{where}: empty word")
        _no_repeat(table, word, path, row["__line__"])
        table[word] = (v, a)
    if not table:
        raise LabelError(f"{path}: no entries found")
    return Lexicon(name=path.name, source=str(path), table=table, sha256=_sha256(path))


CategoryMap = Mapping[str, str] | Sequence[str]


def load_lexicon(spec: str | Lexicon, category_map: CategoryMap | None = None) -> Lexicon:
    """The one way to get a lexicon: ``nrc``, ``warriner``, a path to the NRC VAD file (.txt/.tsv),
    a word,valence,arousal .csv, or a `Lexicon`; with `category_map` (see `parse_category_map`)
    dataset labels are aliased to lexicon words, each alias checked against the table."""
    lex = spec if isinstance(spec, Lexicon) else _load(spec)
    aliases = parse_category_map(category_map)
    return lex.with_aliases(aliases) if aliases else lex


def _load(spec: str) -> Lexicon:
    key = spec.strip().lower()
    if key in BUILTIN_LEXICONS:
        return _builtin(key)
    path = Path(spec).expanduser()
    if not path.exists():
        raise LabelError(
            f"lexicon {spec!r} is neither a built-in table ({', '.join(BUILTIN_LEXICONS)}) nor an existing file; "
            f"pass {_LEXICON_FLAG}"
        )
    if path.suffix.lower() == ".csv":
        return _load_csv(path)
    return _load_nrc_file(path)


def parse_category_map(items: CategoryMap | None) -> dict[str, str]:
    """``["happy=joy", "mad=anger"]`` (as the CLI's --category-map gives it) or ``{"happy": "joy"}``
    -> ``{"happy": "joy", "mad": "anger"}``, words normalised."""
    if isinstance(items, Mapping):
        return {normalize_word(k): normalize_word(v) for k, v in items.items()}
    if isinstance(items, str):
        items = [items]
    out = {}
    for item in items or ():
        if "=" not in item:
            raise LabelError(f"--category-map {item!r}: expected LABEL=WORD, e.g. happy=joy")
        src, dst = item.split("=", 1)
        out[normalize_word(src)] = normalize_word(dst)
    return out
