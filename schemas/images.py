"""Input images of vision-language requests: where each comes from, its bytes, and safe decoding.

An ``ImageInput`` starts as a reference -- a ``gs://`` URI, a ``data:`` URL, or a local path --
as a format read it from a record. The pipeline's reading stage (``runners.images``) fetches its
bytes through the storage layer and ``probe``s them: the format must be JPEG, PNG or WebP, the
picture at most ``MAX_PIXELS`` pixels (Pillow's decompression-bomb guard, per image, not a
global), the bytes at most ``MAX_BYTES``; its size is read from the header with the EXIF
orientation applied, so a prompt's image tokens can be counted before anything is decoded.
Engines call ``pixels()`` when they preprocess it: decoded, EXIF-rotated, RGB, ``uint8 [H, W,
3]``; a corrupt or truncated file raises ``RequestError(invalid_image)`` there -- one error
record, never a failed batch.

A chat message's content holds the image as a part ``{"type": "image", "image": i}``: ``i``
indexes the request's ``input_images``. ``ImageInput`` is frozen and its ``repr`` never prints
the bytes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hyperbatch import storage
from hyperbatch.schemas.records import ErrorCode, RequestError

#: the largest encoded image read (bytes); a bigger object is refused before it is downloaded
MAX_BYTES = 32 << 20
#: the largest picture decoded (width x height): Pillow's own bomb limit is per process and warns
MAX_PIXELS = 40_000_000
#: Pillow format -> MIME type of the formats served
FORMATS: Mapping[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
MIME_TYPES = frozenset(FORMATS.values())
#: EXIF orientations that swap width and height (transposed or rotated by 90 degrees)
_SWAPS = frozenset({5, 6, 7, 8})
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*?),", re.I)


def _short(uri: str) -> str:
    """A URI for a message: data: URLs cut to their header."""
    if uri.startswith("data:"):
        head = uri.split(",", 1)[0]
        return f"{head},... ({len(uri)} characters)"
    return uri if len(uri) <= 200 else uri[:200] + "..."


@dataclasses.dataclass(frozen=True)
class ImageInput:
    """One input image. ``uri`` is where it comes from (``gs://``, ``data:``, a local path);
    ``mime_type`` what the record declared (Vertex ``mimeType``), checked against the bytes.
    After the pipeline read it: ``data`` (the encoded bytes), ``format`` (``JPEG``/``PNG``/
    ``WEBP``) and ``width`` x ``height`` as the model sees it (EXIF orientation applied)."""

    uri: str
    mime_type: str | None = None
    data: bytes | None = dataclasses.field(default=None, repr=False)
    format: str | None = None
    width: int = 0
    height: int = 0

    @property
    def read(self) -> bool:
        return self.data is not None

    def describe(self) -> str:
        return _short(self.uri)

    def pixels(self) -> np.ndarray:
        """The decoded image: RGB ``uint8 [H, W, 3]``, EXIF-rotated; RequestError if the bytes
        are not a whole image (``invalid_image``) or it was never read."""
        if self.data is None:
            raise RequestError(
                ErrorCode.INVALID_IMAGE, f"image {self.describe()} was not read before serving"
            )
        return decode(self.data, self.describe())

    def probed(self, data: bytes) -> ImageInput:
        """This image with its bytes, checked and measured (``probe``); raises RequestError."""
        fmt, width, height = probe(data, self.describe(), self.mime_type)
        return dataclasses.replace(self, data=data, format=fmt, width=width, height=height)


# --------------------------------------------------------------------------- bytes


def data_url_bytes(url: str) -> bytes:
    """The bytes of a ``data:[<mime>][;base64],<data>`` URL; RequestError(invalid_image) when
    it is not a base64 image URL."""
    m = _DATA_URL.match(url)
    if m is None:
        raise RequestError(ErrorCode.INVALID_IMAGE, f"{_short(url)} is not a data: URL")
    mime = (m.group("mime") or "").lower()
    if not mime.startswith("image/"):
        raise RequestError(
            ErrorCode.INVALID_IMAGE,
            f"data: URL of type {mime or 'text/plain'!r} is not an image; send "
            "data:image/jpeg;base64,... (or image/png, image/webp)",
        )
    if "base64" not in m.group("params").lower().split(";"):
        raise RequestError(
            ErrorCode.INVALID_IMAGE, "image data: URLs must be base64 (data:image/png;base64,...)"
        )
    payload = url[m.end() :]
    if len(payload) > MAX_BYTES * 4 // 3 + 4:
        raise RequestError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"the data: URL holds more than {MAX_BYTES >> 20} MiB; shrink the image",
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(
            ErrorCode.INVALID_IMAGE, f"the data: URL is not valid base64: {e}"
        ) from e


def _open(data: bytes, what: str) -> Any:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RequestError(
            ErrorCode.IMAGE_TOO_LARGE, f"image {what} has too many pixels ({e}); downscale it"
        ) from e
    except Image.UnidentifiedImageError as e:
        raise RequestError(
            ErrorCode.INVALID_IMAGE,
            f"{what} is not an image Pillow can read (JPEG, PNG or WebP expected)",
        ) from e
    except (OSError, ValueError, SyntaxError) as e:  # Pillow's plugins raise these on junk
        raise RequestError(ErrorCode.INVALID_IMAGE, f"{what} is not a valid image: {e}") from e


def probe(data: bytes, what: str, declared: str | None = None) -> tuple[str, int, int]:
    """(format, width, height) of an encoded image, from its header only (nothing decoded):
    the format must be one served, the declared MIME type (if any) must match, the picture
    at most ``MAX_PIXELS``; width and height as shown (EXIF orientation applied)."""
    if len(data) > MAX_BYTES:
        raise RequestError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"image {what} is {len(data)} bytes; at most {MAX_BYTES >> 20} MiB are read",
        )
    if not data:
        raise RequestError(ErrorCode.INVALID_IMAGE, f"image {what} is empty (0 bytes)")
    with _open(data, what) as im:
        fmt = im.format
        if fmt not in FORMATS:
            raise RequestError(
                ErrorCode.UNSUPPORTED_IMAGE_TYPE,
                f"image {what} is {fmt or 'of an unknown type'}; JPEG, PNG and WebP are served: "
                "convert it",
            )
        if declared is not None and declared.lower() != FORMATS[fmt]:
            if declared.lower() not in MIME_TYPES:
                raise RequestError(
                    ErrorCode.UNSUPPORTED_IMAGE_TYPE,
                    f"mime type {declared!r} is not served; use one of {', '.join(sorted(MIME_TYPES))}",
                )
            raise RequestError(
                ErrorCode.INVALID_IMAGE,
                f"image {what} is declared {declared} but its bytes are {FORMATS[fmt]}",
            )
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise RequestError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"image {what} is {width}x{height} pixels; at most {MAX_PIXELS:,} are decoded: "
                "downscale it",
            )
        try:
            orientation = int(im.getexif().get(0x0112, 1))
        except (OSError, ValueError, SyntaxError):  # an unreadable EXIF block: no rotation
            orientation = 1
    if orientation in _SWAPS:
        width, height = height, width
    return fmt, width, height


def decode(data: bytes, what: str = "the image") -> np.ndarray:
    """Decode completely: EXIF orientation applied, converted to RGB, ``uint8 [H, W, 3]``."""
    from PIL import Image, ImageOps

    with _open(data, what) as im:
        try:
            im.load()
            upright = ImageOps.exif_transpose(im)
            rgb = upright.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise RequestError(
                ErrorCode.INVALID_IMAGE,
                f"image {what} cannot be decoded (corrupt or truncated: {e})",
            ) from e
    return np.asarray(rgb, dtype=np.uint8)


# --------------------------------------------------------------------------- chat content

#: OpenAI's ``detail`` values: accepted; the model's own preprocessing decides the resolution
DETAILS = ("auto", "low", "high")


def image_source(url: Any, what: str) -> ImageInput:
    """An ImageInput for a URL a record gives (``data:``, ``gs://``, ``file://``, a path)."""
    if not isinstance(url, str) or not url.strip():
        raise RequestError(ErrorCode.INVALID_RECORD, f"{what} must be a non-empty URL string")
    lower = url[:8].lower()
    if lower.startswith(("http://", "https://")):
        raise RequestError(
            ErrorCode.IMAGE_NOT_ALLOWED,
            f"{what}: {url[:120]} is a web URL; workers fetch nothing from the web: copy the "
            "image to gs:// or send it inline as a data:image/...;base64, URL",
        )
    if lower.startswith("data:"):
        mime = url[5:].split(";", 1)[0].split(",", 1)[0].lower() or None
        return ImageInput(uri=url, mime_type=mime)
    if url.startswith("file://"):
        return ImageInput(uri=url[len("file://") :])
    scheme, sep, _ = url.partition("://")
    if sep and "/" not in scheme and not storage.is_gcs(url):
        raise RequestError(
            ErrorCode.IMAGE_NOT_ALLOWED,
            f"{what}: URLs of scheme {scheme!r} are not read; use gs://, data: or a local path",
        )
    return ImageInput(uri=url)


def content_parts(
    content: list[Any], index: int, images: list[ImageInput]
) -> str | tuple[dict[str, Any], ...]:
    """A message's OpenAI content parts as our content: the text alone when every part is text
    (as before images), else the parts, each image appended to ``images``."""
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            text = part.get("text", "")
            if not isinstance(text, str):
                raise RequestError(ErrorCode.INVALID_RECORD, f"{where}.text must be a string")
            parts.append({"type": "text", "text": text})
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, Mapping) else spec
            detail = spec.get("detail", "auto") if isinstance(spec, Mapping) else "auto"
            if detail not in DETAILS:
                raise RequestError(
                    ErrorCode.INVALID_RECORD,
                    f"{where}.image_url.detail must be one of {', '.join(DETAILS)}",
                )
            images.append(image_source(url, f"{where}.image_url.url"))
            parts.append({"type": "image", "image": len(images) - 1})
        else:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"{where} has type {kind!r}; text and image_url parts are served",
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return tuple(parts)


def content_is_empty(content: Any) -> bool:
    if isinstance(content, str):
        return not content.strip()
    return not any(p["type"] == "image" or p["text"].strip() for p in content)


def image_indexes(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """The ``input_images`` indexes of the image parts of ``messages``, in reading order."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list | tuple):
            out += [int(p["image"]) for p in content if p.get("type") == "image"]
    return out


def text_of(content: Any) -> str:
    """A message content's text (its text parts joined), for engines that show only text."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")
