"""What every command shares: exit codes, user errors, option bundles, output, the job store.

Data goes to stdout (``--format json|yaml`` for machines), progress and logs to stderr. Exit
codes: 0 the job succeeded (per-record errors included), 1 the job failed (or was cancelled), 2 a
user error (bad spec, missing file, bad flag, unknown job, a budget below the job's low
estimate) reported without a traceback, 4 the job's budget stopped it (STOPPED_BUDGET).
"""

from __future__ import annotations

import enum
import functools
import json
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
import yaml

if TYPE_CHECKING:
    from hyperbatch.jobs.store import JobStore
    from hyperbatch.jobs.submit import Launcher
    from hyperbatch.runners.dataflow import DataflowConfig

EXIT_OK, EXIT_JOB_FAILED, EXIT_USER_ERROR = 0, 1, 2
EXIT_STOPPED_BUDGET = 4  # (3 is the job process's "not run")


class OutputFormat(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user must change something", not "hyperbatch broke"."""
    from hyperbatch.accelerators import UnknownAccelerator
    from hyperbatch.engines.models import ModelNotFound
    from hyperbatch.engines.options import OptionsError
    from hyperbatch.engines.registry import EngineNotAvailable
    from hyperbatch.jobs.lease import LeaseHeld
    from hyperbatch.jobs.pubsub import PubSubNameError
    from hyperbatch.jobs.spec import JobIdConflict, SpecError
    from hyperbatch.jobs.store import IllegalTransition, JobNotFound
    from hyperbatch.jobs.submit import LaunchError
    from hyperbatch.runners.shards import InputChanged
    from hyperbatch.storage import CredentialsError, StorageError

    return (
        SpecError,
        ModelNotFound,
        EngineNotAvailable,
        OptionsError,
        UnknownAccelerator,
        InputChanged,
        CredentialsError,  # a StorageError too; named so a worker's one is rebuilt by name
        StorageError,
        JobNotFound,
        JobIdConflict,
        IllegalTransition,
        LaunchError,
        PubSubNameError,
        LeaseHeld,
    )


#: set by ``hyperbatch --debug``: failures print their traceback too
DEBUG = False


def root_cause(
    error: BaseException, types: tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of ``types`` in ``error``'s chain (Beam wraps a DoFn's error in its
    own; ``plain`` strips the step name it appends)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, types):
            return e
        e = e.__cause__ or e.__context__
    return None


_RAISED = re.compile(r"^([\w.]+): (.+)$", re.MULTILINE)


def plain(error: BaseException) -> str:
    """An error's own message: without the ``[while running 'Step']`` Beam appends, and, when
    Beam carried it as a worker's traceback text, its last ``Type: message`` line."""
    text = str(error)
    if "Traceback (most recent call last)" in text:
        raised = _RAISED.findall(text)
        if raised:
            text = raised[-1][1]
    return text.split(" [while running ")[0].strip() or type(error).__name__


def beam_user_error(
    error: BaseException, types: tuple[type[BaseException], ...]
) -> BaseException | None:
    """A user error a worker raised, rebuilt from the traceback text Beam's runner carried it
    in (the exception object itself stays in the worker)."""
    by_name = {f"{t.__module__}.{t.__qualname__}": t for t in types}
    found = None
    for name, message in _RAISED.findall(str(error)):
        if name in by_name:
            found = (by_name[name], message)
    if found is None:
        return None
    cls, message = found
    rebuilt = cls.__new__(cls)
    Exception.__init__(rebuilt, message.split(" [while running ")[0])
    return rebuilt


def report_failure(error: BaseException, job_dir: str) -> None:
    """One paragraph on stderr: what failed and what to do; the traceback goes to a log file
    (and to stderr too with ``--debug``)."""
    import traceback

    from hyperbatch import timestamps

    logs = os.environ.get("HYPERBATCH_LOG_DIR") or os.path.expanduser("~/.cache/hyperbatch/logs")
    os.makedirs(logs, exist_ok=True)
    log_path = os.path.join(logs, f"{os.path.basename(job_dir)}-{timestamps.now('seconds')}.log")
    text = "".join(traceback.format_exception(error))
    with open(log_path, "w") as f:
        f.write(text)
    message = plain(error)
    click.echo(
        f"job failed: {message}\nThe committed shards are kept: once the cause is fixed, the "
        f"same command resumes the job. The traceback is in {log_path}"
        + ("" if DEBUG else " (`hyperbatch --debug ...` prints it here)."),
        err=True,
    )
    if DEBUG:
        click.echo(text, err=True)


def handle_user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except user_errors() as e:
            click.echo(f"error: {plain(e)}", err=True)
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


ROOT_ENV, EVENTS_ENV = "HYPERBATCH_JOBS_ROOT", "HYPERBATCH_EVENTS_TOPIC"
EXIT_CODES_BY_STATE = {
    "SUCCEEDED": EXIT_OK,
    "FAILED": EXIT_JOB_FAILED,
    "CANCELLED": EXIT_JOB_FAILED,
    "STOPPED_BUDGET": EXIT_STOPPED_BUDGET,
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


def allow_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--allow",
        "allow",
        multiple=True,
        metavar="gs://BUCKET/PREFIX|DIR",
        envvar="HYPERBATCH_ALLOW",
        show_envvar=True,
        help="Where recorded jobs may read and write (input, output, model); repeatable. "
        "Default: the job store's bucket; a local path only when allowed here.",
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


def dataflow_config(kwargs: dict[str, Any]) -> DataflowConfig:
    """The DataflowConfig from the ``df_*`` parameters of ``dataflow_options`` (removed from
    ``kwargs``)."""
    from hyperbatch.runners.dataflow import DataflowConfig

    values = {k[3:]: kwargs.pop(k) for k in list(kwargs) if k.startswith("df_")}
    labels = {}
    for item in values.pop("label") or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--label")
        labels[key] = value
    return DataflowConfig(
        **values, labels=labels, api_endpoint=os.environ.get("HYPERBATCH_DATAFLOW_API_ENDPOINT")
    )


def make_launcher(
    runner: str | None,
    kwargs: dict[str, Any],
    events_topic: str | None,
    workers: int,
    plugins: tuple[str, ...],
    max_running: int = 1,
) -> Launcher | None:
    """The launcher ``--runner`` names (None: record only), configured from the options."""
    from hyperbatch.runners.dataflow import DataflowLauncher
    from hyperbatch.runners.local import LocalLauncher

    config = dataflow_config(kwargs)
    if runner == "dataflow":
        return DataflowLauncher(config, events_topic=events_topic)
    if runner == "local":
        return LocalLauncher(workers=workers, plugins=plugins, events_topic=events_topic,
                             max_running=max_running)  # fmt: skip
    return None


def open_store(root: str | None, events_topic: str | None) -> JobStore:
    from hyperbatch.jobs import events
    from hyperbatch.jobs.store import JobStore

    if not root:
        raise click.UsageError(
            f"no job store: pass --root DIR|gs://BUCKET/PREFIX or set {ROOT_ENV}"
        )
    return JobStore(root, events.sink(events_topic))
