"""Pipeline overhead: the same prompts through the engine alone and through the whole pipeline.

One process, one run:
  1. engine alone: load + warm up the engine, then time ``engine.generate`` over the prompts
     (already tokenized and in the pipeline's order, so only the pipeline's overhead differs);
  2. warm pipeline: ``runners.pipeline.run`` on the same prompts written as an OpenAI Batch file,
     in the same process, so the worker's engine is the one already loaded (as on a long-lived
     worker): everything Beam, planning, parsing, tokenizing, writing and the manifest add;
  3. cold pipeline (``--cold``): the same job in a fresh subprocess, model load and compilation
     included, as the first job on a fresh worker pays it.
Prints end-to-end tokens/s over engine-alone tokens/s, and where the rest of the time goes.

    python benchmarks/pipeline_overhead.py                      # SmolLM2 on the JAX engine, 1000 prompts
    python benchmarks/pipeline_overhead.py --prompts 200 --cold
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hyperbatch.jobs import spec as job_spec
from hyperbatch.runners import engine_adapter, pipeline
from hyperbatch.schemas.formats import FORMATS, Location
from hyperbatch.schemas.records import TaskKind

SUBJECTS = [
    "the moon",
    "bread",
    "rivers",
    "a violin",
    "volcanoes",
    "honey bees",
    "glaciers",
    "the printing press",
    "solar panels",
    "coral reefs",
    "chess",
    "the Roman empire",
    "penguins",
    "electric cars",
    "tea",
    "lighthouses",
    "the internet",
    "deserts",
]
TEMPLATES = ["Tell me about {}.", "Write two sentences about {}.", "Why is {} important?",
             "Give one surprising fact about {}.", "Explain {} to a child.",
             "What would a poem about {} sound like? Write four lines.",
             "List three words that describe {}.", "How has {} changed over time?"]  # fmt: skip


def make_requests(n: int, max_tokens: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        text = rng.choice(TEMPLATES).format(rng.choice(SUBJECTS))
        if rng.random() < 0.3:
            text += " " + " ".join(rng.choice(SUBJECTS) for _ in range(rng.randint(1, 12)))
        body = {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
        out.append({"custom_id": f"p{i:05d}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body})  # fmt: skip
    return out


def write_input(requests: list[dict], directory: str) -> str:
    path = os.path.join(directory, "prompts.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in requests)
    return path


def make_spec(args: argparse.Namespace, input_path: str, output: str, name: str):
    return job_spec.validate({
        "name": name, "task": "chat", "input": input_path, "input_format": "openai",
        "output": output, "model": args.model, "engine": args.engine,
        "batch_size": args.batch_size, "records_per_shard": args.records_per_shard,
        "sampling": {"temperature": 0.0, "ignore_eos": True},
    })  # fmt: skip


def engine_alone(spec, input_path: str) -> dict:
    t0 = time.perf_counter()
    loaded = engine_adapter.shared_loop(spec)
    load_s = time.perf_counter() - t0
    fmt = FORMATS["openai"]
    with open(input_path, "rb") as f:
        parsed = [fmt.parse(line, Location(input_path, i + 1), TaskKind.CHAT, spec.default_sampling)
                  for i, line in enumerate(f)]  # fmt: skip
    engine = loaded.engine
    tokenized = [(p, engine.prompt_tokens(p.request)) for p in parsed]
    tokenized.sort(key=lambda pt: engine_adapter._order_key(pt[0], len(pt[1])))
    requests = [p.request.with_tokens(ids) for p, ids in tokenized]
    t0 = time.perf_counter()
    results = engine.generate(requests)
    gen_s = time.perf_counter() - t0
    tokens = sum(r.usage.completion_tokens for r in results)
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    return {"load_and_warmup_s": load_s, "generate_s": gen_s, "completion_tokens": tokens,
            "tokens_per_s": tokens / gen_s}  # fmt: skip


def pipeline_run(spec) -> dict:
    t0 = time.perf_counter()
    m = pipeline.run(spec)
    wall = time.perf_counter() - t0
    assert m["errors"] == 0, m["errors_by_code"]
    return {"wall_s": wall, "busy_s": m["accelerator_busy_seconds"],
            "completion_tokens": m["completion_tokens"],
            "tokens_per_s": m["completion_tokens"] / wall, "manifest": m}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--engine", default="jax")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--records-per-shard", type=int, default=1000)
    ap.add_argument("--cold", action="store_true", help="also run the pipeline in a fresh process")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: run the cold pipeline leg
    args = ap.parse_args()

    if args.child:
        input_path, output = json.loads(args.child)
        print(json.dumps(pipeline_run(make_spec(args, input_path, output, "cold"))))
        return

    with tempfile.TemporaryDirectory() as tmp:
        input_path = write_input(make_requests(args.prompts, args.max_tokens), tmp)
        spec = make_spec(args, input_path, os.path.join(tmp, "out"), "warm")
        alone = engine_alone(spec, input_path)
        warm = pipeline_run(spec)
        cold = None
        if args.cold:
            child = json.dumps([input_path, os.path.join(tmp, "out-cold")])
            out = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--child", child],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            cold = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"\n{args.prompts} prompts x {args.max_tokens} tokens, {args.engine} engine, {args.model}, "
          f"batch {args.batch_size}")  # fmt: skip
    print(f"engine alone:   {alone['tokens_per_s']:8.1f} tok/s  ({alone['completion_tokens']} tokens in "
          f"{alone['generate_s']:.1f} s; load+warmup {alone['load_and_warmup_s']:.1f} s not counted)")  # fmt: skip
    print(f"pipeline warm:  {warm['tokens_per_s']:8.1f} tok/s  (wall {warm['wall_s']:.1f} s, engine busy "
          f"{warm['busy_s']:.1f} s)")  # fmt: skip
    ratio = warm["tokens_per_s"] / alone["tokens_per_s"]
    print(f"ratio warm pipeline / engine alone: {ratio:.3f}  (goal >= 0.95)")
    outside = warm["wall_s"] - warm["busy_s"]
    print(f"  time outside the engine: {outside:.2f} s of {warm['wall_s']:.1f} s "
          f"(Beam, planning, parsing, tokenizing, ordering, writing, manifest)")  # fmt: skip
    # The two legs run minutes apart and a shared machine's speed drifts by +-20%: the share of
    # the pipeline's wall time the engine was busy does not depend on that drift.
    print(f"  engine busy / pipeline wall: {warm['busy_s'] / warm['wall_s']:.3f} "
          f"(engine alone generated in {alone['generate_s']:.1f} s, in the pipeline in "
          f"{warm['busy_s']:.1f} s)")  # fmt: skip
    if cold:
        c_ratio = cold["tokens_per_s"] / alone["tokens_per_s"]
        print(f"pipeline cold:  {cold['tokens_per_s']:8.1f} tok/s  (wall {cold['wall_s']:.1f} s incl. model "
              f"load and compilation); ratio {c_ratio:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
