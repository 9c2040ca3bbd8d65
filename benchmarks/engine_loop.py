"""The engine loop vs one shard at a time: padding waste and throughput on a realistic mix.

One process, one engine (SmolLM2 on the JAX engine with the defaults a user gets), the same
records twice:
  1. old path: shards of ``--shard`` records served one after the other, each by one
     ``engine.generate`` call (the pipeline before the engine loop): every shard's last answers
     decode with most slots idle;
  2. new path: ``--bundles`` threads each take shards and hand them to one engine loop
     (``runners.engine_adapter``), as Beam's bundles do on a worker: slots are refilled from
     whichever shard has work; and the job's tail decodes in the engine's tail batch (once at
     most ``tail_batch`` slots are busy, only those are computed). The old path runs without
     the tail batch, as the pipeline did before both; a third leg (the loop without the tail
     batch) tells the two apart.
Records: chat prompts of 20-400 tokens (a text to summarise or answer a question about) whose
answers end by EOS, ``max_tokens`` 256. Prints padding waste (token positions computed for
padding or idle slots), output tokens/s, the device's idle share (loop time outside device
calls) and the ratio new/old, and writes them as JSON with ``--json``.

    python benchmarks/engine_loop.py                       # 4,096 records, batch 128, shards of 256
    python benchmarks/engine_loop.py --records 1024        # a quicker run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import queue
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hyperbatch.jobs import spec as job_spec
from hyperbatch.runners import engine_adapter
from hyperbatch.schemas.formats import Location, Parsed
from hyperbatch.schemas.records import Request, sampling_from_dict

WORDS = [
    "the",
    "river",
    "valley",
    "town",
    "market",
    "harvest",
    "winter",
    "festival",
    "lantern",
    "bridge",
    "music",
    "family",
    "road",
    "station",
    "library",
    "garden",
    "mountain",
    "storm",
    "harbour",
    "engine",
    "letter",
    "painting",
    "school",
    "kitchen",
    "doctor",
    "village",
    "forest",
    "island",
    "train",
    "morning",
    "evening",
    "weather",
    "museum",
    "recipe",
    "garden",
    "bakery",
]
TASKS = [
    "Summarise this text in one sentence:",
    "What is the main topic of this text?",
    "Give a short title for this text:",
    "Name one place mentioned in this text.",
    "Is this text happy or sad? Answer in a few words.",
]


def make_records(n: int, max_tokens: int, seed: int = 0) -> list[Parsed]:
    """Chat prompts of about 20-400 tokens (one word is about one token here)."""
    rng = random.Random(seed)
    sampling = sampling_from_dict({"temperature": 0.0, "max_tokens": max_tokens})
    out = []
    for i in range(n):
        words = rng.randint(8, 300)
        text = " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."
        message = {"role": "user", "content": f"{rng.choice(TASKS)}\n\n{text}"}
        request = Request(record_id=f"r{i:05d}", messages=(message,), sampling=sampling)
        out.append(Parsed(request, Location("bench", i + 1)))
    return out


def shards_of(records: list[Parsed], size: int) -> list[list[Parsed]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


@contextlib.contextmanager
def without_tail(engine):
    """The engine's programs with the tail batch off (every decode call computes the batch)."""
    shapes = engine.programs.shapes
    engine.programs.shapes = dataclasses.replace(shapes, tail_batch=0)
    try:
        yield
    finally:
        engine.programs.shapes = shapes


def one_at_a_time(loop: engine_adapter.EngineLoop, shards: list[list[Parsed]]) -> dict:
    """The old path: each shard tokenized, ordered and served alone by one generate call."""
    engine = loop.engine
    before, device0 = engine.stats(), engine.programs.device_seconds
    t0 = time.perf_counter()
    results = []
    for shard in shards:
        tokenized = [(p, engine.prompt_tokens(p.request)) for p in shard]
        tokenized.sort(key=lambda pt: engine_adapter._order_key(pt[0], len(pt[1])))
        results += engine.generate([p.request.with_tokens(ids) for p, ids in tokenized])
    return _report(engine, before, device0, time.perf_counter() - t0, results)


def with_the_loop(
    loop: engine_adapter.EngineLoop, shards: list[list[Parsed]], bundles: int
) -> dict:
    """The new path: ``bundles`` threads feed one engine loop, a shard at a time each."""
    engine = loop.engine
    before, device0 = engine.stats(), engine.programs.device_seconds
    todo: queue.Queue[list[Parsed]] = queue.Queue()
    for s in shards:
        todo.put(s)
    results, lock = [], threading.Lock()

    def bundle() -> None:
        while True:
            try:
                shard = todo.get_nowait()
            except queue.Empty:
                return
            served = engine_adapter.serve(loop, shard)
            with lock:
                results.extend(served.results)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=bundle) for _ in range(bundles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _report(engine, before, device0, time.perf_counter() - t0, results)


def _report(engine, before, device0, wall: float, results: list) -> dict:
    after = engine.stats()
    bad = [r for r in results if not r.ok]
    assert not bad, bad[:3]
    computed = after.computed_token_slots - before.computed_token_slots
    useful = after.useful_token_slots - before.useful_token_slots
    busy = after.busy_seconds - before.busy_seconds
    device = engine.programs.device_seconds - device0
    tokens = sum(r.usage.completion_tokens for r in results)
    stops = sum(r.finish_reason == "stop" for r in results)
    return {
        "records": len(results),
        "wall_s": round(wall, 2),
        "completion_tokens": tokens,
        "prompt_tokens": sum(r.usage.prompt_tokens for r in results),
        "ended_by_eos": stops,
        "output_tokens_per_s": round(tokens / wall, 1),
        "padding_waste_percent": round(100 * (1 - useful / computed), 2) if computed else 0.0,
        "device_idle_percent": round(100 * (1 - device / busy), 2) if busy else 0.0,
        "busy_s": round(busy, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=4096)
    ap.add_argument("--shard", type=int, default=256, help="records_per_shard")
    ap.add_argument("--batch", type=int, default=128, help="batch_size")
    ap.add_argument("--bundles", type=int, default=2, help="shards in flight (new path)")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--skip-no-tail",
        action="store_true",
        help="leave out the third leg (the loop without the tail batch)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    spec = job_spec.validate({
        "name": "loop-bench", "task": "chat", "input": "x", "input_format": "openai",
        "output": "/tmp", "model": args.model, "engine": "jax", "batch_size": args.batch,
        "records_per_shard": args.shard, "max_seq_len": args.max_seq_len,
    }, check_resources=False)  # fmt: skip
    t0 = time.perf_counter()
    loop = engine_adapter.shared_loop(spec)
    print(f"engine loaded and warmed up in {time.perf_counter() - t0:.1f} s "
          f"(attention {loop.engine.attention})", file=sys.stderr)  # fmt: skip
    shards = shards_of(make_records(args.records, args.max_tokens), args.shard)
    rows = {}
    legs = {
        "one shard at a time": lambda: one_at_a_time(loop, shards),
        "loop, no tail batch": lambda: with_the_loop(loop, shards, args.bundles),
        "engine loop": lambda: with_the_loop(loop, shards, args.bundles),
    }
    if args.skip_no_tail:
        del legs["loop, no tail batch"]
    print(f"tail batch: {loop.engine.programs.shapes.tail_batch}", file=sys.stderr)
    for name, leg in legs.items():
        loop.engine.clear_prefix_cache()
        with contextlib.nullcontext() if name == "engine loop" else without_tail(loop.engine):
            rows[name] = leg()
        print(f"{name}: {json.dumps(rows[name])}", file=sys.stderr)
    engine_adapter.close_engines()

    old, new = rows["one shard at a time"], rows["engine loop"]
    print(f"\n{args.records} records, shards of {args.shard}, batch {args.batch}, "
          f"{args.bundles} bundles in flight, max_tokens {args.max_tokens}, {args.model}")  # fmt: skip
    print(
        f"{'':22s} {'padding waste':>14s} {'output tok/s':>13s} {'device idle':>12s} {'wall s':>8s}"
    )
    for name, r in rows.items():
        print(f"{name:22s} {r['padding_waste_percent']:13.1f}% {r['output_tokens_per_s']:13.1f} "
              f"{r['device_idle_percent']:11.1f}% {r['wall_s']:8.1f}")  # fmt: skip
    ratio = new["output_tokens_per_s"] / old["output_tokens_per_s"]
    print(f"throughput new/old: {ratio:.2f}x  (goal >= 1.3x; padding waste goal <= 5%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
