"""The gcloud-style job commands: submit (dry run, wait), jobs list/describe/watch/results/cancel."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from hyperbatch.cli import EXIT_JOB_FAILED, EXIT_OK, EXIT_USER_ERROR, main
from hyperbatch.jobs.store import JobState, JobStore
from hyperbatch.runners import local
from tests.jobs import control_plane as cp
from tests.records import jsonl, openai_chat


def job_file(tmp_path, **extra) -> str:
    (tmp_path / "in.jsonl").write_bytes(
        jsonl([openai_chat(f"c{i}", f"one two {i}") for i in range(4)] + ["broken"])
    )
    spec = {
        "name": "cli-jobs",
        "task": "chat",
        "input": "in.jsonl",
        "input_format": "openai",
        "output": "out",
        "model": "fake",
        "engine": "fake",
        "records_per_shard": 2,
        "sampling": {"max_tokens": 2},
        **extra,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "job.yaml")


def run(*args: str, env: dict | None = None):
    return CliRunner(env=env).invoke(main, list(args))


def test_dry_run_shows_the_plan_and_records_nothing(tmp_path):
    result = run("submit", job_file(tmp_path), "--dry-run", "--format", "json")
    assert result.exit_code == EXIT_OK, result.output
    plan = json.loads(result.stdout)
    assert plan["job_id"].startswith("cli-jobs-")
    assert plan["root"] == str(tmp_path / "out")
    assert plan["launch"]["command"][1:4] == ["-m", "hyperbatch.runners.launch", "execute"]
    assert not (tmp_path / "out").exists()

    env = {
        "HYPERBATCH_DATAFLOW_PROJECT": "acme",
        "HYPERBATCH_DATAFLOW_REGION": "us-east5",
        "HYPERBATCH_DATAFLOW_TEMPLATE": "gs://t/flex.json",
        "HYPERBATCH_DATAFLOW_IMAGE": "us-docker.pkg.dev/acme/r/worker:1",
    }
    df = run(
        "submit",
        job_file(tmp_path, accelerator="tpu-v5e", accelerator_count=8),
        "--runner",
        "dataflow",
        "--dry-run",
        "--root",
        "gs://acme-jobs/jobs",
        "--allow",
        str(tmp_path),  # a store on Cloud Storage confines jobs to its bucket unless told
        "--format",
        "json",
        env=env,
    )
    assert df.exit_code == EXIT_OK, df.output
    plan = json.loads(df.stdout)["launch"]
    assert (
        "--dataflow_service_options=worker_accelerator=type:tpu-v5-lite-podslice;topology:2x4"
        in plan["pipeline_options"]
    )
    env_req = plan["flex_template_request"]["launchParameter"]["environment"]
    assert env_req["machineType"] == "ct5lp-hightpu-8t"
    table = run(
        "submit",
        job_file(tmp_path),
        "--runner",
        "dataflow",
        "--dry-run",
        "--root",
        "gs://acme-jobs/jobs",
        "--allow",
        str(tmp_path),
        env=env,
    )
    assert "Flex Template launch request" in table.stdout
    assert "--machine_type=n2-standard-2" in table.stdout

    missing = run("submit", job_file(tmp_path), "--runner", "dataflow", "--dry-run")
    assert missing.exit_code == EXIT_USER_ERROR
    assert "--project is required (or set HYPERBATCH_DATAFLOW_PROJECT)" in missing.stderr
    assert "Traceback" not in missing.output


def test_submit_wait_then_inspect(tmp_path):
    root = str(tmp_path / "out")
    result = run("submit", job_file(tmp_path), "--wait", "--format", "json")
    assert result.exit_code == EXIT_OK, result.output
    status = json.loads(result.stdout)
    job_id = status["job_id"]
    assert status["state"] == "SUCCEEDED"
    assert status["manifest"]["records_in"] == 5
    assert status["manifest"]["errors"] == 1
    assert f"hyperbatch jobs watch {job_id}" in result.stderr

    again = run("submit", job_file(tmp_path))
    assert again.exit_code == EXIT_JOB_FAILED
    assert "already submitted (SUCCEEDED); not submitted again" in again.stderr
    assert f"resume {job_id}" in again.stderr

    env = {"HYPERBATCH_JOBS_ROOT": root}
    listed = run("jobs", "list", "--format", "json", env=env)
    assert [r["job_id"] for r in json.loads(listed.stdout)] == [job_id]
    assert json.loads(listed.stdout)[0]["via"] == "cli"
    assert (
        json.loads(run("jobs", "list", "--state", "failed", "--format", "json", env=env).stdout)
        == []
    )
    table = run("jobs", "list", env=env)
    assert "SUCCEEDED" in table.stdout
    assert job_id in table.stdout

    described = yaml.safe_load(run("jobs", "describe", job_id, "--format", "yaml", env=env).stdout)
    assert described["launch"]["launcher"] == "local"
    assert [h["state"] for h in described["history"]] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert "5 in = 4 results + 1 errors" in run("jobs", "describe", job_id, env=env).stdout

    watched = run("jobs", "watch", job_id, "--format", "json", env=env)
    assert watched.exit_code == EXIT_OK
    assert json.loads(watched.stdout)["state"] == "SUCCEEDED"

    where = json.loads(run("jobs", "results", job_id, "--format", "json", env=env).stdout)
    assert where["shards_committed"] == 3
    assert where["manifest"].endswith(f"{job_id}/manifest.json")
    lines = run("jobs", "results", job_id, "--stream", env=env).stdout.splitlines()
    assert sorted(json.loads(x)["custom_id"] for x in lines) == ["c0", "c1", "c2", "c3"]
    errors = run("jobs", "results", job_id, "--stream", "--errors", env=env).stdout.splitlines()
    assert [json.loads(x)["error"]["code"] for x in errors] == ["invalid_json"]  # OpenAI's shape


def test_a_failed_job_exits_1(tmp_path):
    result = run("submit", job_file(tmp_path, max_error_rate=0.1), "--wait")
    assert result.exit_code == EXIT_JOB_FAILED
    assert "1 of 5 records failed, more than max_error_rate allows" in result.stderr


def test_cancel_stops_the_job_process(tmp_path):
    path = job_file(tmp_path, engine="slow", engine_options={"seconds_per_request": 0.5})
    plugin = ["--plugin", "tests.runners.slow_engine"]
    submitted = run("submit", path, *plugin, "--format", "json")
    assert submitted.exit_code == EXIT_OK, submitted.output
    status = json.loads(submitted.stdout)
    job_id, pid = status["job_id"], status["launch"]["pid"]
    store = JobStore(str(tmp_path / "out"))
    cp.wait_for(lambda: store.get(job_id).state == JobState.RUNNING, timeout=60)

    cancelled = run("jobs", "--root", store.root, "cancel", job_id, "--format", "json")
    assert cancelled.exit_code == EXIT_OK, cancelled.output
    assert json.loads(cancelled.stdout)["stopped"] == f"stopped process {pid}"
    assert not local._process_alive(pid, job_id)
    assert store.get(job_id).state == JobState.CANCELLED
    assert store.get(job_id).to_dict()["manifest"] is None

    twice = run("jobs", "--root", store.root, "cancel", job_id)
    assert twice.exit_code == EXIT_USER_ERROR
    assert "is CANCELLED; it cannot become CANCELLED" in twice.stderr
    watched = run("jobs", "--root", store.root, "watch", job_id)
    assert watched.exit_code == EXIT_JOB_FAILED

    # a cancelled job resumes under its id: what was committed is kept, the rest is served
    resumed = run("jobs", "--root", store.root, "resume", job_id, *plugin, "--wait",
                  "--format", "json")  # fmt: skip
    assert resumed.exit_code == EXIT_OK, resumed.output
    final = store.get(job_id)
    assert final.state == JobState.SUCCEEDED
    states = [h["state"] for h in final.to_dict()["history"]]
    assert states[:3] == ["QUEUED", "RUNNING", "CANCELLED"]
    assert states[3:] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    where = json.loads(run("jobs", "--root", store.root, "results", job_id, "--format",
                           "json").stdout)  # fmt: skip
    ids = [json.loads(line)["custom_id"] for line in
           run("jobs", "--root", store.root, "results", job_id, "--stream").stdout.splitlines()]  # fmt: skip
    assert sorted(ids) == [f"c{i}" for i in range(4)]  # each exactly once
    assert where["summary"]["records_in"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jobs", "list"], "no job store: pass --root"),
        (["jobs", "--root", "{tmp}", "describe", "nope"], "no job 'nope'"),
        (["jobs", "--root", "{tmp}", "cancel", "nope"], "no job 'nope'"),
        (["jobs", "--root", "{tmp}", "describe", "../../other/job"], "job id '../../other/job'"),
        (["jobs", "--root", "{tmp}", "cancel", "../x"], "job id '../x'"),
        (["jobs", "--root", "{tmp}", "watch", "a/b"], "job id 'a/b'"),
        (["jobs", "--root", "{tmp}", "results", "/etc"], "job id '/etc'"),
        (["submit", "{job}", "--job-id", "Bad_Id"], "job id 'Bad_Id'"),
        (["submit", "{job}", "--root", "gs://acme-jobs/jobs", "--dry-run"],
         "is outside where jobs of this store may read and write (gs://acme-jobs/)"),
        (["submit", "{job}", "--set", "batch_size=0"], "batch_size: must be between 1 and 4096"),
        (["submit", "{job}", "--plugin", "no.such.module"], "plug-in module 'no.such.module'"),
        (["trigger", "serve", "--root", "{tmp}"], "set --audience"),
        (["trigger", "listen", "--root", "{tmp}", "--subscription", "s s"], "not a Pub/Sub subscription name"),
    ],
)  # fmt: skip
def test_user_errors_exit_2(tmp_path, args, message):
    job = job_file(tmp_path)
    result = run(*[a.format(tmp=tmp_path, job=job) for a in args], env={"HYPERBATCH_JOBS_ROOT": ""})
    assert result.exit_code == EXIT_USER_ERROR, result.output
    assert message in result.output
    assert "Traceback" not in result.output
