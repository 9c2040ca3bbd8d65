"""A burst of job requests through the pull listener: time until all are recorded, the
listener's peak memory, and proof that none is lost or recorded twice.

Starts Google's Pub/Sub emulator and (for a gs:// job store) fake-gcs-server, runs
``hyperbatch trigger listen --record-only`` as its own process, publishes N job requests (each
with its own idempotency key) plus a share of them published again, and waits until every job
is recorded. The clock runs from the first publish to the last QUEUED event heard on the status
topic (a job is announced only after its status.json is written). Reference, measured in the
same run: the same N records written directly with JobStore.create from 8 threads (no Pub/Sub).

    python benchmarks/trigger_burst.py                       # 1000 requests, store on fake-gcs
    python benchmarks/trigger_burst.py --store local -n 200
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PROJECT = "hyperbatch-bench"


def rss_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


@contextlib.contextmanager
def emulators(store: str):
    from tests import emulators as emu

    with contextlib.ExitStack() as stack:
        os.environ["PUBSUB_EMULATOR_HOST"] = stack.enter_context(emu.pubsub_emulator())
        os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
        if store == "gcs":
            os.environ["STORAGE_EMULATOR_HOST"] = stack.enter_context(emu.fake_gcs_server())
        yield


def spec_for(input_path: str, output: str) -> dict:
    return {"name": "burst", "task": "chat", "input": input_path, "input_format": "openai",
            "output": output, "model": "fake", "engine": "fake", "records_per_shard": 100}  # fmt: skip


def direct_reference(root: str, spec_data: dict, n: int) -> float:
    """Seconds to record n jobs straight into the store from 8 threads (the floor)."""
    from hyperbatch.jobs import spec as job_spec
    from hyperbatch.jobs.store import JobStore

    store = JobStore(root)
    spec = job_spec.validate({**spec_data, "output": root})

    def create(i: int) -> None:
        store.create(spec, f"direct-{i:05d}", submitted_by="bench", submission={"via": "bench"},
                     runner=None)  # fmt: skip

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(n)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1000, help="distinct job requests")
    ap.add_argument("--republish", type=float, default=0.1,
                    help="share of requests published a second time (same job id)")  # fmt: skip
    ap.add_argument("--store", choices=["gcs", "local"], default="gcs")
    ap.add_argument("--threads", type=int, default=8, help="listener: messages handled at once")
    ap.add_argument("--max-messages", type=int, default=100, help="listener: flow control")
    args = ap.parse_args()

    from google.cloud import pubsub_v1

    from hyperbatch import storage
    from hyperbatch.jobs.store import JobStore
    from tests.records import jsonl, openai_chat

    work = tempfile.mkdtemp(prefix="trigger-burst-")
    with emulators(args.store):
        if args.store == "gcs":
            storage.gcs_client().create_bucket("burst")
            root, direct_root = "gs://burst/jobs", "gs://burst/direct"
        else:
            root, direct_root = os.path.join(work, "jobs"), os.path.join(work, "direct")
        input_path = os.path.join(work, "in.jsonl")
        with open(input_path, "wb") as f:
            f.write(jsonl([openai_chat("r0", "hello there")]))
        spec_data = spec_for(input_path, root)

        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        requests = f"projects/{PROJECT}/topics/requests"
        events = f"projects/{PROJECT}/topics/events"
        for t in (requests, events):
            publisher.create_topic(name=t)
        sub = f"projects/{PROJECT}/subscriptions/requests-listener"
        subscriber.create_subscription(request={"name": sub, "topic": requests,
                                                "ack_deadline_seconds": 60})  # fmt: skip
        events_sub = f"projects/{PROJECT}/subscriptions/events-bench"
        subscriber.create_subscription(name=events_sub, topic=events)

        # Hear the QUEUED events: the clock stops at the n-th distinct job.
        queued: dict[str, int] = {}
        lock, all_heard = threading.Lock(), threading.Event()
        last_event = [0.0]

        def on_event(message) -> None:
            event = json.loads(message.data)
            with lock:
                if event["state"] == "QUEUED":
                    queued[event["job_id"]] = queued.get(event["job_id"], 0) + 1
                    last_event[0] = time.perf_counter()
                    if len(queued) >= args.n:
                        all_heard.set()
            message.ack()

        event_stream = subscriber.subscribe(events_sub, on_event)

        env = {**os.environ, "PYTHONPATH": ROOT}
        listener = subprocess.Popen(
            [sys.executable, "-m", "hyperbatch", "trigger", "listen", "--subscription", sub,
             "--root", root, "--record-only", "--events-topic", events,
             "--threads", str(args.threads), "--max-messages", str(args.max_messages)],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = listener.stderr.readline()
        if "listening on" not in line:
            raise RuntimeError(f"listener did not start: {line}{listener.stderr.read()}")
        time.sleep(1.0)  # its streaming pull is open
        idle_rss = rss_mib(listener.pid, "VmRSS")

        nonces = {f"burst-{i:05d}": uuid.uuid4().hex for i in range(args.n)}
        again = list(nonces)[: int(args.n * args.republish)]
        t0 = time.perf_counter()
        futures = []
        for job_id in [*nonces, *again]:
            body = json.dumps({"job_id": job_id, "spec": spec_data,
                               "submitted_by": f"bench:{nonces[job_id]}"}).encode()  # fmt: skip
            futures.append(publisher.publish(requests, body))
        message_ids = [f.result() for f in futures]
        published_s = time.perf_counter() - t0
        peak_during = idle_rss
        while not all_heard.wait(0.2):
            peak_during = max(peak_during, rss_mib(listener.pid, "VmRSS"))
            if listener.poll() is not None:
                raise RuntimeError(f"listener died: {listener.stderr.read()}")
        recorded_s = last_event[0] - t0
        time.sleep(2.0)  # let the re-published duplicates be handled too
        peak_rss = rss_mib(listener.pid, "VmHWM")
        with open(f"/proc/{listener.pid}/stat") as f:
            ticks = f.read().rsplit(")", 1)[1].split()
        cpu_s = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        listener.terminate()
        _, err = listener.communicate(timeout=60)
        event_stream.cancel()
        summary = json.loads(err.strip().rsplit("stopped: ", 1)[1].splitlines()[0])

        # Proof: the store holds exactly the n jobs, each with its own request's nonce.
        store = JobStore(root)
        records = store.list(workers=16)
        by_id = {r.job_id: r for r in records}
        lost = sorted(set(nonces) - set(by_id))
        extra = sorted(set(by_id) - set(nonces))
        wrong = [j for j, r in by_id.items() if j in nonces
                 and r.status.submitted_by != f"bench:{nonces[j]}"]  # fmt: skip
        doubled_events = {j: c for j, c in queued.items() if c > 1}
        leftover = subscriber.pull(request={"subscription": sub, "max_messages": 10}, timeout=5)

        direct_s = direct_reference(direct_root, spec_data, args.n)

    result = {
        "requests": args.n,
        "messages_published": len(message_ids),
        "store": args.store,
        "publish_seconds": round(published_s, 2),
        "seconds_until_all_recorded": round(recorded_s, 2),
        "jobs_recorded_per_second": round(args.n / recorded_s, 1),
        "direct_store_create_seconds": round(direct_s, 2),
        "ratio_listener_vs_direct": round(recorded_s / direct_s, 2),
        "listener_cpu_seconds": round(cpu_s, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "listener_rss_idle_mib": round(idle_rss, 1),
        "listener_rss_peak_sampled_mib": round(peak_during, 1),
        "listener_peak_rss_mib_vmhwm": round(peak_rss, 1),
        "listener_summary": summary,
        "jobs_in_store": len(records),
        "lost": lost[:10],
        "unexpected": extra[:10],
        "wrong_request": wrong[:10],
        "queued_events_distinct": len(queued),
        "queued_events_doubled": doubled_events,
        "unacked_left": len(leftover.received_messages),
    }
    print(json.dumps(result, indent=2))
    ok = (not lost and not extra and not wrong and len(records) == args.n
          and summary.get("submitted") == args.n and summary.get("duplicate") == len(again)
          and not leftover.received_messages)  # fmt: skip
    print("none lost, none doubled" if ok else "MISMATCH", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
