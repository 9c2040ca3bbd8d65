"""The first cloud command without usable Google credentials: one paragraph, exit 2 (issue 19).

Each command runs in its own process, as a user would run it (Google's clients keep state per
process), with no emulator, a HOME and gcloud config of its own (so no real credentials are
found) and NO_GCE_CHECK (so google.auth does not look for a metadata server).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler

import pytest
import yaml

from hyperbatch.cli import EXIT_OK, EXIT_USER_ERROR
from tests.helpers import loopback

#: What every paragraph says to do.
FIXES = ("`gcloud auth application-default login`", "GOOGLE_APPLICATION_CREDENTIALS",
         "GOOGLE_CLOUD_PROJECT", "--project")  # fmt: skip

#: key file -> (its content, or None for no such file; what the paragraph says is wrong)
CREDENTIALS = {
    "none": (None, "Your default credentials were not found"),
    "missing-file": (None, "was not found"),
    "malformed-file": ('{"type": "service_account", "project_id": ', "is not a valid json file"),
}

DATAFLOW_ENV = {
    "HYPERBATCH_DATAFLOW_PROJECT": "acme",
    "HYPERBATCH_DATAFLOW_REGION": "us-east5",
    "HYPERBATCH_DATAFLOW_TEMPLATE": "gs://acme-jobs/flex.json",
    "HYPERBATCH_DATAFLOW_IMAGE": "us-docker.pkg.dev/acme/r/worker:1",
}


def cloud_job(tmp_path) -> str:
    """A spec whose input, output and model are all on Cloud Storage, for a TPU v6e x4."""
    spec = {"name": "cloud-job", "task": "chat", "input": "gs://acme-data/in/*.jsonl",
            "input_format": "openai", "output": "gs://acme-jobs/out",
            "model": "gs://acme-models/m.gguf", "engine": "jax", "accelerator": "tpu-v6e",
            "accelerator_count": 4}  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def without_credentials(tmp_path, case: str) -> dict[str, str]:
    """The environment of a machine that never signed in to Google Cloud, plus ``case``."""
    google = ("GOOGLE_", "CLOUDSDK_", "STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST",
              "GCE_METADATA", "HYPERBATCH_")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(google)}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"), NO_GCE_CHECK="true")
    content, _ = CREDENTIALS[case]
    if case != "none":
        key = tmp_path / "key.json"
        if content is not None:
            key.write_text(content)
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key)
    return env


def hyperbatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hyperbatch", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def assert_one_paragraph(result: subprocess.CompletedProcess[str], service: str, why: str):
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    assert "Traceback" not in result.stderr
    paragraph = result.stderr.strip()
    assert "\n" not in paragraph, paragraph
    assert paragraph.startswith(f"error: cannot reach {service}"), paragraph
    assert why in paragraph
    for fix in FIXES:
        assert fix in paragraph


COMMANDS = {
    "validate": (["validate", "{job}"], "Cloud Storage"),
    "run": (["run", "{job}", "--quiet"], "Cloud Storage"),
    "jobs list": (["jobs", "--root", "gs://acme-jobs/jobs", "list"], "Cloud Storage"),
    "trigger listen": (["trigger", "listen", "--root", "gs://acme-jobs/jobs",
                        "--subscription", "projects/acme/subscriptions/jobs"], "Pub/Sub"),
    "trigger listen (dead letters given)": (
        ["trigger", "listen", "--root", "gs://acme-jobs/jobs", "--subscription",
         "projects/acme/subscriptions/jobs", "--dead-letter-topic", "projects/acme/topics/dl"],
        "Pub/Sub"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CREDENTIALS))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_usable_credentials_is_one_paragraph_and_exit_2(tmp_path, case, command):
    args, service = COMMANDS[command]
    env = without_credentials(tmp_path, case)
    result = hyperbatch(env, *[a.format(job=cloud_job(tmp_path)) for a in args])
    assert_one_paragraph(result, service, CREDENTIALS[case][1])


@pytest.mark.parametrize("case", list(CREDENTIALS))
def test_a_dry_run_shows_the_plan_and_what_it_could_not_check(tmp_path, case):
    env = {**without_credentials(tmp_path, case), **DATAFLOW_ENV}
    args = ["submit", cloud_job(tmp_path), "--runner", "dataflow", "--root", "gs://acme-jobs/jobs",
            "--allow", "gs://acme-jobs/ gs://acme-data/ gs://acme-models/", "--dry-run"]  # fmt: skip
    result = hyperbatch(env, *args, "--format", "json")
    assert result.returncode == EXIT_OK, result.stderr
    assert "Traceback" not in result.stderr
    plan = json.loads(result.stdout)
    assert plan["launch"]["worker"] == {"machine_type": "ct6e-standard-4t", "kind": "tpu",
                                        "worker_accelerator": "type:tpu-v6e-slice;topology:2x2"}  # fmt: skip
    environment = plan["launch"]["flex_template_request"]["launchParameter"]["environment"]
    assert environment["machineType"] == "ct6e-standard-4t"
    assert plan["not_checked"] == [
        "input: whether files match gs://acme-data/in/*.jsonl",
        "output: whether its bucket exists and gs://acme-jobs/out may be written",
        "model: whether gs://acme-models/m.gguf is a model",
    ]
    why = plan["not_checked_because"]
    assert why.startswith("cannot reach Cloud Storage")
    assert CREDENTIALS[case][1] in why
    # stderr says it too, for the table a person reads
    assert "did not check:\n  - input: whether files match gs://acme-data/in/*.jsonl" in (
        result.stderr
    )
    assert why in result.stderr

    table = hyperbatch(env, *args)
    assert table.returncode == EXIT_OK, table.stderr
    assert "Flex Template launch request" in table.stdout
    assert "model: whether gs://acme-models/m.gguf is a model" in table.stderr


def test_a_submission_without_credentials_is_refused_and_launches_later(tmp_path):
    """A local job store, launched on Dataflow: the job is recorded but stays QUEUED (not
    FAILED), so the same submit launches it once the credentials are fixed."""
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a", "body": {"messages": []}}\n')
    spec = {"name": "local-store", "task": "chat", "input": "in.jsonl", "input_format": "openai",
            "output": "out", "model": "fake", "engine": "fake"}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    env = {**without_credentials(tmp_path, "none"), **DATAFLOW_ENV}
    result = hyperbatch(env, "submit", str(tmp_path / "job.yaml"), "--runner", "dataflow",
                        "--temp-location", "gs://acme-jobs/temp")  # fmt: skip
    assert_one_paragraph(result, "Dataflow (project acme, region us-east5)", "were not found")
    (status,) = (tmp_path / "out").glob("*/status.json")
    record = json.loads(status.read_text())
    assert record["state"] == "QUEUED"
    assert record["launch"] is None  # the launch claim was given back


# ------------------------------------------------- credentials that fail at the first call
# Credentials that load, then fail when first used: google.auth's real refresh, against a
# loopback stand-in for Google's token endpoint and for the Compute Engine metadata server.


class FakeGoogleAuth(BaseHTTPRequestHandler):
    """The OAuth token endpoint answers every refresh token "expired or revoked"; the metadata
    server is found (the VM) but has no token to give (its service account was removed);
    Dataflow's REST API answers 401."""

    def _reply(self, code: int, body: object, content_type: str = "application/json") -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/token-ok":  # a token this Dataflow will not take (see below)
            return self._reply(200, {"access_token": "ya29.unwelcome", "expires_in": 3600,
                                     "token_type": "Bearer"})  # fmt: skip
        if self.path.startswith("/v1b3/"):
            return self._reply(401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                               "message": "Request had invalid authentication "
                                               "credentials."}})  # fmt: skip
        return self._reply(400, {"error": "invalid_grant",
                                 "error_description": "Token has been expired or revoked."})  # fmt: skip

    def do_GET(self):
        if self.path in ("/", ""):
            return self._reply(200, "", "text/plain")  # the metadata server's ping
        if self.path.startswith("/computeMetadata/v1/project/project-id"):
            return self._reply(200, "acme", "text/plain")
        return self._reply(404, "Not Found", "text/plain")

    def log_message(self, *args):
        pass


@pytest.fixture
def google_auth():
    with loopback.serve(FakeGoogleAuth) as port:
        yield f"127.0.0.1:{port}"


#: case -> what the paragraph says is wrong
UNUSABLE = {
    "expired-key": "invalid_grant: Token has been expired or revoked",  # Google's words
    "metadata-server-without-token": "from the Google Compute Engine metadata service",
}


def with_unusable_credentials(tmp_path, case: str, auth: str) -> dict[str, str]:
    """Credentials google.auth finds and loads, but cannot refresh: a service account key that
    was deleted or whose account was disabled (the token endpoint answers invalid_grant), or a
    VM whose metadata server gives no token."""
    env = without_credentials(tmp_path, "none")
    env["GOOGLE_CLOUD_PROJECT"] = "acme"
    if case == "expired-key":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()  # fmt: skip
        key = tmp_path / "key.json"
        key.write_text(json.dumps({
            "type": "service_account", "project_id": "acme", "private_key_id": "0123abcd",
            "private_key": pem, "client_email": "batch@acme.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": f"http://{auth}/token"}))  # fmt: skip
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key)
    else:
        del env["NO_GCE_CHECK"]
        env.update(GCE_METADATA_HOST=auth, GCE_METADATA_IP=auth)
    return env


def local_dataflow_job(tmp_path) -> str:
    (tmp_path / "in.jsonl").write_text('{"custom_id": "a", "body": {"messages": []}}\n')
    spec = {"name": "local-store", "task": "chat", "input": "in.jsonl", "input_format": "openai",
            "output": "out", "model": "fake", "engine": "fake"}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "job.yaml")


UNUSABLE_COMMANDS = {
    **{k: COMMANDS[k] for k in ("jobs list", "trigger listen", "trigger listen (dead letters given)")},
    "submit --runner dataflow": (
        ["submit", "{job}", "--runner", "dataflow", "--temp-location", "gs://acme-jobs/temp"],
        "Dataflow (project acme, region us-east5)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(UNUSABLE))
@pytest.mark.parametrize("command", list(UNUSABLE_COMMANDS))
def test_credentials_unusable_at_the_first_call_are_the_same_paragraph(
    tmp_path, google_auth, case, command
):
    """An expired or revoked key, or a metadata server with no token, is found at the first
    Cloud Storage, Pub/Sub or Dataflow call: the same paragraph as no credentials at all, and a
    Dataflow job that could not be launched stays QUEUED."""
    args, service = UNUSABLE_COMMANDS[command]
    env = {**with_unusable_credentials(tmp_path, case, google_auth), **DATAFLOW_ENV}
    result = hyperbatch(env, *[a.format(job=local_dataflow_job(tmp_path)) for a in args])
    assert_one_paragraph(result, service, UNUSABLE[case])
    if command.startswith("submit"):
        (status,) = (tmp_path / "out").glob("*/status.json")
        record = json.loads(status.read_text())
        assert (record["state"], record["launch"]) == ("QUEUED", None)


def test_a_401_from_dataflow_leaves_the_job_queued(tmp_path, google_auth):
    """Credentials Dataflow refuses (401 from its REST API): a CredentialsError naming
    Dataflow, not "launch failed", and the job stays QUEUED with its claim given back."""
    from google.cloud import dataflow_v1beta3 as df
    from google.oauth2.credentials import Credentials

    from hyperbatch import storage
    from hyperbatch.jobs import spec as job_spec
    from hyperbatch.jobs.store import JobStore
    from hyperbatch.jobs.submit import JobRequest, submit
    from hyperbatch.runners.dataflow import DataflowConfig, DataflowLauncher

    config = DataflowConfig(project="acme", region="us-east5", image="r/worker:1",
                            template="gs://acme-jobs/flex.json",
                            temp_location="gs://acme-jobs/temp")  # fmt: skip
    # A token google.auth gets and refreshes normally, which Dataflow answers with 401 (as it
    # does for an account deleted after the token was issued).
    credentials = Credentials(None, refresh_token="1//0r", token_uri=f"http://{google_auth}/token-ok",
                              client_id="c", client_secret="s")  # fmt: skip
    client = df.FlexTemplatesServiceClient(
        transport="rest", credentials=credentials,
        client_options={"api_endpoint": f"http://{google_auth}"})  # fmt: skip
    launcher = DataflowLauncher(config, flex_client=client)
    spec = job_spec.load(local_dataflow_job(tmp_path))
    store = JobStore(str(tmp_path / "jobs"))
    request = JobRequest("local-store-1", spec, submitted_by=None, submission={"via": "cli"})
    with pytest.raises(storage.CredentialsError) as e:
        submit(store, request, launcher)
    paragraph = str(e.value)
    assert paragraph.startswith("cannot reach Dataflow (project acme, region us-east5)")
    assert "Request had invalid authentication credentials" in paragraph
    for fix in FIXES:
        assert fix in paragraph
    record = store.get("local-store-1")
    assert record.state.value == "QUEUED"
    assert record.launch is None
