"""Test images drawn with Pillow: shapes and text in several sizes, and the broken kinds a bucket
holds (truncated, corrupt, not an image, another format, EXIF-rotated, decompression bombs)."""

from __future__ import annotations

import base64
import io

import numpy as np

COLOURS = [(220, 40, 40), (40, 200, 60), (30, 60, 220), (240, 200, 20), (150, 50, 200)]


def drawn(width: int, height: int, seed: int = 0, text: str | None = None):
    """A PIL image: a coloured background with a few shapes and (optionally) text."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    bg = COLOURS[seed % len(COLOURS)]
    im = Image.new("RGB", (width, height), bg)
    d = ImageDraw.Draw(im)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, max(1, width // 2))), int(rng.integers(0, max(1, height // 2)))
        x1, y1 = (
            x0 + int(rng.integers(2, width // 2 + 3)),
            y0 + int(rng.integers(2, height // 2 + 3)),
        )
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            d.rectangle([x0, y0, x1, y1], fill=fill)
        else:
            d.ellipse([x0, y0, x1, y1], fill=fill)
    if text:
        d.text((2, 2), text, fill=(255, 255, 255))
    return im


def solid(width: int, height: int, colour: tuple[int, int, int]):
    from PIL import Image

    return Image.new("RGB", (width, height), colour)


def encode(im, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def mean_hex(im) -> str:
    """The ``#rrggbb`` the fake engine reports for an image (its mean colour, rounded)."""
    px = np.asarray(im.convert("RGB"), dtype=np.uint8).reshape(-1, 3).mean(axis=0)
    r, g, b = (round(float(c)) for c in px)
    return f"#{r:02x}{g:02x}{b:02x}"


def exif_rotated(width: int, height: int, colour=(200, 10, 10)) -> bytes:
    """A JPEG stored ``width`` x ``height`` whose EXIF orientation (6: rotate 90 degrees
    clockwise) shows it ``height`` x ``width``."""
    from PIL import Image

    im = solid(width, height, colour)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(im, "JPEG", exif=exif.tobytes(), quality=95)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bomb_png(side: int = 10_000) -> bytes:
    """A tiny PNG file of ``side`` x ``side`` pixels (a decompression bomb past MAX_PIXELS)."""
    from PIL import Image

    return encode(Image.new("1", (side, side)), "PNG", optimize=True)


def gif() -> bytes:
    return encode(solid(8, 8, (1, 2, 3)), "GIF")
