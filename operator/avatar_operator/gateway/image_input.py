"""An image a request brings: a URL the runner fetches, or bytes kept in a Secret the session owns."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import warnings

from PIL import Image as PILImage

from avatar_operator.api import rules
from avatar_operator.gateway import errors

# What fits in one Secret (1 MiB in etcd, less its metadata).
MAX_IMAGE_BYTES = 960 * 1024


@dataclasses.dataclass(frozen=True)
class Image:
    url: str | None = None
    data: bytes | None = dataclasses.field(default=None, repr=False)


def from_bytes(field: str, data: bytes) -> Image:
    if not data:
        raise errors.bad_request(field, f"{field} is an empty file: upload the image, or leave the field out")
    if len(data) > MAX_IMAGE_BYTES:
        raise errors.bad_request(field, f"{field} is {len(data)} bytes, over {MAX_IMAGE_BYTES}: send a smaller image or a URL")
    _check_readable(field, data)
    return Image(data=data)


def _check_readable(field: str, data: bytes) -> None:
    """A 400 now rather than a session that fails in its runner: the header is read and the
    file's structure checked (Pillow's verify), the pixels are not decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as image:
                image.verify()
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombWarning, PILImage.DecompressionBombError) as err:
        raise errors.bad_request(
            field, f"{field} is not an image Pillow can read ({type(err).__name__}): send a JPEG or PNG"
        ) from None


def from_text(field: str, text: str) -> Image:
    """A URL (http/https, as the plugin tells them) or base64 image data (a data: URI's too)."""
    text = text.strip()
    if rules.is_url(text):
        return Image(url=text)
    body = text.partition(",")[2] if text.startswith("data:") else text
    body = "".join(body.split())
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not data:
        raise errors.bad_request(field, f"{field} must be an http:// or https:// URL or base64 image data")
    return from_bytes(field, data)


def from_url(field: str, text: str) -> Image:
    text = text.strip()
    if not rules.is_url(text):
        raise errors.bad_request(field, f"{field} must be an http:// or https:// URL")
    return Image(url=text)
