"""Live counters of the job running in this process, for the CLI's progress bar.

The pipeline's DoFns add to these as they plan and serve shards (they also update Beam metrics,
which is what a Dataflow job exposes); the CLI polls ``PROGRESS.snapshot()``. Local runs execute
the DoFns in the CLI's process, so plain thread-safe counters are enough.
"""

from __future__ import annotations

import dataclasses
import threading
import time


@dataclasses.dataclass(frozen=True)
class Snapshot:
    records_planned: int = 0
    shards_planned: int = 0
    records_done: int = 0
    results: int = 0
    errors: int = 0
    completion_tokens: int = 0
    shards_done: int = 0
    shards_resumed: int = 0
    started_at: float = 0.0


class Progress:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._started_at = time.time()

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._started_at = time.time()

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                self._counts[k] = self._counts.get(k, 0) + v

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(started_at=self._started_at, **self._counts)


PROGRESS = Progress()
