"""Job ids: safe in paths, GCS object names and Dataflow job names."""

from __future__ import annotations

import re

from hyperbatch.jobs.spec import SpecError

# Dataflow job names are [a-z]([-a-z0-9]*[a-z0-9])?; we keep to that, and to 63 characters.
JOB_ID_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_job_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id):
        raise SpecError(
            [
                f"job id {job_id!r}: use 1-63 lowercase letters, digits and '-', starting with a "
                "letter and not ending with '-'"
            ]
        )
    return job_id
