"""Running jobs here: ``validate``, ``run`` (a progress bar, then the manifest), ``manifest``,
``engines``."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from hyperbatch.cli import render
from hyperbatch.cli.common import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    emit,
    format_option,
    handle_user_errors,
    set_option,
    user_errors,
)

if TYPE_CHECKING:
    from hyperbatch.jobs.spec import JobSpec


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
@format_option
@handle_user_errors
def run(
    job_file: str, overrides: tuple[str, ...], job_id: str | None, quiet: bool, fmt: str
) -> None:
    """Run a job in the foreground on this machine (Beam DirectRunner), or resume it."""
    from hyperbatch.jobs import spec as job_spec
    from hyperbatch.jobs.ids import check_job_id

    spec = job_spec.load(job_file, overrides)
    if job_id is not None:
        check_job_id(job_id)
    manifest = _run_with_progress(spec, job_id, quiet)
    emit(manifest, fmt, render.manifest_table)
    click.echo(f"results:  {manifest['outputs']['results']}", err=True)
    click.echo(f"errors:   {manifest['outputs']['errors']}", err=True)
    click.echo(f"manifest: {spec.job_dir(manifest['job_id'])}/manifest.json", err=True)
    sys.exit(EXIT_OK if manifest["status"] == "SUCCEEDED" else EXIT_JOB_FAILED)


def _run_with_progress(spec: JobSpec, job_id: str | None, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hyperbatch.runners import pipeline
    from hyperbatch.runners.progress import PROGRESS

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["manifest"] = pipeline.run(spec, job_id)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = e

    worker = threading.Thread(target=target, name="hyperbatch-pipeline", daemon=True)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records · {task.fields[errors]} errors · {task.fields[tps]:.1f} tok/s"),
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
                tps=s.completion_tokens / elapsed,
            )
    if "error" in outcome:
        e = outcome["error"]
        if isinstance(e, user_errors()):
            raise e
        logging.getLogger("hyperbatch").debug("job failed", exc_info=e)
        click.echo(f"job failed: {type(e).__name__}: {e}", err=True)
        click.echo("rerun the same command to resume from the committed shards", err=True)
        sys.exit(EXIT_JOB_FAILED)
    return outcome["manifest"]


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
            "options": registry.options_class(name).describe(),
        })  # fmt: skip

    emit(rows, fmt, render.engines_table)
