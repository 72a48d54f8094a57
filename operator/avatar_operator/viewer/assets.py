"""The page's files: index.html and viewer.css committed, viewer.js bundled by `make viewer`."""

from __future__ import annotations

import pathlib

STATIC = pathlib.Path(__file__).resolve().parent / "static"
BUNDLE = STATIC / "viewer.js"
FILES = {"index.html": "text/html", "viewer.css": "text/css", "viewer.js": "text/javascript"}


class AssetsMissing(Exception):
    """The bundled page is not there; the message says how to build it."""


def check() -> pathlib.Path:
    """The static directory, once the bundle is in it."""
    if not BUNDLE.is_file():
        raise AssetsMissing(
            f"the viewer's page is not built ({BUNDLE} is missing): run `make viewer` in the repository "
            "(npm installs livekit-client from viewer/web/package-lock.json and esbuild bundles it)"
        )
    return STATIC
