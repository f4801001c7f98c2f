"""`evoked features info|merge|export`."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from evoked.cli._common import COMMON, examples, names_help, one_of, print_json, progress
from evoked.features.export import EXPORT_DTYPES, EXPORT_FORMATS


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser(
        "features",
        help="inspect, merge and export feature stores",
        description="What a feature store holds (info), one store from the shards of a distributed or "
        "--shard extraction (merge), and its features for other tools (export). See docs/schema.md.",
        **examples(
            "evoked features info feats/e6.h5",
            "evoked features export feats/e6.h5 --feature color --format parquet --out exports/e6",
        ),
    )
    fsub = f.add_subparsers(dest="features_command", metavar="ACTION", required=True)
    p = fsub.add_parser(
        "info",
        parents=[COMMON],
        help="items, outputs, dimensions and provenance of a store",
        description="Summarise a feature store: its items (ok, failed, pending), each extractor's outputs "
        "and dimensions, and how they were extracted (weights, preprocessing, versions).",
        **examples("evoked features info feats/e6.h5", "evoked features info feats/e6.h5 --failures --json"),
    )
    p.add_argument("store", type=Path, help="the HDF5 feature store (from `evoked extract`)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--failures", action="store_true", help="list every failed row with its reason")
    p.set_defaults(func=_info)
    p = fsub.add_parser(
        "merge",
        parents=[COMMON],
        help="merge --shard files into one store (virtual datasets, no copy)",
        description="Merge OUT.shard-I-of-N.h5 files into OUT. Without SHARD arguments the shards beside OUT "
        "are found by name.",
        **examples(
            "evoked features merge feats/big.h5",
            "evoked features merge feats/big.h5 feats/big.shard-0-of-2.h5 feats/big.shard-1-of-2.h5",
        ),
    )
    p.add_argument("out", type=Path, help="the merged store to write")
    p.add_argument("shards", nargs="*", type=Path, help="the shard files (default: OUT's shards beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT when it exists (a merged view of the "
                   "same shards is refreshed without it)")  # fmt: skip
    p.set_defaults(func=_merge)
    p = fsub.add_parser(
        "export",
        parents=[COMMON],
        help="write features as npy + parquet (clip-retrieval layout) or parquet, for other tools",
        description="Export the ok rows of STORE. --format npy writes OUT/img_emb/img_emb_{i}.npy and "
        "OUT/metadata/metadata_{i}.parquet (row j of one is row j of the other); --format parquet writes "
        "OUT/features_{i}.parquet with one list column per feature. Failed and pending rows are left out "
        "and counted.",
        **examples(
            "evoked features export feats/e6.h5 --feature color/stats --normalize --out exports/e6-npy",
            "evoked features export feats/e6.h5 --feature color --format parquet --dtype float16 --out exports/e6",
        ),
    )
    p.add_argument("store", type=Path, help="the HDF5 feature store (from `evoked extract`)")
    p.add_argument(
        "--feature", action="append", required=True, help="EXTRACTOR/OUTPUT or EXTRACTOR (repeatable)"
    )
    p.add_argument("--format", type=one_of(EXPORT_FORMATS), default="npy", help=names_help(EXPORT_FORMATS))
    p.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    p.add_argument("--rows-per-file", type=int, default=1_000_000, help="rows in each file (default 1000000)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise each feature of each row")
    p.add_argument(
        "--dtype", choices=EXPORT_DTYPES, default="float32", help="the number type written (default float32)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_export)


def _info(args: argparse.Namespace) -> int:
    from evoked.features.store import open_store

    with open_store(args.store) as store:
        info = store.info()
        errors = store.errors() if args.failures else {}
    if args.json:
        if args.failures:
            info["failures"] = errors
        print_json(info)
        return 0
    a = info["attrs"]
    st = info["status"]
    print(f"{info['path']}: {info['items']} items of {a.get('dataset')} ({a.get('dataset_kind')})")
    print(f"  status: {st['ok']} ok, {st['failed']} failed, {st['pending']} pending")
    print(
        f"  created {a.get('created')} by evoked {a.get('evoked_version')}, schema {a.get('schema_version')}, "
        f"precision {a.get('precision')}, dtype {a.get('dtype')}"
        + (f", shard {a['shard']}" if a.get("shard") else "")
    )
    if a.get("merged_from"):
        print(f"  merged from {', '.join(json.loads(a['merged_from']))}")
    print("  features:")
    for name, d in info["features"].items():
        print(f"    {name:<32} {d['shape'][1]:>6}-d  {d['dtype']}" + ("  (virtual)" if d["virtual"] else ""))
    for name, e in info["extractors"].items():
        pre = e.get("preprocess", {})
        print(
            f"  {name}: {e.get('model')}; weights {e.get('weights')}"
            + (f" sha256 {e['weights_sha256'][:12]}" if e.get("weights_sha256") else "")
        )
        if pre:
            print(
                f"    preprocess resize {pre.get('resize')} crop {pre.get('crop')} mode {pre.get('mode')} "
                f"mean {pre.get('mean')} std {pre.get('std')}"
                + (" rotate 180" if pre.get("rotate180") else "")
            )
    t = info["timing"]
    if t:
        print(
            f"  timing: {t['images']} images in {t['blocks']} blocks; read {t['read_s']:.1f} s, "
            f"model {t['model_s']:.1f} s, write {t['write_s']:.1f} s"
        )
    print(
        f"  runs: {len(info['runs'])}"
        + "".join(
            f"\n    {r.get('started')} {r.get('device')} {r.get('precision')} ({r.get('rows_to_do')} rows)"
            for r in info["runs"]
        )
    )
    if args.failures:
        print(f"  failures ({len(errors)}):")
        for item, reason in errors.items():
            print(f"    {item}: {reason}")
    return 0


def _merge(args: argparse.Namespace) -> int:
    from evoked.features.merge import merge_shards
    from evoked.features.store import open_store

    out = merge_shards(args.out, args.shards or None, overwrite=args.overwrite)
    with open_store(out) as s:
        c = s.counts()
    print(
        f"merged {out}: {sum(c.values())} items ({c['ok']} ok, {c['failed']} failed, {c['pending']} pending)"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from evoked.features.export import export_features
    from evoked.features.store import open_store

    with open_store(args.store) as s:
        n = len(s)
    with progress(args, n, "export", unit="row") as bar:
        summary = export_features(
            args.store,
            args.feature,
            format=args.format,
            out=args.out,
            rows_per_file=args.rows_per_file,
            normalize=args.normalize,
            dtype=args.dtype,
            on_chunk=bar.update,
        )
    if args.json:
        print_json(asdict(summary))
        return 0
    dims = ", ".join(f"{k} ({d})" for k, d in summary.features.items())
    print(
        f"exported {summary.rows} rows of {dims} as {summary.format} ({summary.dtype}"
        + (", L2-normalised" if summary.normalized else "")
        + f") to {summary.out}: {len(summary.files)} file"
        + ("s" if len(summary.files) != 1 else "")
    )
    if summary.left_out_failed or summary.left_out_pending:
        print(
            f"  left out: {summary.left_out_failed} failed rows, {summary.left_out_pending} pending rows "
            "(see `evoked features info --failures`)"
        )
    return 0
