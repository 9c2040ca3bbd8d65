"""Running jobs here: ``validate``, ``run`` (a progress bar, then the manifest), ``manifest``,
``engines``."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from hyperbatch.cli import common, render
from hyperbatch.cli.common import (
    EXIT_CODES_BY_STATE,
    EXIT_JOB_FAILED,
    beam_user_error,
    emit,
    format_option,
    handle_user_errors,
    plugin_option,
    report_failure,
    root_cause,
    set_option,
    user_errors,
)
from hyperbatch.cli.estimate import gate
from hyperbatch.jobs.status import JobState
from hyperbatch.runners.options import worker_tracebacks_to_log

if TYPE_CHECKING:
    from hyperbatch.jobs.spec import JobSpec
    from hyperbatch.jobs.store import JobStore


@click.command()
@click.argument("job_file")
@set_option
@format_option
@handle_user_errors
def validate(job_file: str, overrides: tuple[str, ...], fmt: str) -> None:
    """Check a job spec (and that its inputs, model and engine exist) without running it."""
    from hyperbatch.jobs import spec as job_spec

    spec = job_spec.load(job_file, overrides)
    data = {"job_id": spec.job_id, "spec_digest": spec.digest, "spec": spec.to_dict()}

    def table(d: dict[str, Any]) -> None:
        console = render.console()
        console.print(f"[green]valid[/green] job spec; job id [bold]{d['job_id']}[/bold]")
        console.print(render.kv_table(d["spec"]))

    emit(data, fmt, table)


@click.command()
@click.argument("job_file")
@set_option
@click.option("--job-id", help="Run under this id instead of the one derived from the spec.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@plugin_option
@format_option
@handle_user_errors
def run(
    job_file: str,
    overrides: tuple[str, ...],
    job_id: str | None,
    quiet: bool,
    plugins: tuple[str, ...],
    fmt: str,
) -> None:
    """Run a job in the foreground on this machine (Beam DirectRunner), or resume it.

    The job is recorded in the job store of its output folder (`hyperbatch jobs --root OUTPUT
    list` shows it), and only one run of a job may be alive at a time."""
    from hyperbatch.engines.registry import import_plugins
    from hyperbatch.jobs import spec as job_spec
    from hyperbatch.jobs.ids import check_job_id

    import_plugins(plugins)
    spec = job_spec.load(job_file, overrides)
    job_id = check_job_id(job_id) if job_id is not None else spec.job_id
    gate(spec, source=job_file, quiet=quiet)  # max_cost_usd: refused if surely over it
    manifest = _run_with_progress(spec, job_id, job_file, quiet)
    emit(manifest, fmt, render.manifest_table)
    if manifest["records_in"] == 0 and not manifest.get("records_left"):
        click.echo(f"warning: {spec.input} holds no records: nothing was served", err=True)
    click.echo(f"results:  {manifest['outputs']['results']}", err=True)
    click.echo(f"errors:   {manifest['outputs']['errors']}", err=True)
    click.echo(f"manifest: {spec.job_dir(manifest['job_id'])}/manifest.json", err=True)
    if manifest["status"] == JobState.STOPPED_BUDGET:
        from hyperbatch.jobs.lifecycle import budget_stop_message

        click.echo(f"STOPPED_BUDGET: {budget_stop_message(manifest)}", err=True)
    sys.exit(EXIT_CODES_BY_STATE.get(manifest["status"], EXIT_JOB_FAILED))


def _record_foreground(spec: JobSpec, job_id: str, job_file: str) -> JobStore:
    """The job in its output folder's job store, QUEUED for this run (recorded if new, resumed
    if it had ended); LeaseHeld if another run of it is alive."""
    from hyperbatch.jobs import lease
    from hyperbatch.jobs.lifecycle import reconcile, resume
    from hyperbatch.jobs.store import JobStore, actor
    from hyperbatch.runners.launch import launcher_for

    store = JobStore(spec.output)
    record, created = store.create(
        spec,
        job_id,
        submitted_by=actor(),
        submission={"via": "run", "spec_file": os.path.abspath(job_file)},
        runner="foreground",
    )
    if created:
        return store
    record = reconcile(store, record, launcher_for(record))
    if record.state.terminal:
        resume(store, job_id)
    elif record.state == JobState.RUNNING:
        alive = lease.holder(record.status.job_dir)
        owner = alive["owner"] if alive else (record.launch.host if record.launch else "?")
        raise lease.LeaseHeld(
            f"job {job_id} is being run by {owner}; wait for it to end (`hyperbatch jobs "
            f"--root {store.root} watch {job_id}`), or cancel it"
        )
    return store


def _run_with_progress(spec: JobSpec, job_id: str, job_file: str, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hyperbatch.runners import job_process
    from hyperbatch.runners.progress import PROGRESS

    store = _record_foreground(spec, job_id, job_file)
    outcome: dict[str, Any] = {}
    me = f"hyperbatch run ({os.getpid()}@{socket.gethostname()})"

    def target() -> None:
        quiet = contextlib.nullcontext() if common.DEBUG else worker_tracebacks_to_log()
        with quiet:
            outcome["run"] = run_job()

    def run_job() -> job_process.Outcome:
        return job_process.run_recorded(
            store,
            job_id,
            by=me,
            launch={"launcher": "foreground", "pid": os.getpid(), "host": socket.gethostname()},
            on_cancel=lambda: os.kill(os.getpid(), signal.SIGINT),
        )

    worker = threading.Thread(target=target, name="hyperbatch-pipeline", daemon=True)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "records · {task.fields[errors]} errors · {task.fields[tps]:.1f} "
            + ("images/s" if spec.task == "image" else "tok/s")
        ),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=render.console(stderr=True), disable=quiet) as bar:
        task = bar.add_task(spec.name, total=None, errors=0, tps=0.0)
        worker.start()
        while worker.is_alive():
            worker.join(0.25)
            s = PROGRESS.snapshot()
            elapsed = max(time.time() - PROGRESS.started_at, 1e-6)
            bar.update(
                task,
                total=s.records_planned or None,
                completed=s.records,
                errors=s.errors,
                # tokens written (generation) or read (embedding), or images drawn
                tps=(s.completion_tokens or s.prompt_tokens or s.images) / elapsed,
            )
    done: job_process.Outcome = outcome["run"]
    if done.manifest is not None:
        return done.manifest
    error = done.error if done.error is not None else RuntimeError("the job did not run")
    user_error = root_cause(error, user_errors()) or beam_user_error(error, user_errors())
    if user_error is not None:
        raise user_error
    report_failure(error, spec.job_dir(job_id))
    sys.exit(EXIT_JOB_FAILED)


@click.command("manifest")
@click.argument("path")
@format_option
@handle_user_errors
def show_manifest(path: str, fmt: str) -> None:
    """Print a job's cost manifest (a manifest.json/.avro file or a job directory)."""
    from hyperbatch.jobs import manifest

    emit(manifest.read(path), fmt, render.manifest_table)


@click.command("engines")
@format_option
def engines(fmt: str) -> None:
    """The engines a job spec can name: installed here or not, how to install, their options."""
    from hyperbatch.engines import registry

    rows = []
    for name, entry in registry.ENGINES.items():
        missing = registry.missing_dependency(name)
        rows.append({
            "engine": name,
            "installed": missing is None,
            "description": entry.description,
            "install": entry.install,
            "tasks": sorted(entry.tasks),
            "options": registry.options_class(name).describe(),
            # tasks served by another implementation read their own engine_options
            "task_options": {
                task: registry.options_class(name, task).describe()
                for task in sorted(entry.task_targets)
            },
        })  # fmt: skip

    emit(rows, fmt, render.engines_table)
