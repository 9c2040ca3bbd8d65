"""Triggers: ``trigger listen`` (a Pub/Sub streaming pull) and ``trigger serve`` (the push
endpoint), each turning job requests and spec-file notifications into jobs."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import click

from hyperbatch.cli.common import (
    allow_option,
    dataflow_options,
    events_option,
    handle_user_errors,
    make_launcher,
    open_store,
    plugin_option,
    root_option,
)


@click.group("trigger")
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
        click.option("--default-max-cost-usd", type=click.FloatRange(min=0, min_open=True),
                     envvar="HYPERBATCH_DEFAULT_MAX_COST_USD", show_envvar=True,
                     help="Budget cap (US dollars) of jobs whose spec sets no max_cost_usd."),
        allow_option,
        plugin_option,
        dataflow_options,
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)  # type: ignore[operator]
    return fn


def _handler(kw: dict[str, Any], dead_letter_topic: str | None) -> Any:
    from hyperbatch.engines.registry import import_plugins
    from hyperbatch.jobs.triggers.handler import TriggerHandler
    from hyperbatch.jobs.triggers.messages import normalize_watch_prefix

    plugins = kw.pop("plugins")
    import_plugins(plugins)
    store = open_store(kw.pop("root"), kw["events_topic"])
    try:
        watch = [normalize_watch_prefix(p) for w in kw.pop("watch") for p in w.split()]
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--watch") from e
    runner = kw.pop("runner")
    if kw.pop("record_only"):
        runner = None
    launcher = make_launcher(runner, kw, kw.pop("events_topic"), kw.pop("workers"), plugins,
                         kw.pop("max_running"))  # fmt: skip
    allow = [p for item in kw.pop("allow") for p in item.split()]
    return TriggerHandler(
        store,
        launcher,
        watch=watch,
        dead_letter_topic=dead_letter_topic,
        claim_ttl_s=kw.pop("claim_ttl_s"),
        allow=allow,
        default_max_cost_usd=kw.pop("default_max_cost_usd"),
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
    pubsub.subscriber()  # without usable credentials: say so now, not after "listening on"
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
    from hyperbatch.jobs.triggers import push
    from hyperbatch.jobs.triggers.oidc import OidcVerifier

    if not audience and not allow_unauthenticated:
        raise click.UsageError(
            "set --audience (and --push-service-account) to verify push tokens, "
            "or --allow-unauthenticated"
        )
    accounts = [a for item in service_accounts for a in item.split()]
    verifier = OidcVerifier(audience, accounts) if audience else None
    handler = _handler(kw, kw.pop("dead_letter_topic"))
    click.echo(
        f"serving Pub/Sub pushes on http://{host}:{port}/ with gunicorn "
        f"({f'OIDC {audience}' if verifier else 'unauthenticated'}); jobs in "
        f"{handler.store.root}",
        err=True,
    )
    push.serve(push.make_app(handler, verifier), host, port)  # until SIGTERM / SIGINT
