"""jobs.storage against the local filesystem and fake-gcs-server, through the same calls."""

from __future__ import annotations

import os

import pytest
from google.api_core import exceptions as api_exceptions

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
    with pytest.raises(storage.StorageError, match="permission denied") as denied:
        storage.read_bytes(path)
    assert isinstance(denied.value.__cause__, exceptions.Forbidden)
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


def test_a_file_removed_while_a_folder_is_listed_is_left_out(tmp_path, monkeypatch):
    """A writer's temporary file (a job writing its results beside its input) may vanish
    between the folder's listing and its stat: the glob goes on without it."""
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".tmp-x").write_text("")
    real_walk = storage.os.walk

    def racing_walk(top):
        for root, dirs, files in real_walk(top):
            if root.endswith("out"):
                os.remove(os.path.join(root, ".tmp-x"))  # listed, then gone
            yield root, dirs, files

    monkeypatch.setattr(storage.os, "walk", racing_walk)
    assert [f.path for f in storage.glob(str(tmp_path / "*.jsonl"))] == [str(tmp_path / "a.jsonl")]
    (tmp_path / "out" / ".tmp-x").write_text("")
    assert [f.path for f in storage.list_prefix(str(tmp_path) + "/")] == [str(tmp_path / "a.jsonl")]


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


# --------------------------------------------------------------------------- user errors (issue 19)


def _google_error(kind: str) -> BaseException:
    """What Google's clients raise, built as they build it."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    return {
        "403": api.Forbidden("GET …: caller does not have storage.objects.get access"),
        "404": api.NotFound("The specified bucket does not exist."),
        "401": api.Unauthorized("Request had invalid authentication credentials."),
        "expired": auth.RefreshError(
            "invalid_grant: Token has been expired or revoked.", {"error": "invalid_grant"}
        ),
        "metadata": api.RetryError(
            "Timeout of 120.0s exceeded",
            auth.TransportError("Failed to retrieve http://metadata.google.internal/token"),
        ),
        "503": api.ServiceUnavailable("try again"),
        # a failed refresh inside a gRPC call (Pub/Sub, Dataflow), in gRPC's words
        "grpc": api.ServiceUnavailable(
            "Getting metadata from plugin failed with error: ('invalid_grant: Token has been "
            "expired or revoked.', {'error': 'invalid_grant'})"
        ),
    }[kind]


@pytest.mark.parametrize(
    ("operation", "role"),
    [("list", "roles/storage.objectViewer"), ("read", "roles/storage.objectViewer"),
     ("write", "roles/storage.objectAdmin"), ("delete", "roles/storage.objectAdmin")],
)  # fmt: skip
def test_403_names_the_bucket_the_operation_and_the_role(operation, role):
    error = storage.gcs_error(_google_error("403"), "gs://acme-data/in/a.jsonl", operation)
    assert type(error) is storage.StorageError
    message = str(error)
    assert message.startswith(f"permission denied: cannot {operation} gs://acme-data/in/a.jsonl")
    assert f"needs {role} on bucket acme-data" in message
    assert f"add-iam-policy-binding gs://acme-data --member=PRINCIPAL --role={role}" in message


def test_404_names_the_missing_bucket_or_object():
    not_found = _google_error("404")
    for operation in ("list", "write"):
        message = str(storage.gcs_error(not_found, "gs://acme-jobs/out/x", operation))
        assert message == (
            f"cannot {operation} gs://acme-jobs/out/x: bucket acme-jobs does not exist; check the "
            "name or create it (`gcloud storage buckets create gs://acme-jobs`)"
        )
    assert str(storage.gcs_error(not_found, "gs://acme-jobs/a", "read")) == (
        "no such object: gs://acme-jobs/a"
    )


@pytest.mark.parametrize(
    ("kind", "why"),
    [("401", "Request had invalid authentication credentials"),
     ("expired", "invalid_grant: Token has been expired or revoked"),
     ("metadata", "Failed to retrieve http://metadata.google.internal/token"),
     ("grpc", "invalid_grant: Token has been expired or revoked")],
)  # fmt: skip
def test_unusable_credentials_at_first_use_are_a_credentials_error(kind, why):
    error = storage.gcs_error(_google_error(kind), "gs://acme-data/in/a.jsonl", "read")
    assert isinstance(error, storage.CredentialsError)
    assert str(error) == (
        f"cannot reach Cloud Storage (gs://acme-data/in/a.jsonl) without usable Google "
        f"credentials and a project ({why}). {storage.CREDENTIALS_HELP}"
    )
    for fix in ("gcloud auth application-default login", "GOOGLE_APPLICATION_CREDENTIALS",
                "GOOGLE_CLOUD_PROJECT", "--project"):  # fmt: skip
        assert fix in str(error)


@pytest.mark.parametrize("kind", ["401", "expired", "metadata", "grpc"])
def test_pubsub_and_dataflow_calls_get_the_same_paragraph(kind):
    """One translation for every service: ``credentials_checked`` around a Pub/Sub or Dataflow
    call gives what ``gcs_error`` gives for Cloud Storage, with the service's name."""
    gcs = str(storage.gcs_error(_google_error(kind), "gs://acme/a", "read"))
    for service in ("Pub/Sub", "Dataflow (project acme, region us-east5)"):
        with pytest.raises(storage.CredentialsError) as e, storage.credentials_checked(service):
            raise _google_error(kind)
        assert str(e.value) == gcs.replace("Cloud Storage (gs://acme/a)", service)
    transient = pytest.raises(api_exceptions.ServiceUnavailable)  # passes unchanged
    with transient, storage.credentials_checked("Pub/Sub"):
        raise _google_error("503")


def test_other_errors_are_not_translated(tmp_path):
    assert storage.gcs_error(_google_error("503"), "gs://acme/a", "read") is None  # transient
    assert storage.gcs_error(_google_error("403"), str(tmp_path / "a"), "read") is None  # local


def test_gs_functions_raise_the_translated_errors(gcs_bucket, monkeypatch):
    """fake-gcs-server answers 404 itself; 403 and an expired key are injected where the
    client would raise them."""
    from google.cloud.storage import Blob

    missing = "gs://no-such-bucket-issue19"
    with pytest.raises(storage.StorageError, match=f"bucket {missing[5:]} does not exist"):
        storage.glob(f"{missing}/in/*.jsonl")
    with pytest.raises(storage.StorageError, match=f"cannot write {missing}/out/a"):
        storage.write_bytes(f"{missing}/out/a", b"x")

    def refuse(error):
        def raiser(self, *a, **kw):
            raise error

        return raiser

    path = f"{gcs_bucket}/out/a.jsonl"
    monkeypatch.setattr(Blob, "upload_from_file", refuse(_google_error("403")))
    with pytest.raises(storage.StorageError, match=r"roles/storage\.objectAdmin on bucket"):
        storage.write_bytes(path, b"x")
    monkeypatch.setattr(Blob, "upload_from_filename", refuse(_google_error("403")))
    with pytest.raises(storage.StorageError, match=f"cannot write {path}"):
        storage.upload_file(__file__, path)
    monkeypatch.setattr(Blob, "download_as_bytes", refuse(_google_error("expired")))
    with pytest.raises(storage.CredentialsError, match="Token has been expired or revoked"):
        storage.read_bytes(path)


def test_a_bucket_we_may_not_look_at_exists(gcs_bucket, monkeypatch):
    """403 on the bucket's metadata: it exists (a missing one is 404); writing is the write
    probe's question, and a job's object roles do not grant reading bucket metadata."""
    from google.cloud.storage import Client

    assert storage.bucket_exists(gcs_bucket)
    assert not storage.bucket_exists("gs://no-such-bucket-issue19")

    def forbidden(self, *a, **kw):
        raise _google_error("403")

    monkeypatch.setattr(Client, "lookup_bucket", forbidden)
    assert storage.bucket_exists(gcs_bucket)


@pytest.fixture
def no_emulator(monkeypatch, tmp_path):
    """A process that never signed in to Google Cloud and runs no emulator."""
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    storage.gcs_client.cache_clear()
    yield
    storage.gcs_client.cache_clear()


@pytest.mark.parametrize(
    ("key", "why"),
    [(None, "Your default credentials were not found"),
     ("missing", "was not found"),
     ('{"type": "service_account",', "is not a valid json file"),
     ('{"type": "service_account", "private_key": "x", "client_email": "a@b.c", '
      '"token_uri": "https://oauth2.googleapis.com/token"}',
      "Failed to load service account credentials from"),
     ("directory", "Is a directory")],
)  # fmt: skip
def test_no_usable_credentials_when_the_client_is_made(
    no_emulator, tmp_path, monkeypatch, key, why
):
    if key is not None:
        path = tmp_path / "key.json"
        if key == "directory":
            path.mkdir()
        elif key != "missing":
            path.write_text(key)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(storage.CredentialsError) as raised:
        storage.glob("gs://acme-data/in/*.jsonl")
    assert str(raised.value).startswith("cannot reach Cloud Storage without usable Google")
    assert why in str(raised.value)
    assert str(raised.value).endswith(storage.CREDENTIALS_HELP)


def test_no_project_is_a_credentials_error(no_emulator, tmp_path, monkeypatch):
    key = tmp_path / "adc.json"
    key.write_text('{"type": "authorized_user", "client_id": "a", "client_secret": "b", '
                   '"refresh_token": "c"}')  # fmt: skip
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    with pytest.raises(storage.CredentialsError, match="Project was not passed"):
        storage.read_bytes("gs://acme-data/a.json")
