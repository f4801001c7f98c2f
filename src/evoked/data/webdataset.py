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
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from evoked.data.datasets import IMAGE_EXTENSIONS, register_dataset
from evoked.data.manifest import Manifest, escape_name, normalize_split
from evoked.data.text import parse_float, parse_json_object, regular_file
from evoked.errors import DatasetError, DecodeError, LabelError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset(e.lstrip(".") for e in IMAGE_EXTENSIONS)
_LABEL_MEMBER_BYTES = 1 << 20  # a .json or .cls larger than this is not a label file
_CATEGORY_KEYS = ("category", "label", "emotion", "class")
_BRACE = re.compile(r"\{([^{}]*)\}")
Reader = Callable[[str], bytes]  # a file's path -> its bytes (`read_bytes`, `member_reader`)


@dataclass(frozen=True, slots=True)
class Member:
    """One file inside a tar: where its bytes start and how many there are."""

    name: str
    offset: int
    size: int
    truncated: bool = False


@dataclass(slots=True)
class Sample:
    key: str
    members: dict[str, Member] = field(default_factory=dict)  # extension (lower case) -> member

    @property
    def images(self) -> list[Member]:
        # ``jpg`` is the image; a compound extension (``seg.png``, ``depth.png``) is an annotation
        return [m for ext, m in self.members.items() if ext in IMAGE_SUFFIXES]


@dataclass(slots=True)
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
    notes: list[str] = field(default_factory=list)  # renamed members, links, members not read


# -- patterns ------------------------------------------------------------------------------------
#: the most names one pattern may stand for: a brace range is counted before it is expanded
MAX_PATTERN_NAMES = 1_000_000


def _brace_options(pattern: str, m: re.Match) -> tuple[int, Iterator[str]]:
    """How many alternatives one brace group gives, and the alternatives (lazily)."""
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        if len(lo) > 18 or len(hi) > 18:
            raise DatasetError(
                f"brace range {{{body:.60}}} in {pattern!r:.120} is too long to be a shard count"
            )
        if int(hi) < int(lo):
            raise DatasetError(f"brace range {{{body}}} in {pattern!r} counts down; write {{{hi}..{lo}}}")
        width = len(lo) if lo.startswith("0") else 0
        return int(hi) - int(lo) + 1, (str(k).zfill(width) for k in range(int(lo), int(hi) + 1))
    if "," in body:
        options = body.split(",")
        return len(options), iter(options)
    raise DatasetError(
        f"cannot read the brace part {{{body}}} of {pattern!r}; write {{00000..00099}} or {{a,b}}"
    )


def count_braces(pattern: str, limit: int = MAX_PATTERN_NAMES) -> int:
    """How many names `expand_braces(pattern)` gives, counted without making them (stops past `limit`)."""
    m = _BRACE.search(pattern)
    if m is None:
        return 1
    count, options = _brace_options(pattern, m)
    head, tail = pattern[: m.start()], pattern[m.end() :]
    if m.group(1).count(",") == 0:  # a range: digits never make braces, every option counts the same
        return count * count_braces(head + next(options) + tail, limit)
    total = 0
    for opt in options:
        total += count_braces(head + opt + tail, limit)
        if total > limit:
            break
    return total


def expand_braces(pattern: str) -> Iterator[str]:
    """``a/{00000..00002}.tar`` -> three names (zero padding kept); ``{x,y}`` lists alternatives.

    The names are made one at a time; `shard_paths` counts them first (`count_braces`).
    """
    m = _BRACE.search(pattern)
    if m is None:
        yield pattern
        return
    _, options = _brace_options(pattern, m)
    head, tail = pattern[: m.start()], pattern[m.end() :]
    for opt in options:
        yield from expand_braces(head + opt + tail)


def _fixed_folder(pattern: str) -> str:
    """The folder part of `pattern` before its first brace or glob character ('' when none)."""
    cut = min((i for i in (pattern.find(c) for c in "{*?[") if i >= 0), default=len(pattern))
    return os.path.dirname(os.path.expanduser(pattern[:cut]))


def shard_paths(pattern: str) -> list[Path]:
    """The tar files a pattern names, in pattern order (a brace list) or sorted (a glob)."""
    total = count_braces(pattern)
    if total > MAX_PATTERN_NAMES:
        raise DatasetError(
            f"webdataset pattern {pattern!r:.200} stands for more than {MAX_PATTERN_NAMES:,} shard names; "
            "narrow the brace range to the shards you have, or give a glob such as 'shards/*.tar'"
        )
    folder = _fixed_folder(pattern)
    if folder and not os.path.isdir(folder):
        raise DatasetError(
            f"webdataset pattern {pattern!r:.200} matches no file: folder {folder!r} does not exist"
        )
    found: list[str] = []
    missing: list[str] = []
    for name in expand_braces(pattern):
        if glob.has_magic(name):
            found += sorted(glob.glob(os.path.expanduser(name), recursive=True))
        elif os.path.lexists(os.path.expanduser(name)):
            found.append(os.path.expanduser(name))
        else:
            missing.append(name)
    if not found:
        raise DatasetError(
            f"webdataset pattern {pattern!r:.200} matches no file; give a brace pattern such as "
            "shards/{00000..00099}.tar or a glob such as 'shards/*.tar'"
        )
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise DatasetError(
            f"webdataset pattern {pattern!r:.200}: {len(missing)} of its {total} shards do not exist: {shown}; "
            "narrow the brace range to the shards you have"
        )
    paths = [Path(os.path.abspath(p)) for p in dict.fromkeys(found)]
    for p in paths:  # a FIFO named 00000.tar would block the listing forever: never open one
        if p.is_dir():
            raise DatasetError(f"webdataset pattern {pattern!r} matches a folder, not a tar file: {p}")
        regular_file(p, "webdataset shard", DatasetError)
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
_HARD_LINK = b"1"
_NOTED_TYPES = {b"2": "symbolic link", b"3": "character device", b"4": "block device", b"6": "FIFO"}
_SKIPPED_TYPES = (_HARD_LINK, *_NOTED_TYPES, b"5")  # links, devices, fifos, folders (no note)


@dataclass
class _Scan:
    """What a shard's headers say: its file members, its links and odd members, and whether the
    archive's end marker is there."""

    members: list[Member] = field(default_factory=list)
    links: dict[int, str] = field(default_factory=dict)  # members[i] is a hard link to this name
    odd: list[str] = field(default_factory=list)  # "name (symbolic link)": members not read
    complete: bool = False


def _scan_headers(fh, size: int) -> _Scan | None:
    """Members of a plain ustar/GNU tar read from its 512-byte headers; None when a header needs the
    standard library (pax or GNU long names, base-256 sizes, a bad checksum -- including a file that
    is no tar at all).

    Why not `tarfile` alone: it parses every header field in Python, which made listing a shard
    slower than reading its images (0.2 ms a member); this reads the few fields it needs.
    """
    scan = _Scan()
    pos = 0
    while True:
        fh.seek(pos)
        hdr = fh.read(512)
        if len(hdr) < 512:
            return scan if scan.members else None
        if hdr == _ZERO_BLOCK:
            scan.complete = fh.read(512) == _ZERO_BLOCK
            return scan
        try:
            checksum = int(hdr[148:156].strip(b"\0 ") or b"0", 8)
            msize = int(hdr[124:136].strip(b"\0 ") or b"0", 8)
        except ValueError:
            return None
        typeflag = hdr[156:157]
        if checksum != sum(hdr) - sum(hdr[148:156]) + 256 or hdr[124] & 0x80:
            return None
        if typeflag not in _FILE_TYPES and typeflag not in _SKIPPED_TYPES:
            return None
        data = pos + 512
        name = _header_name(hdr)
        if typeflag in _FILE_TYPES:
            scan.members.append(Member(name, data, msize, data + msize > size))
        elif typeflag == _HARD_LINK:
            scan.links[len(scan.members)] = hdr[157:257].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            scan.members.append(Member(name, -1, 0))
        elif typeflag in _NOTED_TYPES:
            scan.odd.append(f"{escape_name(name)} ({_NOTED_TYPES[typeflag]})")
        pos = data + (msize + 511) // 512 * 512
        if data + msize > size:
            return scan


def _header_name(hdr: bytes) -> str:
    name = hdr[:100].split(b"\0", 1)[0]
    if hdr[257:263] == b"ustar\0":  # POSIX ustar: a name prefix
        prefix = hdr[345:500].split(b"\0", 1)[0]
        name = prefix + b"/" + name if prefix else name
    return name.decode("utf-8", "surrogateescape")


def _tarfile_members(fh, path: Path, size: int) -> _Scan:
    scan = _Scan()
    try:
        tf = tarfile.open(fileobj=fh, mode="r:")
    except tarfile.ReadError as e:
        raise DatasetError(
            f"{path} is not a tar file ({e}); a webdataset shard is an uncompressed tar of "
            "KEY.jpg, KEY.json, ... members (img2dataset --output_format webdataset)"
        ) from e
    except (OSError, OverflowError, ValueError) as e:  # a size no file can have (2**62, 10**15)
        raise DatasetError(f"{path}: its first member's header is broken ({e}); copy the shard again") from e
    while True:
        try:
            info = tf.next()
        except (tarfile.ReadError, OSError, OverflowError, ValueError):  # data past the end of the file
            return scan
        if info is None:
            break
        if info.isfile():
            end = info.offset_data + info.size
            scan.members.append(Member(info.name, info.offset_data, info.size, truncated=end > size))
            if end > size:
                return scan
        elif info.islnk():
            scan.links[len(scan.members)] = info.linkname
            scan.members.append(Member(info.name, -1, 0))
        elif info.issym() or info.ischr() or info.isblk() or info.isfifo():
            kind = (
                "symbolic link"
                if info.issym()
                else "device"
                if info.isdev() and not info.isfifo()
                else "FIFO"
            )
            scan.odd.append(f"{escape_name(info.name)} ({kind})")
    try:
        fh.seek(tf.offset)
        scan.complete = fh.read(1024) == bytes(1024)
    except (OSError, OverflowError):
        pass
    return scan


def _safe_name(name: str) -> str:
    """A member name as text that stays inside its shard: undecodable bytes become ``\\xNN`` (as
    file names do), and a name that is absolute or climbs with ``..`` is read from the shard's top
    (``../../etc/passwd`` -> ``etc/passwd``), so no id or path can point outside the shard."""
    name = escape_name(name)
    if name.startswith("/") or ".." in name.split("/"):
        name = posixpath.normpath("/" + name).lstrip("/")
    return name


def _named(scan: _Scan, path: Path) -> tuple[list[Member], list[str]]:
    """The members with safe names (hard links read through the member they name) and the notes."""
    members: list[Member] = []
    by_name: dict[str, Member] = {}
    moved: list[str] = []
    linked: list[str] = []
    unknown: list[str] = []
    for k, m in enumerate(scan.members):
        safe = _safe_name(m.name)
        if safe != escape_name(m.name):
            moved.append(f"{escape_name(m.name)!r} -> {safe!r}")
        if k in scan.links:
            target = by_name.get(_safe_name(scan.links[k]))
            (linked if target else unknown).append(f"{safe} -> {_safe_name(scan.links[k])}")
            if target is None:
                continue
            m = replace(target, name=safe)
        elif safe != m.name:
            m = replace(m, name=safe)
        if scan.links:
            by_name[safe] = m
        members.append(m)
    notes = []
    if moved:
        notes.append(
            f"{path.name}: {len(moved)} member name(s) are absolute or climb out of the shard with '..'; "
            f"they are read as names inside it: {', '.join(moved[:5])}"
        )
    if linked:
        notes.append(
            f"{path.name}: {len(linked)} hard-link member(s) read through the member they name: "
            + ", ".join(linked[:5])
        )
    if unknown:
        notes.append(
            f"{path.name}: {len(unknown)} hard-link member(s) name no file member before them and are not "
            f"read: {', '.join(unknown[:5])}; rewrite the shard with tar --hard-dereference"
        )
    if scan.odd:
        notes.append(
            f"{path.name}: {len(scan.odd)} member(s) are not files and are not read: "
            f"{', '.join(scan.odd[:5])}; a webdataset shard holds regular files only"
        )
    return members, notes


def _list_shard(path: Path, size: int) -> ShardListing:
    with path.open("rb") as fh:
        scanned = _scan_headers(fh, size)
        if scanned is None:
            fh.seek(0)
            scanned = _tarfile_members(fh, path, size)
    members, notes = _named(scanned, path)
    lost: str | None = None
    cut = [m for m in members if m.truncated]
    if cut or not scanned.complete:
        # no end-of-archive blocks: the file was cut, and members after the cut are unknown
        last = next((m.name for m in reversed(members) if not m.truncated), None)
        lost = (
            f"{path.name} is truncated at byte {size}: "
            + (f"member {', '.join(m.name for m in cut)} is cut short; " if cut else "")
            + (f"anything after {last} is lost" if last else "every member is lost")
            + "; copy the shard again to get them back"
        )
    samples = _samples(members, path)
    with path.open("rb") as fh:
        labels = [_read_labels(fh, path, s) for s in samples]
    return ShardListing(path, samples, labels, lost, notes)


def _samples(members: list[Member], path: Path) -> list[Sample]:
    samples: list[Sample] = []
    seen: set[str] = set()
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
            seen.add(key)
            sample = Sample(key)
            samples.append(sample)
        if ext in sample.members:
            raise DatasetError(f"{path}: sample {key!r} has two members named {m.name!r}")
        sample.members[ext] = m
    return samples


def _read_labels(fh, path: Path, sample: Sample) -> dict:
    out: dict = {}
    for ext in ("cls", "json"):
        m = sample.members.get(ext)
        if m is None or m.truncated:
            continue
        if m.size > _LABEL_MEMBER_BYTES:
            raise DatasetError(f"{path}: {m.name} has {m.size} bytes; a label member holds a few")
        fh.seek(m.offset)
        raw = fh.read(m.size)
        try:
            text = raw.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as e:
            raise DatasetError(
                f"{path}: {m.name}: byte {raw[e.start : e.start + 1].hex()} at offset {e.start} is not UTF-8; "
                "write the label files as UTF-8 (e.g. iconv -f latin1 -t utf-8) and pack the shard again"
            ) from e
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
        notes += listing.notes
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
