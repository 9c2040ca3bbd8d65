"""The ``hyperbatch`` command line: validate and run jobs, read manifests.

Data goes to stdout (``--format json`` for machines), progress and logs to stderr. Exit codes:
0 the job succeeded (per-record errors included), 1 the job failed, 2 a user error (bad spec,
missing file, bad flag) reported without a traceback.
"""

from __future__ import annotations

import enum
import functools
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import click
import yaml

EXIT_OK, EXIT_JOB_FAILED, EXIT_USER_ERROR = 0, 1, 2


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user must change something", not "hyperbatch broke"."""
    from engines.models import ModelNotFound
    from engines.registry import EngineNotAvailable
    from jobs.spec import SpecError
    from jobs.storage import StorageError
    from runners.pipeline import JobConflict
    from runners.shards import InputChanged

    return (SpecError, ModelNotFound, EngineNotAvailable, JobConflict, InputChanged, StorageError)


def handle_user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except user_errors() as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def format_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice([f.value for f in OutputFormat]),
        default=OutputFormat.TABLE.value,
        show_default=True,
        help="How to print data on stdout.",
    )(fn)


def set_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a spec field, e.g. --set batch_size=64 --set sampling.max_tokens=32.",
    )(fn)


def emit(data: Any, fmt: str, table: Callable[[Any], None]) -> None:
    if fmt == OutputFormat.JSON:
        click.echo(json.dumps(data, indent=2, default=str))
    elif fmt == OutputFormat.YAML:
        click.echo(yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip())
    else:
        table(data)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-v info, -vv debug).")
@click.version_option(package_name="hyperbatch")
def main(verbose: int) -> None:
    """hyperbatch: batch inference jobs on Beam, with results and a cost manifest."""
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    if verbose == 0:
        for noisy in ("apache_beam", "jax", "absl"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


@main.command()
@click.argument("job_file")
@set_option
@format_option
@handle_user_errors
def validate(job_file: str, overrides: tuple[str, ...], fmt: str) -> None:
    """Check a job spec (and that its inputs, model and engine exist) without running it."""
    from jobs import spec as job_spec

    spec = job_spec.load(job_file, overrides)
    data = {"job_id": spec.job_id, "spec_digest": spec.digest, "spec": spec.to_dict()}

    def table(d: dict[str, Any]) -> None:
        console = _console()
        console.print(f"[green]valid[/green] job spec; job id [bold]{d['job_id']}[/bold]")
        console.print(_kv_table(d["spec"]))

    emit(data, fmt, table)


@main.command()
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
    from jobs import spec as job_spec
    from jobs.ids import check_job_id

    spec = job_spec.load(job_file, overrides)
    if job_id is not None:
        check_job_id(job_id)
    manifest = _run_with_progress(spec, job_id, quiet)
    emit(manifest, fmt, _manifest_table)
    click.echo(f"results:  {manifest['outputs']['results']}", err=True)
    click.echo(f"errors:   {manifest['outputs']['errors']}", err=True)
    click.echo(f"manifest: {spec.job_dir(manifest['job_id'])}/manifest.json", err=True)
    sys.exit(EXIT_OK if manifest["status"] == "SUCCEEDED" else EXIT_JOB_FAILED)


def _run_with_progress(spec: Any, job_id: str | None, quiet: bool) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from runners import pipeline
    from runners.progress import PROGRESS

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
    with Progress(*columns, console=_console(stderr=True), disable=quiet) as bar:
        task = bar.add_task(spec.name, total=None, errors=0, tps=0.0)
        worker.start()
        while worker.is_alive():
            worker.join(0.25)
            s = PROGRESS.snapshot()
            elapsed = max(time.time() - s.started_at, 1e-6)
            bar.update(
                task,
                total=s.records_planned or None,
                completed=s.records_done,
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


@main.command("manifest")
@click.argument("path")
@format_option
@handle_user_errors
def show_manifest(path: str, fmt: str) -> None:
    """Print a job's cost manifest (a manifest.json/.avro file or a job directory)."""
    from jobs import manifest

    emit(manifest.read(path), fmt, _manifest_table)


# --------------------------------------------------------------------------- rendering


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _kv_table(data: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in data.items():
        t.add_row(k, json.dumps(v) if isinstance(v, dict | list) else str(v))
    return t


def _manifest_table(m: dict[str, Any]) -> None:
    status_style = "green" if m["status"] == "SUCCEEDED" else "red"
    rows = {
        "job": f"{m['job_id']} ([{status_style}]{m['status']}[/{status_style}])",
        "model / engine": f"{m['model']} / {m['engine']}",
        "accelerator": f"{m['accelerator_count']} x {m['accelerator_type']} at "
        f"${m['usd_per_accelerator_hour']}/h ({m['pricing_model']}, table {m['price_table_date']})",
        "records": f"{m['records_in']} in = {m['results']} results + {m['errors']} errors",
        "errors by code": ", ".join(f"{k}: {v}" for k, v in m["errors_by_code"].items()) or "-",
        "tokens": f"{m['prompt_tokens']} prompt ({m['cached_tokens']} cached) + "
        f"{m['completion_tokens']} completion",
        "throughput": f"{m['output_tokens_per_second']:.1f} output tok/s, "
        f"{m['total_tokens_per_second']:.1f} total tok/s",
        "time": f"{m['wall_seconds']:.1f} s wall, {m['accelerator_seconds']:.1f} s accelerator "
        f"({m['accelerator_busy_seconds']:.1f} s busy)",
        "cost": f"${m['cost_usd']:.6f} total · ${m['usd_per_1k_tokens']:.6f}/1k tokens "
        f"(input ${m['usd_per_1k_input_tokens']:.6f}, output ${m['usd_per_1k_output_tokens']:.6f})",
        "efficiency": f"{m['padding_waste_percent']:.1f}% padding waste, "
        f"{m['engine_compilations']} compilations",
    }
    _console().print(_kv_table(rows))


if __name__ == "__main__":
    main()
