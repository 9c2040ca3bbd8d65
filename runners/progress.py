"""Live counters of the job running in this process, for the CLI's progress bar and heartbeat.

The pipeline's DoFns add to these as they plan and serve shards (they also update Beam metrics,
which is what a Dataflow job exposes); the CLI polls ``PROGRESS.snapshot()``. Local runs execute
the DoFns in the CLI's process, so thread-safe counters are enough. The counters are the same
``Counters`` the engine, the shards and the manifest keep.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any

from hyperbatch.schemas.records import Counters


class Progress:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters = Counters()
        self.started_at = time.time()

    def reset(self) -> None:
        with self._lock:
            self._counters = Counters()
            self.started_at = time.time()

    def add(self, **counts: Any) -> None:
        """Add to named counters (``Counters`` fields), e.g. ``add(records=1, results=1)``."""
        with self._lock:
            self._counters = self._counters + Counters(**counts)

    def snapshot(self) -> Counters:
        with self._lock:
            return dataclasses.replace(self._counters)


PROGRESS = Progress()
