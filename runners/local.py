"""The local launcher: a recorded job runs as a background process on this machine.

``LocalLauncher`` starts ``python -m hyperbatch.runners.launch execute`` (see ``job_process``) in
its own session, so cancelling stops its Beam worker processes too, on Beam's local FnApiRunner,
in memory or with ``--workers N`` worker processes. The handle is the pid and host; the log is
``launch.log`` in the job's store folder (or ``~/.cache/hyperbatch/logs`` for a gs:// root). At
most ``max_running`` of its jobs run at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from hyperbatch import storage, timestamps
from hyperbatch.jobs import lease
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.jobs.spec import JobSpec
from hyperbatch.jobs.status import Launch
from hyperbatch.jobs.store import JobStore, Record

log = logging.getLogger(__name__)

#: seconds between the job process's heartbeats (and how stale a remote one may get)
HEARTBEAT_S = 5.0


class ForegroundRun:
    """A job run by ``hyperbatch run`` in a terminal: alive while its lease is."""

    name = "foreground"

    def poll(self, record: Record) -> str | None:
        if lease.holder(record.status.job_dir) is not None:
            return None
        return "its `hyperbatch run` ended without recording a result (no live lease)"

    def cancel(self, launch: Launch, job_id: str = "") -> str:
        if launch.host != socket.gethostname() or not launch.pid:
            return f"its run on {launch.host} stops itself at its next heartbeat"
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(launch.pid), signal.SIGTERM)
        return f"asked `hyperbatch run` (process {launch.pid}) to stop"


def _process_alive(pid: int, job_id: str) -> bool:
    """Is ``pid`` alive and still our job's process (pids are reused)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return False  # a zombie has exited; it only waits to be reaped
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return job_id.encode() in f.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


@dataclasses.dataclass
class LocalLauncher:
    """Runs jobs as background processes on this machine (Beam's local runner)."""

    workers: int = 1  # > 1: Beam's multi-process mode with this many worker processes
    plugins: Sequence[str] = ()
    events_topic: str | None = None
    heartbeat_s: float = HEARTBEAT_S
    python: str = sys.executable
    # At most this many of this launcher's jobs run at once; a launch waits for a free slot
    # (a trigger then holds the message, unacked, so a burst is absorbed by Pub/Sub).
    max_running: int = 2
    name: str = dataclasses.field(default="local", init=False)

    def __post_init__(self) -> None:
        self._running = 0  # slots taken: processes started, or about to be
        self._slots = threading.Condition()

    def _take_slot(self) -> None:
        with self._slots:
            self._slots.wait_for(lambda: self._running < self.max_running)
            self._running += 1

    def _free_slot(self) -> None:
        with self._slots:
            self._running -= 1
            self._slots.notify_all()

    def _reap(self, proc: subprocess.Popen) -> None:
        proc.wait()  # reaped when it exits: a long-lived listener collects no zombies
        self._free_slot()

    def command(self, job_id: str, store: JobStore) -> list[str]:
        cmd = [
            self.python,
            "-m",
            "hyperbatch.runners.launch",
            "execute",
            "--root",
            store.root,
            "--job-id",
            job_id,
            "--workers",
            str(self.workers),
            "--heartbeat-s",
            str(self.heartbeat_s),
        ]
        if self.events_topic:
            cmd += ["--events-topic", self.events_topic]
        for p in self.plugins:
            cmd += ["--plugin", p]
        return cmd

    @staticmethod
    def log_path(job_id: str, store: JobStore) -> str:
        if storage.is_gcs(store.root):
            logs = os.environ.get("HYPERBATCH_LOG_DIR") or os.path.expanduser(
                "~/.cache/hyperbatch/logs"
            )
            return os.path.join(logs, job_id + ".log")
        return JobFolder(store.job_folder(job_id)).launch_log

    def plan(self, spec: JobSpec, job_id: str, store: JobStore) -> dict[str, Any]:
        return {
            "launcher": "local",
            "command": self.command(job_id, store),
            "log": self.log_path(job_id, store),
            "beam_runner": "FnApiRunner (DirectRunner batch engine)",
            "direct_running_mode": "multi_processing" if self.workers > 1 else "in_memory",
            "direct_num_workers": self.workers,
            "accelerator": spec.accelerator,
        }

    def launch(self, spec: JobSpec, job_id: str, store: JobStore) -> dict[str, Any]:
        log_path = self.log_path(job_id, store)
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        cmd = self.command(job_id, store)
        self._take_slot()
        try:
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except BaseException:
            self._free_slot()
            raise
        threading.Thread(
            target=self._reap, args=(proc,), name=f"reap-{proc.pid}", daemon=True
        ).start()
        log.info("job %s: started local process %d (log %s)", job_id, proc.pid, log_path)
        return {"launcher": "local", "pid": proc.pid, "host": socket.gethostname(), "log": log_path}

    def cancel(self, launch: Launch, job_id: str = "", grace_s: float = 10.0) -> str:
        pid, host = launch.pid, launch.host
        if not pid:
            return "not started yet: it will not start"
        if host != socket.gethostname():
            return f"its process {pid} on {host} stops itself at its next heartbeat"
        if not _process_alive(int(pid), job_id):
            return f"its process {pid} had already exited"
        os.killpg(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _process_alive(int(pid), job_id):
            time.sleep(0.05)
        if _process_alive(int(pid), job_id):
            os.killpg(int(pid), signal.SIGKILL)
            return f"killed process {pid} (it ignored SIGTERM for {grace_s:.0f} s)"
        return f"stopped process {pid}"

    def poll(self, record: Record, stale_s: float | None = None) -> str | None:
        launch = record.launch or Launch()
        pid, host = launch.pid, launch.host
        if not pid:
            return None
        if host == socket.gethostname():
            if _process_alive(int(pid), record.job_id):
                return None
            return f"its process {pid} exited without recording a result; see {launch.log}"
        beat = record.status.heartbeat_at or launch.launched_at
        stale = stale_s if stale_s is not None else 6 * self.heartbeat_s + 30
        if beat and timestamps.age_seconds(beat) > stale:
            return f"no heartbeat from process {pid} on {host} since {beat}"
        return None
