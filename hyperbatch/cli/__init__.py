"""The ``hyperbatch`` command line: validate, run and submit jobs, manage them, run triggers.

The composition root: the one place that wires the job store, launchers, triggers and engines
together (every other layer imports only the layers below it). Commands live in ``core``
(validate, run, manifest, engines), ``estimate``, ``jobs`` (submit, jobs ...) and ``trigger``;
what they share in ``common``; tables in ``render``. Data goes to stdout, progress and logs to
stderr; exit codes 0 (the job succeeded), 1 (it failed), 2 (a user error, without a traceback),
4 (its budget, ``max_cost_usd``, stopped it: STOPPED_BUDGET).
"""

from __future__ import annotations

import click

from hyperbatch.cli import common, core, estimate, jobs, trigger
from hyperbatch.cli.common import EXIT_JOB_FAILED, EXIT_OK, EXIT_STOPPED_BUDGET, EXIT_USER_ERROR
from hyperbatch.runners.options import quiet_logging

__all__ = ["EXIT_JOB_FAILED", "EXIT_OK", "EXIT_STOPPED_BUDGET", "EXIT_USER_ERROR", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging on stderr (-v info, -vv debug).")
@click.option("--debug", is_flag=True, help="Print the traceback of a failure, and Beam's logs.")
@click.version_option(package_name="hyperbatch")
def main(verbose: int, debug: bool) -> None:
    """hyperbatch: batch inference jobs on Beam, with results and a cost manifest."""
    common.DEBUG = debug
    quiet_logging(max(verbose, 2 if debug else 0))


for command in (
    core.validate,
    estimate.estimate,
    core.run,
    core.show_manifest,
    core.engines,
    jobs.submit,
    jobs.jobs_group,
    trigger.trigger_group,
):
    main.add_command(command)
