"""Fault injection: kill -9 a job at random moments, again and again, then let it finish.

A 200-record job on fake-gcs-server (its input, its job folder and lease all on "Cloud
Storage"), served by the ``slow`` test engine (the fake engine, a fixed time per request, so
kills land mid-shard). ``--cycles`` times: start ``hyperbatch run`` in its own process, wait
until it holds the job's lease (it is working: Python and Beam start-up, which take several
seconds on a busy machine, are not what is being tested), kill it with SIGKILL after a random
0.5-8 s more; then one more run to the end. The engine work (records x seconds per request,
one request at a time) is at least ``cycles`` x 8 s, so the job cannot finish before the last
kill: every kill lands mid-job (the script checks it, counting the committed shards after each
kill). Reports:
  * records lost and duplicated among the committed results (goal: 0 and 0);
  * kills mid-job (shards still uncommitted when the process died) and how many shards each
    killed attempt committed;
  * accelerator seconds: what the manifest counts (committed shards, plus the time of killed
    attempts their commits do not cover) against what was measured (the wall time of every
    process, start-up included).

    python benchmarks/fault_injection.py                 # 20 cycles
    python benchmarks/fault_injection.py --cycles 5 --seed 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--records-per-shard", type=int, default=4)
    ap.add_argument("--seconds-per-request", type=float, default=0.8)
    ap.add_argument("--max-delay", type=float, default=8.0,
                    help="kill delays after the lease is taken: 0.5 s to this")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work_s = args.records * args.seconds_per_request
    if work_s < args.cycles * args.max_delay:
        ap.error(f"{args.records} records x {args.seconds_per_request} s = {work_s:.0f} s of "
                 f"work could end before the last of {args.cycles} kills (up to "
                 f"{args.max_delay:.0f} s each): give more records or a longer request")  # fmt: skip
    shards = -(-args.records // args.records_per_shard)

    from hyperbatch import storage
    from tests import emulators

    rng = random.Random(args.seed)
    with emulators.fake_gcs_server() as url, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "STORAGE_EMULATOR_HOST": url, "NO_GCE_CHECK": "true",
               "GOOGLE_CLOUD_PROJECT": "bench", "HYPERBATCH_LEASE_TTL_S": "3",
               "HYPERBATCH_LOG_DIR": os.path.join(tmp, "logs")}  # fmt: skip
        os.environ.update(env)
        storage.gcs_client.cache_clear()
        storage.gcs_client().create_bucket("faults")

        def line(i: int) -> str:
            body = {"messages": [{"role": "user", "content": f"record {i} a b c"}], "max_tokens": 3}
            request = {"custom_id": f"r{i:04d}", "method": "POST",
                       "url": "/v1/chat/completions", "body": body}  # fmt: skip
            return json.dumps(request)

        lines = [line(i) for i in range(args.records)]
        storage.write_bytes("gs://faults/in/records.jsonl", ("\n".join(lines) + "\n").encode())
        spec = {
            "name": "faults", "task": "chat", "input": "gs://faults/in/records.jsonl",
            "input_format": "openai", "output": "gs://faults/out", "model": "fake",
            "engine": "slow", "records_per_shard": args.records_per_shard,
            # two requests at a time: two shards in flight, each committed as soon as served
            # (at batch 32 the engine interleaves 16 shards and a first commit takes ~40 s)
            "batch_size": 2,
            "engine_options": {"seconds_per_request": args.seconds_per_request},
        }  # fmt: skip
        job = os.path.join(tmp, "job.json")
        with open(job, "w") as f:
            json.dump(spec, f)
        command = [sys.executable, "-m", "hyperbatch", "run", job, "--quiet", "--format", "json",
                   "--plugin", "tests.runners.slow_engine"]  # fmt: skip

        def committed() -> int:
            return len(storage.glob("gs://faults/out/*/results/*.jsonl"))

        def holds_lease(proc: subprocess.Popen[bytes]) -> bool:
            for info in storage.glob("gs://faults/out/*/_lease.json"):
                try:
                    owner = json.loads(storage.read_text(info.path)).get("owner", "")
                except (OSError, ValueError):  # released or replaced between list and read
                    continue
                if owner.split(":")[1:2] == [str(proc.pid)]:
                    return True
            return False

        measured, kills, mid_job, progress = 0.0, [], 0, []
        for cycle in range(args.cycles):
            delay = rng.uniform(0.5, args.max_delay)
            before = committed()
            t0 = time.monotonic()
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
            while proc.poll() is None and not holds_lease(proc) and time.monotonic() - t0 < 120:
                time.sleep(0.1)
            started = time.monotonic() - t0
            try:
                proc.wait(timeout=delay)
                outcome = f"finished first (exit {proc.returncode})"
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                outcome = f"killed {delay:.1f} s after taking the lease ({started:.1f} s start-up)"
            measured += time.monotonic() - t0
            after = committed()
            progress.append(after - before)
            if after < shards and outcome.startswith("killed"):
                mid_job += 1  # the job still had uncommitted shards when its process died
            kills.append(outcome)
            print(f"cycle {cycle + 1:2d}: {outcome}; shards committed {after}/{shards} "
                  f"(+{after - before})", file=sys.stderr)  # fmt: skip
        t0 = time.monotonic()
        final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        measured += time.monotonic() - t0
        if final.returncode != 0:
            sys.exit(f"the final run failed ({final.returncode}):\n{final.stderr}")
        manifest = json.loads(final.stdout)

        ids: list[str] = []
        for info in storage.glob(f"gs://faults/out/{manifest['job_id']}/results/*.jsonl"):
            ids += [
                json.loads(line)["custom_id"] for line in storage.read_text(info.path).splitlines()
            ]
        expected = {f"r{i:04d}" for i in range(args.records)}
        lost = len(expected - set(ids))
        duplicated = len(ids) - len(set(ids))

    print(f"\n{args.cycles} cycles of kill -9 at random times (0.5-{args.max_delay:.0f} s after "
          f"the run took the lease), then a final run; {args.records} records x "
          f"{args.seconds_per_request} s, shards of "
          f"{args.records_per_shard}, fake GCS")  # fmt: skip
    print(f"records lost: {lost}, duplicated: {duplicated}  (goal 0 and 0)")
    print(f"kills mid-job (shards uncommitted when the process died): {mid_job} of "
          f"{args.cycles}; killed attempts that committed shards: "
          f"{sum(1 for p in progress if p)} (shards each: {progress})")  # fmt: skip
    print(f"manifest: {manifest['records_in']} in = {manifest['results']} results + "
          f"{manifest['errors']} errors, {manifest['attempts']} attempts")  # fmt: skip
    counted = manifest["accelerator_seconds"]
    print(f"accelerator seconds counted {counted:.1f} (of which lost work "
          f"{manifest['accelerator_seconds_lost']:.1f}) vs measured {measured:.1f} "
          f"(every process's wall, Python and Beam start-up included): "
          f"{counted / measured:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
