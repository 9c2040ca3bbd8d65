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

import pytest
import yaml

from hyperbatch.cli import EXIT_OK, EXIT_USER_ERROR

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
