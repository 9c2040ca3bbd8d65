"""The Flex Template's program: build a stored job's pipeline and submit it to Dataflow.

``flex_main`` runs in the Flex Template launcher container: it moves the job QUEUED -> RUNNING,
builds the pipeline from the stored spec and appends a last step that records the final state
on the Dataflow workers (``jobs.lifecycle.finish``), then submits the pipeline.
"""

from __future__ import annotations

import argparse
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from hyperbatch.jobs import events
from hyperbatch.jobs.lifecycle import finish
from hyperbatch.jobs.store import IllegalTransition, JobState, JobStore
from hyperbatch.runners import pipeline
from hyperbatch.runners.job_process import EXIT_NOT_RUN, EXIT_SUCCEEDED

log = logging.getLogger(__name__)


class _Finish:
    """The last pipeline step on Dataflow: record the manifest's verdict in the job store."""

    def __init__(self, root: str, job_id: str, events_topic: str | None):
        self.root, self.job_id, self.events_topic = root, job_id, events_topic

    def __call__(self, manifest: Mapping[str, Any]) -> Mapping[str, Any]:
        store = JobStore(self.root, events.sink(self.events_topic))
        try:
            finish(store, self.job_id, manifest, by=f"dataflow worker {socket.gethostname()}")
        except IllegalTransition as e:
            log.warning("job %s finished, but %s", self.job_id, e)
        return manifest


def flex_main(argv: Sequence[str]) -> int:
    """Entry point of the Flex Template launcher: build the stored job's pipeline and submit it."""
    parser = argparse.ArgumentParser(prog="hyperbatch-flex")
    parser.add_argument("--hyperbatch_root", required=True)
    parser.add_argument("--hyperbatch_job_id", required=True)
    parser.add_argument("--hyperbatch_events_topic", default=None)
    known, beam_args = parser.parse_known_args(argv)
    root, job_id, topic = (
        known.hyperbatch_root,
        known.hyperbatch_job_id,
        known.hyperbatch_events_topic,
    )
    store = JobStore(root, events.sink(topic))
    try:
        store.transition(
            job_id,
            JobState.RUNNING,
            by=f"flex launcher {socket.gethostname()}",
            expect=[JobState.QUEUED],
            launch={"launcher": "dataflow"},
        )
    except IllegalTransition as e:
        log.warning("not running job %s: %s", job_id, e)
        return EXIT_NOT_RUN
    spec = store.spec(job_id)
    ctx = pipeline.JobContext(spec, job_id, time.time())
    pipeline.record_spec(ctx)
    p = beam.Pipeline(options=PipelineOptions(beam_args))
    manifest = pipeline.build(p, ctx)
    manifest | "RecordFinalState" >> beam.Map(_Finish(root, job_id, topic))
    result = p.run()
    job = getattr(result, "job_id", None)
    if callable(job):
        store.merge_launch(job_id, dataflow_job_id=job())
    return EXIT_SUCCEEDED
