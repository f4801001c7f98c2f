"""What every response of `evoked serve` carries, and which requests it answers at all.

- `SecurityMiddleware`: refuses a request whose ``Host`` header is not the bound host or a
  loopback name (DNS rebinding: a page on another site resolving its own name to 127.0.0.1), and
  adds ``X-Content-Type-Options: nosniff``, a Content-Security-Policy that lets the page run only
  its own inline scripts (by their sha256, computed from the page at start), no framing and no
  referrer. As middleware, endpoints added later get all of it without asking. For the page this
  means: scripts are inline ``<script>`` blocks of index.html as shipped (hashed at start; a page
  rewritten per request would need its hashes recomputed) or same-origin files; inline event
  handler attributes (``onclick="..."``) and ``javascript:`` URLs are blocked.
- `image_payload`: the bytes and content type to send for an image file, decided by what the
  decoder reads in the file (never its name), re-encoded as PNG when the format is not one every
  browser shows. Endpoints that send images (the full image, thumbnails) go through it, after
  checking that the row's status is ok.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evoked.data.decode import decode_rgb, probe

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

#: formats sent as they are, with the content type of what the decoder found
BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}

_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def script_hashes(html: str) -> list[str]:
    """CSP source expressions ``'sha256-...'`` of each inline ``<script>`` block, as browsers hash them."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii") + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]


def content_security_policy(html: str) -> str:
    scripts = " ".join(["'self'", *script_hashes(html)])
    return (
        f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"
    )


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names (without port) the server answers: the bound one, loopback names, and `extra`."""
    names = {bound, *LOOPBACK_HOSTS, *extra}
    return frozenset(n.strip().lower().strip("[]") for n in names if n and n not in ("0.0.0.0", "::"))


# RFC 9110 Host: a name or IPv4 address, or a bracketed IPv6 address, then an optional ``:digits``
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")


def host_name(header: str) -> str | None:
    """``"127.0.0.1:8000"`` -> ``"127.0.0.1"``; ``"[::1]:8000"`` -> ``"::1"``; None for anything
    that is not strictly a host and an optional numeric port (``localhost:evil``,
    ``127.0.0.1:8781@attacker.example``, a bare IPv6 address, user info), so it is refused."""
    m = _HOST.fullmatch(header.strip().lower())
    if m is None:
        return None
    return m.group("v6") or m.group("name").rstrip(".")


class SecurityMiddleware:
    """ASGI middleware: the Host check and the security headers (see the module doc)."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str], csp: str):
        self.app, self.hosts = app, hosts
        self.headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"content-security-policy", csp.encode("ascii")),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-resource-policy", b"same-origin"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if host_name(raw) not in self.hosts and scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *(h for h in self.headers if h[0] not in have),
                ]
            await send(message)

        if host_name(raw) not in self.hosts:
            error = (
                f"Host {raw!r} is not served here; open the page as http://127.0.0.1:PORT/ "
                "(or start the server with --allow-host NAME)"
            )
            return await JSONResponse({"error": error, "status": 421}, 421)(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)


def image_payload(data: bytes, source: str, max_pixels: int) -> tuple[bytes, str]:
    """(bytes, content type) to send for an image file: its own bytes when the decoder finds a
    format browsers show, else a PNG re-encoding. Raises `DecodeError` for anything else
    (an HTML or SVG file is not an image to the decoder, whatever its name)."""
    kind = BROWSER_FORMATS.get(probe(data, source, max_pixels).format)
    if kind is not None:  # with nosniff, a browser takes it as that image type and nothing else
        return data, kind
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(decode_rgb(data, source, max_pixels)).save(buf, "PNG")
    return buf.getvalue(), "image/png"
