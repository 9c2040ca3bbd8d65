"""The pipeline's image stage: list an image glob, and read every input image of a shard.

``write_listing`` turns ``input_format: images``'s glob into one JSON-lines listing in the job
folder (``schemas.formats.images``), which the planner then shards like any input file; it is
written once, by the job's first run, so a resumed job serves the same images.

``read_images`` runs after a shard's records are parsed and before they reach the engine: every
image a valid record refers to is fetched through the storage layer (its retries; fake GCS in
tests) and checked from its header (``schemas.images.probe``: type, pixel and byte limits, EXIF
orientation) -- nothing is decoded here; engines decode when they preprocess. A record whose
image cannot be read becomes one error record with the image's stable code
(``image_not_found``, ``invalid_image``, ``image_too_large``, ``unsupported_image_type``,
``image_not_allowed``) and the job goes on.

Where a record may read from: ``data:`` URLs (inline), ``gs://`` objects (with the job's
credentials), and local files only under the spec's ``image_root`` (after resolving ``..`` and
symbolic links) -- a request line must not read arbitrary files of the worker. With a
``gs://`` ``image_root``, ``gs://`` images must be under it too. The images of an ``images``
job are its input and always readable.

Bounded, per worker process, whatever the shards in flight (up to 16 feed one engine loop):

* **concurrency** -- every fetch runs on one process-wide pool of ``READ_THREADS`` threads;
* **memory** -- a shard first sizes its images (one ``stat`` per object, the decoded length of
  a ``data:`` URL), then takes that many bytes from ``MEMORY`` (``HELD_BYTES``) before it
  downloads anything, and gives them back once the engine has served it (``Held.release``). A
  shard that would pass the bound waits for others to give theirs back; one bigger than the
  bound on its own waits until it is alone. So the encoded images held by a process stay under
  ``max(HELD_BYTES, the largest shard's images)``; decoded pixels exist only while an engine
  preprocesses a request (its scheduler's intake: at most ``batch_size`` requests at a time).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from hyperbatch import storage
from hyperbatch.jobs.spec import JobSpec
from hyperbatch.schemas.formats import Parsed, RecordError
from hyperbatch.schemas.formats.images import fixed_prefix, listing_lines, with_prompt
from hyperbatch.schemas.images import MAX_BYTES, ImageInput, data_url_bytes
from hyperbatch.schemas.records import ErrorCode, RequestError

#: images fetched at once per worker process (storage reads are I/O: threads overlap latency)
READ_THREADS = 16
#: encoded image bytes the shards in flight in one process may hold (see the module docstring)
HELD_BYTES = 1 << 30

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="hb-images")
        return _POOL


class ImageMemory:
    """Encoded image bytes held by the shards in flight in this process, and their bound."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.peak = 0  # the most held at once (tests, benchmarks)
        self._changed = threading.Condition()

    def take(self, n: int) -> None:
        """Hold ``n`` more bytes, once they fit (at once if nothing else is held)."""
        with self._changed:
            while self.held and self.held + n > self.limit:
                self._changed.wait()
            self.held += n
            self.peak = max(self.peak, self.held)

    def give(self, n: int) -> None:
        with self._changed:
            self.held -= n
            self._changed.notify_all()


MEMORY = ImageMemory(HELD_BYTES)


class Held:
    """A shard's share of ``MEMORY``: released (once) when the shard has been served."""

    def __init__(self, n: int = 0):
        self.bytes = n

    def release(self) -> None:
        n, self.bytes = self.bytes, 0
        if n:
            MEMORY.give(n)


def write_listing(pattern: str, listing_path: str) -> storage.FileInfo:
    """List the image files ``pattern`` matches into ``listing_path``; its FileInfo. The listing
    is the job's input, written by its first run: a rerun resumes over the same images (ones
    added to the bucket since are a new job's; ones removed are ``image_not_found``)."""
    info = storage.stat(listing_path)
    if info is not None:
        return info
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


def _checked(image: ImageInput, policy: ImagePolicy) -> tuple[ImageInput, int] | RequestError:
    """An image's source checked and its size known (nothing downloaded): (the image -- with
    its bytes already for a ``data:`` URL -- , bytes to hold), or the record's error."""
    what = image.describe()
    try:
        problem = policy.problem(image.uri)
        if problem is not None:
            raise RequestError(ErrorCode.IMAGE_NOT_ALLOWED, f"image {what} is not read: {problem}")
        if image.uri.startswith("data:"):
            data = data_url_bytes(image.uri)
            return dataclasses.replace(image, data=data), len(data)
        try:
            info = storage.stat(policy.path(image.uri))
        except IsADirectoryError as e:
            raise RequestError(ErrorCode.IMAGE_NOT_FOUND, f"image {what} is a folder") from e
        if info is None:
            raise RequestError(ErrorCode.IMAGE_NOT_FOUND, f"image {what} does not exist")
        if info.size > MAX_BYTES:
            raise RequestError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"image {what} is {info.size} bytes; at most {MAX_BYTES >> 20} MiB are read",
            )
        return image, info.size
    except RequestError as e:
        return e


def _fetched(image: ImageInput, policy: ImagePolicy) -> ImageInput | RequestError:
    """``image`` with its bytes, probed; the record's error otherwise. Storage failures that
    are not the record's (credentials; transient errors the storage layer already retried)
    propagate: they fail the shard, which a rerun serves again."""
    what = image.describe()
    try:
        data = image.data
        if data is None:
            try:
                data = storage.read_bytes(policy.path(image.uri))
            except storage.CredentialsError:
                raise
            except storage.StorageError as e:
                if "no such" not in str(e):
                    raise
                # removed between the listing (or the stat) and the read
                raise RequestError(ErrorCode.IMAGE_NOT_FOUND, f"image {what} does not exist") from e
            except IsADirectoryError as e:
                raise RequestError(ErrorCode.IMAGE_NOT_FOUND, f"image {what} is a folder") from e
        return image.probed(data)
    except RequestError as e:
        return e


def fetch(image: ImageInput, policy: ImagePolicy) -> ImageInput:
    """``image`` with its bytes, probed; RequestError with the image's code otherwise."""
    checked = _checked(image, policy)
    if isinstance(checked, RequestError):
        raise checked
    got = _fetched(checked[0], policy)
    if isinstance(got, RequestError):
        raise got
    return got


def read_images(
    items: Sequence[Parsed], spec: JobSpec
) -> tuple[list[Parsed], list[RecordError], Held]:
    """The records with their images read (and, for ``input_format: images``, the job's
    prompt), an error record for each record with an image that could not be read, and the
    shard's hold on ``MEMORY`` -- release it once the records are served."""
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
        return list(items), [], Held()
    policy = ImagePolicy(spec)
    pool = _pool()
    checks = pool.map(lambda i: _checked(i, policy), wanted.values())
    checked = dict(zip(wanted, checks, strict=True))
    sized = {uri: c for uri, c in checked.items() if not isinstance(c, RequestError)}
    held = Held(sum(n for _, n in sized.values()))
    MEMORY.take(held.bytes)
    try:
        reads = pool.map(lambda c: _fetched(c[0], policy), sized.values())
        fetched = dict(zip(sized, reads, strict=True))
    except BaseException:
        held.release()
        raise
    got = {uri: c if isinstance(c, RequestError) else fetched[uri] for uri, c in checked.items()}
    ok: list[Parsed] = []
    errors: list[RecordError] = []
    for p in items:
        images = p.request.input_images
        read = [got.get(img.uri, img) if not img.read else img for img in images]
        failed = next((r for r in read if isinstance(r, RequestError)), None)
        if failed is not None:
            errors.append(p.failed(failed.code, failed.message))
            continue
        fetched_images = [r for r in read if isinstance(r, ImageInput)]
        declared = [_with_declared(r, img) for r, img in zip(fetched_images, images, strict=True)]
        bad = next((e for e in declared if isinstance(e, RequestError)), None)
        if bad is not None:
            errors.append(p.failed(bad.code, bad.message))
            continue
        final = tuple(r for r in declared if isinstance(r, ImageInput))
        req = dataclasses.replace(p.request, input_images=final)
        ok.append(dataclasses.replace(p, request=req))
    return ok, errors, held


def _with_declared(read: ImageInput, asked: ImageInput) -> ImageInput | RequestError:
    """A read image under the MIME type this record declared for it (checked)."""
    if asked.mime_type is None or asked.mime_type == read.mime_type:
        return read
    assert read.data is not None
    try:
        return dataclasses.replace(read, mime_type=asked.mime_type).probed(read.data)
    except RequestError as e:
        return e
