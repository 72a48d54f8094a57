"""An image from avatarImageFrom is re-encoded, so its size is checked before
it is decoded: a PNG of a few kB can declare 13000x13000 pixels."""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib
from typing import Any

import pytest
from avatar_operator.build import cloud_request as cloud
from avatar_operator.build.cloud_request import build_request
from avatar_operator.build.image import IMAGE_PIXEL_LIMIT, InvalidImageError
from PIL import Image, ImageFile


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _blank_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG, all black, compressed row by row: the test
    never holds the pixels (Pillow's Image.new would, at a byte a pixel)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then the packed bits
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def _png(size: tuple[int, int] = (24, 16)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(out, format="PNG")
    return out.getvalue()


def _request(image: bytes, **overrides: Any) -> cloud.CloudRequest:
    kwargs: dict[str, Any] = dict(
        api_url="https://auth.api.bithuman.ai/v1/runtime-tokens/request",
        api_secret="bh-secret",
        api_token=None,
        livekit_url="wss://livekit.example.com",
        livekit_token="lk-jwt",
        room="room-1",
        model=None,
        avatar_id=None,
        avatar_image=None,
        avatar_image_bytes=image,
        idempotency_key="ns/name/uid-1",
    )
    kwargs.update(overrides)
    return build_request(**kwargs)


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fails the test if any pixels are decoded (ImageFile.load decodes a file
    image, Image.load the rest), so a refused bomb costs no memory."""
    decoded: list[str] = []

    def refuse(self: Image.Image) -> Any:
        decoded.append(f"{self.format} {self.size}")
        raise AssertionError(f"decoded {self.format} {self.size}")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image.Image, "load", refuse)
    return decoded


BOMB = _blank_png(13000, 13000)
SMALL = _png((24, 16))  # made here: Image.save decodes, which `no_decoding` forbids


def test_the_bomb_is_a_real_png_of_a_few_kilobytes() -> None:
    assert len(BOMB) < 64 * 1024
    # Under twice Image.MAX_IMAGE_PIXELS, Pillow itself would only warn, then decode it.
    with pytest.warns(Image.DecompressionBombWarning), Image.open(io.BytesIO(BOMB)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "1", (13000, 13000))


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # bitHuman's API: JSON, the image as base64
        {"api_url": "https://worker.example.com/launch", "model": "expression"},  # a form upload
    ],
    ids=["json", "form"],
)
def test_a_huge_image_is_refused_before_decoding(
    no_decoding: list[str], overrides: dict[str, Any]
) -> None:
    with pytest.raises(InvalidImageError) as err:
        _request(BOMB, **overrides)

    message = str(err.value)
    assert "13000x13000" in message and "169.0 megapixels" in message
    assert "over the operator's limit of 16.8 megapixels" in message
    assert "resize the image to at most 4096x4096" in message
    assert "avatarImageFrom" in message
    assert no_decoding == []


def test_an_image_pillow_itself_refuses_to_open_is_refused(no_decoding: list[str]) -> None:
    # Over twice Image.MAX_IMAGE_PIXELS, Pillow raises in Image.open already.
    with pytest.raises(InvalidImageError) as err:
        _request(_blank_png(15000, 15000))

    assert "225000000 pixels" in str(err.value)
    assert "resize the image to at most 4096x4096" in str(err.value)
    assert no_decoding == []


def test_one_pixel_over_the_bound_is_refused(no_decoding: list[str]) -> None:
    with pytest.raises(InvalidImageError, match="4097x4096"):
        _request(_blank_png(4097, 4096))

    assert no_decoding == []


def test_the_bound_itself_is_accepted() -> None:
    assert IMAGE_PIXEL_LIMIT == 4096 * 4096

    req = _request(_blank_png(4096, 4096))

    with Image.open(io.BytesIO(base64.b64decode((req.json or {})["image"]))) as image:
        assert (image.format, image.size) == ("JPEG", (4096, 4096))


@pytest.mark.parametrize(
    ("pillow_limit", "expected"),
    [
        # 384 pixels: over the limit Pillow only warns, at its check in Image.open.
        (300, "24x16 image (0.0 megapixels), over Pillow's decompression-bomb limit"),
        # Over twice its limit Pillow raises there; the size is in its message.
        (100, "over Pillow's decompression-bomb limit (Image size (384 pixels)"),
    ],
)
def test_pillows_own_bomb_limit_is_refused_too(
    monkeypatch: pytest.MonkeyPatch, no_decoding: list[str], pillow_limit: int, expected: str
) -> None:
    # Below the operator's bound, but over a lowered Image.MAX_IMAGE_PIXELS.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)

    with pytest.raises(InvalidImageError) as err:
        _request(SMALL)

    assert expected in str(err.value)
    assert "resize the image" in str(err.value)
    assert no_decoding == []


def test_the_warning_filters_are_left_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    with pytest.raises(InvalidImageError):
        _request(SMALL)

    # Pillow's warning is a warning again outside the check, neither an error nor lost.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.open(io.BytesIO(SMALL)).close()
    assert [w.category for w in caught] == [Image.DecompressionBombWarning]


def test_a_small_image_is_still_re_encoded() -> None:
    req = _request(SMALL)

    with Image.open(io.BytesIO(base64.b64decode((req.json or {})["image"]))) as image:
        assert (image.format, image.size) == ("JPEG", (24, 16))


def test_a_truncated_image_is_unreadable_not_a_crash() -> None:
    with pytest.raises(InvalidImageError, match="can read"):
        _request(SMALL[:40])
