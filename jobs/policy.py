"""Where a job may read and write: the prefixes a trigger confines the jobs it records to.

A Pub/Sub message (or a spec dropped in a bucket) comes from whoever may publish; what it asks
for must stay inside what the operator allowed. ``AccessPolicy`` holds the allowed prefixes
(``--allow gs://bucket/prefix`` or ``--allow /local/dir``, repeatable; by default the job store's
own bucket, and no local path at all) and checks a spec's ``input``, ``output`` and ``model``
before anything is read or recorded. Local paths are compared after resolving ``..`` and
symbolic links, so neither can lead out of an allowed folder; ``gs://`` URLs may not contain
``.``/``..`` segments. A catalogue model name (shipped in a Python package) is always allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from hyperbatch import storage
from hyperbatch.engines import registry
from hyperbatch.jobs.spec import JobSpec, models_catalogue

ALLOW_ENV = "HYPERBATCH_ALLOW"


class AccessPolicy:
    def __init__(self, allowed: Iterable[str]):
        self.allowed = tuple(_normalized_prefix(p) for p in allowed if p)

    @classmethod
    def for_store(cls, root: str, allow: Sequence[str] = ()) -> AccessPolicy:
        """``allow`` if given, else the job store's bucket (a local store allows nothing
        local until told: ``--allow DIR``)."""
        if allow:
            return cls(allow)
        if storage.is_gcs(root):
            return cls([f"gs://{storage.split_gcs(root)[0]}/"])
        return cls([])

    def describe(self) -> str:
        return ", ".join(self.allowed) or "nothing (pass --allow gs://BUCKET/PREFIX or --allow DIR)"

    def allows(self, path: str) -> bool:
        target = _normalized_target(path)
        if target is None:
            return False
        sep = "/" if storage.is_gcs(target) else os.sep
        return any(target.startswith(p) or target + sep == p for p in self.allowed)

    def spec_problems(self, spec: JobSpec) -> list[str]:
        """Problems with where a job spec reads (input, model) and writes (output)."""
        model = (
            None
            if spec.model in models_catalogue() or not _needs_model(spec.engine)
            else spec.model
        )
        return self.problems({"input": spec.input, "output": spec.output, "model": model})

    def problems(self, fields: dict[str, str | None]) -> list[str]:
        """Problems with the named locations (``{"input": ..., "output": ..., "model": ...}``;
        None skips a field, e.g. a catalogue model)."""
        out = []
        for field, value in fields.items():
            if value and not self.allows(_fixed_prefix(value)):
                out.append(
                    f"{field}: {value!r} is outside where jobs of this store may read and write "
                    f"({self.describe()})"
                )
        return out


def _fixed_prefix(path: str) -> str:
    """The part of a glob before its first wildcard (what is listed)."""
    if not storage.has_wildcard(path):
        return path
    for i, c in enumerate(path):
        if c in "*?[":
            return path[:i]
    return path


def _normalized_prefix(prefix: str) -> str:
    if storage.is_gcs(prefix):
        bucket, name = storage.split_gcs(prefix)
        name = name.strip("/")
        return f"gs://{bucket}/{name + '/' if name else ''}"
    return os.path.realpath(os.path.abspath(os.path.expanduser(prefix))).rstrip(os.sep) + os.sep


def _normalized_target(path: str) -> str | None:
    """A comparable form of ``path``, or None for one that must never be allowed."""
    if storage.is_gcs(path):
        try:
            bucket, name = storage.split_gcs(path)
        except storage.StorageError:
            return None
        if any(part in (".", "..") for part in name.split("/")):
            return None
        return f"gs://{bucket}/{name}"
    resolved = os.path.realpath(os.path.abspath(os.path.expanduser(path)))
    # a folder named exactly like an allowed prefix is inside it
    return resolved + (os.sep if os.path.isdir(resolved) or path.endswith(os.sep) else "")


def _needs_model(engine: str) -> bool:
    entry = registry.ENGINES.get(engine)
    return entry is None or entry.needs_model
