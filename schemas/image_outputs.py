"""Generated images as files: their names in the job folder and their encoding.

A name is derived from the record id so that no id can leave the folder or collide with
another after sanitising: the id's safe characters (letters, digits, ``-``, ``_``; at most 48),
then 12 hex digits of the id's SHA-256, then the image's index in its request::

    <job_dir>/images/<safe id>-<sha256(id)[:12]>-<k>.<ext>

Files carry their generation parameters (prompt, negative prompt, seed, steps, scheduler,
guidance, size, model, job and record id): as text chunks in a PNG (``parameters``, JSON, plus
one chunk per field), as the EXIF ImageDescription (JSON) in JPEG and WebP.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

IMAGES = "images"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
EXIF_IMAGE_DESCRIPTION = 0x010E


@dataclasses.dataclass(frozen=True)
class ImageFormat:
    name: str  # the spec's image format
    pillow: str  # Pillow's format name
    content_type: str
    suffix: str


IMAGE_FORMATS: dict[str, ImageFormat] = {
    f.name: f
    for f in (
        ImageFormat("png", "PNG", "image/png", ".png"),
        ImageFormat("jpeg", "JPEG", "image/jpeg", ".jpg"),
        ImageFormat("webp", "WEBP", "image/webp", ".webp"),
    )
}


def file_name(record_id: str, index: int, fmt: ImageFormat) -> str:
    """The image's file name (no folder part): safe whatever the id holds."""
    safe = _UNSAFE.sub("_", record_id).strip("_")[:48] or "image"
    digest = hashlib.sha256(record_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{safe}-{digest}-{index}{fmt.suffix}"


def encode(pixels: Any, fmt: ImageFormat, parameters: Mapping[str, Any]) -> bytes:
    """The file of a uint8 [H, W, 3] image, its ``parameters`` embedded."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB")
    text = json.dumps(dict(parameters), ensure_ascii=False, sort_keys=True)
    buf = io.BytesIO()
    if fmt.pillow == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("parameters", text)
        for key, value in sorted(parameters.items()):
            if value is not None:
                info.add_itxt(key, str(value))
        image.save(buf, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        exif[EXIF_IMAGE_DESCRIPTION] = text
        image.save(buf, format=fmt.pillow, quality=95, exif=exif)
    return buf.getvalue()


def parameters_of(data: bytes) -> dict[str, Any]:
    """The generation parameters embedded by ``encode`` (for tests and tools)."""
    image = Image.open(io.BytesIO(data))
    text = image.info.get("parameters")
    if text is None:
        text = image.getexif().get(EXIF_IMAGE_DESCRIPTION)
    return json.loads(text) if text else {}
