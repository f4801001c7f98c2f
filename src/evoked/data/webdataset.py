"""webdataset tar shards as a dataset: ``webdataset:shards/{00000..00099}.tar`` or a glob.

The layout is img2dataset's: ``00000.tar`` holds ``000000000.jpg``, ``000000000.json``,
``000000000.txt`` per sample, the members of one sample side by side and sharing a key (the name
up to its first dot). Item ids are ``SHARD/KEY`` (the shard's path below the shards' common folder,
without ``.tar``); paths are ``SHARD.tar/KEY.jpg``. Labels come from each sample's ``.json``
(``category`` -- or ``label``/``emotion``/``class`` --, ``valence``, ``arousal``, ``split`` and
``distribution`` as ``{"joy": 0.7, "fear": 0.3}``) or ``.cls`` (the category as text).

Listing a shard reads only the tar headers and the small label members (the image bytes are
skipped with seeks); the extraction then reads each image once, straight from the tar
(`evoked.extract.sources`). Nothing is unpacked to disk. A sample that cannot give an image (none,
two, or cut off by a truncated tar) keeps its row and carries the reason, which extraction records
as the row's failure; what a truncated tar lost is in the manifest's notes.
"""

from __future__ import annotations

import glob
import itertools
import logging
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from evoked.data.datasets import IMAGE_EXTENSIONS, register_dataset
from evoked.data.manifest import Manifest, normalize_split
from evoked.data.text import parse_float, parse_json_object
from evoked.errors import DatasetError, DecodeError, LabelError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_LABEL_MEMBER_BYTES = 1 << 20  # a .json or .cls larger than this is not a label file
_CATEGORY_KEYS = ("category", "label", "emotion", "class")
_BRACE = re.compile(r"\{([^{}]*)\}")
Reader = Callable[[str], bytes]  # a file's path -> its bytes (`read_bytes`, `member_reader`)


@dataclass(frozen=True)
class Member:
    """One file inside a tar: where its bytes start and how many there are."""

    name: str
    offset: int
    size: int
    truncated: bool = False


@dataclass
class Sample:
    key: str
    members: dict[str, Member] = field(default_factory=dict)  # extension (lower case) -> member

    @property
    def images(self) -> list[Member]:
        # ``jpg`` is the image; a compound extension (``seg.png``, ``depth.png``) is an annotation
        return [m for ext, m in self.members.items() if ext in IMAGE_SUFFIXES]


@dataclass
class ImageRef:
    """Where extraction finds a sample's image, or why it has none."""

    shard: str  # absolute path of the tar
    offset: int
    size: int
    error: str | None = None


@dataclass
class ShardListing:
    path: Path
    samples: list[Sample]
    labels: list[dict]  # per sample: the parsed .json / .cls content
    lost: str | None = None  # what a truncated tar lost, None for a complete one


# -- patterns ------------------------------------------------------------------------------------
def expand_braces(pattern: str) -> list[str]:
    """``a/{00000..00002}.tar`` -> three names (zero padding kept); ``{x,y}`` lists alternatives."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        if int(hi) < int(lo):
            raise DatasetError(f"brace range {{{body}}} in {pattern!r} counts down; write {{{hi}..{lo}}}")
        width = len(lo) if lo.startswith("0") else 0
        options = [str(k).zfill(width) for k in range(int(lo), int(hi) + 1)]
    elif "," in body:
        options = body.split(",")
    else:
        raise DatasetError(
            f"cannot read the brace part {{{body}}} of {pattern!r}; write {{00000..00099}} or {{a,b}}"
        )
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [x for opt in options for x in expand_braces(head + opt + tail)]


def shard_paths(pattern: str) -> list[Path]:
    """The tar files a pattern names, in pattern order (a brace list) or sorted (a glob)."""
    names = expand_braces(pattern)
    found: list[str] = []
    missing: list[str] = []
    for name in names:
        if glob.has_magic(name):
            hits = sorted(glob.glob(os.path.expanduser(name), recursive=True))
            found += hits
        elif os.path.exists(os.path.expanduser(name)):
            found.append(os.path.expanduser(name))
        else:
            missing.append(name)
    if not found:
        raise DatasetError(
            f"webdataset pattern {pattern!r} matches no file; give a brace pattern such as "
            "shards/{00000..00099}.tar or a glob such as 'shards/*.tar'"
        )
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise DatasetError(
            f"webdataset pattern {pattern!r}: {len(missing)} of its {len(names)} shards do not exist: {shown}; "
            "narrow the brace range to the shards you have"
        )
    paths = [Path(os.path.abspath(p)) for p in dict.fromkeys(found)]
    dirs = [p for p in paths if p.is_dir()]
    if dirs:
        raise DatasetError(f"webdataset pattern {pattern!r} matches a folder, not a tar file: {dirs[0]}")
    return paths


def split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower() if dot else ""


# -- one shard -----------------------------------------------------------------------------------
@lru_cache(maxsize=256)  # listing and then extracting the same shards in one process lists each once
def _list_cached(path: str, size: int, mtime_ns: int) -> ShardListing:
    return _list_shard(Path(path), size)


def list_shard(path: Path) -> ShardListing:
    """Samples of one tar (headers and label members only); cached while the file is unchanged."""
    st = path.stat()
    return _list_cached(str(path), st.st_size, st.st_mtime_ns)


_ZERO_BLOCK = bytes(512)
_FILE_TYPES = (b"0", b"\0", b"7")  # regular files (and contiguous ones)
_SKIPPED_TYPES = (b"1", b"2", b"3", b"4", b"5", b"6")  # links, devices, folders, fifos


def _scan_headers(fh, size: int) -> tuple[list[Member], bool] | None:
    """Members of a plain ustar/GNU tar read from its 512-byte headers, and whether the archive's
    end marker is there; None when a header needs the standard library (pax or GNU long names,
    base-256 sizes, a bad checksum -- including a file that is no tar at all).

    Why not `tarfile` alone: it parses every header field in Python, which made listing a shard
    slower than reading its images (0.2 ms a member); this reads the three fields it needs.
    """
    members: list[Member] = []
    pos = 0
    while True:
        fh.seek(pos)
        hdr = fh.read(512)
        if len(hdr) < 512:
            return (members, False) if members else None
        if hdr == _ZERO_BLOCK:
            return members, fh.read(512) == _ZERO_BLOCK
        try:
            checksum = int(hdr[148:156].strip(b"\0 ") or b"0", 8)
            msize = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            return None
        typeflag = hdr[156:157]
        if checksum != sum(hdr[:148]) + 256 + sum(hdr[156:]) or hdr[124] & 0x80:
            return None
        if typeflag not in _FILE_TYPES and typeflag not in _SKIPPED_TYPES:
            return None
        data = pos + 512
        if typeflag in _FILE_TYPES:
            name = hdr[:100].split(b"\0", 1)[0]
            if hdr[257:263] == b"ustar\0":  # POSIX ustar: a name prefix
                prefix = hdr[345:500].split(b"\0", 1)[0]
                name = prefix + b"/" + name if prefix else name
            members.append(Member(name.decode("utf-8", "surrogateescape"), data, msize, data + msize > size))
        pos = data + (msize + 511) // 512 * 512
        if data + msize > size:
            return members, False


def _tarfile_members(fh, path: Path, size: int) -> tuple[list[Member], bool]:
    members: list[Member] = []
    try:
        tf = tarfile.open(fileobj=fh, mode="r:")
    except tarfile.ReadError as e:
        raise DatasetError(
            f"{path} is not a tar file ({e}); a webdataset shard is an uncompressed tar of "
            "KEY.jpg, KEY.json, ... members (img2dataset --output_format webdataset)"
        ) from e
    while True:
        try:
            info = tf.next()
        except tarfile.ReadError:  # a member's data runs past the end of the file
            return members, False
        if info is None:
            break
        if info.isfile():
            end = info.offset_data + info.size
            members.append(Member(info.name, info.offset_data, info.size, truncated=end > size))
    fh.seek(tf.offset)
    return members, fh.read(1024) == bytes(1024)


def _list_shard(path: Path, size: int) -> ShardListing:
    lost: str | None = None
    with path.open("rb") as fh:
        scanned = _scan_headers(fh, size)
        if scanned is None:
            fh.seek(0)
            scanned = _tarfile_members(fh, path, size)
    members, complete = scanned
    cut = [m for m in members if m.truncated]
    if cut or not complete:
        # no end-of-archive blocks: the file was cut, and members after the cut are unknown
        last = next((m.name for m in reversed(members) if not m.truncated), None)
        lost = (
            f"{path.name} is truncated at byte {size}: "
            + (f"member {', '.join(m.name for m in cut)} is cut short; " if cut else "")
            + (f"anything after {last} is lost" if last else "every member is lost")
            + "; copy the shard again to get them back"
        )
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for m in members:
        key, ext = split_name(m.name)
        if key.split("/")[-1].startswith("__"):
            continue  # webdataset's own metadata members
        if samples and samples[-1].key == key:
            sample = samples[-1]
        elif key in seen:
            raise DatasetError(
                f"{path}: the members of sample {key!r} are not side by side (found again at {m.name}); "
                "a webdataset shard keeps each sample's files together: rewrite it sorted by key"
            )
        else:
            seen[key] = len(samples)
            sample = Sample(key)
            samples.append(sample)
        if ext in sample.members:
            raise DatasetError(f"{path}: sample {key!r} has two members named {m.name!r}")
        sample.members[ext] = m
    with path.open("rb") as fh:
        labels = [_read_labels(fh, path, s) for s in samples]
    return ShardListing(path, samples, labels, lost)


def _read_labels(fh, path: Path, sample: Sample) -> dict:
    out: dict = {}
    for ext in ("cls", "json"):
        m = sample.members.get(ext)
        if m is None or m.truncated:
            continue
        if m.size > _LABEL_MEMBER_BYTES:
            raise DatasetError(f"{path}: {m.name} has {m.size} bytes; a label member holds a few")
        fh.seek(m.offset)
        text = fh.read(m.size).decode("utf-8", "replace")
        if ext == "cls":
            out["category"] = text.strip().lower()
            continue
        obj = parse_json_object(text, f"{path}: {m.name}")
        for k in _CATEGORY_KEYS:
            if isinstance(obj.get(k), str) and obj[k].strip():
                out["category"] = obj[k].strip().lower()
                break
        for k in ("valence", "arousal", "split", "distribution"):
            if obj.get(k) is not None:
                out[k] = obj[k]
    return out


def image_ref(listing: ShardListing, sample: Sample) -> ImageRef:
    """The sample's one image, or the reason extraction will record for it."""
    shard = str(listing.path)
    images = sample.images
    if not images:
        have = ", ".join(f".{e}" for e in sample.members) or "nothing"
        return ImageRef(shard, 0, 0, f"sample {sample.key} has no image member (has {have})")
    if len(images) > 1:
        names = ", ".join(m.name for m in images)
        return ImageRef(shard, 0, 0, f"two images in one sample: {names}; keep one image per key")
    m = images[0]
    if m.truncated:
        return ImageRef(shard, m.offset, m.size, f"truncated tar: {m.name} is cut short ({listing.lost})")
    return ImageRef(shard, m.offset, m.size)


# -- the dataset ---------------------------------------------------------------------------------
def read_webdataset(pattern: str | os.PathLike) -> Manifest:
    paths = shard_paths(os.fspath(pattern))
    root = Path(os.path.commonpath([p.parent for p in paths]))
    listings = [list_shard(p) for p in paths]
    ids, rel_paths, labels, notes = [], [], [], []
    owner: dict[str, Path] = {}
    for listing in listings:
        shard = listing.path.relative_to(root).as_posix()
        shard_id = shard[:-4] if shard.endswith(".tar") else shard
        if listing.lost:
            notes.append(listing.lost)
            log.warning("%s", listing.lost)
        for sample, lab in zip(listing.samples, listing.labels):
            if sample.key in owner:
                raise DatasetError(
                    f"key {sample.key!r} is in both {owner[sample.key]} and {listing.path}: the same sample "
                    "twice (a shard copied under another name?); remove the duplicate shard from the pattern"
                )
            owner[sample.key] = listing.path
            images = sample.images
            member = images[0].name if len(images) == 1 else sample.key
            ids.append(f"{shard_id}/{sample.key}")
            rel_paths.append(f"{shard}/{member}")
            labels.append(lab)
    if not ids:
        raise DatasetError(
            f"webdataset pattern {os.fspath(pattern)!r}: its {len(paths)} shards hold no samples"
        )
    bad = sum(image_ref(li, s).error is not None for li in listings for s in li.samples)
    if bad:
        notes.append(f"{bad} samples without a usable image (recorded as failures by extraction)")
    cats, dist = _distribution(labels, ids)
    return Manifest.build(
        root,
        rel_paths,
        ids=ids,
        category=[lab.get("category", "") for lab in labels],
        valence=[
            parse_float(lab.get("valence"), i, "valence", error=LabelError) for lab, i in zip(labels, ids)
        ],
        arousal=[
            parse_float(lab.get("arousal"), i, "arousal", error=LabelError) for lab, i in zip(labels, ids)
        ],
        split=[normalize_split(lab.get("split", ""), f"{i}: ") for lab, i in zip(labels, ids)],
        distribution=dist,
        categories=cats,
        name=root.name or "webdataset",
        kind="webdataset",
        notes=notes,
    )


def _distribution(labels: list[dict], ids: list[str]) -> tuple[list[str], np.ndarray | None]:
    dists = [lab.get("distribution") for lab in labels]
    for d, i in zip(dists, ids):
        if d is not None and not isinstance(d, dict):
            raise LabelError(f'{i}: distribution must be an object such as {{"joy": 0.7, "fear": 0.3}}')
    cats = list(dict.fromkeys(itertools.chain.from_iterable(d for d in dists if d)))
    if not cats:
        return [], None
    out = np.full((len(labels), len(cats)), np.nan)
    col = {c: k for k, c in enumerate(cats)}
    for r, (d, i) in enumerate(zip(dists, ids)):
        if d:
            out[r] = 0.0  # categories a sample does not list have probability 0
            for c, p in d.items():
                out[r, col[c]] = parse_float(p, i, f"distribution[{c!r}]", error=LabelError)
            s = out[r].sum()
            if s > 0:
                out[r] /= s  # counts (votes) are allowed, as in CSV manifests
    return cats, out


def image_refs(manifest: Manifest) -> list[ImageRef]:
    """Where each row of a webdataset manifest finds its image (the shards are listed again, cached)."""
    by_shard: dict[str, dict[str, ImageRef]] = {}
    refs = []
    for rel in manifest.paths.tolist():
        shard, _, member = rel.partition(".tar/")
        tar = str(manifest.root / f"{shard}.tar")
        if tar not in by_shard:
            listing = list_shard(Path(tar))
            by_shard[tar] = {s.key: image_ref(listing, s) for s in listing.samples}
        key = split_name(member)[0]
        try:
            refs.append(by_shard[tar][key])
        except KeyError:
            raise DatasetError(
                f"{tar} no longer holds sample {key!r}; the shard changed since the store was made: "
                "write to a new --out"
            ) from None
    return refs


@register_dataset(
    "webdataset",
    aliases=("wds",),
    pattern=True,
    help="webdataset tar shards (img2dataset layout): a brace pattern shards/{00000..00099}.tar or a glob",
)
def _read(path: Path) -> Manifest:
    return read_webdataset(path)


def member_reader(manifest: Manifest) -> Reader:
    """``read(path) -> bytes`` for the rows of a webdataset manifest (one member read per call),
    raising `DecodeError` with the reason extraction would record."""
    refs = dict(zip((str(p) for p in manifest.abspaths()), image_refs(manifest)))

    def read(path: str) -> bytes:
        ref = refs[str(path)]
        if ref.error is not None:
            raise DecodeError(path, ref.error)
        with open(ref.shard, "rb") as fh:
            fh.seek(ref.offset)
            data = fh.read(ref.size)
        if not data:
            raise DecodeError(path, "empty tar member (0 bytes)")
        return data

    return read
