"""`evoked serve`: a small web app to browse images by emotion, and the JSON API behind it.

Safety: the server binds to 127.0.0.1 unless told otherwise and answers only requests whose Host
is the bound host or a loopback name; every response carries nosniff and a Content-Security-Policy
(evoked.serve.security); images are addressed by row number, never by path, only rows whose status
is ok are served, only files under the dataset root (after symlinks), with the content type of the
format the decoder finds; uploads are size-limited while they are read and decoded with the
project's safe decoder off the event loop, a bounded number at a time; a bad request gets a 4xx
with a JSON message, and an unexpected error a 500 without a traceback (it is logged).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import Route

from evoked.serve import api, browse
from evoked.serve.security import SecurityMiddleware, allowed_hosts, content_security_policy
from evoked.serve.state import ServeConfig, ServeState

log = logging.getLogger(__name__)

__all__ = ["ServeConfig", "create_app", "serve"]

ROUTES = [
    Route("/", api.page),
    Route("/api/info", api.info),
    Route("/api/points", api.points),
    Route("/api/search/item", api.search_item),
    Route("/api/search/text", api.search_text),
    Route("/api/search/va", api.search_va),
    Route("/api/search/image", api.search_image, methods=["POST"]),
    Route("/api/image/{row}", api.image),
    Route("/api/thumb/{row}", api.thumb),
    Route("/api/plane", browse.plane),
    Route("/api/plane/ids", browse.plane_ids),
    Route("/api/browse", browse.browse),
    Route("/api/item/{row}", browse.item),
    Route("/api/provenance", browse.provenance),
]


def create_app(cfg: ServeConfig, warm: bool = False) -> Starlette:
    """The app. With `warm`, the query backbone is built now rather than at the first image query."""
    state = ServeState(cfg)
    if warm:
        state.retriever.backbone()
    state.columns.encode_in_background()
    security = Middleware(
        SecurityMiddleware,
        hosts=allowed_hosts(cfg.host, cfg.allow_hosts),
        csp=content_security_policy(state.html),
    )
    app = Starlette(
        routes=ROUTES,
        middleware=[security],
        exception_handlers={HTTPException: api.http_error, Exception: api.server_error},
    )
    app.state.evoked = state  # what every handler reads (serve.params.state_of)
    return app


def serve(
    cfg: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str], None] | None = None,
    server_box: list | None = None,
) -> None:
    """Run the app with uvicorn until interrupted.

    The model is loaded first; `on_ready(url)` is called once the port answers, so a "serving on"
    line is never printed before the page can be opened. `server_box`, when given, receives the
    uvicorn server (set its ``should_exit`` to stop it).
    """
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can browse the dataset", host)
    if cfg.host != host:
        cfg = ServeConfig(**{**cfg.__dict__, "host": host})
    server = uvicorn.Server(
        uvicorn.Config(create_app(cfg, warm=True), host=host, port=port, log_level="warning")
    )
    if server_box is not None:
        server_box.append(server)
    if on_ready is not None:
        threading.Thread(target=_announce, args=(server, host, port, on_ready), daemon=True).start()
    server.run()


def _announce(server: Any, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Call `on_ready` once uvicorn has started and a connection to the port succeeds."""
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    while not server.should_exit:
        if server.started:
            try:
                with socket.create_connection((probe_host, port), timeout=1):
                    break
            except OSError:
                pass
        time.sleep(0.05)
    else:
        return
    shown = f"[{host}]" if ":" in host else host
    on_ready(f"http://{shown}:{port}/")
