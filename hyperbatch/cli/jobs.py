"""The job service from the command line: ``submit`` and ``jobs list|describe|watch|results|cancel``."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from hyperbatch import storage
from hyperbatch.cli import estimate as estimate_cli
from hyperbatch.cli import render
from hyperbatch.cli.common import (
    EXIT_CODES_BY_STATE,
    EXIT_JOB_FAILED,
    ROOT_ENV,
    allow_option,
    dataflow_options,
    emit,
    events_option,
    format_option,
    handle_user_errors,
    make_launcher,
    open_store,
    plugin_option,
    root_option,
    set_option,
)
from hyperbatch.jobs.policy import AccessPolicy
from hyperbatch.jobs.spec import SpecError
from hyperbatch.jobs.status import JobState, Launch
from hyperbatch.schemas.records import Counters

if TYPE_CHECKING:
    from hyperbatch.jobs.store import JobStore, Record
    from hyperbatch.runners.dataflow import DataflowConfig


@click.command()
@click.argument("job_file")
@set_option
@click.option("--job-id", help="Submit under this id (an idempotency key) instead of the spec's.")
@click.option(
    "--runner",
    type=click.Choice(["local", "dataflow"]),
    default="local",
    show_default=True,
    envvar="HYPERBATCH_RUNNER",
    show_envvar=True,
    help="local: a background process on this machine; dataflow: a Flex Template job.",
)
@click.option("--wait", is_flag=True, help="Watch the job until it ends; exit with its outcome.")
@click.option(
    "--dry-run", is_flag=True, help="Show what would be recorded and launched; do nothing."
)
@root_option("Job store (a directory or gs:// prefix); default: the spec's output.")
@events_option
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="local: Beam worker processes (1 = in the job process).",
)
@allow_option
@plugin_option
@dataflow_options
@format_option
@handle_user_errors
def submit(
    job_file: str,
    overrides: tuple[str, ...],
    job_id: str | None,
    runner: str,
    wait: bool,
    dry_run: bool,
    root: str | None,
    events_topic: str | None,
    workers: int,
    allow: tuple[str, ...],
    plugins: tuple[str, ...],
    fmt: str,
    **dataflow: Any,
) -> None:
    """Submit a job: record it in the job store and launch it in the background.

    With a job store on Cloud Storage (a shared service), the job may only read and write in
    the store's bucket, or where --allow says."""
    from hyperbatch.engines.registry import import_plugins
    from hyperbatch.jobs import spec as job_spec
    from hyperbatch.jobs import store as job_store
    from hyperbatch.jobs import submit as submission
    from hyperbatch.jobs.ids import check_job_id

    import_plugins(plugins)
    spec = job_spec.load(job_file, overrides, check_resources=not dry_run)
    # A dry run shows its plan even where it cannot look at the cloud, and says what it did
    # not check; a submission without credentials stops at the first look (CredentialsError).
    unchecked: dict[str, storage.CredentialsError] = {}
    if dry_run:
        problems = job_spec.check_spec_resources(spec, unchecked)
        if problems:
            raise SpecError(problems, job_file)
    job_id = check_job_id(job_id) if job_id else spec.job_id
    store = open_store(root or spec.output, events_topic)
    if storage.is_gcs(store.root):
        policy = AccessPolicy.for_store(store.root, [p for a in allow for p in a.split()])
        problems = policy.spec_problems(spec)
        if problems:
            raise SpecError(problems, job_file)
    launcher = make_launcher(runner, dataflow, events_topic, workers, plugins)
    assert launcher is not None  # --runner is local or dataflow
    plan = launcher.plan(spec, job_id, store)  # refuses a launch that cannot work, before recording
    if dry_run:
        data = {
            "job_id": job_id,
            "root": store.root,
            "job_dir": spec.job_dir(job_id),
            "runner": runner,
            "launch": plan,
            "spec": spec.to_dict(),
        }
        # what it would cost: the figures `hyperbatch estimate --workers N` prints
        costs, est = estimate_cli.for_plan(
            spec, store.root, workers=estimate_cli.planned_workers(launcher, workers), job_id=job_id
        )
        data["estimate"] = costs
        if unchecked:
            data["not_checked"] = list(unchecked)
            data["not_checked_because"] = str(next(iter(unchecked.values())))
        emit(data, fmt, render.plan_table)
        if fmt == "table":
            if est is not None:
                estimate_cli.print_estimate(est)
            else:
                click.echo(f"estimate: not available ({costs['unavailable']})")
        if unchecked:
            lines = "".join(f"\n  - {what}" for what in unchecked)
            click.echo(
                f"warning: this dry run did not check:{lines}\n{data['not_checked_because']}",
                err=True,
            )
        if est is not None and est.within_budget is False:  # submit would refuse it (exit 2)
            from hyperbatch.jobs.estimate import refusal

            raise refusal(est, job_file)
        return
    estimate_cli.gate(spec, root=store.root, workers=estimate_cli.planned_workers(launcher, workers),
                      source=job_file)  # fmt: skip
    spec_file = job_file if job_file.startswith("gs://") else os.path.abspath(job_file)
    request = submission.JobRequest(
        job_id=job_id,
        spec=spec,
        submitted_by=job_store.actor(),
        submission={"via": "cli", "spec_file": spec_file},
    )
    done = submission.submit(store, request, launcher)
    root_hint = "" if os.environ.get(ROOT_ENV) == store.root else f" --root {store.root}"
    if not done.created:
        click.echo(
            f"job {job_id} was already submitted ({done.record.state}); not submitted again",
            err=True,
        )
        if done.record.state.terminal:
            click.echo(
                f"to run it again (committed shards are skipped): hyperbatch jobs{root_hint} "
                f"resume {job_id}",
                err=True,
            )
            sys.exit(EXIT_JOB_FAILED)
    click.echo(f"watch it:   hyperbatch jobs watch {job_id}{root_hint}", err=True)
    if wait:
        code = _watch(store, job_id, fmt, interval_s=1.0, dataflow=launcher_config(launcher))
        sys.exit(code)
    emit(done.record.to_dict(), fmt, render.status_table)
    if done.record.state == JobState.FAILED:
        click.echo(f"error: {done.record.status.error}", err=True)
        sys.exit(EXIT_JOB_FAILED)


def launcher_config(launcher: Any) -> DataflowConfig | None:
    return getattr(launcher, "config", None)


def _reconciled(store: JobStore, record: Record, dataflow: DataflowConfig | None = None) -> Record:
    """The record, settled if its run died without saying so (see jobs.lifecycle)."""
    from hyperbatch.jobs.lifecycle import reconcile
    from hyperbatch.runners.launch import launcher_for

    return reconcile(store, record, launcher_for(record, dataflow))


@click.group("jobs")
@root_option("Job store: a directory or gs:// prefix.")
@events_option
@click.pass_context
def jobs_group(ctx: click.Context, root: str | None, events_topic: str | None) -> None:
    """List, describe, watch and cancel submitted jobs, and find their results."""
    ctx.obj = {"root": root, "events_topic": events_topic}


def _ctx_store(ctx: click.Context) -> Any:
    return open_store(ctx.obj["root"], ctx.obj["events_topic"])


@jobs_group.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(
        ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "STOPPED_BUDGET"],
        case_sensitive=False,
    ),
    help="Only jobs in this state; repeatable.",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (newest first).")
@format_option
@click.pass_context
@handle_user_errors
def jobs_list(ctx: click.Context, states: tuple[str, ...], limit: int | None, fmt: str) -> None:
    """Jobs in the store, newest first."""
    store = _ctx_store(ctx)
    records = [_reconciled(store, r) for r in store.list()]
    wanted = {s.upper() for s in states}
    records = [r for r in records if not wanted or r.state in wanted][:limit]
    emit([render.row(r.to_dict()) for r in records], fmt, render.jobs_table)


@jobs_group.command("describe")
@click.argument("job_id")
@format_option
@click.pass_context
@handle_user_errors
def jobs_describe(ctx: click.Context, job_id: str, fmt: str) -> None:
    """Everything known about a job: state, times, submitter, launch handle, progress, cost."""
    store = _ctx_store(ctx)
    emit(_reconciled(store, store.get(job_id)).to_dict(), fmt, render.status_table)


@jobs_group.command("cancel")
@click.argument("job_id")
@format_option
@click.pass_context
@handle_user_errors
def jobs_cancel(ctx: click.Context, job_id: str, fmt: str) -> None:
    """Cancel a QUEUED or RUNNING job and stop its process or Dataflow job."""
    from hyperbatch.jobs.store import JobState, actor
    from hyperbatch.runners.launch import launcher_for

    store = _ctx_store(ctx)
    record = store.transition(job_id, JobState.CANCELLED, by=actor())
    launcher = launcher_for(record)
    stopped = (
        launcher.cancel(record.launch or Launch(), job_id) if launcher else "it was never launched"
    )
    data = {**record.to_dict(), "stopped": stopped}
    emit(
        data, fmt, lambda d: render.console().print(f"job {job_id} [red]CANCELLED[/red]: {stopped}")
    )


@jobs_group.command("resume")
@click.argument("job_id")
@click.option(
    "--runner",
    type=click.Choice(["local", "dataflow"]),
    default="local",
    show_default=True,
    envvar="HYPERBATCH_RUNNER",
    show_envvar=True,
)
@click.option("--wait", is_flag=True, help="Watch the job until it ends; exit with its outcome.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="local: Beam worker processes (1 = in the job process).")  # fmt: skip
@click.option("--max-cost-usd", type=click.FloatRange(min=0, min_open=True),
              help="A new budget cap for the job (e.g. higher, to finish a STOPPED_BUDGET job).")  # fmt: skip
@plugin_option
@dataflow_options
@format_option
@click.pass_context
@handle_user_errors
def jobs_resume(
    ctx: click.Context,
    job_id: str,
    runner: str,
    wait: bool,
    workers: int,
    max_cost_usd: float | None,
    plugins: tuple[str, ...],
    fmt: str,
    **dataflow: Any,
) -> None:
    """Run a job that ended (cancelled, failed, succeeded or stopped by its budget) again under
    its id: the shards it committed are skipped, the rest are served."""
    from hyperbatch.engines.registry import import_plugins
    from hyperbatch.jobs.lifecycle import resume, set_budget
    from hyperbatch.jobs.store import actor
    from hyperbatch.jobs.submit import ensure_launched, owner_id

    import_plugins(plugins)
    store = _ctx_store(ctx)
    launcher = make_launcher(runner, dataflow, ctx.obj["events_topic"], workers, plugins)
    assert launcher is not None  # --runner is local or dataflow
    if max_cost_usd is not None and store.get(job_id).state.terminal:
        # (a job still queued or running keeps its cap: resume refuses it below)
        workers_planned = estimate_cli.planned_workers(launcher, workers)
        set_budget(store, job_id, max_cost_usd,
                   check=lambda s: estimate_cli.gate(s, root=store.root, workers=workers_planned))  # fmt: skip
    resume(store, job_id, by=actor())
    record, _ = ensure_launched(store, job_id, launcher, owner=owner_id())
    if wait:
        sys.exit(_watch(store, job_id, fmt, interval_s=1.0, dataflow=launcher_config(launcher)))
    emit(record.to_dict(), fmt, render.status_table)


@jobs_group.command("watch")
@click.argument("job_id")
@click.option(
    "--interval", type=float, default=2.0, show_default=True, help="Seconds between looks."
)
@format_option
@click.pass_context
@handle_user_errors
def jobs_watch(ctx: click.Context, job_id: str, interval: float, fmt: str) -> None:
    """Show a job's progress live until it ends; exit 0 if it SUCCEEDED, 1 otherwise."""
    sys.exit(_watch(_ctx_store(ctx), job_id, fmt, interval_s=interval))


@jobs_group.command("results")
@click.argument("job_id")
@click.option("--stream", is_flag=True, help="Print the result records (JSON lines) on stdout.")
@click.option("--errors", "errors_only", is_flag=True, help="With --stream: the error records.")
@format_option
@click.pass_context
@handle_user_errors
def jobs_results(
    ctx: click.Context, job_id: str, stream: bool, errors_only: bool, fmt: str
) -> None:
    """Where a job's results, errors and manifest are (or, with --stream, the records)."""
    from hyperbatch.jobs import results

    store = _ctx_store(ctx)
    record = store.get(job_id)
    where = results.locate(store, record)
    if stream:
        for line in results.stream(where, errors=errors_only):
            click.echo(line)
        return
    emit(where, fmt, render.results_table)


def _watch(
    store: JobStore,
    job_id: str,
    fmt: str,
    interval_s: float,
    dataflow: DataflowConfig | None = None,
) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records · {task.fields[errors]} errors"),
        TimeElapsedColumn(),
    )
    record = store.get(job_id)
    with Progress(*columns, console=render.console(stderr=True)) as bar:
        task = bar.add_task(job_id, total=None, state=record.state.value, errors=0)
        while True:
            record = _reconciled(store, store.get(job_id), dataflow)
            p, m = record.status.progress or Counters(), record.status.manifest
            bar.update(
                task,
                total=(m.records_in if m else p.records_planned) or None,
                completed=m.records_in if m else p.records,
                state=record.state.value,
                errors=m.errors if m else p.errors,
            )
            if record.state.terminal:
                break
            time.sleep(interval_s)
    emit(record.to_dict(), fmt, render.status_table)
    if record.status.error:
        click.echo(f"error: {record.status.error}", err=True)
    return EXIT_CODES_BY_STATE[record.state]
