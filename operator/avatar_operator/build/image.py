"""The avatar image in the cloud request and in a pool runner's launch: pure, no I/O.

`image_data` reads the spec's avatarImage as the plugin does (an http(s) URL,
or strict base64); `jpeg` re-encodes an image from avatarImageFrom as the
plugin re-encodes a PIL image, after checking its size from its header;
`launch_image` is the picture a pool session hands its runner.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import re
import warnings

from PIL import Image

# The most pixels an image from avatarImageFrom may have: 4096x4096. The
# re-encode decodes it whole (up to 4 bytes a pixel), then copies it to RGB, so
# the bound keeps that under ~120 MB in an operator limited to 512Mi, where a
# 37 kB PNG of 13000x13000 pixels (Pillow only warns below 179 megapixels) took
# it to 885 MB. A portrait for an avatar needs far fewer pixels.
IMAGE_PIXEL_LIMIT = 4096 * 4096
_RESIZE = "resize the image to at most 4096x4096 pixels"
_JPEG_QUALITY = 95  # the plugin's re-encode quality
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


# The request's errors are defined here, under the image checks that raise one
# of them, so that this module needs nothing from cloud_request (which
# re-exports both).
class CloudRequestError(ValueError):
    """The inputs cannot make a valid request; retrying cannot help."""


class InvalidImageError(CloudRequestError):
    """The avatar image is neither a URL, strict base64, nor a readable image."""


def image_data(image: str) -> bytes | None:
    """None for an http(s) URL, the decoded bytes for strict base64 (the plugin's
    `_is_valid_base64`), else InvalidImageError. The message never echoes the
    string: it may be megabytes, or something the user did not mean to publish."""
    if image.startswith(("http://", "https://")):
        return None
    cleaned = "".join(image.split())
    if cleaned and len(cleaned) % 4 == 0 and _BASE64_RE.match(cleaned):
        try:
            decoded = base64.b64decode(cleaned, validate=True)
        except binascii.Error:
            decoded = b""
        if decoded:
            return decoded
    raise InvalidImageError(
        "avatarImage must be an http:// or https:// URL or strict base64 image data"
    )


@dataclasses.dataclass(frozen=True)
class LaunchImage:
    """A pool session's picture as the runner's `/launch` form takes it: a URL the
    runner fetches (`avatar_image_url`), or the file itself (`avatar_image`)."""

    url: str | None = None
    data: bytes | None = None


def launch_image(avatar_image: str | None, from_cluster: bytes | None) -> LaunchImage:
    """spec.avatarImage (a URL, or base64 decoded to the file) or the bytes read for
    spec.avatarImageFrom; the runner checks that the file is an image it can read."""
    if from_cluster is not None:
        return LaunchImage(data=from_cluster)
    if avatar_image is None:
        return LaunchImage()
    data = image_data(avatar_image)
    return LaunchImage(url=avatar_image) if data is None else LaunchImage(data=data)


def jpeg(data: bytes) -> bytes:
    """Re-encode as JPEG at the plugin's quality; JPEG has no alpha or palette,
    so those images are flattened to RGB first. The size is checked before
    anything is decoded (`_open_bounded`)."""
    image = _open_bounded(data)
    try:
        with image:
            image.load()
            rgb = image if image.mode in ("RGB", "L") else image.convert("RGB")
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=_JPEG_QUALITY)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise InvalidImageError(_unreadable(err)) from None
    return out.getvalue()


def _open_bounded(data: bytes) -> Image.Image:
    """The image, opened but not decoded: Image.open reads only the header,
    so the size is known while the pixels are still compressed."""
    with warnings.catch_warnings(record=True) as caught:
        # Pillow's own bomb check warns above Image.MAX_IMAGE_PIXELS and raises
        # above twice that; both refuse here, the warning once the size is read.
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            raise InvalidImageError(
                f"avatarImageFrom holds an image over Pillow's decompression-bomb limit "
                f"({err}); {_RESIZE}"
            ) from None
        except (OSError, ValueError) as err:
            raise InvalidImageError(_unreadable(err)) from None
    bomb = [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    for other in caught:
        if other not in bomb:  # recorded alongside; not ours to swallow
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    width, height = image.size
    if width * height > IMAGE_PIXEL_LIMIT:
        limit = f"the operator's limit of {IMAGE_PIXEL_LIMIT / 1e6:.1f} megapixels"
    elif bomb:
        limit = f"Pillow's decompression-bomb limit ({bomb[0].message})"
    else:
        return image
    image.close()
    raise InvalidImageError(
        f"avatarImageFrom holds a {width}x{height} image "
        f"({width * height / 1e6:.1f} megapixels), over {limit}; {_RESIZE}"
    )


def _unreadable(err: BaseException) -> str:
    return f"avatarImageFrom does not hold an image Pillow can read ({type(err).__name__})"
