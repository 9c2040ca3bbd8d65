"""``hyperbatch estimate``: what a job will cost before it runs, and the budget gate ``run`` and
``submit`` pass through before launching a job with ``max_cost_usd``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from hyperbatch.cli import render
from hyperbatch.cli.common import (
    ROOT_ENV,
    emit,
    format_option,
    handle_user_errors,
    plugin_option,
    set_option,
)

if TYPE_CHECKING:
    from hyperbatch.jobs.estimate import Estimate
    from hyperbatch.jobs.spec import JobSpec


@click.command("estimate")
@click.argument("job_file")
@set_option
@click.option(
    "--root",
    envvar=ROOT_ENV,
    show_envvar=True,
    help="Job store whose earlier jobs calibrate the estimate (default: the spec's output).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Workers sharing the job (each loads the model once): sets the wall time.",
)
@click.option(
    "--sample",
    "sample_records",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Records tokenized at most (a uniform sample of a larger input).",
)
@plugin_option
@format_option
@handle_user_errors
def estimate(
    job_file: str,
    overrides: tuple[str, ...],
    root: str | None,
    workers: int,
    sample_records: int,
    plugins: tuple[str, ...],
    fmt: str,
) -> None:
    """Estimate a job's records, tokens, accelerator-hours, cost and wall time, without running
    it: from its input and the model's tokenizer, earlier jobs of the model in the job store
    (their manifests), or the throughput table. Every figure is a range; the estimate says
    what it is based on."""
    from hyperbatch.engines.registry import import_plugins
    from hyperbatch.jobs import estimate as estimates
    from hyperbatch.jobs import spec as job_spec

    import_plugins(plugins)
    spec = job_spec.load(job_file, overrides)
    est = _estimate_or_explain(
        lambda: estimates.estimate(spec, root=root, workers=workers, sample_records=sample_records)
    )
    emit(est.to_dict(), fmt, lambda _: print_estimate(est))


def _estimate_or_explain(make: Any) -> Estimate:
    from hyperbatch.jobs import estimate as estimates
    from hyperbatch.jobs.spec import SpecError

    try:
        est: Estimate = make()
    except estimates.EstimateUnavailable as e:
        raise SpecError([f"cannot estimate this job: {e}"]) from e
    return est


def print_estimate(est: Estimate, stderr: bool = False) -> None:
    from hyperbatch.jobs.estimate import iter_lines

    console = render.console(stderr=stderr)
    console.print(f"[bold]estimate[/bold] of job {est.job_id}")
    console.print(render.kv_table(dict(iter_lines(est))))


def gate(spec: JobSpec, *, root: str | None = None, workers: int = 1, source: str | None = None,
         quiet: bool = False) -> Estimate | None:  # fmt: skip
    """Before a job with ``max_cost_usd`` is launched: refuse it (BudgetExceeded, exit 2) when
    even its low estimate is above the cap; say so when it cannot be estimated (the running job
    still stops at the cap); None without a cap."""
    from hyperbatch.jobs import estimate as estimates

    if spec.max_cost_usd is None:
        return None
    try:
        est = estimates.check_budget(spec, root=root, workers=workers, source=source)
    except estimates.EstimateUnavailable as e:
        click.echo(
            f"warning: max_cost_usd ${spec.max_cost_usd} could not be checked before launch "
            f"({e}); the job stops taking shards once its committed shards' cost says the cap "
            "would be passed",
            err=True,
        )
        return None
    if est is not None and not quiet:
        c = est.cost_usd
        click.echo(
            f"budget: max_cost_usd ${spec.max_cost_usd}; estimate ${c.expected:.6f} "
            f"(${c.low:.6f} - ${c.high:.6f})",
            err=True,
        )
    return est


def planned_workers(launcher: Any, workers: int) -> int:
    """Workers a launch shares the job between, for the wall time: a local launch's worker
    processes; on Dataflow its most workers (autoscaling starts with one)."""
    most = getattr(getattr(launcher, "config", None), "max_workers", None)
    planned = most if most else getattr(launcher, "workers", workers)
    return int(planned)


def for_plan(
    spec: JobSpec, root: str | None, *, workers: int = 1, job_id: str | None = None
) -> tuple[dict[str, Any], Estimate | None]:
    """The estimate a dry run shows (as data: what ``estimate --format json`` prints), and the
    estimate itself when there is one; a job that cannot be estimated here says why instead."""
    from hyperbatch import storage
    from hyperbatch.jobs import estimate as estimates

    try:
        est = estimates.estimate(spec, root=root, workers=workers, job_id=job_id)
    except (estimates.EstimateUnavailable, storage.StorageError) as e:
        # (a dry run shows its plan even where it cannot look: no credentials, no bucket yet)
        return {"unavailable": str(e)}, None
    return est.to_dict(), est
