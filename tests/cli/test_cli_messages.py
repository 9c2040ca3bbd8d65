"""What a user sees (issue 12, items 9 and 11): `hyperbatch engines`, the empty-input warning,
no apitools noise, and `--debug` printing the traceback of a load-time failure."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from typing import ClassVar

import pytest
from click.testing import CliRunner

from hyperbatch.cli import EXIT_JOB_FAILED, EXIT_OK, common, main
from hyperbatch.engines import registry
from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.fake import FakeEngine, FakeOptions
from hyperbatch.engines.options import EngineOptions
from tests.records import jsonl, openai_chat


def fake_job(tmp_path, records: bytes, engine: str = "fake") -> str:
    (tmp_path / "in.jsonl").write_bytes(records)
    spec = {"name": "messages", "task": "chat", "input": "in.jsonl", "input_format": "openai",
            "output": "out", "model": "fake", "engine": engine}  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(spec))
    return str(tmp_path / "job.json")


# ------------------------------------------------------------------------- hyperbatch engines


def test_engines_lists_every_engine_installed_or_not(monkeypatch):
    """Every engine a spec can name, whether it is installed here, its tasks and how to
    install it -- the command the "see 'hyperbatch engines'" hints name."""
    plug_in = registry.EngineEntry(
        "hyperbatch_no_such_package.engine:Engine",
        "hyperbatch.engines.fake:FakeOptions",
        "pip install hyperbatch-no-such-package",
        "a plug-in whose package is not installed",
        requires=("hyperbatch_no_such_package",),
        tasks=frozenset({"completion"}),
    )
    monkeypatch.setitem(registry._ENGINES, "absent", plug_in)
    result = CliRunner().invoke(main, ["engines", "--format", "json"])
    assert result.exit_code == EXIT_OK, result.output
    rows = {r["engine"]: r for r in json.loads(result.stdout)}
    assert set(rows) == set(registry.ENGINES)
    for name, row in rows.items():
        assert row["installed"] is (registry.missing_dependency(name) is None)
        assert row["install"] == registry.ENGINES[name].install
        assert row["tasks"] == sorted(registry.ENGINES[name].tasks)
    assert rows["absent"]["installed"] is False
    assert rows["absent"]["tasks"] == ["completion"]
    assert rows["fake"]["installed"] is True
    assert rows["fake"]["tasks"] == ["chat", "completion", "embedding", "image"]
    assert "hyperbatch[jax]" in rows["jax"]["install"]
    assert "hyperbatch[vllm]" in rows["vllm"]["install"]

    table = CliRunner().invoke(main, ["engines"], env={"COLUMNS": "300"})  # rows unwrapped
    assert table.exit_code == EXIT_OK, table.output
    header = table.stdout.splitlines()[0].split()
    assert header == ["ENGINE", "INSTALLED", "TASKS", "WHAT", "INSTALL", "WITH"]
    lines = {
        line.split()[0]: line.rstrip() for line in table.stdout.splitlines()[1 : len(rows) + 1]
    }
    assert set(lines) == set(rows)  # one line per engine
    assert lines["absent"].split()[1:3] == ["no", "completion"]
    assert lines["absent"].endswith("pip install hyperbatch-no-such-package")
    assert lines["fake"].split()[1] == "yes"


# ------------------------------------------------------------------------------ empty input


def test_an_empty_input_warns_and_succeeds(tmp_path):
    result = CliRunner().invoke(main, ["run", fake_job(tmp_path, b""), "--quiet",
                                       "--format", "json"])  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    manifest = json.loads(result.stdout)
    assert (manifest["records_in"], manifest["results"], manifest["errors"]) == (0, 0, 0)
    warning = f"warning: {tmp_path / 'in.jsonl'} holds no records: nothing was served"
    assert warning in result.stderr.splitlines()
    assert warning not in result.stdout  # data on stdout, the warning on stderr

    other = tmp_path / "other"
    other.mkdir()
    job = fake_job(other, jsonl([openai_chat("a", "hi")]))
    with_records = CliRunner().invoke(main, ["run", job, "--quiet"])
    assert with_records.exit_code == EXIT_OK, with_records.output
    assert "holds no records" not in with_records.stderr


# -------------------------------------------------------------------- "apitools not found"


def test_the_apitools_warning_is_dropped():
    """Beam's GCP I/O logs "apitools not found" on the root logger when it is imported; the
    runners package drops that record (and nothing else)."""
    import hyperbatch.runners  # noqa: F401  (installs the filter)

    root = logging.getLogger()
    keep = logging.makeLogRecord({"name": "root", "levelno": logging.WARNING,
                                  "msg": "the gcs client is slow"})  # fmt: skip
    noise = logging.makeLogRecord({"name": "root", "levelno": logging.WARNING,
                                   "msg": "apitools not found; using a fallback"})  # fmt: skip
    assert root.filter(keep)
    assert not root.filter(noise)

    # and for real: importing Beam's GCP I/O after the runners package prints no such line,
    # while importing it alone does (so the check would see the line if it were there)
    script = "import logging; logging.basicConfig(); {imports}; import apache_beam.io.gcp.gcsio"
    runs = {
        name: subprocess.run([sys.executable, "-c", script.format(imports=imports)],
                             capture_output=True, text=True, timeout=300, check=True)
        for name, imports in (("alone", "pass"), ("hyperbatch", "import hyperbatch.runners"))
    }  # fmt: skip
    assert "apitools not found" in runs["alone"].stderr
    assert "apitools not found" not in runs["hyperbatch"].stderr


# ---------------------------------------------------------- --debug and a load-time failure


@dataclasses.dataclass(frozen=True)
class BrokenOptions(FakeOptions):
    ENGINE = "broken"


class BrokenEngine(FakeEngine):
    """An engine whose model cannot be loaded: what only the load finds (a damaged weight)."""

    name = "broken"
    OPTIONS: ClassVar[type[EngineOptions]] = BrokenOptions

    def __init__(self, config: EngineConfig):
        raise RuntimeError("tensor blk.3.attn_q.weight ends past the end of the file")


@pytest.fixture
def broken_engine(monkeypatch, tmp_path):
    entry = registry.EngineEntry(
        f"{__name__}:BrokenEngine", f"{__name__}:BrokenOptions", "nothing (tests)",
        "fails to load", needs_model=False)  # fmt: skip
    monkeypatch.setitem(registry._ENGINES, "broken", entry)
    monkeypatch.setenv("HYPERBATCH_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(common, "DEBUG", False)  # --debug sets it; restored after the test
    level = logging.getLogger().level
    yield
    from hyperbatch.runners.options import quiet_logging

    quiet_logging(0)  # --debug turned the logs up for this process
    logging.getLogger().setLevel(level)


def test_debug_prints_the_traceback_of_a_load_time_failure(tmp_path, broken_engine):
    job = fake_job(tmp_path, jsonl([openai_chat("a", "hello")]), engine="broken")
    plain = CliRunner().invoke(main, ["run", job, "--quiet"])
    assert plain.exit_code == EXIT_JOB_FAILED, plain.output
    assert "tensor blk.3.attn_q.weight ends past the end of the file" in plain.stderr
    assert "Traceback" not in plain.stderr
    assert "(`hyperbatch --debug ...` prints it here)" in plain.stderr
    [log] = (tmp_path / "logs").iterdir()
    assert "Traceback (most recent call last)" in log.read_text()
    assert str(log) in plain.stderr

    debug = CliRunner().invoke(main, ["--debug", "run", job, "--quiet"])
    assert debug.exit_code == EXIT_JOB_FAILED, debug.output
    assert "Traceback (most recent call last)" in debug.stderr
    assert "in __init__\n    raise RuntimeError(" in debug.stderr  # the frame that raised
    assert "RuntimeError: tensor blk.3.attn_q.weight ends past the end of the file" in (
        debug.stderr
    )
    assert "prints it here" not in debug.stderr
