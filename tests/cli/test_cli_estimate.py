"""`hyperbatch estimate`, and the budget through the CLI: `run` refused above the low estimate
(exit 2, nothing run), a budget stop's summary and exit code 4, the rerun with a higher cap,
and `submit --dry-run` showing the same figures."""

from __future__ import annotations

import json

from click.testing import CliRunner

from hyperbatch.cli import EXIT_OK, EXIT_STOPPED_BUDGET, EXIT_USER_ERROR, main
from hyperbatch.jobs.layout import JobFolder
from tests.records import jsonl, openai_chat
from tests.runners import slow_engine  # noqa: F401 - registers engine "slow"


def job_file(tmp_path, name: str, n: int, **extra) -> str:
    records = [openai_chat(f"{name}-{i}", f"question {i} please", max_tokens=2) for i in range(n)]
    (tmp_path / f"{name}.jsonl").write_bytes(jsonl(records))
    spec = {"name": name, "task": "chat", "input": f"{name}.jsonl", "input_format": "openai",
            "output": "out", "model": "fake", "engine": "fake", "records_per_shard": 2, **extra}  # fmt: skip
    (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    return str(tmp_path / f"{name}.json")


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_estimate_needs_something_to_go_on_then_prints_ranges(tmp_path):
    nothing = invoke("estimate", job_file(tmp_path, "target", 6))
    assert nothing.exit_code == EXIT_USER_ERROR
    assert "cannot estimate this job" in nothing.stderr
    assert "run one first" in nothing.stderr
    assert "Traceback" not in nothing.output
    assert invoke("run", job_file(tmp_path, "calib", 4), "--quiet").exit_code == EXIT_OK

    shown = invoke("estimate", job_file(tmp_path, "target", 6), "--format", "json")

    assert shown.exit_code == EXIT_OK, shown.output
    data = json.loads(shown.stdout)
    assert (data["records"], data["records_exact"], data["workers"]) == (6, True, 1)
    assert data["completion_tokens"] == {"low": 12.0, "expected": 12.0, "high": 12.0}
    for key in ("accelerator_seconds", "accelerator_hours", "cost_usd", "wall_seconds"):
        assert 0 < data[key]["low"] <= data[key]["expected"] <= data[key]["high"], key
    assert data["basis"]["throughput"].startswith("measured by 1 earlier job")
    table = invoke("estimate", job_file(tmp_path, "target", 6), "--workers", "3")
    for label in ("records", "completion tokens", "accelerator-hours", "cost", "wall time",
                  "3 worker(s)", "based on (throughput)"):  # fmt: skip
        assert label in table.stdout, label


def test_submit_dry_run_shows_the_estimate_s_figures(tmp_path):
    assert invoke("run", job_file(tmp_path, "calib", 4), "--quiet").exit_code == EXIT_OK
    target = job_file(tmp_path, "target", 12)
    shown = invoke("estimate", target, "--workers", "2", "--format", "json")
    dry = invoke("submit", target, "--dry-run", "--workers", "2", "--format", "json")
    assert (shown.exit_code, dry.exit_code) == (EXIT_OK, EXIT_OK), dry.output
    assert json.loads(dry.stdout)["estimate"] == json.loads(shown.stdout)
    # as a table too: the same lines as `hyperbatch estimate` prints
    table = invoke("submit", target, "--dry-run", "--workers", "2")
    assert table.exit_code == EXIT_OK, table.output
    for line in invoke("estimate", target, "--workers", "2").stdout.splitlines()[1:]:
        assert line in table.stdout, line


def test_run_refused_above_the_low_estimate_nothing_runs(tmp_path):
    assert invoke("run", job_file(tmp_path, "calib", 4), "--quiet").exit_code == EXIT_OK
    refused = invoke("run", job_file(tmp_path, "big", 8), "--quiet",
                     "--set", "max_cost_usd=0.0000000001")  # fmt: skip
    assert refused.exit_code == EXIT_USER_ERROR
    assert "below even the low estimate" in refused.stderr
    assert "8 records" in refused.stderr
    assert not any((tmp_path / "out").glob("big-*"))  # refused before it was recorded
    dry = invoke("submit", job_file(tmp_path, "big", 8), "--dry-run", "--format", "json",
                 "--set", "max_cost_usd=0.0000000001")  # fmt: skip
    assert dry.exit_code == EXIT_USER_ERROR  # submit would refuse it
    plan = json.loads(dry.stdout)
    assert plan["estimate"]["records"] == 8
    assert plan["estimate"]["within_budget"] is False
    assert "below even the low estimate" in dry.stderr


PLUGIN = ("--plugin", "tests.runners.slow_engine")


def stopped_by_its_budget(tmp_path):
    """A job run with a cap of $0.25 that it cannot keep (the slow engine: >= 0.05 s a request
    at $1 per second, 10 shards of 2: more than $1): (its spec file, the run's outcome)."""
    slow = {"engine": "slow", "engine_options": {"seconds_per_request": 0.05},
            "batch_size": 2, "usd_per_accelerator_hour": 3600.0}  # fmt: skip
    spec_file = job_file(tmp_path, "capped", 20, **slow)
    stopped = invoke("run", spec_file, *PLUGIN, "--quiet", "--format", "json",
                     "--set", "max_cost_usd=0.25")  # fmt: skip
    assert stopped.exit_code == EXIT_STOPPED_BUDGET, stopped.output
    return spec_file, stopped


def test_a_budget_stop_exits_4_with_a_summary_and_a_rerun_finishes(tmp_path):
    spec_file, stopped = stopped_by_its_budget(tmp_path)
    m = json.loads(stopped.stdout)
    assert m["status"] == "STOPPED_BUDGET"
    assert m["records_left"] > 0
    assert "STOPPED_BUDGET: stopped by its budget: max_cost_usd $0.25" in stopped.stderr
    assert f"{m['records_in']} records served, {m['records_left']} left" in stopped.stderr
    listed = invoke("jobs", "--root", str(tmp_path / "out"), "list", "--state", "STOPPED_BUDGET",
                    "--format", "json")  # fmt: skip
    assert [r["job_id"] for r in json.loads(listed.stdout)] == [m["job_id"]]

    finished = invoke("run", spec_file, *PLUGIN, "--quiet", "--format", "json",
                      "--set", "max_cost_usd=1000")  # fmt: skip

    assert finished.exit_code == EXIT_OK, finished.output
    m2 = json.loads(finished.stdout)
    assert m2["job_id"] == m["job_id"]  # the same job: resumed
    assert (m2["records_in"], m2["records_left"], m2["attempts"]) == (20, 0, 2)
    recorded = json.loads((tmp_path / "out" / m["job_id"] / "spec.json").read_text())
    assert recorded["spec"]["max_cost_usd"] == 1000
    assert len(JobFolder(str(tmp_path / "out" / m["job_id"])).committed_shards()) == 10


def test_jobs_resume_with_a_higher_cap_finishes_a_stopped_job(tmp_path):
    _, stopped = stopped_by_its_budget(tmp_path)
    job_id = json.loads(stopped.stdout)["job_id"]
    root = ("jobs", "--root", str(tmp_path / "out"))

    # the stopped job itself calibrates the estimate: a new cap below it is refused, unrecorded
    low = invoke(*root, "resume", job_id, "--max-cost-usd", "0.0001", *PLUGIN)
    assert low.exit_code == EXIT_USER_ERROR, low.output
    assert "below even the low estimate" in low.stderr
    spec = json.loads((tmp_path / "out" / job_id / "spec.json").read_text())["spec"]
    assert spec["max_cost_usd"] == 0.25
    shown = invoke(*root, "describe", job_id, "--format", "json")
    assert json.loads(shown.stdout)["state"] == "STOPPED_BUDGET"

    resumed = invoke(*root, "resume", job_id, "--max-cost-usd", "1000", "--wait", *PLUGIN,
                     "--format", "json")  # fmt: skip
    assert resumed.exit_code == EXIT_OK, resumed.output
    m = json.loads((tmp_path / "out" / job_id / "manifest.json").read_text())
    assert (m["status"], m["records_in"], m["records_left"], m["max_cost_usd"]) == (
        "SUCCEEDED", 20, 0, 1000.0,
    )  # fmt: skip
