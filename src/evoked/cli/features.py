"""`evoked features info|merge`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evoked.cli._common import COMMON, print_json


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("features", help="inspect and merge feature stores")
    fsub = f.add_subparsers(dest="features_command", metavar="ACTION", required=True)
    p = fsub.add_parser("info", parents=[COMMON], help="items, outputs, dimensions and provenance of a store")
    p.add_argument("store", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--failures", action="store_true", help="list every failed row with its reason")
    p.set_defaults(func=_info)
    p = fsub.add_parser(
        "merge",
        parents=[COMMON],
        help="merge --shard files into one store (virtual datasets, no copy)",
        description="Merge OUT.shard-I-of-N.h5 files into OUT. Without SHARD arguments the shards beside OUT "
        "are found by name.",
    )
    p.add_argument("out", type=Path)
    p.add_argument("shards", nargs="*", type=Path)
    p.set_defaults(func=_merge)


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

    out = merge_shards(args.out, args.shards or None)
    with open_store(out) as s:
        c = s.counts()
    print(
        f"merged {out}: {sum(c.values())} items ({c['ok']} ok, {c['failed']} failed, {c['pending']} pending)"
    )
    return 0
