"""The Dataflow launcher: a recorded job runs from the hyperbatch Flex Template on TPU/GPU workers.

``DataflowLauncher`` builds the Dataflow pipeline options and the Flex Template launch request
for the job's accelerator (``worker_shape``: the machine type and ``worker_accelerator`` from
``hyperbatch.accelerators``) and sends the request with google-cloud-dataflow-client under
``CLOUD_RETRY``. The handle is the Dataflow job id. ``--dry-run`` prints ``plan``'s result.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from hyperbatch import accelerators, storage
from hyperbatch.jobs.spec import JobSpec
from hyperbatch.jobs.status import Launch
from hyperbatch.jobs.store import JobStore, Record
from hyperbatch.jobs.submit import LaunchError
from hyperbatch.retry import CLOUD_RETRY
from hyperbatch.runners.options import shards_in_flight

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerShape:
    """What one Dataflow worker is: its machine type and the accelerator it carries."""

    machine_type: str
    worker_accelerator: str | None  # the dataflow_service_options worker_accelerator value
    kind: str  # cpu | tpu | gpu


#: Accelerated workers need room for a CUDA/JAX container image and the model weights.
ACCELERATED_DISK_GB = 200


def worker_shape(accelerator: str, count: int) -> WorkerShape:
    """The Dataflow worker for ``count`` accelerators of a type; LaunchError if none exists."""
    try:
        acc = accelerators.get(accelerator)
        return WorkerShape(acc.machine_type(count), acc.worker_accelerator(count), acc.kind)
    except accelerators.UnknownAccelerator as e:
        raise LaunchError(f"dataflow: {e}") from e


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


def _labels(spec: JobSpec, job_id: str, cfg: DataflowConfig) -> dict[str, str]:
    return {
        "hyperbatch-job": job_id[:63],
        "hyperbatch-accelerator": spec.accelerator,
        "hyperbatch-engine": spec.engine,
        **cfg.labels,
    }


def _harness_threads(spec: JobSpec) -> int:
    return shards_in_flight(spec.batch_size, spec.records_per_shard)


def _experiments(shape: WorkerShape) -> list[str]:
    # Runner v2 runs custom containers and accelerators. One SDK process per worker: the engine
    # holds the whole device, and a second process would load a second copy of the model.
    return ["use_runner_v2"] + (["no_use_multiple_sdk_containers"] if shape.kind != "cpu" else [])


def pipeline_options(
    spec: JobSpec, job_id: str, cfg: DataflowConfig, root: str, events_topic: str | None = None
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
        # one SDK process holds the device; this many bundles in it keep its engine loop fed
        opts["number_of_worker_harness_threads"] = _harness_threads(spec)
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
    spec: JobSpec, job_id: str, cfg: DataflowConfig, root: str, events_topic: str | None = None
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
        additional_pipeline_options=(
            [f"number_of_worker_harness_threads={_harness_threads(spec)}"]
            if shape.worker_accelerator
            else []
        ),
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
        from google.cloud import dataflow_v1beta3 as df

        cls = {"flex": df.FlexTemplatesServiceClient, "jobs": df.JobsV1Beta3Client}[kind]
        # No usable credentials is a CredentialsError, not a LaunchError: the job stays QUEUED
        # (not FAILED), so the same submit launches it once the credentials are fixed.
        credentials = storage.google_credentials(self.service)
        return cls(client_options=_client_options(self.config), credentials=credentials)

    @property
    def service(self) -> str:
        """What the no-usable-credentials paragraph says it could not reach."""
        return f"Dataflow (project {self.config.project}, region {self.config.region})"

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

    def plan(self, spec: JobSpec, job_id: str, store: JobStore) -> dict[str, Any]:
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

    def launch(self, spec: JobSpec, job_id: str, store: JobStore) -> dict[str, Any]:
        from google.api_core import exceptions

        request = flex_template_request(spec, job_id, self.config, store.root, self.events_topic)
        try:
            with storage.credentials_checked(self.service):  # a 401: QUEUED, as above
                response = _send_launch(self.flex, request)
        except exceptions.Conflict:
            # ALREADY_EXISTS (409): an earlier attempt whose answer was lost launched it. Dataflow
            # job names are unique among active jobs, and ours is the job id.
            cfg = self.config
            job = _active_job_named(self.jobs, cfg.project or "", cfg.region or "", job_id)
            if job is None:
                raise LaunchError(
                    f"dataflow refused job name {job_id} as a duplicate, but no active job has it"
                ) from None
            return self._handle(job)
        except (
            exceptions.BadRequest,  # invalid argument, failed precondition
            exceptions.Forbidden,  # permission denied
            exceptions.NotFound,  # no such template, project or region
        ) as e:
            raise LaunchError(f"dataflow refused the launch: {e.message}") from e
        return self._handle(response.job)

    def cancel(self, launch: Launch, job_id: str = "") -> str:
        from google.cloud import dataflow_v1beta3 as df

        if not launch.dataflow_job_id:
            return "not launched yet: it will not start"
        request = df.UpdateJobRequest(
            project_id=launch.project,
            location=launch.region,
            job_id=launch.dataflow_job_id,
            job=df.Job(requested_state=df.JobState.JOB_STATE_CANCELLED),
        )
        _update_job(self.jobs, request)
        return f"requested cancellation of Dataflow job {launch.dataflow_job_id}"

    def poll(self, record: Record) -> str | None:
        from google.cloud import dataflow_v1beta3 as df

        launch = record.launch or Launch()
        if not launch.dataflow_job_id:
            return None
        job = _get_job(
            self.jobs,
            df.GetJobRequest(
                project_id=launch.project,
                location=launch.region,
                job_id=launch.dataflow_job_id,
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
            return f"Dataflow job {job.id} {gone[state]} (see {launch.console_url})"
        return None
