"""`evoked index` and `evoked search`."""

from __future__ import annotations

import argparse
from pathlib import Path

from evoked.cli._common import COMMON, examples, names_help, one_of, print_json, progress, size, va_point
from evoked.features.index_kinds import INDEX_KINDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        parents=[COMMON],
        help="build a FAISS index of one feature beside its store",
        description="Cosine similarity (inner product of L2-normalised vectors), built chunk by chunk in bounded "
        "memory. An approximate index prints its recall@10 against exact search.",
        **examples(
            "evoked index feats/e6.h5 --feature resnet50/pool",
            "evoked index feats/big.h5 --feature clip-vit-b-32/embed --kind ivfpq --memory-budget 2GB",
        ),
    )
    p.add_argument("store", type=Path, help="the HDF5 feature store (from `evoked extract`)")
    p.add_argument("--feature", required=True, help="e.g. resnet50/pool or clip-vit-b-32/embed")
    p.add_argument("--kind", default="auto", type=one_of(INDEX_KINDS), help=names_help(INDEX_KINDS))
    p.add_argument(
        "--memory-budget",
        default="2GB",
        type=size,
        help="memory the index may use while building (default 2GB)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where faiss builds IVF")
    p.add_argument("--out", type=Path, default=None, help="index file (default STORE.<feature>.faiss)")
    p.add_argument("--json", action="store_true", help="print the index summary as JSON")
    p.set_defaults(func=_index)

    p = sub.add_parser(
        "search",
        parents=[COMMON],
        help="nearest neighbours of an item, an image, a text (CLIP) or a VA point",
        description="Find the K items of a store nearest to one query, by cosine similarity of --feature "
        "(the FAISS index beside the store when `evoked index` built one, else exact search): an item of "
        "the store (--id), an image file (--image, extracted as the store was), a text (--text, CLIP embed "
        "features) or a valence,arousal point (--va: the items whose VA ratings are nearest).",
        **examples(
            "evoked search feats/e6.h5 --feature resnet50/pool --id joy/1.jpg -k 5",
            "evoked search feats/e6.h5 --feature resnet50/pool --image photo.jpg --json",
            'evoked search feats/e6.h5 --feature clip-vit-b-32/embed --text "a stormy sea" -k 5',
            "evoked search feats/e6.h5 --feature resnet50/pool --va 8,6 -k 5",
        ),
    )
    p.add_argument("store", type=Path, help="the HDF5 feature store to search (from `evoked extract`)")
    p.add_argument(
        "--feature",
        required=True,
        help="the feature compared, GROUP/OUTPUT, e.g. resnet50/pool or clip-vit-b-32/embed",
    )
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--id", help="an item id of the store")
    q.add_argument("--image", type=Path, help="an image file, extracted as the store was")
    q.add_argument("--text", help="a text query (CLIP embed features only)")
    q.add_argument(
        "--va",
        metavar="V,A",
        type=va_point,
        help="a valence,arousal point on the 1-9 scale (nearest known labels)",
    )
    p.add_argument("-k", type=int, default=10, help="how many neighbours to list (default 10)")
    p.add_argument("--include-self", action="store_true", help="with --id: keep the item itself")
    p.add_argument("--device", default="cpu", help="where image/text queries are embedded")
    p.add_argument("--json", action="store_true", help="print the neighbours as JSON")
    p.set_defaults(func=_search)


def _index(args: argparse.Namespace) -> int:
    from evoked.features.store_index import build_store_index

    use_gpu = {"auto": "auto", "cpu": "never", "cuda": "always"}[args.device]
    with progress(args, None, "indexing", "vec") as bar:
        path, info = build_store_index(
            args.store,
            args.feature,
            kind=args.kind,
            use_gpu=use_gpu,
            out=args.out,
            memory_budget=args.memory_budget,
            on_progress=bar.update,
        )
    if args.json:
        print_json({"path": str(path), **info.__dict__})
        return 0
    recall = (
        "exact" if info.recall_at_10 is None else f"recall@10 {info.recall_at_10:.3f} against exact search"
    )
    print(
        f"wrote {path}: {info.kind} index of {info.n} x {info.dim} ({args.feature}), {recall}, "
        f"params {info.params or '-'}, {info.build_seconds:.1f} s" + (" on the GPU" if info.on_gpu else "")
    )
    return 0


def _search(args: argparse.Namespace) -> int:
    from evoked.errors import ConfigError
    from evoked.retrieve import Retriever

    if args.k < 1:
        raise ConfigError(f"-k {args.k}: must be at least 1")
    with Retriever(args.store, args.feature, device=args.device) as r:
        if args.id is not None:
            hits, query = r.by_id(args.id, args.k, args.include_self), f"id {args.id}"
        elif args.image is not None:
            hits, query = r.by_image(args.image, args.k), f"image {args.image}"
        elif args.text is not None:
            hits, query = r.by_text(args.text, args.k), f"text {args.text!r}"
        else:
            v, a = args.va
            hits, query = r.by_va(v, a, args.k), f"VA ({v:g}, {a:g})"
        kind = r.kind
    if args.json:
        print_json({"query": query, "index": kind, "hits": [h.to_dict() for h in hits]})
        return 0
    print(f"{len(hits)} nearest to {query} by {args.feature} ({kind}):")
    width = max([len(h.id) for h in hits] + [2])
    by_va = args.va is not None  # VA hits are scored by negative distance in the VA plane
    print(
        f"  {'#':>3}  {'id':<{width}}  {'dist' if by_va else 'cosine':>7}  {'val':>5}  {'aro':>5}  category"
    )
    for h in hits:
        fmt = lambda x: "  -  " if x is None else f"{x:5.2f}"  # noqa: E731
        score = -h.score if by_va else h.score
        print(
            f"  {h.rank:>3}  {h.id:<{width}}  {score:7.4f}  {fmt(h.valence)}  {fmt(h.arousal)}  {h.category}"
        )
    return 0
