"""Launchers: the exact Dataflow options and Flex Template request per accelerator, the real
google-cloud-dataflow-client call (against a local REST fake that fails first), and local jobs
that are cancelled, stop themselves, crash, or finish through the Flex Template entry point."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

import pytest

from hyperbatch.jobs import lifecycle
from hyperbatch.jobs import spec as job_spec
from hyperbatch.jobs.status import JobStatus, Launch
from hyperbatch.jobs.store import JobState, JobStore, Record
from hyperbatch.jobs.submit import JobRequest, LaunchError, submit
from hyperbatch.runners import dataflow, flex, job_process, local
from hyperbatch.runners.dataflow import DataflowConfig, DataflowLauncher
from hyperbatch.runners.launch import launcher_for
from hyperbatch.runners.local import LocalLauncher
from tests.helpers import loopback
from tests.jobs import control_plane as cp

CONFIG = DataflowConfig(
    project="acme-ml",
    region="us-east5",
    template="gs://acme-templates/hyperbatch/flex.json",
    image="us-docker.pkg.dev/acme-ml/hyperbatch/worker:0.1.0",
    service_account="batch@acme-ml.iam.gserviceaccount.com",
    network="ml-vpc",
    subnetwork="regions/us-east5/subnetworks/ml",
    max_workers=6,
    public_ips=False,
    labels={"team": "search"},
)
ROOT = "gs://acme-jobs/jobs"


def spec_for(accelerator: str, count: int = 1) -> job_spec.JobSpec:
    return job_spec.validate(
        {**cp.spec_dict("gs://acme-data/in/*.jsonl", ROOT, name="sweep"),
         "accelerator": accelerator, "accelerator_count": count},
        check_resources=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("accelerator", "count", "machine", "worker_accelerator"),
    [
        ("tpu-v5e", 1, "ct5lp-hightpu-1t", "type:tpu-v5-lite-podslice;topology:1x1"),
        ("tpu-v5e", 4, "ct5lp-hightpu-4t", "type:tpu-v5-lite-podslice;topology:2x2"),
        ("tpu-v5e", 8, "ct5lp-hightpu-8t", "type:tpu-v5-lite-podslice;topology:2x4"),
        ("tpu-v6e", 1, "ct6e-standard-1t", "type:tpu-v6e-slice;topology:1x1"),
        ("tpu-v6e", 4, "ct6e-standard-4t", "type:tpu-v6e-slice;topology:2x2"),
        ("tpu-v6e", 8, "ct6e-standard-8t", "type:tpu-v6e-slice;topology:2x4"),
        ("tpu-v5p", 4, "ct5p-hightpu-4t", "type:tpu-v5p-slice;topology:2x2x1"),
        ("nvidia-l4", 1, "g2-standard-4", "type:nvidia-l4;count:1;install-nvidia-driver"),
        ("nvidia-l4", 4, "g2-standard-48", "type:nvidia-l4;count:4;install-nvidia-driver"),
        ("nvidia-a100-40gb", 1, "a2-highgpu-1g",
         "type:nvidia-tesla-a100;count:1;install-nvidia-driver"),
        ("nvidia-a100-80gb", 2, "a2-ultragpu-2g",
         "type:nvidia-a100-80gb;count:2;install-nvidia-driver"),
        ("nvidia-h100-80gb", 8, "a3-highgpu-8g",
         "type:nvidia-h100-80gb;count:8;install-nvidia-driver"),
        ("nvidia-h200-141gb", 8, "a3-ultragpu-8g",
         "type:nvidia-h200-141gb;count:8;install-nvidia-driver"),
    ],
)  # fmt: skip
def test_each_accelerator_gets_its_worker(accelerator, count, machine, worker_accelerator):
    spec = spec_for(accelerator, count)
    options = dataflow.pipeline_options(spec, "sweep-1", CONFIG, ROOT)
    assert options["machine_type"] == machine
    assert options["dataflow_service_options"] == [f"worker_accelerator={worker_accelerator}"]
    assert options["experiments"] == ["use_runner_v2", "no_use_multiple_sdk_containers"]
    assert options["disk_size_gb"] == 200
    assert options["number_of_worker_harness_threads"] == 16
    request = dataflow.request_as_dict(
        dataflow.flex_template_request(spec, "sweep-1", CONFIG, ROOT)
    )
    param = request["launchParameter"]
    assert param["environment"]["machineType"] == machine
    assert (
        param["parameters"]["dataflow_service_options"]
        == f"worker_accelerator={worker_accelerator}"
    )


def test_tpu_pipeline_options_exactly():
    options = dataflow.pipeline_options(
        spec_for("tpu-v6e", 4),
        "sweep-1",
        CONFIG,
        ROOT,
        events_topic="projects/acme-ml/topics/job-events",
    )
    assert dataflow.as_flags(options) == [
        "--runner=DataflowRunner",
        "--project=acme-ml",
        "--region=us-east5",
        "--job_name=sweep-1",
        "--temp_location=gs://acme-jobs/jobs/_dataflow/temp",
        "--staging_location=gs://acme-jobs/jobs/_dataflow/temp/staging",
        "--sdk_container_image=us-docker.pkg.dev/acme-ml/hyperbatch/worker:0.1.0",
        "--sdk_location=container",
        "--machine_type=ct6e-standard-4t",
        "--num_workers=1",
        "--max_num_workers=6",
        "--autoscaling_algorithm=THROUGHPUT_BASED",
        "--experiments=use_runner_v2",
        "--experiments=no_use_multiple_sdk_containers",
        "--labels=hyperbatch-job=sweep-1",
        "--labels=hyperbatch-accelerator=tpu-v6e",
        "--labels=hyperbatch-engine=fake",
        "--labels=team=search",
        "--dataflow_service_options=worker_accelerator=type:tpu-v6e-slice;topology:2x2",
        "--number_of_worker_harness_threads=16",  # 2 batches of 32 / 2 records per shard, capped
        "--disk_size_gb=200",
        "--service_account_email=batch@acme-ml.iam.gserviceaccount.com",
        "--network=ml-vpc",
        "--subnetwork=regions/us-east5/subnetworks/ml",
        "--no_use_public_ips",
        "--hyperbatch_root=gs://acme-jobs/jobs",
        "--hyperbatch_job_id=sweep-1",
        "--hyperbatch_events_topic=projects/acme-ml/topics/job-events",
    ]


def test_gpu_flex_template_request_exactly():
    request = dataflow.flex_template_request(
        spec_for("nvidia-h100-80gb", 8), "sweep-1", CONFIG, ROOT
    )
    assert dataflow.request_as_dict(request) == {
        "projectId": "acme-ml",
        "location": "us-east5",
        "launchParameter": {
            "jobName": "sweep-1",
            "containerSpecGcsPath": "gs://acme-templates/hyperbatch/flex.json",
            "parameters": {
                "hyperbatch_root": "gs://acme-jobs/jobs",
                "hyperbatch_job_id": "sweep-1",
                "dataflow_service_options":
                    "worker_accelerator=type:nvidia-h100-80gb;count:8;install-nvidia-driver",
            },
            "environment": {
                "numWorkers": 1,
                "maxWorkers": 6,
                "machineType": "a3-highgpu-8g",
                "tempLocation": "gs://acme-jobs/jobs/_dataflow/temp",
                "stagingLocation": "gs://acme-jobs/jobs/_dataflow/temp/staging",
                "sdkContainerImage": "us-docker.pkg.dev/acme-ml/hyperbatch/worker:0.1.0",
                "additionalExperiments": ["use_runner_v2", "no_use_multiple_sdk_containers"],
                "additionalUserLabels": {"hyperbatch-job": "sweep-1", "team": "search",
                                         "hyperbatch-accelerator": "nvidia-h100-80gb",
                                         "hyperbatch-engine": "fake"},
                "autoscalingAlgorithm": "AUTOSCALING_ALGORITHM_BASIC",
                "serviceAccountEmail": "batch@acme-ml.iam.gserviceaccount.com",
                "network": "ml-vpc",
                "subnetwork": "regions/us-east5/subnetworks/ml",
                "ipConfiguration": "WORKER_IP_PRIVATE",
                "diskSizeGb": 200,
                "additionalPipelineOptions": ["number_of_worker_harness_threads=16"],
            },
        },
    }  # fmt: skip


def test_cpu_workers_and_what_is_refused():
    cpu = dataflow.pipeline_options(
        spec_for("cpu"),
        "sweep-1",
        DataflowConfig(project="p", region="r", template="gs://t/f.json", image="i"),
        ROOT,
    )
    assert cpu["machine_type"] == "n2-standard-2"
    assert "number_of_worker_harness_threads" not in cpu  # Dataflow's default for CPU workers
    assert cpu["experiments"] == ["use_runner_v2"]
    assert "dataflow_service_options" not in cpu
    assert "disk_size_gb" not in cpu
    with pytest.raises(LaunchError, match="tpu-v5e workers carry 1, 4, 8 chips"):
        dataflow.pipeline_options(spec_for("tpu-v5e", 2), "sweep-1", CONFIG, ROOT)
    with pytest.raises(LaunchError, match="nvidia-h200-141gb workers carry 8 GPUs"):
        dataflow.pipeline_options(spec_for("nvidia-h200-141gb", 1), "sweep-1", CONFIG, ROOT)
    with pytest.raises(LaunchError) as e:
        dataflow.pipeline_options(spec_for("cpu"), "sweep-1", DataflowConfig(), "/local/jobs")
    for needed in ("--project", "--region", "--template", "--image", "--temp-location"):
        assert needed in str(e.value)


# --------------------------------------------------------------------------- the real client


class FakeDataflow(BaseHTTPRequestHandler):
    """The Dataflow REST API, as far as the launcher uses it; fails the first launch with 503."""

    calls: ClassVar[list[tuple[str, str, dict]]] = []
    launches = 0

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length)) if length else {}

    def do_POST(self):
        FakeDataflow.calls.append(("POST", self.path, self._body()))
        FakeDataflow.launches += 1
        if FakeDataflow.launches == 1:
            return self._reply(
                503, {"error": {"code": 503, "message": "try again", "status": "UNAVAILABLE"}}
            )
        if FakeDataflow.launches == 3:
            return self._reply(
                409,
                {"error": {"code": 409, "message": "job name exists", "status": "ALREADY_EXISTS"}},
            )
        return self._reply(200, {"job": {"id": "2026-01-01_00_00_00-111", "name": "sweep-1"}})

    def do_GET(self):
        FakeDataflow.calls.append(("GET", self.path, {}))
        if "/jobs/" in self.path:
            return self._reply(
                200, {"id": "2026-01-01_00_00_00-111", "currentState": "JOB_STATE_FAILED"}
            )
        return self._reply(200, {"jobs": [{"id": "2026-01-01_00_00_00-111", "name": "sweep-1"}]})

    def do_PUT(self):
        FakeDataflow.calls.append(("PUT", self.path, self._body()))
        return self._reply(200, {"id": "2026-01-01_00_00_00-111"})

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def fake_dataflow():
    FakeDataflow.calls, FakeDataflow.launches = [], 0
    with loopback.serve(FakeDataflow) as port:
        yield f"http://127.0.0.1:{port}"


def test_launch_cancel_and_poll_through_the_dataflow_client(tmp_path):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import dataflow_v1beta3 as df

    with fake_dataflow() as endpoint:
        options = {"api_endpoint": endpoint}
        launcher = DataflowLauncher(
            CONFIG,
            flex_client=df.FlexTemplatesServiceClient(
                transport="rest", client_options=options, credentials=AnonymousCredentials()),
            jobs_client=df.JobsV1Beta3Client(
                transport="rest", client_options=options, credentials=AnonymousCredentials()),
        )  # fmt: skip
        spec = spec_for("tpu-v5e", 4)
        store = JobStore(ROOT)
        handle = launcher.launch(spec, "sweep-1", store)  # 503 first: retried by CLOUD_RETRY
        assert handle == {
            "launcher": "dataflow", "dataflow_job_id": "2026-01-01_00_00_00-111",
            "project": "acme-ml", "region": "us-east5",
            "console_url": "https://console.cloud.google.com/dataflow/jobs/us-east5/"
                           "2026-01-01_00_00_00-111?project=acme-ml",
        }  # fmt: skip
        (_, path1, body1), (_, path2, body2) = FakeDataflow.calls[:2]
        assert (
            path1.split("?")[0] == "/v1b3/projects/acme-ml/locations/us-east5/flexTemplates:launch"
        )
        assert path2 == path1
        assert body1 == body2
        request = dataflow.flex_template_request(spec, "sweep-1", CONFIG, ROOT)
        sent = dataflow.request_as_dict(
            request, enums_as_ints=True
        )  # the REST transport's encoding
        assert body1 == {"launchParameter": sent["launchParameter"]}  # project, region: in the path

        # a relaunch whose name is taken (the first answer was lost): the active job is found
        assert launcher.launch(spec, "sweep-1", store) == handle
        assert FakeDataflow.calls[-1][0] == "GET"
        assert "name=sweep-1" in FakeDataflow.calls[-1][1]

        assert "requested cancellation" in launcher.cancel(Launch(**handle), "sweep-1")
        method, path, body = FakeDataflow.calls[-1]
        assert (method, path.split("?")[0]) == (
            "PUT",
            "/v1b3/projects/acme-ml/locations/us-east5/jobs/2026-01-01_00_00_00-111",
        )
        assert body["requestedState"] in ("JOB_STATE_CANCELLED", 5)

        status = JobStatus(
            "sweep-1", "sweep", JobState.RUNNING, "d", ROOT, ROOT, "t", "t", launch=Launch(**handle)
        )
        gone = launcher.poll(Record(status, 1))
        assert "2026-01-01_00_00_00-111 failed" in gone


# --------------------------------------------------------------------------- local jobs


@pytest.fixture
def slow_job(tmp_path):
    """A QUEUED job on the slow engine (0.3 s per request, 40 requests)."""
    import tests.runners.slow_engine  # noqa: F401 - registers the engine for validation here

    store = JobStore(str(tmp_path / "jobs"))
    data = cp.spec_dict(
        cp.write_input(str(tmp_path / "in.jsonl"), n=40),
        store.root,
        name="slow",
        engine="slow",
        engine_options={"seconds_per_request": 0.3},
    )
    spec = job_spec.validate(data)
    launcher = LocalLauncher(plugins=("tests.runners.slow_engine",), heartbeat_s=0.3)
    request = JobRequest("slow-job", spec, "test", {"via": "test"})
    return store, launcher, request


def running_with_progress(store, job_id):
    r = store.find(job_id)
    return (
        r
        if r and r.state == JobState.RUNNING and (r.to_dict().get("progress") or {}).get("records")
        else None
    )


def test_a_job_cancelled_elsewhere_stops_itself(slow_job):
    """Cancelled by state only (as from another machine): the heartbeat stops the process."""
    store, launcher, request = slow_job
    record = submit(store, request, launcher).record
    pid = record.launch.pid
    cp.wait_for(lambda: running_with_progress(store, "slow-job"), timeout=60)
    store.transition("slow-job", JobState.CANCELLED, by="someone elsewhere")
    cp.wait_for(lambda: not local._process_alive(pid, "slow-job"), timeout=20)
    final = store.get("slow-job")
    assert final.state == JobState.CANCELLED
    assert final.to_dict()["manifest"] is None
    assert final.to_dict()["progress"]["records"] < 40


def test_a_crashed_job_process_is_failed_by_reconcile(slow_job):
    store, launcher, request = slow_job
    record = submit(store, request, launcher).record
    pid = record.launch.pid
    running = cp.wait_for(lambda: running_with_progress(store, "slow-job"), timeout=60)
    assert (
        lifecycle.reconcile(store, running, launcher_for(running)).state == JobState.RUNNING
    )  # alive: left alone
    os.killpg(pid, signal.SIGKILL)  # an OOM kill, say
    cp.wait_for(lambda: not local._process_alive(pid, "slow-job"), timeout=20)
    failed = lifecycle.reconcile(store, store.get("slow-job"), launcher_for(store.get("slow-job")))
    assert failed.state == JobState.FAILED
    assert f"its process {pid} exited without recording a result" in failed.to_dict()["error"]
    assert failed.to_dict()["error"].endswith("launch.log")


def test_local_plan_and_multi_process_mode(tmp_path):
    store = JobStore(str(tmp_path / "jobs"))
    plan = LocalLauncher(workers=3, events_topic="projects/p/topics/t").plan(
        spec_for("cpu"), "sweep-1", store
    )
    assert plan["direct_running_mode"] == "multi_processing"
    assert plan["direct_num_workers"] == 3
    assert plan["command"][1:] == [
        "-m",
        "hyperbatch.runners.launch",
        "execute",
        "--root",
        store.root,
        "--job-id",
        "sweep-1",
        "--workers",
        "3",
        "--heartbeat-s",
        "5.0",
        "--events-topic",
        "projects/p/topics/t",
    ]
    assert plan["log"] == os.path.join(store.root, "sweep-1", "launch.log")


def test_the_flex_entry_point_records_the_final_state(tmp_path):
    """flex_main on the local runner: QUEUED -> RUNNING, then the appended step -> SUCCEEDED."""
    store = JobStore(str(tmp_path / "jobs"))
    spec = cp.make_spec(cp.write_input(str(tmp_path / "in.jsonl"), n=3), store.root)
    store.create(spec, "flexed", submitted_by="t", submission={"via": "test"}, runner="dataflow")
    runner = "apache_beam.runners.portability.fn_api_runner.fn_runner.FnApiRunner"
    code = flex.flex_main(
        ["--hyperbatch_root", store.root, "--hyperbatch_job_id", "flexed", f"--runner={runner}"]
    )
    assert code == job_process.EXIT_SUCCEEDED
    done = store.get("flexed")
    assert done.state == JobState.SUCCEEDED
    assert done.to_dict()["manifest"]["records_in"] == 3
    assert [h["state"] for h in done.to_dict()["history"]] == ["QUEUED", "RUNNING", "SUCCEEDED"]
    assert done.to_dict()["history"][-1]["by"].startswith("dataflow worker")
    assert (
        flex.flex_main(
            ["--hyperbatch_root", store.root, "--hyperbatch_job_id", "flexed", f"--runner={runner}"]
        )
        == job_process.EXIT_NOT_RUN
    )


def test_local_jobs_wait_for_a_free_slot(tmp_path):
    """max_running bounds the job processes of one launcher: a launch waits for one to exit.

    The "job processes" are scripts that write a marker when they start and exit once the test
    releases them, so the test observes the order of events, not durations."""
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/bin/sh\n"
        'job=$(echo "$@" | sed "s/.*--job-id \\([^ ]*\\).*/\\1/")\n'
        f'touch "{tmp_path}/started-$job"\n'
        f'while [ ! -e "{tmp_path}/release-$job" ]; do sleep 0.02; done\n'
    )
    fake_python.chmod(0o755)
    store = JobStore(str(tmp_path / "jobs"))
    launcher = LocalLauncher(python=str(fake_python), max_running=1)
    spec = spec_for("cpu")
    threads = [
        threading.Thread(target=launcher.launch, args=(spec, f"job-{i}", store)) for i in range(2)
    ]
    for t in threads:
        t.start()

    def started() -> list[str]:
        return sorted(p.name[len("started-") :] for p in tmp_path.glob("started-*"))

    cp.wait_for(lambda: len(started()) == 1, timeout=20)
    first = started()[0]
    second = "job-1" if first == "job-0" else "job-0"
    # the second launch waits for the slot for as long as the first job runs
    waiting = threads[["job-0", "job-1"].index(second)]
    waiting.join(0.5)
    assert waiting.is_alive()
    assert started() == [first]
    (tmp_path / f"release-{first}").touch()
    cp.wait_for(lambda: started() == ["job-0", "job-1"], timeout=20)
    (tmp_path / f"release-{second}").touch()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)


def test_reconcile_completes_a_run_whose_final_write_was_lost(tmp_path):
    """The job process wrote the manifest, then died before recording SUCCEEDED."""
    import socket
    import subprocess

    from hyperbatch.runners import pipeline

    store = JobStore(str(tmp_path / "jobs"))
    spec = cp.make_spec(cp.write_input(str(tmp_path / "in.jsonl"), n=3), store.root)
    store.create(spec, "lost-write", submitted_by="t", submission={"via": "test"}, runner="local")
    gone = subprocess.Popen(["true"])
    gone.wait()
    store.transition("lost-write", JobState.RUNNING,
                     launch={"launcher": "local", "pid": gone.pid, "host": socket.gethostname()})  # fmt: skip
    pipeline.run(spec, "lost-write")
    done = lifecycle.reconcile(
        store, store.get("lost-write"), launcher_for(store.get("lost-write"))
    )
    assert done.state == JobState.SUCCEEDED
    assert done.to_dict()["manifest"]["records_in"] == 3
