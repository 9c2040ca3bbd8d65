"""jobs.storage against the local filesystem and fake-gcs-server, through the same calls."""

from __future__ import annotations

import os

import pytest

from hyperbatch import storage


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("gcs_bucket")


def test_write_read_stat_list_glob(root):
    a = storage.join(root, "in", "a.jsonl")
    b = storage.join(root, "in", "sub", "b.jsonl")
    c = storage.join(root, "in", "c.txt")
    for path, data in ((a, b"A\n"), (b, b"BB\n"), (c, b"C")):
        storage.write_bytes(path, data)
    assert storage.read_bytes(b) == b"BB\n"
    info = storage.stat(a)
    assert info is not None
    assert info.size == 2
    assert storage.stat(storage.join(root, "in", "missing")) is None
    assert [f.path for f in storage.glob(storage.join(root, "in", "*.jsonl"))] == [a]
    assert [f.path for f in storage.glob(storage.join(root, "in", "**.jsonl"))] == [a, b]
    assert [f.path for f in storage.glob(storage.join(root, "in", "**", "*.jsonl"))] == [a, b]
    assert [f.path for f in storage.glob(a)] == [a]
    with storage.open_read(b) as f:
        assert f.read() == b"BB\n"


def test_compare_and_swap(root):
    path = storage.join(root, "jobs", "status.json")
    gen1 = storage.write_bytes(path, b"one", if_generation_match=0)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes(path, b"again", if_generation_match=0)
    gen2 = storage.write_bytes(path, b"two", if_generation_match=gen1)
    assert gen2 != gen1
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes(path, b"stale", if_generation_match=gen1)
    assert storage.read_bytes(path) == b"two"


def test_open_write_publishes_only_on_success(root):
    path = storage.join(root, "out", "part.jsonl")

    def crash_mid_write():
        with storage.open_write(path) as f:
            f.write(b"partial")
            raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        crash_mid_write()
    assert storage.stat(path) is None
    with storage.open_write(path) as f:
        f.write(b"whole")
    assert storage.read_bytes(path) == b"whole"


def test_missing_file_is_a_clear_error(root):
    with pytest.raises(storage.StorageError, match="no such"):
        storage.read_bytes(storage.join(root, "nope.json"))


def test_transient_errors_are_retried_by_the_declared_policy(gcs_bucket, monkeypatch):
    from google.api_core import exceptions

    path = f"{gcs_bucket}/flaky.json"
    storage.write_bytes(path, b"{}")
    blob_cls = type(storage._blob(path))
    real = blob_cls.download_as_bytes
    failures = iter(
        [exceptions.ServiceUnavailable("try again"), exceptions.TooManyRequests("slow")]
    )

    def flaky(self, *a, **kw):
        err = next(failures, None)
        if err is not None:
            raise err
        return real(self, *a, **kw)

    monkeypatch.setattr(blob_cls, "download_as_bytes", flaky)
    assert storage.read_bytes(path) == b"{}"  # two transient failures, then success

    calls = []

    def forbidden(self, *a, **kw):
        calls.append(1)
        raise exceptions.Forbidden("no access")

    monkeypatch.setattr(blob_cls, "download_as_bytes", forbidden)
    with pytest.raises(exceptions.Forbidden):
        storage.read_bytes(path)
    assert len(calls) == 1  # a permanent error fails at once


def test_local_generations_strictly_increase_even_within_one_clock_tick(tmp_path, monkeypatch):
    path = str(tmp_path / "status.json")
    gen = storage.write_bytes(path, b"0", if_generation_match=0)
    real_fsync = storage.os.fsync

    def stuck_clock_fsync(fd):  # every file written gets the same mtime, as on a coarse clock
        real_fsync(fd)
        os.utime(fd, ns=(gen, gen))

    monkeypatch.setattr(storage.os, "fsync", stuck_clock_fsync)
    gens = [gen]
    for i in range(5):
        gens.append(storage.write_bytes(path, str(i).encode(), if_generation_match=gens[-1]))
    assert gens == sorted(set(gens))  # each write has its own, newer generation
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes(path, b"stale", if_generation_match=gens[-2])


def test_local_files_get_the_umask_mode_not_0600(tmp_path):
    """Results, manifests, specs and status files are written through a temp file: they must
    still get the mode any tool would give them (0644 under the usual umask), not mkstemp's."""
    path = str(tmp_path / "out" / "results.jsonl")
    storage.write_bytes(path, b"x\n")
    assert os.stat(path).st_mode & 0o777 == storage.FILE_MODE
    storage.write_bytes(path, b"y\n", if_generation_match=storage.stat(path).generation)
    assert os.stat(path).st_mode & 0o777 == storage.FILE_MODE
    with storage.open_write(str(tmp_path / "streamed.bin")) as f:
        f.write(b"z")
    assert os.stat(tmp_path / "streamed.bin").st_mode & 0o777 == storage.FILE_MODE
    assert 0o666 & ~_umask() == storage.FILE_MODE


def _umask() -> int:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import os; m = os.umask(0); print(m)"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return int(out.stdout)
