"""The web playground: one page, its script and its style sheet, shipped inside the package and served by the
ingress at ``/`` and ``/playground/...`` (``ServeConfig.playground``; ``recursivemas serve --no-playground`` turns
it off).

The files hold no data: the page asks the API for everything, with the key the user types. So the auth middleware
lets exactly :data:`PATHS` through without a key, and every API route stays guarded. Nothing is loaded from
anywhere else; :data:`HEADERS` carries a Content-Security-Policy that holds the page to its own origin, so a slip (a
CDN link, a web font) is refused by the browser, and the browser test sees it, instead of phoning out.
"""

from __future__ import annotations

from importlib.resources import files

INDEX = "index.html"
ASSETS = {INDEX: "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8"}
PREFIX = "/playground/"
PATHS = ("/", *(PREFIX + name for name in ASSETS if name != INDEX))
"""The URL paths of the page (``/``) and its assets: what the auth middleware lets through without a key."""
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff", "cache-control": "no-cache",
           "referrer-policy": "no-referrer"}


def asset(name: str) -> tuple[bytes, str] | None:
    """``(bytes, media type)`` of one of :data:`ASSETS`, or None for any other name: a request's path is looked up,
    never joined onto a directory, so no ``..`` can reach another file."""
    media_type = ASSETS.get(name)
    if media_type is None:
        return None
    return (files(__package__) / name).read_bytes(), media_type
