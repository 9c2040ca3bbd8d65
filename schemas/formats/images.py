"""Images in records: OpenAI chat content parts with ``image_url``, and ``input_format: images``.

**Content parts.** ``schemas.images.content_parts`` reads an OpenAI message content list -- ``{"type": "text",
"text"}`` and ``{"type": "image_url", "image_url": {"url", "detail"?}}`` -- into our message
content: text parts and ``{"type": "image", "image": i}`` parts, ``i`` indexing the request's
``input_images``. A URL is a ``data:image/...;base64,`` URL, a ``gs://`` URI, or a local path
(``file://`` or absolute; the job reads it only under the spec's ``image_root``). ``http(s)://``
URLs are refused (``image_not_allowed``): workers fetch nothing from the web. Nothing is read
here: the pipeline's reading stage fetches and checks every image.

**``input_format: images``.** The input is a glob of image files; the pipeline lists the files
it matches into one JSON-lines listing in the job folder (``listing_lines``: ``{"id", "uri",
"size"}`` per file, in path order), and this format reads that listing as any other JSON lines
file -- so planning, shards, resume and the duplicate check are those of every format. Each
image is one chat request: the spec's ``system`` prompt (if any), then a user message with the
image and the spec's ``prompt`` (``with_prompt``). Its id is its path relative to the glob's
fixed prefix (``gs://b/photos/**.jpg`` -> ``2024/a.jpg``); results are our result records
(``schemas/result.avsc``) with ``source_uri``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable

from hyperbatch import storage
from hyperbatch.schemas.formats.base import (
    JsonLinesFormat,
    Parsed,
    result_record,
)
from hyperbatch.schemas.images import ImageInput
from hyperbatch.schemas.records import ErrorCode, Request, RequestError, TaskKind

# --------------------------------------------------------------------------- input_format: images


def fixed_prefix(pattern: str) -> str:
    """The part of a glob before its first wildcard, up to its last ``/``: ids are relative
    to it. A plain path's prefix is its folder."""
    cut = len(pattern)
    for ch in "*?[":
        at = pattern.find(ch)
        if at >= 0:
            cut = min(cut, at)
    return pattern[: pattern.rfind("/", 0, cut) + 1]


def listing_lines(pattern: str, files: Iterable[storage.FileInfo]) -> bytes:
    """The listing of the image files a glob matched: one ``{"id", "uri", "size"}`` line per
    file, in the given (path) order; the same files give the same bytes (resume)."""
    prefix = fixed_prefix(pattern)
    lines = []
    for f in files:
        rid = f.path[len(prefix) :] if f.path.startswith(prefix) else f.path
        lines.append(json.dumps({"id": rid, "uri": f.path, "size": f.size}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode() if lines else b""


def with_prompt(item: Parsed, prompt: str, system: str | None) -> Parsed:
    """An image's request with the job's prompt: ``[system,] user: <image> prompt``."""
    req = item.request
    user = {"role": "user", "content": ({"type": "image", "image": 0},
                                        {"type": "text", "text": prompt})}  # fmt: skip
    messages = ({"role": "system", "content": system}, user) if system else (user,)
    return dataclasses.replace(item, request=dataclasses.replace(req, messages=messages))


class ImageListing(JsonLinesFormat):
    """``input_format: images``: the listing of the matched image files (see the module doc)."""

    name = "images"
    id_key = "id"

    def _parse_obj(self, rid, obj, location, task, defaults) -> Parsed:
        if task is not TaskKind.CHAT:
            raise RequestError(ErrorCode.INVALID_RECORD, "image files are served by chat jobs")
        uri = obj.get("uri")
        if not isinstance(uri, str):
            raise RequestError(ErrorCode.INVALID_RECORD, "a listing line has no uri")
        req = Request(
            record_id=rid,
            sampling=defaults,
            messages=({"role": "user", "content": ({"type": "image", "image": 0},)},),
            input_images=(ImageInput(uri=uri),),
        )
        return Parsed(req, location, echo={"source_uri": uri})

    def encode_results(self, items, job) -> bytes:
        lines = []
        for parsed, res in items:
            record = result_record(parsed, res, job)
            record["source_uri"] = (parsed.echo or {}).get("source_uri")
            lines.append(json.dumps(record, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode() if lines else b""
