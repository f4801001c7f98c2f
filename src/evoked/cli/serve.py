"""`evoked serve`: the retrieval web page."""

from __future__ import annotations

import argparse
from pathlib import Path

from evoked.cli._common import COMMON, examples


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        parents=[COMMON],
        help="a web page to browse a feature store by image, item, text or valence/arousal",
        description="Serve one page and its JSON API (docs/serve.md). Binds to 127.0.0.1 unless --host says "
        "otherwise. Uses the FAISS index beside the store when there is one (evoked index), else exact search.",
        **examples(
            "evoked serve feats/e6.h5 --feature resnet50/pool --run runs/e6",
            "evoked serve feats/e6.h5 --feature clip-vit-b-32/embed --port 8080",
        ),
    )
    p.add_argument("store", type=Path, help="the HDF5 feature store to browse (from `evoked extract`)")
    p.add_argument("--feature", required=True, help="the feature to search, e.g. clip-vit-b-32/embed")
    p.add_argument(
        "--run", type=Path, default=None, help="a regress run whose model predicts VA for every item"
    )
    p.add_argument("--model", default=None, help="with --run: which model (default: the run's best)")
    p.add_argument(
        "--index", type=Path, default=None, help="index file (default STORE.<feature>.faiss if present)"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        dest="allow_hosts",
        metavar="NAME",
        help="also answer requests for this Host name (by default only the bound host and loopback names, "
        "against DNS rebinding); repeatable",
    )
    p.add_argument("--port", type=int, default=8000, help="the port to listen on (default 8000)")
    p.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest query image accepted, in MB (default 10)"
    )
    p.add_argument("--device", default="cpu", help="where image and text queries are embedded")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from evoked.serve.app import ServeConfig, serve
    from evoked.serve.predictions import QueryModel, store_predictions

    predictions = kinds = run_name = query_model = None
    if args.run is not None:
        query_model = QueryModel(args.run, args.model, args.device)
        found = store_predictions(args.run, args.store, args.model)
        predictions, kinds, run_name = found.va, found.kind, found.label
        print("predictions from " + run_name + ": " + ", ".join(f"{n} {k}" for k, n in found.counts.items()))
    cfg = ServeConfig(
        store=str(args.store),
        feature=args.feature,
        index=str(args.index) if args.index else None,
        predictions=predictions,
        prediction_kind=kinds,
        run_name=run_name,
        query_model=query_model,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        device=args.device,
        host=args.host,
        allow_hosts=tuple(args.allow_hosts),
    )
    print(f"loading {args.store} ({args.feature}) ...", flush=True)
    serve(
        cfg,
        args.host,
        args.port,
        on_ready=lambda url: print(f"serving on {url}  (Ctrl-C to stop)", flush=True),
    )
    return 0
