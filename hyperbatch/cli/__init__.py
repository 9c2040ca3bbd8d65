"""The ``hyperbatch`` command line: validate, run and submit jobs, manage them, run triggers.

Data goes to stdout (``--format json`` for machines), progress and logs to stderr. Exit codes:
0 the job succeeded (per-record errors included), 1 the job failed (or was cancelled), 2 a user
error (bad spec, missing file, bad flag, unknown job) reported without a traceback.
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
    from hyperbatch.engines.models import ModelNotFound
    from hyperbatch.engines.registry import EngineNotAvailable
    from hyperbatch.jobs.pubsub import PubSubNameError
    from hyperbatch.jobs.spec import JobIdConflict, SpecError
    from hyperbatch.jobs.store import IllegalTransition, JobNotFound
    from hyperbatch.jobs.submit import LaunchError
    from hyperbatch.runners.shards import InputChanged
    from hyperbatch.storage import StorageError

    return (
        SpecError,
        ModelNotFound,
        EngineNotAvailable,
        InputChanged,
        StorageError,
        JobNotFound,
        JobIdConflict,
        IllegalTransition,
        LaunchError,
        PubSubNameError,
    )


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
    from hyperbatch.jobs import spec as job_spec

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
    from hyperbatch.jobs import spec as job_spec
    from hyperbatch.jobs.ids import check_job_id

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
    with Progress(*columns, console=_console(stderr=True), disable=quiet) as bar:
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


@main.command("manifest")
@click.argument("path")
@format_option
@handle_user_errors
def show_manifest(path: str, fmt: str) -> None:
    """Print a job's cost manifest (a manifest.json/.avro file or a job directory)."""
    from hyperbatch.jobs import manifest

    emit(manifest.read(path), fmt, _manifest_table)


# --------------------------------------------------------------------------- the job service

ROOT_ENV, EVENTS_ENV = "HYPERBATCH_JOBS_ROOT", "HYPERBATCH_EVENTS_TOPIC"
EXIT_CODES_BY_STATE = {
    "SUCCEEDED": EXIT_OK,
    "FAILED": EXIT_JOB_FAILED,
    "CANCELLED": EXIT_JOB_FAILED,
}


def root_option(help_text: str) -> Callable[..., Any]:
    return click.option("--root", envvar=ROOT_ENV, show_envvar=True, help=help_text)


def events_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--events-topic",
        envvar=EVENTS_ENV,
        show_envvar=True,
        help="Pub/Sub topic that hears every state change (projects/P/topics/T or T).",
    )(fn)


def plugin_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--plugin",
        "plugins",
        multiple=True,
        metavar="MODULE",
        help="Import this module first (e.g. one that registers an engine); repeatable.",
    )(fn)


_DATAFLOW_FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("--project", {"help": "Dataflow: Google Cloud project."}),
    ("--region", {"help": "Dataflow: region, e.g. us-central1."}),
    ("--template", {"help": "Dataflow: gs:// path of the hyperbatch Flex Template spec."}),
    ("--image", {"help": "Dataflow: worker container image (docker/worker)."}),
    ("--service-account", {"help": "Dataflow: worker service account email."}),
    ("--network", {"help": "Dataflow: VPC network."}),
    ("--subnetwork", {"help": "Dataflow: subnetwork (regions/R/subnetworks/S or a URL)."}),
    ("--max-workers", {"type": int, "default": 4, "show_default": True,
                       "help": "Dataflow: most workers."}),
    ("--disk-size-gb", {"type": int, "help": "Dataflow: worker disk (default 200 on TPU/GPU)."}),
    ("--temp-location", {"help": "Dataflow: gs:// temp folder (default <root>/_dataflow/temp)."}),
    ("--public-ips/--no-public-ips", {"default": True, "help": "Dataflow: workers get public IPs."}),
    ("--label", {"multiple": True, "metavar": "KEY=VALUE", "help": "Dataflow: job label."}),
]  # fmt: skip


def dataflow_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The Dataflow settings, each also read from HYPERBATCH_DATAFLOW_<NAME>."""
    for flag, kwargs in reversed(_DATAFLOW_FLAGS):
        name = flag.split("/")[0].lstrip("-").replace("-", "_")
        fn = click.option(
            flag,
            f"df_{name}",
            envvar=f"HYPERBATCH_DATAFLOW_{name.upper()}",
            show_envvar=True,
            **kwargs,
        )(fn)
    return fn


def _dataflow_config(kwargs: dict[str, Any]) -> Any:
    from hyperbatch.runners.launch import DataflowConfig

    values = {k[3:]: kwargs.pop(k) for k in list(kwargs) if k.startswith("df_")}
    labels = {}
    for item in values.pop("label") or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--label")
        labels[key] = value
    import os

    return DataflowConfig(
        **values, labels=labels, api_endpoint=os.environ.get("HYPERBATCH_DATAFLOW_API_ENDPOINT")
    )


def _launcher(
    runner: str | None,
    kwargs: dict[str, Any],
    events_topic: str | None,
    workers: int,
    plugins: tuple[str, ...],
    max_running: int = 1,
) -> Any:
    from hyperbatch.runners.launch import DataflowLauncher, LocalLauncher

    config = _dataflow_config(kwargs)
    if runner == "dataflow":
        return DataflowLauncher(config, events_topic=events_topic)
    if runner == "local":
        return LocalLauncher(workers=workers, plugins=plugins, events_topic=events_topic,
                             max_running=max_running)  # fmt: skip
    return None


def _store(root: str | None, events_topic: str | None) -> Any:
    from hyperbatch.jobs import events
    from hyperbatch.jobs.store import JobStore

    if not root:
        raise click.UsageError(
            f"no job store: pass --root DIR|gs://BUCKET/PREFIX or set {ROOT_ENV}"
        )
    return JobStore(root, events.sink(events_topic))


@main.command()
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
    plugins: tuple[str, ...],
    fmt: str,
    **dataflow: Any,
) -> None:
    """Submit a job: record it in the job store and launch it in the background."""
    import os

    from hyperbatch.jobs import spec as job_spec
    from hyperbatch.jobs import store as job_store
    from hyperbatch.jobs import submit as submission
    from hyperbatch.jobs.ids import check_job_id
    from hyperbatch.runners.launch import import_plugins

    import_plugins(plugins)
    spec = job_spec.load(job_file, overrides)
    job_id = check_job_id(job_id) if job_id else spec.job_id
    store = _store(root or spec.output, events_topic)
    launcher = _launcher(runner, dataflow, events_topic, workers, plugins)
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
        emit(data, fmt, _plan_table)
        return
    spec_file = job_file if job_file.startswith("gs://") else os.path.abspath(job_file)
    request = submission.JobRequest(
        job_id=job_id,
        spec=spec,
        submitted_by=job_store.actor(),
        submission={"via": "cli", "spec_file": spec_file},
    )
    done = submission.submit(store, request, launcher)
    if not done.created:
        click.echo(
            f"job {job_id} was already submitted ({done.record.doc['state']}); not submitted again",
            err=True,
        )
    root_hint = "" if os.environ.get(ROOT_ENV) == store.root else f" --root {store.root}"
    click.echo(f"watch it:   hyperbatch jobs watch {job_id}{root_hint}", err=True)
    if wait:
        code = _watch(store, job_id, fmt, interval_s=1.0, dataflow=launcher_config(launcher))
        sys.exit(code)
    emit(done.record.to_dict(), fmt, _status_table)
    if done.record.doc["state"] == "FAILED":
        click.echo(f"error: {done.record.doc['error']}", err=True)
        sys.exit(EXIT_JOB_FAILED)


def launcher_config(launcher: Any) -> Any:
    return getattr(launcher, "config", None)


@main.group("jobs")
@root_option("Job store: a directory or gs:// prefix.")
@events_option
@click.pass_context
def jobs_group(ctx: click.Context, root: str | None, events_topic: str | None) -> None:
    """List, describe, watch and cancel submitted jobs, and find their results."""
    ctx.obj = {"root": root, "events_topic": events_topic}


def _ctx_store(ctx: click.Context) -> Any:
    return _store(ctx.obj["root"], ctx.obj["events_topic"])


@jobs_group.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(
        ["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"], case_sensitive=False
    ),
    help="Only jobs in this state; repeatable.",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many (newest first).")
@format_option
@click.pass_context
@handle_user_errors
def jobs_list(ctx: click.Context, states: tuple[str, ...], limit: int | None, fmt: str) -> None:
    """Jobs in the store, newest first."""
    from hyperbatch.runners.launch import reconcile

    store = _ctx_store(ctx)
    records = [reconcile(store, r) for r in store.list()]
    wanted = {s.upper() for s in states}
    records = [r for r in records if not wanted or r.state in wanted][:limit]
    emit([_row(r.doc) for r in records], fmt, _jobs_table)


@jobs_group.command("describe")
@click.argument("job_id")
@format_option
@click.pass_context
@handle_user_errors
def jobs_describe(ctx: click.Context, job_id: str, fmt: str) -> None:
    """Everything known about a job: state, times, submitter, launch handle, progress, cost."""
    from hyperbatch.runners.launch import reconcile

    store = _ctx_store(ctx)
    emit(reconcile(store, store.get(job_id)).to_dict(), fmt, _status_table)


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
    stopped = launcher.cancel(record.launch or {}, job_id) if launcher else "it was never launched"
    data = {**record.to_dict(), "stopped": stopped}
    emit(data, fmt, lambda d: _console().print(f"job {job_id} [red]CANCELLED[/red]: {stopped}"))


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
    emit(where, fmt, _results_table)


def _watch(store: Any, job_id: str, fmt: str, interval_s: float, dataflow: Any = None) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hyperbatch.runners.launch import reconcile

    columns = (
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.fields[state]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("records · {task.fields[errors]} errors"),
        TimeElapsedColumn(),
    )
    record = store.get(job_id)
    with Progress(*columns, console=_console(stderr=True)) as bar:
        task = bar.add_task(job_id, total=None, state=record.doc["state"], errors=0)
        while True:
            record = reconcile(store, store.get(job_id), dataflow)
            p = record.doc.get("progress") or {}
            m = record.doc.get("manifest") or {}
            done = m.get("records_in", p.get("records", 0))
            bar.update(
                task,
                total=m.get("records_in") or p.get("records_planned") or None,
                completed=done,
                state=record.doc["state"],
                errors=m.get("errors", p.get("errors", 0)),
            )
            if record.state.terminal:
                break
            time.sleep(interval_s)
    emit(record.to_dict(), fmt, _status_table)
    if record.doc.get("error"):
        click.echo(f"error: {record.doc['error']}", err=True)
    return EXIT_CODES_BY_STATE[record.doc["state"]]


# --------------------------------------------------------------------------- triggers


@main.group("trigger")
def trigger_group() -> None:
    """Turn Pub/Sub messages (job requests, Cloud Storage notifications) into jobs."""


def trigger_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        root_option("Job store the jobs are recorded in (required)."),
        click.option("--watch", "watch", multiple=True, metavar="gs://BUCKET/PREFIX",
                     envvar="HYPERBATCH_WATCH", show_envvar=True,
                     help="Submit spec files finalized under this prefix (GCS notifications)."),
        click.option("--runner", type=click.Choice(["local", "dataflow"]), default="local",
                     show_default=True, envvar="HYPERBATCH_RUNNER", show_envvar=True),
        click.option("--record-only", is_flag=True,
                     help="Record jobs (QUEUED) and launch nothing: a dry run of the trigger."),
        events_option,
        click.option("--dead-letter-topic", envvar="HYPERBATCH_DEAD_LETTER_TOPIC",
                     show_envvar=True, help="Where messages that can never succeed are "
                     "forwarded (pull: default the subscription's dead-letter topic)."),
        click.option("--workers", type=int, default=1, show_default=True,
                     help="local: Beam worker processes per job."),
        click.option("--max-running", type=click.IntRange(min=1), default=2, show_default=True,
                     help="local: most jobs running at once; later ones wait, their messages "
                     "held unacked."),
        click.option("--claim-ttl-s", type=float, default=300.0, hidden=True),
        plugin_option,
        dataflow_options,
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def _handler(kw: dict[str, Any], dead_letter_topic: str | None) -> Any:
    from hyperbatch.jobs.triggers.handler import TriggerHandler
    from hyperbatch.jobs.triggers.messages import normalize_watch_prefix
    from hyperbatch.runners.launch import import_plugins

    plugins = kw.pop("plugins")
    import_plugins(plugins)
    store = _store(kw.pop("root"), kw["events_topic"])
    try:
        watch = [normalize_watch_prefix(p) for w in kw.pop("watch") for p in w.split()]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--watch") from e
    runner = kw.pop("runner")
    if kw.pop("record_only"):
        runner = None
    launcher = _launcher(runner, kw, kw.pop("events_topic"), kw.pop("workers"), plugins,
                         kw.pop("max_running"))  # fmt: skip
    return TriggerHandler(
        store,
        launcher,
        watch=watch,
        dead_letter_topic=dead_letter_topic,
        claim_ttl_s=kw.pop("claim_ttl_s"),
    )


def _stop_on_signals() -> threading.Event:
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@trigger_group.command("listen")
@click.option(
    "--subscription",
    required=True,
    envvar="HYPERBATCH_SUBSCRIPTION",
    show_envvar=True,
    help="Pull subscription: projects/P/subscriptions/S or S.",
)
@click.option(
    "--max-messages",
    type=int,
    default=100,
    show_default=True,
    help="Flow control: most messages held at once.",
)
@click.option(
    "--threads", type=int, default=8, show_default=True, help="Messages handled concurrently."
)
@trigger_options
@handle_user_errors
def trigger_listen(subscription: str, max_messages: int, threads: int, **kw: Any) -> None:
    """Streaming pull: each job request or spec-file notification becomes one job."""
    from hyperbatch.jobs import pubsub
    from hyperbatch.jobs.triggers.pull import PullListener, dead_letter_topic_of

    path = pubsub.subscription_path(subscription)
    dead_letter = kw.pop("dead_letter_topic") or dead_letter_topic_of(path)
    handler = _handler(kw, dead_letter)
    listener = PullListener(path, handler, max_messages=max_messages, threads=threads)
    click.echo(
        f"listening on {path}; jobs in {handler.store.root}; dead letters to "
        f"{dead_letter or '(none: recorded only)'}",
        err=True,
    )
    listener.run(_stop_on_signals())
    click.echo(f"stopped: {json.dumps(listener.summary())}", err=True)


@trigger_group.command("serve")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, envvar="PORT", show_default=True, show_envvar=True)
@click.option(
    "--audience",
    envvar="HYPERBATCH_PUSH_AUDIENCE",
    show_envvar=True,
    help="OIDC audience of push tokens (the push subscription's --push-auth-token-audience, "
    "by default the endpoint URL).",
)
@click.option(
    "--push-service-account",
    "service_accounts",
    multiple=True,
    envvar="HYPERBATCH_PUSH_SERVICE_ACCOUNTS",
    show_envvar=True,
    help="Service account allowed to push (the subscription's push auth account); repeatable.",
)
@click.option(
    "--allow-unauthenticated",
    is_flag=True,
    help="Accept pushes without an OIDC token (only behind another authenticating layer).",
)
@trigger_options
@handle_user_errors
def trigger_serve(
    host: str,
    port: int,
    audience: str | None,
    service_accounts: tuple[str, ...],
    allow_unauthenticated: bool,
    **kw: Any,
) -> None:
    """HTTP endpoint for a Pub/Sub push subscription (Cloud Run: PORT is read from the env)."""
    from hyperbatch.jobs.triggers.oidc import OidcVerifier
    from hyperbatch.jobs.triggers.push import make_app, make_http_server

    if not audience and not allow_unauthenticated:
        raise click.UsageError(
            "set --audience (and --push-service-account) to verify push tokens, "
            "or --allow-unauthenticated"
        )
    accounts = [a for item in service_accounts for a in item.split()]
    verifier = OidcVerifier(audience, accounts) if audience else None
    handler = _handler(kw, kw.pop("dead_letter_topic"))
    server = make_http_server(make_app(handler, verifier), host, port)
    stop = _stop_on_signals()
    threading.Thread(target=lambda: (stop.wait(), server.shutdown()), daemon=True).start()
    click.echo(
        f"serving Pub/Sub pushes on http://{host}:{server.server_port}/ "
        f"({'OIDC ' + audience if verifier else 'unauthenticated'}); jobs in "
        f"{handler.store.root}",
        err=True,
    )
    server.serve_forever()


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


_STATE_STYLE = {
    "QUEUED": "yellow",
    "RUNNING": "cyan",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "magenta",
}


def _styled(state: str) -> str:
    style = _STATE_STYLE.get(state, "white")
    return f"[{style}]{state}[/{style}]"


def _row(doc: dict[str, Any]) -> dict[str, Any]:
    """One line of `jobs list`."""
    m, p = doc.get("manifest") or {}, doc.get("progress") or {}
    return {
        "job_id": doc["job_id"],
        "state": doc["state"],
        "created_at": doc["created_at"],
        "runner": doc.get("runner"),
        "submitted_by": doc.get("submitted_by"),
        "via": (doc.get("submission") or {}).get("via"),
        "records": m.get("records_in", p.get("records")),
        "errors": m.get("errors", p.get("errors")),
        "cost_usd": m.get("cost_usd"),
    }


def _jobs_table(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    for col in (
        "JOB ID",
        "STATE",
        "CREATED",
        "RUNNER",
        "VIA",
        "SUBMITTED BY",
        "RECORDS",
        "ERRORS",
        "COST $",
    ):
        t.add_column(col, no_wrap=True)
    for r in rows:
        cost = f"{r['cost_usd']:.6f}" if r["cost_usd"] is not None else "-"
        t.add_row(
            r["job_id"],
            _styled(r["state"]),
            r["created_at"],
            r["runner"] or "-",
            r["via"] or "-",
            r["submitted_by"] or "-",
            _dash(r["records"]),
            _dash(r["errors"]),
            cost,
        )
    console = _console()
    if not console.is_terminal:  # piped: one job per line, whole ids, however long
        console.width = max(console.width, 240)
    console.print(t if rows else "no jobs")


def _dash(v: Any) -> str:
    return "-" if v is None else str(v)


def _status_table(doc: dict[str, Any]) -> None:
    rows: dict[str, Any] = {
        "job": f"{doc['job_id']} ({_styled(doc['state'])})",
        "job folder": doc["job_dir"],
        "submitted": f"{doc['created_at']} by {doc.get('submitted_by') or '-'} via "
        f"{(doc.get('submission') or {}).get('via', '-')}",
        "runner": doc.get("runner") or "- (recorded only)",
    }
    launch = doc.get("launch") or {}
    if launch.get("pid"):
        rows["process"] = f"pid {launch['pid']} on {launch.get('host')} (log {launch.get('log')})"
    if launch.get("dataflow_job_id"):
        rows["dataflow job"] = f"{launch['dataflow_job_id']} {launch.get('console_url', '')}"
    if doc.get("started_at"):
        rows["started"] = doc["started_at"]
    if doc.get("finished_at"):
        rows["finished"] = doc["finished_at"]
    p = doc.get("progress")
    if p and doc["state"] == "RUNNING":
        rows["progress"] = (
            f"{p.get('records', 0)}/{p.get('records_planned', '?')} records, "
            f"{p.get('errors', 0)} errors, {p.get('shards', 0)} shards "
            f"(heartbeat {doc.get('heartbeat_at')})"
        )
    m = doc.get("manifest")
    if m:
        rows["records"] = f"{m['records_in']} in = {m['results']} results + {m['errors']} errors"
        rows["cost"] = f"${m['cost_usd']:.6f} (${m['usd_per_1k_tokens']:.6f}/1k tokens)"
        rows["manifest"] = m["manifest"]
    if doc.get("error"):
        rows["error"] = f"[red]{doc['error']}[/red]"
    if "stopped" in doc:
        rows["stopped"] = doc["stopped"]
    _console().print(_kv_table(rows))


def _plan_table(d: dict[str, Any]) -> None:
    console = _console()
    console.print(
        f"[bold]dry run[/bold]: would record job [bold]{d['job_id']}[/bold] in "
        f"{d['root']} and launch it with the {d['runner']} runner"
    )
    plan = d["launch"]
    rows = {k: v for k, v in plan.items() if k not in ("pipeline_options", "flex_template_request")}
    console.print(_kv_table(rows))
    if "pipeline_options" in plan:
        console.print("[bold]pipeline options[/bold]")
        for flag in plan["pipeline_options"]:
            console.print(f"  {flag}")
        console.print("[bold]Flex Template launch request[/bold]")
        console.print(json.dumps(plan["flex_template_request"], indent=2))


def _results_table(d: dict[str, Any]) -> None:
    rows = {
        "job": f"{d['job_id']} ({_styled(d['state'])})",
        "results": f"{d['results']} ({len(d['result_files'])} committed files)",
        "errors": f"{d['errors']} ({len(d['error_files'])} files)",
        "manifest": d["manifest"] or "- (not written yet)",
    }
    if d.get("summary"):
        s = d["summary"]
        rows["records"] = f"{s['records_in']} in = {s['results']} results + {s['errors']} errors"
    _console().print(_kv_table(rows))


if __name__ == "__main__":
    main()
