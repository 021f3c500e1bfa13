"""Static files shipped in ``broker/static/``: the browser client (``GET /v1/client.js`` and its
types ``GET /v1/client.d.ts``) in every mode, and the loader the dev console's files share.

Files are read from the installed package once (``importlib.resources``, so a wheel install
serves them too) and answered with a strong ``ETag``: URLs are not versioned, so caches must
revalidate (``Cache-Control: no-cache``) and an unchanged file costs a 304. Nothing here reads
the environment, authenticates or touches user data.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from litestar import Request, Response, get

# Litestar appends "; charset=utf-8" to text/* media types itself.
JAVASCRIPT: Final = "text/javascript"
CSS: Final = "text/css"
HTML: Final = "text/html"
TYPESCRIPT: Final = "application/typescript; charset=utf-8"
CACHE_CONTROL: Final = "no-cache"


@dataclass(frozen=True, slots=True)
class Asset:
    """One static file: its bytes, its media type and its entity tag."""

    body: bytes
    media_type: str
    etag: str


@functools.cache
def load_asset(path: str, media_type: str) -> Asset:
    """The file at ``path`` (``/``-separated, below ``broker/static``), read once per process."""
    resource = resources.files("broker").joinpath("static", *path.split("/"))
    body = resource.read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:32]
    return Asset(body=body, media_type=media_type, etag=f'"{digest}"')


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: weak comparison of ``If-None-Match`` against our (strong) tag."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def asset_response(
    request: Request[Any, Any, Any], asset: Asset, headers: dict[str, str] | None = None
) -> Response[bytes]:
    """``asset`` with validators, or 304 when the client already holds this version."""
    all_headers = {
        "ETag": asset.etag,
        "Cache-Control": CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
        # With CORS on, answers to an allowed Origin carry Access-Control-Allow-Origin and
        # others do not: a shared cache must not hand one to the other's module import.
        "Vary": "Origin",
        **(headers or {}),
    }
    if etag_matches(request.headers.get("if-none-match"), asset.etag):
        return Response(b"", status_code=304, headers=all_headers, media_type=asset.media_type)
    return Response(asset.body, headers=all_headers, media_type=asset.media_type)


@get("/v1/client.js", include_in_schema=False, sync_to_thread=False)
def client_js(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The browser client: a dependency-free ES module (see the README, "Browser client")."""
    return asset_response(request, load_asset("client.js", JAVASCRIPT))


@get("/v1/client.d.ts", include_in_schema=False, sync_to_thread=False)
def client_types(request: Request[Any, Any, Any]) -> Response[bytes]:
    """TypeScript declarations for ``/v1/client.js``."""
    return asset_response(request, load_asset("client.d.ts", TYPESCRIPT))
