"""The CLI: exit codes, no tracebacks for user errors, data on stdout."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner

from hyperbatch.cli import EXIT_OK, EXIT_USER_ERROR, main
from tests.jobs import control_plane as cp
from tests.optional import require
from tests.records import jsonl, openai_chat


def job_file(tmp_path, **extra) -> str:
    (tmp_path / "in.jsonl").write_bytes(
        jsonl([openai_chat("a", "one two"), openai_chat("b", "three four five"), "broken"])
    )
    spec = {"name": "cli-test", "task": "chat", "input": "in.jsonl", "input_format": "openai",
            "output": "out", "model": "fake", "engine": "fake", **extra}  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(spec))
    return str(tmp_path / "job.json")


def test_validate_prints_the_job_id(tmp_path):
    result = CliRunner().invoke(main, ["validate", job_file(tmp_path), "--format", "json"])
    assert result.exit_code == EXIT_OK, result.output
    data = json.loads(result.stdout)
    assert data["job_id"].startswith("cli-test-")
    assert data["spec"]["input"] == str(tmp_path / "in.jsonl")


def test_user_errors_exit_2_without_traceback(tmp_path):
    result = CliRunner().invoke(main, ["validate", job_file(tmp_path, batch_size=0, bogus=1)])
    assert result.exit_code == EXIT_USER_ERROR
    assert "batch_size: must be between 1 and 4096" in result.stderr
    assert "bogus: unknown key" in result.stderr
    assert "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["run", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == EXIT_USER_ERROR
    assert "cannot read the spec file" in missing.stderr
    bad_flag = CliRunner().invoke(main, ["run", job_file(tmp_path), "--set", "nokey"])
    assert bad_flag.exit_code == EXIT_USER_ERROR


def test_run_then_manifest(tmp_path):
    result = CliRunner().invoke(main, ["run", job_file(tmp_path), "--quiet", "--format", "json",
                                       "--set", "sampling.max_tokens=2"])  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    manifest = json.loads(result.stdout)
    assert (manifest["records_in"], manifest["results"], manifest["errors"]) == (3, 2, 1)
    assert "manifest:" in result.stderr
    job_dir = tmp_path / "out" / manifest["job_id"]
    shown = CliRunner().invoke(main, ["manifest", str(job_dir), "--format", "json"])
    assert json.loads(shown.stdout)["job_id"] == manifest["job_id"]
    table = CliRunner().invoke(main, ["manifest", str(job_dir / "manifest.avro")])
    assert "3 in = 2 results + 1 errors" in table.stdout


def test_failed_job_exits_1(tmp_path):
    result = CliRunner().invoke(main, ["run", job_file(tmp_path, max_error_rate=0.1), "--quiet"])
    assert result.exit_code == 1
    assert "FAILED" in result.stdout


def test_a_gpu_job_here_refuses_instead_of_running_on_the_cpu(tmp_path):
    """accelerator: nvidia-h100-80gb on a machine without a GPU: the JAX engine says what it
    needs and what it sees, the job fails (exit 1) and writes no results -- it never quietly
    runs on the CPU (and is never billed as an H100)."""
    require("jax", "the JAX engine")
    (tmp_path / "in.jsonl").write_bytes(jsonl([openai_chat("a", "hello")]))
    spec = {"name": "gpu-here", "task": "chat", "input": "in.jsonl", "input_format": "openai",
            "output": "out", "model": "smollm2-135m-instruct", "accelerator": "nvidia-h100-80gb"}  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(spec))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "job.json"), "--quiet"])
    assert result.exit_code == 1, result.output
    assert "accelerator nvidia-h100-80gb needs JAX's gpu backend" in result.stderr
    assert "cpu device(s)" in result.stderr
    assert "Traceback" not in result.stderr  # one paragraph; the traceback is in a log file
    assert "The traceback is in" in result.stderr
    job_dirs = list((tmp_path / "out").iterdir())
    assert len(job_dirs) == 1
    assert not (job_dirs[0] / "results").exists()
    assert not (job_dirs[0] / "manifest.json").exists()


def test_a_run_is_recorded_in_the_job_store(tmp_path):
    """`hyperbatch run` jobs show in `jobs list` like submitted ones, with their history."""
    result = CliRunner().invoke(main, ["run", job_file(tmp_path), "--quiet", "--format", "json"])
    assert result.exit_code == EXIT_OK, result.output
    job_id = json.loads(result.stdout)["job_id"]
    listed = CliRunner().invoke(
        main, ["jobs", "--root", str(tmp_path / "out"), "list", "--format", "json"]
    )
    [row] = json.loads(listed.stdout)
    assert (row["job_id"], row["state"], row["via"], row["runner"]) == (
        job_id,
        "SUCCEEDED",
        "run",
        "foreground",
    )
    assert (row["records"], row["errors"]) == (3, 1)
    again = CliRunner().invoke(main, ["run", job_file(tmp_path), "--quiet", "--format", "json"])
    assert again.exit_code == EXIT_OK, again.output  # a rerun resumes the same job
    described = CliRunner().invoke(
        main, ["jobs", "--root", str(tmp_path / "out"), "describe", job_id, "--format", "json"]
    )
    status = json.loads(described.stdout)
    assert [h["state"] for h in status["history"]] == ["QUEUED", "RUNNING", "SUCCEEDED"] * 2
    assert (status["progress"]["records"], status["progress"]["errors"]) == (3, 1)  # final


SLOW = ["--set", "engine=slow", "--set", "engine_options.seconds_per_request=0.25",
        "--plugin", "tests.runners.slow_engine"]  # fmt: skip


def _slow_job(tmp_path, n: int = 24) -> str:
    records = [openai_chat(f"s{i:02d}", f"w{i} x y") for i in range(n)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(records))
    spec = {"name": "two-runs", "task": "chat", "input": "in.jsonl", "input_format": "openai",
            "output": "out", "model": "fake", "engine": "fake", "records_per_shard": 4,
            "sampling": {"max_tokens": 2}}  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(spec))
    return str(tmp_path / "job.json")


def _start_run(tmp_path, job: str):
    import subprocess
    import sys

    # a short lease: the run's attempt record is renewed every half second
    env = {**os.environ, "HYPERBATCH_LEASE_TTL_S": "1.5"}
    return subprocess.Popen(
        [sys.executable, "-m", "hyperbatch", "run", job, "--quiet", *SLOW],
        cwd=os.getcwd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _served_ids(job_dir) -> list[str]:
    ids = []
    for f in sorted((job_dir / "results").glob("*.jsonl")):
        ids += [json.loads(line)["custom_id"] for line in f.read_text().splitlines()]
    return ids


def test_two_runs_of_one_job_cannot_both_work_it(tmp_path):
    job = _slow_job(tmp_path)
    first = _start_run(tmp_path, job)
    out = tmp_path / "out"
    cp.wait_for(lambda: any(out.glob("*/_lease.json")), timeout=60)
    second = CliRunner().invoke(main, ["run", job, "--quiet", *SLOW])
    assert second.exit_code == EXIT_USER_ERROR, second.output
    assert "is being run by" in second.stderr
    assert "Traceback" not in second.output
    assert first.wait(timeout=120) == 0, first.stderr
    [job_dir] = out.iterdir()
    assert sorted(_served_ids(job_dir)) == [f"s{i:02d}" for i in range(24)]
    manifest = json.loads((job_dir / "manifest.json").read_text())
    assert manifest["attempts"] == 1  # the refused run did no work


def test_a_killed_run_is_taken_over_and_counted(tmp_path):
    import signal
    import time

    job = _slow_job(tmp_path)
    first = _start_run(tmp_path, job)
    out = tmp_path / "out"
    cp.wait_for(lambda: len(list(out.glob("*/_commits/*.json"))) >= 1, timeout=60)
    time.sleep(1.0)  # into its next shards, and past a renewal of its attempt record
    first.send_signal(signal.SIGKILL)
    first.wait()
    again = CliRunner().invoke(main, ["run", job, "--quiet", "--format", "json", *SLOW])
    assert again.exit_code == EXIT_OK, again.output
    manifest = json.loads(again.stdout)
    [job_dir] = out.iterdir()
    assert sorted(_served_ids(job_dir)) == [f"s{i:02d}" for i in range(24)]  # once each
    assert manifest["records_in"] == manifest["results"] == 24
    assert manifest["attempts"] == 2
    assert manifest["accelerator_seconds_lost"] > 0  # the killed run's uncommitted work
    assert manifest["total_wall_seconds"] > manifest["wall_seconds"]
    assert manifest["accelerator_seconds"] >= manifest["accelerator_seconds_lost"]


def test_a_changed_input_is_refused_without_a_traceback(tmp_path):
    job = job_file(tmp_path)
    assert CliRunner().invoke(main, ["run", job, "--quiet"]).exit_code == EXIT_OK
    (tmp_path / "in.jsonl").write_bytes(
        jsonl([openai_chat("a", "one two"), openai_chat("b", "three four FIVE"), "broken"])
    )
    again = CliRunner().invoke(main, ["run", str(tmp_path / "job.json"), "--quiet"])
    assert again.exit_code == EXIT_USER_ERROR, again.output
    assert "is not what shard part-00000-00000 of this job was committed from" in again.stderr
    assert "Traceback" not in again.output
