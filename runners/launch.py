"""Launchers: start a recorded job on this machine or on Dataflow, and the programs they start.

* ``LocalLauncher`` starts ``python -m hyperbatch.runners.launch execute`` as a background process (its
  own session, so cancelling stops its worker processes too) on Beam's local FnApiRunner, in
  memory or with ``--workers N`` worker processes. The handle is the pid and host; the log is
  ``launch.log`` in the job's store folder (or ``~/.cache/hyperbatch/logs`` for a gs:// root).
* ``DataflowLauncher`` builds the Dataflow pipeline options and the Flex Template launch
  request for the job's accelerator (``worker_shape``: machine type and ``worker_accelerator``
  per TPU/GPU and count) and sends the request with google-cloud-dataflow-client under
  ``CLOUD_RETRY``. The handle is the Dataflow job id.
* ``execute`` is the job process: it moves the job QUEUED -> RUNNING (refusing to run a job
  that is no longer queued), heartbeats its progress into status.json (and stops itself when it
  finds the job CANCELLED), runs the pipeline and records SUCCEEDED/FAILED with the manifest.
  ``flex_main`` is the same for a Flex Template launch: the final state is written by a step
  appended to the pipeline on the Dataflow workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hyperbatch import storage
from hyperbatch.jobs import events
from hyperbatch.jobs.store import IllegalTransition, JobState, JobStore, Record, now_rfc3339
from hyperbatch.jobs.submit import LaunchError
from hyperbatch.retry import CLOUD_RETRY

log = logging.getLogger(__name__)

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_NOT_RUN = 0, 1, 3
HEARTBEAT_S = 5.0


def import_plugins(modules: Sequence[str]) -> None:
    """Import plug-in modules (e.g. ones that register engines) before a spec is validated."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise LaunchError(f"plug-in module {name!r} cannot be imported: {e}") from e


# =========================================================================== local


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
        return os.path.join(store.job_folder(job_id), "launch.log")

    def plan(self, spec: Any, job_id: str, store: JobStore) -> dict[str, Any]:
        return {
            "launcher": "local",
            "command": self.command(job_id, store),
            "log": self.log_path(job_id, store),
            "beam_runner": "FnApiRunner (DirectRunner batch engine)",
            "direct_running_mode": "multi_processing" if self.workers > 1 else "in_memory",
            "direct_num_workers": self.workers,
            "accelerator": spec.accelerator,
        }

    def launch(self, spec: Any, job_id: str, store: JobStore) -> dict[str, Any]:
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

    def cancel(self, launch: Mapping[str, Any], job_id: str = "", grace_s: float = 10.0) -> str:
        pid, host = launch.get("pid"), launch.get("host")
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
        launch = record.launch or {}
        pid, host = launch.get("pid"), launch.get("host")
        if not pid:
            return None
        if host == socket.gethostname():
            if _process_alive(int(pid), record.job_id):
                return None
            return f"its process {pid} exited without recording a result; see {launch.get('log')}"
        beat = record.doc.get("heartbeat_at") or launch.get("launched_at")
        stale = stale_s if stale_s is not None else 6 * self.heartbeat_s + 30
        if beat and _age_s(beat) > stale:
            return f"no heartbeat from process {pid} on {host} since {beat}"
        return None


def _age_s(rfc3339: str) -> float:
    import datetime as dt

    t = dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return (dt.datetime.now(dt.UTC) - t).total_seconds()


def launcher_for(
    record: Record, dataflow_config: DataflowConfig | None = None
) -> LocalLauncher | DataflowLauncher | None:
    """The launcher that can poll and cancel this record's launched job."""
    kind = (record.launch or {}).get("launcher")
    if kind == "local":
        return LocalLauncher()
    if kind == "dataflow":
        endpoint = os.environ.get("HYPERBATCH_DATAFLOW_API_ENDPOINT")
        return DataflowLauncher(dataflow_config or DataflowConfig(api_endpoint=endpoint))
    return None


def reconcile(
    store: JobStore, record: Record, dataflow_config: DataflowConfig | None = None
) -> Record:
    """Settle a QUEUED/RUNNING job whose launched process or Dataflow job is gone.

    If that run wrote its manifest (it died just before recording it), the job ends as the
    manifest says; otherwise it FAILED, with why. A job still alive is returned as is.
    """
    launch = record.launch or {}
    if record.state.terminal or not (launch.get("pid") or launch.get("dataflow_job_id")):
        return record
    launcher = launcher_for(record, dataflow_config)
    reason = launcher.poll(record) if launcher else None
    if reason is None:
        return record
    by = f"hyperbatch reconcile ({socket.gethostname()})"
    manifest = _manifest_of_this_run(record)
    if manifest is not None:
        try:
            return finish(store, record.job_id, manifest, by=by)
        except IllegalTransition:
            return store.get(record.job_id)
    seen = (record.doc.get("heartbeat_at"), record.doc["state"])
    try:
        return store.transition(
            record.job_id,
            JobState.FAILED,
            by=by,
            error=reason,
            guard=lambda doc: (doc.get("heartbeat_at"), doc["state"]) == seen,
        )
    except IllegalTransition:
        return store.get(record.job_id)  # it moved on by itself meanwhile


def _manifest_of_this_run(record: Record) -> dict[str, Any] | None:
    """The job's manifest if the run that started at ``started_at`` wrote it."""
    import datetime as dt
    import json

    started = record.doc.get("started_at")
    path = storage.join(record.doc["job_dir"], "manifest.json")
    if record.state != JobState.RUNNING or not started or not storage.exists(path):
        return None
    manifest = json.loads(storage.read_bytes(path))

    def when(t: str) -> dt.datetime:
        return dt.datetime.fromisoformat(t.replace("Z", "+00:00")).replace(microsecond=0)

    if manifest.get("job_id") != record.job_id or when(manifest["created_at"]) < when(started):
        return None  # an earlier run's manifest
    return manifest


# =========================================================================== the job process


class _Heartbeat(threading.Thread):
    """Writes progress into status.json; stops the process when the job is no longer RUNNING."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        interval_s: float,
        progress: Callable[[], dict[str, Any]],
        on_cancel: Callable[[], None],
    ):
        super().__init__(name="hyperbatch-heartbeat", daemon=True)
        self.store, self.job_id, self.interval_s = store, job_id, interval_s
        self.progress, self.on_cancel = progress, on_cancel
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.beat()
            except IllegalTransition as e:
                log.warning("job %s is %s: stopping the job process", self.job_id, e.state)
                self.on_cancel()
                return
            except Exception as e:  # noqa: BLE001 - a missed beat is not fatal; the next one may pass
                log.warning("job %s: heartbeat failed: %r", self.job_id, e)

    def beat(self) -> None:
        snapshot = self.progress()

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            if doc["state"] != JobState.RUNNING:
                raise IllegalTransition(self.job_id, doc["state"], "RUNNING (heartbeat)")
            doc["progress"] = snapshot
            doc["heartbeat_at"] = doc["updated_at"] = now_rfc3339()
            return doc

        self.store.update(self.job_id, change)


def _stop_own_process_group() -> None:
    # The local launcher makes the job process a session leader: its Beam workers share its group.
    if os.getsid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)


def _progress(job_dir: str, count_commits: bool) -> Callable[[], dict[str, Any]]:
    from hyperbatch.runners.progress import PROGRESS

    def snapshot() -> dict[str, Any]:
        s = PROGRESS.snapshot().to_dict()
        if count_commits:  # the DoFns run in worker processes: count committed shards instead
            marker_dir = storage.join(job_dir, "_commits") + "/"
            s["shards"] = sum(
                1 for f in storage.list_prefix(marker_dir) if f.path.endswith(".json")
            )
        return s

    return snapshot


def finish(store: JobStore, job_id: str, manifest: Mapping[str, Any], by: str) -> Record:
    """RUNNING -> SUCCEEDED or FAILED (too many record errors), with the manifest's summary."""
    summary = events.manifest_summary(manifest, store.get(job_id).doc["job_dir"])
    ok = manifest["status"] == "SUCCEEDED"
    error = None
    if not ok:
        error = (
            f"{manifest['errors']} of {manifest['records_in']} records failed, more than "
            "max_error_rate allows; see the error files"
        )
    return store.transition(
        job_id,
        JobState.SUCCEEDED if ok else JobState.FAILED,
        by=by,
        expect=[JobState.RUNNING],
        manifest=summary,
        error=error,
    )


def execute(
    root: str,
    job_id: str,
    *,
    events_topic: str | None = None,
    workers: int = 1,
    heartbeat_s: float = HEARTBEAT_S,
    on_cancel: Callable[[], None] = _stop_own_process_group,
) -> int:
    """Run a QUEUED job to its end in this process; returns an exit code."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from hyperbatch.runners import pipeline
    from hyperbatch.runners.options import local_options, local_runner

    store = JobStore(root, events.sink(events_topic))
    me = f"job process {os.getpid()}@{socket.gethostname()}"
    try:
        record = store.transition(
            job_id,
            JobState.RUNNING,
            by=me,
            expect=[JobState.QUEUED],
            launch={"launcher": "local", "pid": os.getpid(), "host": socket.gethostname()},
        )
    except IllegalTransition as e:
        log.warning("not running job %s: %s", job_id, e)
        return EXIT_NOT_RUN
    spec = store.spec(job_id)
    if workers > 1:
        options = PipelineOptions(
            flags=[], direct_running_mode="multi_processing", direct_num_workers=workers
        )
    else:
        options = local_options()
    beat = _Heartbeat(
        store, job_id, heartbeat_s, _progress(record.doc["job_dir"], workers > 1), on_cancel
    )
    beat.start()
    try:
        manifest = pipeline.run(spec, job_id, options=options, runner=local_runner())
    except BaseException as e:
        beat.stopped.set()
        log.exception("job %s failed", job_id)
        try:
            store.transition(
                job_id,
                JobState.FAILED,
                by=me,
                expect=[JobState.RUNNING],
                error=f"{type(e).__name__}: {e}",
            )
        except IllegalTransition as lost:
            log.warning("job %s: %s", job_id, lost)
        return EXIT_FAILED
    finally:
        beat.stopped.set()
    try:
        final = finish(store, job_id, manifest, me)
    except IllegalTransition as e:
        log.warning("job %s finished, but %s", job_id, e)
        return EXIT_NOT_RUN
    return EXIT_SUCCEEDED if final.state == JobState.SUCCEEDED else EXIT_FAILED


# =========================================================================== Dataflow


@dataclasses.dataclass(frozen=True)
class WorkerShape:
    """What one Dataflow worker is: its machine type and the accelerator it carries."""

    machine_type: str
    worker_accelerator: str | None  # the dataflow_service_options worker_accelerator value
    kind: str  # cpu | tpu | gpu


# Dataflow TPU workers are single-host slices: (type, {chips: (topology, machine type)}).
# Source: cloud.google.com/dataflow/docs/tpu/tpu-support (checked 2025-09).
TPU_SLICES: Mapping[str, tuple[str, Mapping[int, tuple[str, str]]]] = {
    "tpu-v5e": ("tpu-v5-lite-podslice", {1: ("1x1", "ct5lp-hightpu-1t"),
                                         4: ("2x2", "ct5lp-hightpu-4t"),
                                         8: ("2x4", "ct5lp-hightpu-8t")}),
    "tpu-v6e": ("tpu-v6e-slice", {1: ("1x1", "ct6e-standard-1t"),
                                  4: ("2x2", "ct6e-standard-4t"),
                                  8: ("2x4", "ct6e-standard-8t")}),
    "tpu-v5p": ("tpu-v5p-slice", {4: ("2x2x1", "ct5p-hightpu-4t")}),
}  # fmt: skip

# GPUs: (Compute Engine accelerator type, {GPUs per worker: machine type that carries them}).
# a3-highgpu-1g/2g/4g are offered only as Spot or flex-start capacity.
GPU_MACHINES: Mapping[str, tuple[str, Mapping[int, str]]] = {
    "nvidia-l4": ("nvidia-l4", {1: "g2-standard-4", 2: "g2-standard-24", 4: "g2-standard-48",
                                8: "g2-standard-96"}),
    "nvidia-a100-40gb": ("nvidia-tesla-a100", {1: "a2-highgpu-1g", 2: "a2-highgpu-2g",
                                               4: "a2-highgpu-4g", 8: "a2-highgpu-8g",
                                               16: "a2-megagpu-16g"}),
    "nvidia-a100-80gb": ("nvidia-a100-80gb", {1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g",
                                              4: "a2-ultragpu-4g", 8: "a2-ultragpu-8g"}),
    "nvidia-h100-80gb": ("nvidia-h100-80gb", {1: "a3-highgpu-1g", 2: "a3-highgpu-2g",
                                              4: "a3-highgpu-4g", 8: "a3-highgpu-8g"}),
    "nvidia-h200-141gb": ("nvidia-h200-141gb", {8: "a3-ultragpu-8g"}),
}  # fmt: skip

#: Accelerated workers need room for a CUDA/JAX container image and the model weights.
ACCELERATED_DISK_GB = 200


def worker_shape(accelerator: str, count: int) -> WorkerShape:
    """The Dataflow worker for ``count`` accelerators of a type; LaunchError if none exists."""
    from hyperbatch.jobs import pricing

    if accelerator in TPU_SLICES:
        tpu_type, slices = TPU_SLICES[accelerator]
        if count not in slices:
            raise LaunchError(
                f"dataflow: {accelerator} workers are single-host slices of "
                f"{', '.join(map(str, slices))} chips; set accelerator_count to one of them"
            )
        topology, machine = slices[count]
        return WorkerShape(machine, f"type:{tpu_type};topology:{topology}", "tpu")
    if accelerator in GPU_MACHINES:
        gpu_type, machines = GPU_MACHINES[accelerator]
        if count not in machines:
            raise LaunchError(
                f"dataflow: {accelerator} comes {', '.join(map(str, machines))} per machine; "
                "set accelerator_count to one of them"
            )
        return WorkerShape(
            machines[count], f"type:{gpu_type};count:{count};install-nvidia-driver", "gpu"
        )
    if accelerator == "cpu":
        return WorkerShape(pricing.ACCELERATORS["cpu"].machine_type, None, "cpu")
    raise LaunchError(f"dataflow: no worker shape for accelerator {accelerator!r}")


@dataclasses.dataclass(frozen=True)
class DataflowConfig:
    """Where and as whom Dataflow jobs run (flags / HYPERBATCH_DATAFLOW_* settings)."""

    project: str | None = None
    region: str | None = None
    template: str | None = None  # gs:// path of the Flex Template spec (docker/flex-template)
    image: str | None = None  # the worker container image (docker/worker)
    service_account: str | None = None
    network: str | None = None
    subnetwork: str | None = None
    max_workers: int = 4
    disk_size_gb: int | None = None  # None: Dataflow's default (ACCELERATED_DISK_GB on TPU/GPU)
    temp_location: str | None = None  # default <root>/_dataflow/temp when the root is gs://
    public_ips: bool = True
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    api_endpoint: str | None = None  # e.g. a regional or private endpoint

    def problems(self, root: str) -> list[str]:
        out = []
        for name, flag in (
            ("project", "--project"),
            ("region", "--region"),
            ("template", "--template"),
            ("image", "--image"),
        ):
            if not getattr(self, name):
                env = "HYPERBATCH_DATAFLOW_" + name.upper()
                out.append(f"dataflow: {flag} is required (or set {env})")
        if not self.temp_location and not storage.is_gcs(root):
            out.append(
                "dataflow: --temp-location gs://... is required when the job store is "
                "not on Cloud Storage"
            )
        return out

    def temp(self, root: str) -> str:
        return self.temp_location or storage.join(root, "_dataflow", "temp")


def _labels(spec: Any, job_id: str, cfg: DataflowConfig) -> dict[str, str]:
    return {
        "hyperbatch-job": job_id[:63],
        "hyperbatch-accelerator": spec.accelerator,
        "hyperbatch-engine": spec.engine,
        **cfg.labels,
    }


def _experiments(shape: WorkerShape) -> list[str]:
    # Runner v2 runs custom containers and accelerators. One SDK process per worker: the engine
    # holds the whole device, and a second process would load a second copy of the model.
    return ["use_runner_v2"] + (["no_use_multiple_sdk_containers"] if shape.kind != "cpu" else [])


def pipeline_options(
    spec: Any, job_id: str, cfg: DataflowConfig, root: str, events_topic: str | None = None
) -> dict[str, Any]:
    """Beam pipeline options for running ``job_id`` on Dataflow (what the Flex launch sets)."""
    problems = cfg.problems(root)
    if problems:
        raise LaunchError("; ".join(problems))
    shape = worker_shape(spec.accelerator, spec.accelerator_count)
    disk = cfg.disk_size_gb or (ACCELERATED_DISK_GB if shape.kind != "cpu" else None)
    opts: dict[str, Any] = {
        "runner": "DataflowRunner",
        "project": cfg.project,
        "region": cfg.region,
        "job_name": job_id,
        "temp_location": cfg.temp(root),
        "staging_location": storage.join(cfg.temp(root), "staging"),
        "sdk_container_image": cfg.image,
        "sdk_location": "container",
        "machine_type": shape.machine_type,
        "num_workers": 1,
        "max_num_workers": cfg.max_workers,
        "autoscaling_algorithm": "THROUGHPUT_BASED",
        "experiments": _experiments(shape),
        "labels": [f"{k}={v}" for k, v in _labels(spec, job_id, cfg).items()],
    }
    if shape.worker_accelerator:
        opts["dataflow_service_options"] = [f"worker_accelerator={shape.worker_accelerator}"]
    if disk:
        opts["disk_size_gb"] = disk
    if cfg.service_account:
        opts["service_account_email"] = cfg.service_account
    if cfg.network:
        opts["network"] = cfg.network
    if cfg.subnetwork:
        opts["subnetwork"] = cfg.subnetwork
    if not cfg.public_ips:
        opts["no_use_public_ips"] = True
    opts["hyperbatch_root"] = root
    opts["hyperbatch_job_id"] = job_id
    if events_topic:
        opts["hyperbatch_events_topic"] = events_topic
    return opts


def as_flags(options: Mapping[str, Any]) -> list[str]:
    """``{"a": 1, "b": [x, y], "c": True}`` -> ``["--a=1", "--b=x", "--b=y", "--c"]``."""
    flags = []
    for k, v in options.items():
        for item in v if isinstance(v, list) else [v]:
            flags.append(f"--{k}" if item is True else f"--{k}={item}")
    return flags


def flex_template_request(
    spec: Any, job_id: str, cfg: DataflowConfig, root: str, events_topic: str | None = None
) -> Any:
    """The LaunchFlexTemplateRequest that starts ``job_id`` from the hyperbatch Flex Template."""
    from google.cloud import dataflow_v1beta3 as df

    opts = pipeline_options(spec, job_id, cfg, root, events_topic)
    shape = worker_shape(spec.accelerator, spec.accelerator_count)
    parameters = {"hyperbatch_root": root, "hyperbatch_job_id": job_id}
    if events_topic:
        parameters["hyperbatch_events_topic"] = events_topic
    if shape.worker_accelerator:
        parameters["dataflow_service_options"] = opts["dataflow_service_options"][0]
    environment = df.FlexTemplateRuntimeEnvironment(
        num_workers=1,
        max_workers=cfg.max_workers,
        machine_type=shape.machine_type,
        temp_location=opts["temp_location"],
        staging_location=opts["staging_location"],
        sdk_container_image=cfg.image,
        additional_experiments=_experiments(shape),
        additional_user_labels=_labels(spec, job_id, cfg),
        autoscaling_algorithm=df.AutoscalingAlgorithm.AUTOSCALING_ALGORITHM_BASIC,
        service_account_email=cfg.service_account or "",
        network=cfg.network or "",
        subnetwork=cfg.subnetwork or "",
        ip_configuration=(
            df.WorkerIPAddressConfiguration.WORKER_IP_PUBLIC
            if cfg.public_ips
            else df.WorkerIPAddressConfiguration.WORKER_IP_PRIVATE
        ),
        disk_size_gb=opts.get("disk_size_gb", 0),
    )
    return df.LaunchFlexTemplateRequest(
        project_id=cfg.project,
        location=cfg.region,
        launch_parameter=df.LaunchFlexTemplateParameter(
            job_name=job_id,
            container_spec_gcs_path=cfg.template,
            parameters=parameters,
            environment=environment,
        ),
    )


def request_as_dict(request: Any, enums_as_ints: bool = False) -> dict[str, Any]:
    """A proto request as JSON (for --dry-run and tests), without fields left at defaults."""
    import json

    text = type(request).to_json(
        request, use_integers_for_enums=enums_as_ints, always_print_fields_with_no_presence=False
    )
    return json.loads(text)


def _client_options(cfg: DataflowConfig) -> dict[str, Any]:
    return {"api_endpoint": cfg.api_endpoint} if cfg.api_endpoint else {}


@CLOUD_RETRY
def _send_launch(client: Any, request: Any) -> Any:
    return client.launch_flex_template(request=request)


@CLOUD_RETRY
def _active_job_named(client: Any, project: str, region: str, name: str) -> Any | None:
    from google.cloud import dataflow_v1beta3 as df

    request = df.ListJobsRequest(
        project_id=project, location=region, name=name, filter=df.ListJobsRequest.Filter.ACTIVE
    )
    return next((j for j in client.list_jobs(request=request) if j.name == name), None)


@CLOUD_RETRY
def _update_job(client: Any, request: Any) -> Any:
    return client.update_job(request=request)


@CLOUD_RETRY
def _get_job(client: Any, request: Any) -> Any:
    return client.get_job(request=request)


class DataflowLauncher:
    """Launches jobs from the hyperbatch Flex Template on Dataflow."""

    name = "dataflow"

    def __init__(
        self,
        config: DataflowConfig,
        events_topic: str | None = None,
        flex_client: Any = None,
        jobs_client: Any = None,
    ):
        self.config = config
        self.events_topic = events_topic
        self._flex, self._jobs = flex_client, jobs_client

    def _client(self, kind: str) -> Any:
        from google.auth import exceptions
        from google.cloud import dataflow_v1beta3 as df

        cls = {"flex": df.FlexTemplatesServiceClient, "jobs": df.JobsV1Beta3Client}[kind]
        try:
            return cls(client_options=_client_options(self.config))
        except exceptions.DefaultCredentialsError as e:
            raise LaunchError(
                "dataflow: no Google credentials; run `gcloud auth application-default login` "
                "or set GOOGLE_APPLICATION_CREDENTIALS"
            ) from e

    @property
    def flex(self) -> Any:
        if self._flex is None:
            self._flex = self._client("flex")
        return self._flex

    @property
    def jobs(self) -> Any:
        if self._jobs is None:
            self._jobs = self._client("jobs")
        return self._jobs

    def plan(self, spec: Any, job_id: str, store: JobStore) -> dict[str, Any]:
        opts = pipeline_options(spec, job_id, self.config, store.root, self.events_topic)
        request = flex_template_request(spec, job_id, self.config, store.root, self.events_topic)
        return {
            "launcher": "dataflow",
            "worker": dataclasses.asdict(worker_shape(spec.accelerator, spec.accelerator_count)),
            "pipeline_options": as_flags(opts),
            "flex_template_request": request_as_dict(request),
        }

    def _handle(self, job: Any) -> dict[str, Any]:
        cfg = self.config
        return {
            "launcher": "dataflow",
            "dataflow_job_id": job.id,
            "project": cfg.project,
            "region": cfg.region,
            "console_url": f"https://console.cloud.google.com/dataflow/jobs/{cfg.region}/"
            f"{job.id}?project={cfg.project}",
        }

    def launch(self, spec: Any, job_id: str, store: JobStore) -> dict[str, Any]:
        from google.api_core import exceptions

        request = flex_template_request(spec, job_id, self.config, store.root, self.events_topic)
        try:
            response = _send_launch(self.flex, request)
        except exceptions.Conflict:
            # ALREADY_EXISTS (409): an earlier attempt whose answer was lost launched it. Dataflow
            # job names are unique among active jobs, and ours is the job id.
            job = _active_job_named(self.jobs, self.config.project, self.config.region, job_id)
            if job is None:
                raise LaunchError(
                    f"dataflow refused job name {job_id} as a duplicate, but no active job has it"
                ) from None
            return self._handle(job)
        except (
            exceptions.BadRequest,  # invalid argument, failed precondition
            exceptions.Forbidden,  # permission denied
            exceptions.NotFound,  # no such template, project or region
            exceptions.Unauthorized,
        ) as e:
            raise LaunchError(f"dataflow refused the launch: {e.message}") from e
        return self._handle(response.job)

    def cancel(self, launch: Mapping[str, Any], job_id: str = "") -> str:
        from google.cloud import dataflow_v1beta3 as df

        if not launch.get("dataflow_job_id"):
            return "not launched yet: it will not start"
        request = df.UpdateJobRequest(
            project_id=launch["project"],
            location=launch["region"],
            job_id=launch["dataflow_job_id"],
            job=df.Job(requested_state=df.JobState.JOB_STATE_CANCELLED),
        )
        _update_job(self.jobs, request)
        return f"requested cancellation of Dataflow job {launch['dataflow_job_id']}"

    def poll(self, record: Record) -> str | None:
        from google.cloud import dataflow_v1beta3 as df

        launch = record.launch or {}
        if not launch.get("dataflow_job_id"):
            return None
        job = _get_job(
            self.jobs,
            df.GetJobRequest(
                project_id=launch["project"],
                location=launch["region"],
                job_id=launch["dataflow_job_id"],
            ),
        )
        state = df.JobState(job.current_state)
        gone = {
            df.JobState.JOB_STATE_FAILED: "failed",
            df.JobState.JOB_STATE_CANCELLED: "was cancelled",
            df.JobState.JOB_STATE_DRAINED: "was drained",
            df.JobState.JOB_STATE_DONE: "finished without recording a result",
        }
        if state in gone:
            return f"Dataflow job {job.id} {gone[state]} (see {launch.get('console_url')})"
        return None


# =========================================================================== Flex Template


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
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from hyperbatch.runners import pipeline

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


# =========================================================================== entry point


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["flex"]:
        return flex_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m hyperbatch.runners.launch")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("execute", help="run a QUEUED job of a job store in this process")
    ex.add_argument("--root", required=True)
    ex.add_argument("--job-id", required=True)
    ex.add_argument("--events-topic")
    ex.add_argument("--workers", type=int, default=1)
    ex.add_argument("--heartbeat-s", type=float, default=HEARTBEAT_S)
    ex.add_argument("--plugin", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("apache_beam", "jax", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import_plugins(args.plugin)
    return execute(
        args.root,
        args.job_id,
        events_topic=args.events_topic,
        workers=args.workers,
        heartbeat_s=args.heartbeat_s,
    )


if __name__ == "__main__":
    sys.exit(main())
