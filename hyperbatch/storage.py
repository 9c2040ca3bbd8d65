"""Local paths and gs:// URLs behind one small interface: list, stat, read, atomic write, CAS.

Every path-taking part of hyperbatch (inputs, outputs, models, the job store) goes through here,
so local files and Cloud Storage share one code path. Writes are atomic: a reader sees the old
object or the whole new one, never a partial file. ``if_generation_match`` gives compare-and-swap
on both backends (0 = "only if absent"). Transient GCS errors are retried by ``CLOUD_RETRY``;
the permanent ones become user errors in one place, ``gcs_error``: no usable credentials is a
``CredentialsError`` (one paragraph that says how to sign in), 403/404 on a bucket a
``StorageError`` naming the bucket and the role the operation needs.

The GCS client honours ``STORAGE_EMULATOR_HOST`` (fake-gcs-server) with anonymous credentials.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import inspect
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from hyperbatch.retry import CLOUD_RETRY

GCS_PREFIX = "gs://"
_WILDCARD = re.compile(r"[*?\[]")
_F = TypeVar("_F", bound=Callable[..., Any])


class StorageError(OSError):
    """A permanent storage failure (missing object, failed precondition, bad URL)."""


class PreconditionFailed(StorageError):
    """A compare-and-swap write lost: the object's generation was not the expected one."""


class CredentialsError(StorageError):
    """No usable Google credentials: none found, a missing, unreadable, malformed or expired key,
    or no project. The message is one paragraph: what could not be reached and how to fix it."""


#: How to give hyperbatch Google credentials: the end of every CredentialsError.
CREDENTIALS_HELP = (
    "Sign in with `gcloud auth application-default login`, or set "
    "GOOGLE_APPLICATION_CREDENTIALS to the path of a service account key file you can read; "
    "and name the project with GOOGLE_CLOUD_PROJECT (Dataflow jobs also take --project)."
)

#: Roles that grant an operation on a bucket's objects (the 403 message names the one needed).
READ_ROLE, WRITE_ROLE = "roles/storage.objectViewer", "roles/storage.objectAdmin"
_ROLE_FOR = {"list": READ_ROLE, "read": READ_ROLE, "write": WRITE_ROLE, "delete": WRITE_ROLE}


@dataclasses.dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    generation: int  # GCS object generation; locally the file's mtime in nanoseconds


def is_gcs(path: str) -> bool:
    return path.startswith(GCS_PREFIX)


def split_gcs(url: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ("bucket", "a/b")."""
    if not is_gcs(url):
        raise StorageError(f"not a gs:// URL: {url!r}")
    bucket, _, name = url[len(GCS_PREFIX) :].partition("/")
    if not bucket:
        raise StorageError(f"gs:// URL without a bucket: {url!r}")
    return bucket, name


def join(base: str, *parts: str) -> str:
    if is_gcs(base):
        out = base.rstrip("/")
        for p in parts:
            out += "/" + p.strip("/")
        return out
    return os.path.join(base, *parts)


def has_wildcard(pattern: str) -> bool:
    return bool(_WILDCARD.search(pattern))


def glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` stay within one path segment; ``**`` crosses segments."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


# --------------------------------------------------------------------------- GCS client


@functools.cache
def gcs_client() -> Any:
    """The Cloud Storage client; CredentialsError if there are no usable credentials."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "local-emulator")
        return storage.Client(project=project, credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except client_creation_errors() as e:
        raise credentials_error("Cloud Storage", e) from e


def client_creation_errors() -> tuple[type[BaseException], ...]:
    """What creating a Google client raises when it finds no usable credentials: google.auth
    finds none, or a missing or malformed key file (DefaultCredentialsError), or cannot read
    the file (OSError); or the project cannot be determined (OSError)."""
    from google.auth import exceptions as auth

    return (auth.GoogleAuthError, OSError)


def unusable_credentials(error: BaseException) -> bool:
    """Whether a request failed because its credentials are unusable (not a transient error,
    not a missing permission): refreshing them failed (an expired, revoked or deleted key), the
    token or metadata server could not be reached, or the service answered 401. Over gRPC a
    failed refresh arrives as an error status whose message is gRPC's "Getting metadata from
    plugin failed"."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(error, api.RetryError):  # the client's own retries gave up on a refresh
        return error.cause is not None and unusable_credentials(error.cause)
    if isinstance(error, api.GoogleAPICallError) and _GRPC_PLUGIN_FAILED in str(error.message):
        return True
    return isinstance(error, auth.GoogleAuthError | api.Unauthorized | api.Unauthenticated)


_GRPC_PLUGIN_FAILED = "Getting metadata from plugin failed"

#: The scope every hyperbatch client asks for (Pub/Sub, Dataflow).
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def google_credentials(service: str) -> Any:
    """Application default credentials for a client of ``service``, refreshed once now: a key
    that is missing, unreadable, malformed, expired or revoked, or a metadata server that gives
    no token, is the CredentialsError paragraph here, at the first call, not a gRPC retry loop
    or a traceback later."""
    import google.auth
    from google.auth.transport.requests import Request

    try:
        credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
        credentials.refresh(Request())
    except client_creation_errors() as e:
        raise credentials_error(service, e) from e
    return credentials


@contextlib.contextmanager
def credentials_checked(service: str) -> Iterator[None]:
    """Inside it, a Google client's error that means unusable credentials (see
    ``unusable_credentials``, e.g. a 401) becomes the CredentialsError paragraph for
    ``service``; every other error passes unchanged. ``gcs_error`` does the same for Cloud
    Storage."""
    try:
        yield
    except _google_errors() as e:
        if not unusable_credentials(e):
            raise
        raise credentials_error(service, e) from e


def credentials_error(service: str, error: BaseException) -> CredentialsError:
    """The one-paragraph user error for ``error`` (see ``client_creation_errors`` and
    ``unusable_credentials``) met while reaching ``service``; Pub/Sub and Dataflow use it too."""
    return CredentialsError(
        f"cannot reach {service} without usable Google credentials and a project "
        f"({_auth_reason(error)}). {CREDENTIALS_HELP}"
    )


def _auth_reason(error: BaseException) -> str:
    """google.auth's own words, cut to their first sentence (they go on with long URLs)."""
    from google.api_core import exceptions as api

    if isinstance(error, api.RetryError) and error.cause is not None:
        error = error.cause
    first = error.args[0] if error.args and isinstance(error.args[0], str) else error
    inner = re.search(r"plugin failed with error: \('([^']+)'", str(first))
    if inner:  # gRPC's wrapping of google.auth's RefreshError: google.auth's words
        first = inner.group(1)
    text = _first_sentence(first)  # an OSError's first argument is its errno
    if len(error.args) > 1 and isinstance(error.args[1], BaseException):
        text += f": {_first_sentence(error.args[1])}"  # e.g. why a key file could not be loaded
    return text


def _first_sentence(what: object) -> str:
    text = what if isinstance(what, str) else str(what)
    text = re.split(r"\.(?:\s|$)", text.strip(), maxsplit=1)[0]
    return text if len(text) <= 200 else text[:199] + "…"


def gcs_error(error: BaseException, url: str, operation: str) -> StorageError | None:
    """The user error that a Google client's ``error`` on ``url`` means, or None when it is
    not one (a transient error, a bug). ``operation`` is list, read, write or delete."""
    from google.api_core import exceptions as api

    if not is_gcs(url):
        return None
    if unusable_credentials(error):
        return credentials_error(f"Cloud Storage ({url})", error)
    bucket, name = split_gcs(url)
    if isinstance(error, api.Forbidden):
        role = _ROLE_FOR[operation]
        return StorageError(
            f"permission denied: cannot {operation} {url}: the account you run as needs "
            f"{role} on bucket {bucket} (`gcloud storage buckets add-iam-policy-binding "
            f"gs://{bucket} --member=PRINCIPAL --role={role}`), or use another bucket"
        )
    if isinstance(error, api.NotFound):
        if operation == "read" and name:
            return StorageError(f"no such object: {url}")
        return StorageError(
            f"cannot {operation} {url}: bucket {bucket} does not exist; check the name or "
            f"create it (`gcloud storage buckets create gs://{bucket}`)"
        )
    return None


def translate_gcs_errors(operation: str, url_arg: int = 0) -> Callable[[_F], _F]:
    """Decorate a function whose positional argument ``url_arg`` is a path: what Google's
    clients raise on a gs:// path becomes the user error ``gcs_error`` names; the rest (local
    errors, transient errors once ``CLOUD_RETRY`` gave up) passes unchanged."""

    def decorate(fn: _F) -> _F:
        url_name = list(inspect.signature(fn).parameters)[url_arg]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except _google_errors() as e:
                url = args[url_arg] if len(args) > url_arg else kwargs[url_name]
                translated = gcs_error(e, url, operation)
                if translated is None:
                    raise
                raise translated from e

        return cast(_F, wrapper)

    return decorate


def _google_errors() -> tuple[type[BaseException], ...]:
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    return (auth.GoogleAuthError, api.GoogleAPICallError, api.RetryError)


def _blob(url: str) -> Any:
    bucket, name = split_gcs(url)
    if not name:
        raise StorageError(f"gs:// URL names a bucket, not an object: {url!r}")
    return gcs_client().bucket(bucket).blob(name)


def _gcs_errors() -> Any:
    from google.api_core import exceptions

    return exceptions


# --------------------------------------------------------------------------- listing


def glob(pattern: str) -> list[FileInfo]:
    """Files matching ``pattern`` (a path, or a glob with * ? [] **), sorted by path."""
    if not has_wildcard(pattern):
        info = stat(pattern)
        return [info] if info else []
    m = _WILDCARD.search(pattern)
    assert m is not None
    prefix = pattern[: m.start()]
    regex = glob_regex(pattern)
    return sorted((f for f in list_prefix(prefix) if regex.match(f.path)), key=lambda f: f.path)


def list_prefix(prefix: str) -> Iterator[FileInfo]:
    """Every file whose path starts with ``prefix`` (not only direct children)."""
    if is_gcs(prefix):
        yield from _gcs_list(prefix)
        return
    base = prefix if prefix.endswith(os.sep) or os.path.isdir(prefix) else os.path.dirname(prefix)
    base = base or "."
    for root, dirs, files in os.walk(base):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            if p.startswith(prefix) or os.path.normpath(p).startswith(os.path.normpath(prefix)):
                try:
                    st = os.stat(p)
                except FileNotFoundError:
                    continue  # removed since it was listed (another writer's temporary file)
                yield FileInfo(p, st.st_size, st.st_mtime_ns)


@CLOUD_RETRY
def _gcs_list_page(bucket: str, name_prefix: str) -> list[FileInfo]:
    blobs = gcs_client().list_blobs(bucket, prefix=name_prefix)
    return [FileInfo(f"gs://{bucket}/{b.name}", int(b.size or 0), int(b.generation)) for b in blobs]


@translate_gcs_errors("list")
def _gcs_list(prefix: str) -> list[FileInfo]:
    return _gcs_list_page(*split_gcs(prefix))


@translate_gcs_errors("read")
@CLOUD_RETRY
def stat(path: str) -> FileInfo | None:
    if is_gcs(path):
        bucket, name = split_gcs(path)
        if not name:
            return None
        blob = gcs_client().bucket(bucket).get_blob(name)
        if blob is None:
            return None
        return FileInfo(path, int(blob.size or 0), int(blob.generation))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not os.path.isfile(path):
        return None
    return FileInfo(path, st.st_size, st.st_mtime_ns)


@translate_gcs_errors("read")
@CLOUD_RETRY
def bucket_exists(url: str) -> bool:
    try:
        return gcs_client().lookup_bucket(split_gcs(url)[0]) is not None
    except _gcs_errors().Forbidden:
        # 403, not 404: the bucket exists, but reading its metadata needs more than the object
        # roles a job needs; whether we may write there is the write probe's question.
        return True


def exists(path: str) -> bool:
    return stat(path) is not None


def is_dir(path: str) -> bool:
    """A local directory, or a gs:// prefix with at least one object under it."""
    if is_gcs(path):
        return any(True for _ in list_prefix(path.rstrip("/") + "/"))
    return os.path.isdir(path)


# --------------------------------------------------------------------------- reading


@translate_gcs_errors("read")
@CLOUD_RETRY
def read_bytes(path: str) -> bytes:
    if is_gcs(path):
        try:
            return _blob(path).download_as_bytes()
        except _gcs_errors().NotFound as e:
            raise StorageError(f"no such object: {path}") from e
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as e:
        raise StorageError(f"no such file: {path}") from e


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


@contextlib.contextmanager
def open_read(path: str, chunk_size: int = 8 << 20) -> Iterator[IO[bytes]]:
    """A streaming binary reader (gs:// reads in ``chunk_size`` ranges with retries)."""
    if is_gcs(path):
        blob = _blob(path)
        try:
            reader = blob.open("rb", chunk_size=chunk_size, retry=_gcs_read_retry())
        except _gcs_errors().NotFound as e:
            raise StorageError(f"no such object: {path}") from e
        with reader:
            yield reader
        return
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the context manager
    except FileNotFoundError as e:
        raise StorageError(f"no such file: {path}") from e
    with f:
        yield f


def _gcs_read_retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


def _file_mode() -> int:
    """The mode a new file gets from the process umask, as ``open()`` would create it."""
    mask = os.umask(0o022)  # read it (only by setting it); put it back at once
    os.umask(mask)
    return 0o666 & ~mask


#: read once at import (setting the umask to read it is not thread-safe later)
FILE_MODE = _file_mode()


@contextlib.contextmanager
def _temp_beside(path: str, prefix: str = ".tmp-") -> Iterator[str]:
    """An empty temp file in ``path``'s folder (created if needed), so that ``os.replace`` onto
    ``path`` is atomic; removed afterwards unless it was moved into place. It has the mode a
    plainly created file would (mkstemp's 0600 would make every output private)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        yield tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@translate_gcs_errors("read")
@CLOUD_RETRY
def download(path: str, local_path: str) -> None:
    """Copy one object to a local file atomically (verified by size and, for GCS, crc32c)."""
    with _temp_beside(local_path, ".dl-") as tmp:
        if is_gcs(path):
            blob = _blob(path)
            # checksum="crc32c" makes the client verify the bytes it wrote against the object's.
            blob.download_to_filename(tmp, checksum="crc32c")
            blob.reload()
            if os.path.getsize(tmp) != int(blob.size or 0):
                raise ConnectionError(f"short download of {path}")
        else:
            shutil.copyfile(path, tmp)
        os.replace(tmp, local_path)


@translate_gcs_errors("read")
@CLOUD_RETRY
def _read_gcs(path: str) -> tuple[bytes, int] | None:
    bucket, name = split_gcs(path)
    blob = gcs_client().bucket(bucket).blob(name)
    try:
        data = blob.download_as_bytes()
    except _gcs_errors().NotFound:
        return None
    # The download's response headers carry the generation of exactly the bytes we got.
    return data, int(blob.generation)


def read_versioned(path: str) -> tuple[bytes, int] | None:
    """The bytes of ``path`` and the generation they belong to (None if absent)."""
    if is_gcs(path):
        return _read_gcs(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return None
    with f:
        # Writes replace the file (a new inode), so this descriptor's mtime is that of its bytes.
        generation = os.fstat(f.fileno()).st_mtime_ns
        return f.read(), generation


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _local_lock(path: str) -> Iterator[None]:
    lock_path = os.path.join(os.path.dirname(path) or ".", ".hyperbatch.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_bytes(
    path: str,
    data: bytes,
    *,
    if_generation_match: int | None = None,
    content_type: str = "application/octet-stream",
) -> int:
    """Write ``data`` atomically and return the new generation.

    ``if_generation_match``: None = unconditional; 0 = only if absent; N = only if the current
    generation is N. A lost race raises PreconditionFailed.
    """
    if is_gcs(path):
        return _gcs_write(path, data, if_generation_match, content_type)
    with _temp_beside(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if if_generation_match is None:
            os.replace(tmp, path)
        else:
            with _local_lock(path):
                current = stat(path)
                current_gen = current.generation if current else 0
                if current_gen != if_generation_match:
                    raise PreconditionFailed(
                        f"{path}: generation is {current_gen}, expected {if_generation_match}"
                    )
                # The generation is the mtime: make it strictly newer than the one replaced,
                # so two writes within one clock tick can never share a generation.
                new_gen = max(os.stat(tmp).st_mtime_ns, current_gen + 1)
                os.utime(tmp, ns=(new_gen, new_gen))
                os.replace(tmp, path)
                return new_gen
        return os.stat(path).st_mtime_ns


@translate_gcs_errors("write")
@CLOUD_RETRY
def _gcs_write(path: str, data: bytes, if_generation_match: int | None, content_type: str) -> int:
    blob = _blob(path)
    try:
        blob.upload_from_file(
            io.BytesIO(data),
            size=len(data),
            content_type=content_type,
            if_generation_match=if_generation_match,
        )
    except _gcs_errors().PreconditionFailed as e:
        raise PreconditionFailed(
            f"{path}: generation precondition {if_generation_match} failed"
        ) from e
    return int(blob.generation)


@translate_gcs_errors("write", url_arg=1)
@CLOUD_RETRY
def upload_file(local_path: str, path: str, content_type: str = "application/octet-stream") -> None:
    """Publish a finished local file at ``path`` (atomically) and leave the local file alone."""
    if is_gcs(path):
        _blob(path).upload_from_filename(local_path, content_type=content_type)
        return
    with _temp_beside(path) as tmp:
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)


@contextlib.contextmanager
def open_write(path: str, content_type: str = "application/octet-stream") -> Iterator[IO[bytes]]:
    """Stream into a local temp file; publish it at ``path`` only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix="hyperbatch-out-")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        upload_file(tmp, path, content_type)
    finally:
        os.unlink(tmp)


@translate_gcs_errors("delete")
@CLOUD_RETRY
def delete(path: str, *, if_generation_match: int | None = None) -> None:
    """Remove ``path`` (absent already: fine). With ``if_generation_match`` only if it is still
    at that generation (PreconditionFailed otherwise): a compare-and-swap delete."""
    if is_gcs(path):
        with contextlib.suppress(_gcs_errors().NotFound):
            try:
                _blob(path).delete(if_generation_match=if_generation_match)
            except _gcs_errors().PreconditionFailed as e:
                raise PreconditionFailed(f"{path}: not at generation {if_generation_match}") from e
        return
    if if_generation_match is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    with _local_lock(path):
        current = stat(path)
        if current is None:
            return
        if current.generation != if_generation_match:
            raise PreconditionFailed(f"{path}: not at generation {if_generation_match}")
        os.unlink(path)
