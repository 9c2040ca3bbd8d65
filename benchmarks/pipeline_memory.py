"""Peak memory of a job against its input size: it must not grow with the input (we stream).

Each job runs in a fresh process (so peaks don't mix), with the same shard size, on inputs of
different sizes, and reports the process's peak resident memory (VmHWM). Records are never held
by the pipeline (only shard descriptions travel through Beam); what remains per record is the
job-wide duplicate-id check, whose GroupByKey the local runner keeps in memory.

    python benchmarks/pipeline_memory.py                     # tiny random Llama on the JAX engine
    python benchmarks/pipeline_memory.py --engine fake       # the plumbing alone
    python benchmarks/pipeline_memory.py --task embedding --engine fake   # embedding plumbing
    python benchmarks/pipeline_memory.py --task embedding --sizes 10000,30000 --words 4,30

``--task embedding`` writes ``{"id", "text"}`` JSONL lines of mixed length (``--words``, uniform;
by default 14-254 words, about 16-256 tokens) and runs ``task: embedding``, ``input_format:
jsonl``, ``vector_output: parquet`` (so the vectors go to Parquet as well as the results), on
``--engine fake`` (4-number vectors: the pipeline's streaming alone) or ``jax`` (the real
all-MiniLM-L6-v2 from the model catalogue unless ``--model``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


#: common English words, one WordPiece token each for BERT-family vocabularies (so a text of
#: k words is k + 2 tokens for all-MiniLM-L6-v2)
WORDS = """the of and to in is was for on with as by at from his her they this that which
water city river house music world school family history church market power energy light
system model data court party war film book game team club road station island village"""


def write_embedding_input(path: str, n: int, words: tuple[int, int], seed: int = 0) -> None:
    """``n`` JSONL lines ``{"id", "text"}``, each text ``words[0]..words[1]`` words (uniform)."""
    rng = np.random.default_rng(seed)
    vocab = WORDS.split()
    lo, hi = words
    with open(path, "w") as f:
        for i in range(n):
            k = int(rng.integers(lo, hi + 1))
            text = " ".join(vocab[j] for j in rng.integers(0, len(vocab), size=k))
            f.write(json.dumps({"id": f"r{i:07d}", "text": text}) + "\n")


def write_input(path: str, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            body = {
                "messages": [{"role": "user", "content": f"Summarize item {i} of the catalogue."}]
            }
            f.write(json.dumps({"custom_id": f"r{i:07d}", "method": "POST",
                                "url": "/v1/chat/completions", "body": body}) + "\n")  # fmt: skip


def child(args: argparse.Namespace) -> None:
    from hyperbatch.jobs import spec as job_spec
    from hyperbatch.runners import pipeline

    fields = {
        "name": "mem", "input": args.input, "output": args.output, "model": args.model,
        "engine": args.engine, "batch_size": args.batch_size,
        "records_per_shard": args.records_per_shard,
    }  # fmt: skip
    if args.task == "embedding":
        fields.update(task="embedding", input_format="jsonl", vector_output="parquet")
    else:
        fields.update(
            task="chat",
            input_format="openai",
            sampling={"max_tokens": args.max_tokens, "temperature": 0.0, "ignore_eos": True},
        )
    spec = job_spec.validate(fields)
    t0 = time.perf_counter()
    m = pipeline.run(spec)
    print(json.dumps({"records": m["records_in"], "results": m["results"],
                      "seconds": time.perf_counter() - t0, "peak_rss_mib": peak_rss_mib()}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--task", default="chat", choices=["chat", "embedding"])
    ap.add_argument("--engine", default="jax")
    ap.add_argument(
        "--model",
        help="default: a tiny random Llama built for the run (chat), all-minilm-l6-v2 (embedding)",
    )
    ap.add_argument(
        "--words",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=(14, 254),
        help="embedding: words per text, min,max (default 14,254: ~16-256 tokens)",
    )
    ap.add_argument(
        "--warmup-size", type=int, help="records of the discarded first run (default: the smallest)"
    )
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--records-per-shard", type=int, default=2000)
    ap.add_argument("--max-tokens", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or "unused"
        if args.task == "embedding" and args.engine == "jax" and not args.model:
            model = "all-minilm-l6-v2"
        elif args.engine == "jax" and not args.model:
            from tests.helpers.tiny_models import tiny_llama_dir

            model = tiny_llama_dir(os.path.join(tmp, "tiny"))
        rows = []
        sizes = [int(s) for s in args.sizes.split(",")]
        # A first, discarded run fills JAX's persistent compilation cache, so that every measured
        # run starts from the same state (compiling costs memory of its own).
        for n in [args.warmup_size or min(sizes), *sizes]:
            path = os.path.join(tmp, f"in-{n}.jsonl")
            if not os.path.exists(path):
                if args.task == "embedding":
                    write_embedding_input(path, n, args.words)
                else:
                    write_input(path, n)
            cmd = [sys.executable, __file__, "--child", "--task", args.task, "--input", path,
                   "--output", os.path.join(tmp, f"out-{n}-{len(rows)}"), "--engine", args.engine,
                   "--model", model, "--batch-size", str(args.batch_size),
                   "--records-per-shard", str(args.records_per_shard),
                   "--max-tokens", str(args.max_tokens)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            if len(rows) == 1:
                print(f"(warm-up run: {r['records']} records, peak {r['peak_rss_mib']:.1f} MiB)")
                continue
            print(f"{r['records']:>8} records ({os.path.getsize(path) / 2**20:.0f} MiB input): "
                  f"peak RSS {r['peak_rss_mib']:7.1f} MiB, {r['seconds']:6.1f} s, "
                  f"{r['results']} results", flush=True)  # fmt: skip
        small, big = rows[1], rows[-1]
        growth = big["peak_rss_mib"] - small["peak_rss_mib"]
        extra = big["records"] - small["records"]
        print(f"growth: {growth:+.1f} MiB for {extra} more records "
              f"({growth * 1024 * 1024 / max(extra, 1):.0f} bytes/record); "
              f"ratio {big['peak_rss_mib'] / small['peak_rss_mib']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
