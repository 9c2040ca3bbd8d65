"""The pipeline's image stage: list an image glob, and read every input image of a shard.

``write_listing`` turns ``input_format: images``'s glob into one JSON-lines listing in the job
folder (``schemas.formats.images``), which the planner then shards like any input file.

``read_images`` runs after a shard's records are parsed and before they reach the engine: every
image a valid record refers to is fetched through the storage layer (its retries; fake GCS in
tests) on a bounded pool of threads, and checked from its header (``schemas.images.probe``:
type, pixel and byte limits, EXIF orientation) -- nothing is decoded here; engines decode when
they preprocess. A record whose image cannot be read becomes one error record with the image's
stable code (``image_not_found``, ``invalid_image``, ``image_too_large``,
``unsupported_image_type``, ``image_not_allowed``) and the job goes on.

Where a record may read from: ``data:`` URLs (inline), ``gs://`` objects (with the job's
credentials), and local files only under the spec's ``image_root`` (after resolving ``..`` and
symbolic links) -- a request line must not read arbitrary files of the worker. With a
``gs://`` ``image_root``, ``gs://`` images must be under it too. The images of an ``images``
job are its input and always readable.

Memory: a shard's encoded images are held while it is served (at most ``records_per_shard`` x
the images per record x ``MAX_BYTES``; take smaller shards for large images); decoded pixels
exist only while an engine preprocesses them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from hyperbatch import storage
from hyperbatch.jobs.spec import JobSpec
from hyperbatch.schemas.formats import Parsed, RecordError
from hyperbatch.schemas.formats.images import fixed_prefix, listing_lines, with_prompt
from hyperbatch.schemas.images import MAX_BYTES, ImageInput, data_url_bytes
from hyperbatch.schemas.records import ErrorCode, RequestError

#: images fetched at once per shard (storage reads are I/O: threads overlap their latency)
READ_THREADS = 16


def write_listing(pattern: str, listing_path: str) -> storage.FileInfo:
    """List the image files ``pattern`` matches into ``listing_path``; its FileInfo."""
    files = storage.glob(pattern)
    storage.write_bytes(
        listing_path, listing_lines(pattern, files), content_type="application/jsonl"
    )
    info = storage.stat(listing_path)
    assert info is not None
    return info


class ImagePolicy:
    """Which image sources a job's records may read (see the module docstring)."""

    def __init__(self, spec: JobSpec):
        self.root = _resolved(spec.image_root) if spec.image_root else None
        self.input_prefix = fixed_prefix(spec.input) if spec.input_format == "images" else None

    def problem(self, uri: str) -> str | None:
        if uri.startswith("data:"):
            return None
        if self.input_prefix is not None and uri.startswith(self.input_prefix):
            return None  # the job's own input
        if storage.is_gcs(uri):
            if self.root is None or not storage.is_gcs(self.root):
                return None
            return None if uri.startswith(self.root) else f"it is outside image_root {self.root}"
        if self.root is None or storage.is_gcs(self.root):
            return (
                "local files are read only under the job's image_root; set image_root to the "
                "folder that holds them (or send gs:// URIs or data: URLs)"
            )
        path = _resolved(uri if os.path.isabs(uri) else os.path.join(self.root, uri))
        if not (path + os.sep).startswith(self.root):
            return f"it is outside image_root {self.root} (after resolving links and ..)"
        return None

    def path(self, uri: str) -> str:
        """Where a local image is (a relative path is relative to image_root)."""
        if storage.is_gcs(uri) or os.path.isabs(uri) or self.root is None:
            return uri
        return os.path.join(self.root, uri)


def _resolved(path: str) -> str:
    if storage.is_gcs(path):
        return path.rstrip("/") + "/"
    return os.path.realpath(path).rstrip(os.sep) + os.sep


def fetch(image: ImageInput, policy: ImagePolicy) -> ImageInput:
    """``image`` with its bytes, probed; RequestError with the image's code otherwise."""
    what = image.describe()
    problem = policy.problem(image.uri)
    if problem is not None:
        raise RequestError(ErrorCode.IMAGE_NOT_ALLOWED, f"image {what} is not read: {problem}")
    if image.uri.startswith("data:"):
        return image.probed(data_url_bytes(image.uri))
    path = policy.path(image.uri)
    try:
        info = storage.stat(path)
        if info is None:
            raise RequestError(ErrorCode.IMAGE_NOT_FOUND, f"image {what} does not exist")
        if info.size > MAX_BYTES:
            raise RequestError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"image {what} is {info.size} bytes; at most {MAX_BYTES >> 20} MiB are read",
            )
        data = storage.read_bytes(path)
    except storage.CredentialsError:
        raise  # the job's credentials, not the record: fails the shard (and says how to fix)
    except storage.StorageError as e:
        if "no such" in str(e):  # removed between the listing and the read
            raise RequestError(ErrorCode.IMAGE_NOT_FOUND, f"image {what} does not exist") from e
        raise  # transient errors were retried by the storage layer: fail the shard, rerun
    except IsADirectoryError as e:
        raise RequestError(ErrorCode.IMAGE_NOT_FOUND, f"image {what} is a folder") from e
    return image.probed(data)


def read_images(items: Sequence[Parsed], spec: JobSpec) -> tuple[list[Parsed], list[RecordError]]:
    """The records with their images read (and, for ``input_format: images``, the job's
    prompt), and an error record for each record with an image that could not be read."""
    if spec.input_format == "images":
        items = [with_prompt(p, spec.prompt or "", spec.system) for p in items]
    # one read per distinct URI in the shard (records may share images); the MIME type a
    # record declares is its own, checked per record below
    wanted = {
        img.uri: dataclasses.replace(img, mime_type=None)
        for p in items
        for img in p.request.input_images
        if not img.read
    }
    if not wanted:
        return list(items), []
    policy = ImagePolicy(spec)

    def one(image: ImageInput) -> ImageInput | RequestError:
        try:
            return fetch(image, policy)
        except RequestError as e:
            return e

    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(wanted))) as pool:
        got = dict(zip(wanted, pool.map(one, wanted.values()), strict=True))
    ok: list[Parsed] = []
    errors: list[RecordError] = []
    for p in items:
        images = p.request.input_images
        read = [got.get(img.uri, img) if not img.read else img for img in images]
        failed = next((r for r in read if isinstance(r, RequestError)), None)
        if failed is not None:
            errors.append(RecordError(p.request.record_id, p.location, failed.code, failed.message))
            continue
        fetched = [r for r in read if isinstance(r, ImageInput)]
        declared = [_with_declared(r, img) for r, img in zip(fetched, images, strict=True)]
        bad = next((e for e in declared if isinstance(e, RequestError)), None)
        if bad is not None:
            errors.append(RecordError(p.request.record_id, p.location, bad.code, bad.message))
            continue
        final = tuple(r for r in declared if isinstance(r, ImageInput))
        req = dataclasses.replace(p.request, input_images=final)
        ok.append(dataclasses.replace(p, request=req))
    return ok, errors


def _with_declared(read: ImageInput, asked: ImageInput) -> ImageInput | RequestError:
    """A read image under the MIME type this record declared for it (checked)."""
    if asked.mime_type is None or asked.mime_type == read.mime_type:
        return read
    assert read.data is not None
    try:
        return dataclasses.replace(read, mime_type=asked.mime_type).probed(read.data)
    except RequestError as e:
        return e
