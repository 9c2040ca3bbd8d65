"""The CLI: exit codes, no tracebacks for user errors, data on stdout."""

from __future__ import annotations

import json

from click.testing import CliRunner

from hyperbatch.cli import EXIT_OK, EXIT_USER_ERROR, main
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
    job_dirs = list((tmp_path / "out").iterdir())
    assert len(job_dirs) == 1
    assert not (job_dirs[0] / "results").exists()
    assert not (job_dirs[0] / "manifest.json").exists()
