"""How good is `hyperbatch estimate`? Estimate vs actual for jobs of three shapes, and a capped job.

SmolLM2-135M-Instruct on the JAX engine on this machine's CPU, every job in a process of its
own (as `hyperbatch run` runs it: the engine loads cold), all in one fresh job store:

  1. a calibration job (the quickstart's 115 mixed chat requests) runs first;
  2. three jobs are estimated -- from the throughput table alone (an empty store) and from the
     store holding only the calibration job -- then run, one after the other:
       short-long  short questions, long answers (max_tokens 128)
       long-short  long passages (~250 tokens), one-line answers (max_tokens 8)
       mixed       both kinds and medium ones, shuffled
  3. a capped job (the mixed shape again, as a new job) with max_cost_usd at half its estimate:
     it stops (STOPPED_BUDGET); the cap, its final cost, records served and left are reported,
     then it is rerun with a higher cap and finishes from its committed shards.

Prints estimate / actual for accelerator seconds, $ and completion tokens (the $ ratio equals
the seconds ratio: one price), and writes everything to --out as JSON. The CPU is shared with
other work: its speed drifts between the calibration and the jobs, which is part of the error.

    python benchmarks/estimate_accuracy.py
    python benchmarks/estimate_accuracy.py --scale 0.5 --out /tmp/estimate_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from hyperbatch.jobs import estimate  # noqa: E402
from hyperbatch.jobs import spec as job_spec  # noqa: E402

TOPICS = ["the sea", "a lighthouse", "volcanoes", "bees", "the moon", "a library", "trains",
          "coffee", "winter", "chess", "bread", "rivers", "glaciers", "owls", "deserts", "bridges",
          "the internet", "gardens", "clocks", "maps", "rainbows", "salt", "kites", "caves",
          "forests", "honey", "storms", "islands", "music", "paper", "glass", "wolves"]  # fmt: skip
SENTENCES = [
    "Many people have written about {t}, and each of them noticed something different.",
    "In the old records, {t} appears again and again as a sign of change.",
    "Scientists who study {t} often begin with simple questions about size and time.",
    "Children who see {t} for the first time usually ask where it came from.",
    "There are long stories about {t} in almost every part of the world.",
    "Some say that {t} teaches patience, because nothing about it happens quickly.",
    "The history of {t} is tied to trade, travel and the work of ordinary people.",
    "Artists have painted {t} in bright colours and in the dark tones of evening.",
]


def chat(cid: str, content: str, max_tokens: int) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}],
                     "max_tokens": max_tokens}}  # fmt: skip


def passage(topic: str, rng: random.Random) -> str:
    sentences = [s.format(t=topic) for s in SENTENCES]
    rng.shuffle(sentences)
    return " ".join(sentences * 2)  # ~250 tokens


def shapes(scale: float, prefix: str, seed: int) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(seed)
    n = max(4, round(32 * scale))
    topics = [TOPICS[i % len(TOPICS)] for i in range(n)]
    short_long = [chat(f"{prefix}sl-{i}", f"Write a story about {t}.", 128)
                  for i, t in enumerate(topics)]  # fmt: skip
    long_short = [
        chat(f"{prefix}ls-{i}", passage(t, rng) + "\n\nIn one word, what is this text about?", 8)
        for i, t in enumerate(topics)
    ]
    medium = [chat(f"{prefix}md-{i}", f"Give me three facts about {t}.", 48)
              for i, t in enumerate(topics)]  # fmt: skip
    mixed = short_long[: n // 3] + long_short[: n // 3] + medium[: n - 2 * (n // 3)]
    mixed = [{**r, "custom_id": r["custom_id"].replace(prefix, f"{prefix}mx-")} for r in mixed]
    rng.shuffle(mixed)
    return {"short-long": short_long, "long-short": long_short, "mixed": mixed}


def write_job(folder: str, name: str, records: list[dict[str, Any]], store: str,
              **extra: Any) -> str:  # fmt: skip
    data = os.path.join(folder, f"{name}.jsonl")
    with open(data, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    spec = {"name": name, "task": "chat", "input": data, "input_format": "openai",
            "output": store, "model": "smollm2-135m-instruct", "engine": "jax",
            "batch_size": 32, "records_per_shard": 32, "max_seq_len": 512,
            "sampling": {"temperature": 0.0}, **extra}  # fmt: skip
    path = os.path.join(folder, f"{name}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


def run_job(spec_file: str, *overrides: str) -> tuple[int, dict[str, Any], float]:
    """`hyperbatch run` in a process of its own: (exit code, manifest, seconds)."""
    args = [sys.executable, "-m", "hyperbatch", "run", spec_file, "--quiet", "--format", "json"]
    for o in overrides:
        args += ["--set", o]
    t0 = time.time()
    done = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if done.returncode not in (0, 4):
        raise SystemExit(f"{spec_file} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.returncode, json.loads(done.stdout), time.time() - t0


def compare(est: estimate.Estimate, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "estimate_seconds": est.accelerator_seconds.to_dict(1),
        "actual_seconds": m["accelerator_seconds"],
        "seconds_ratio": round(est.accelerator_seconds.expected / m["accelerator_seconds"], 3),
        "estimate_usd": est.cost_usd.to_dict(7),
        "actual_usd": m["cost_usd"],
        "usd_ratio": round(est.cost_usd.expected / m["cost_usd"], 3),
        "in_range": est.cost_usd.low <= m["cost_usd"] <= est.cost_usd.high,
        "completion_tokens": [round(est.completion_tokens.expected), m["completion_tokens"]],
        "prompt_tokens": [est.prompt_tokens, m["prompt_tokens"]],
        "load_seconds": m["load_seconds"],
        "busy_seconds": m["accelerator_busy_seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="records per shape / 32")
    ap.add_argument("--out", default=None, help="write the results here as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the job store")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="hb-estimate-")
    store, empty = os.path.join(work, "store"), os.path.join(work, "empty")
    os.makedirs(empty)
    report: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs, shared", "jobs": {}}
    t0 = time.time()

    with open(os.path.join(ROOT, "examples", "quickstart", "requests.jsonl")) as f:
        quickstart = [json.loads(line) for line in f]
    calib = write_job(work, "calibration", quickstart, store, batch_size=64)
    _, m, took = run_job(calib)
    print(f"calibration: {m['records_in']} records, {m['accelerator_seconds']:.1f} accelerator-s "
          f"({m['load_seconds']:.1f} s load + warmup), ${m['cost_usd']:.6f}, {took:.0f} s")  # fmt: skip
    report["calibration"] = {k: m[k] for k in ("records_in", "accelerator_seconds", "cost_usd",
                                               "load_seconds", "completion_tokens")}  # fmt: skip

    jobs = shapes(args.scale, "", 0)
    files = {name: write_job(work, name, records, store) for name, records in jobs.items()}
    estimates = {}
    for name, path in files.items():  # all estimated after the calibration job only
        spec = job_spec.load(path)
        estimates[name] = (estimate.estimate(spec, root=store),
                           estimate.estimate(spec, root=empty))  # fmt: skip
    for name, path in files.items():
        est, table = estimates[name]
        _, m, took = run_job(path)
        row = compare(est, m)
        row["table_seconds_ratio"] = round(
            table.accelerator_seconds.expected / m["accelerator_seconds"], 3
        )
        report["jobs"][name] = row
        print(f"{name:10s} {m['records_in']:3d} records: estimate {row['estimate_seconds']} s vs "
              f"{row['actual_seconds']:.1f} s (x{row['seconds_ratio']}), ${row['usd_ratio']} of "
              f"the manifest's ${m['cost_usd']:.6f}; completion tokens "
              f"{row['completion_tokens'][0]} vs {row['completion_tokens'][1]}; table alone "
              f"x{row['table_seconds_ratio']}; {took:.0f} s")  # fmt: skip

    # a capped job: a new job of the mixed shape, its cap half its estimate
    capped_records = shapes(args.scale, "cap-", 1)["mixed"]
    capped = write_job(work, "capped", capped_records, store, records_per_shard=4, batch_size=16)
    est = estimate.estimate(job_spec.load(capped), root=store)
    cap = round(est.cost_usd.expected / 2, 7)
    code, m, took = run_job(capped, f"max_cost_usd={cap}")
    stop = {
        "cap_usd": cap,
        "estimate_usd": est.cost_usd.to_dict(7),
        "exit_code": code,
        "status": m["status"],
        "final_cost_usd": m["cost_usd"],
        "records_served": m["records_in"],
        "records_left": m["records_left"],
        "shards_committed": len(m["shards"]),
        "shards_left": m["shards_left"],
    }
    print(f"capped job: cap ${cap} (estimate ${est.cost_usd.expected:.7f}) -> {m['status']} "
          f"(exit {code}): ${m['cost_usd']:.7f} spent, {m['records_in']} records served, "
          f"{m['records_left']} left; {took:.0f} s")  # fmt: skip
    code, m2, took = run_job(capped, f"max_cost_usd={cap * 4}")
    stop["rerun"] = {"cap_usd": cap * 4, "status": m2["status"], "cost_usd": m2["cost_usd"],
                     "records_in": m2["records_in"], "records_left": m2["records_left"],
                     "attempts": m2["attempts"]}  # fmt: skip
    print(f"  rerun with ${cap * 4:.7f}: {m2['status']}, {m2['records_in']} records, "
          f"${m2['cost_usd']:.7f} in all ({m2['attempts']} attempts); {took:.0f} s")  # fmt: skip
    report["capped"] = stop
    report["seconds"] = round(time.time() - t0)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"job store: {store}")


if __name__ == "__main__":
    main()
