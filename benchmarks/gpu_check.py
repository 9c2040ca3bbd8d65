#!/usr/bin/env python3
"""The prepared GPU check (issue 11 item 6): one run, every GPU fact we need, in < 8 minutes.

Run it through ``benchmarks/gpu_check.sh`` (which installs carried wheels, tees the output to
``$OUT/gpu_check.log`` and bounds the run with a timeout); it also runs alone:

    python3 benchmarks/gpu_check.py                        # the GPU run (nvidia-h200-141gb)
    python3 benchmarks/gpu_check.py --platform cpu --small # every stage on a CPU, small shapes

Stages (each independent: a failing stage prints its traceback and the next one still runs):
  1. env        python, jax (+ plugins), jax.devices(), torch/CUDA, nvidia-smi, HBM copy probe
  2. engine     JaxLLMEngine on the accelerator (nvidia-h200-141gb): the devices its params and
                KV cache live on (asserts the platform), a few generations
  3. parity     jax_llm.model.forward_logits vs transformers on a tiny random Llama: fp32 (with
                jax_default_matmul_precision=highest; expect <= 1e-4) and bf16 (diffs and greedy
                argmax agreement); plus the engine's own greedy decode vs transformers' (fp32)
  4. throughput a ~1B random-weight Llama (bf16 safetensors written with numpy), batch 64 and
                256, ignore_eos: tokens/s, decode step time, fraction of the HBM roofline
  5. loop       the same model: shards served one per engine.generate call vs the engine loop
                (runners.engine_adapter.EngineLoop fed by threads calling engine_adapter.serve):
                padding waste and output tokens/s of both, and the ratio

The repository is imported as the ``hyperbatch`` namespace through a link tree (as the
Makefile's typecheck recipe builds it), so nothing needs installing. Two light dependencies of
hyperbatch that the engine path imports and the H200 image lacks (tenacity, fastavro) are used
if importable (gpu_check.sh installs them from wheels carried in build/gpu_wheels); if not,
stand-ins take their place (the check never retries cloud calls nor reads Avro) and the output
says so.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import importlib.metadata
import importlib.util
import json
import os
import platform as _platform
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPACKAGES = ("jobs", "runners", "engines", "schemas")
H200_HBM_BYTES_PER_S = 4.8e12  # vendor datasheet (KINDS.md measured ~4.3 TB/s device copies)
H200_BF16_FLOPS = 790e12  # measured here on random data (datasheet dense: ~990 TFLOP/s)
T_START = time.perf_counter()


# ------------------------------------------------------------------------------------ output


class _Log:
    """print() to stdout and, if given, a log file (line-flushed)."""

    def __init__(self) -> None:
        self.file: Any = None

    def open(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def __call__(self, *args: Any) -> None:
        text = " ".join(str(a) for a in args)
        print(text, flush=True)
        if self.file is not None:
            self.file.write(text + "\n")


say = _Log()


def clock() -> str:
    return f"[{time.perf_counter() - T_START:6.1f}s]"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


# ------------------------------------------------------------------------ the namespace


def make_namespace(work: str) -> str:
    """A link tree ``work/tree/hyperbatch`` = the repo's hyperbatch/* + jobs, runners, engines,
    schemas (what setup.py installs); put first on sys.path. Returns the tree's root."""
    tree = os.path.join(work, "tree")
    pkg = os.path.join(tree, "hyperbatch")
    os.makedirs(pkg, exist_ok=True)
    for name in os.listdir(os.path.join(REPO, "hyperbatch")):
        if name != "__pycache__":
            os.symlink(os.path.join(REPO, "hyperbatch", name), os.path.join(pkg, name))
    for sub in SUBPACKAGES:
        os.symlink(os.path.join(REPO, sub), os.path.join(pkg, sub))
    for mod in [m for m in sys.modules if m == "hyperbatch" or m.startswith("hyperbatch.")]:
        del sys.modules[mod]
    sys.path.insert(0, tree)
    importlib.invalidate_caches()
    return tree


def _stand_in_tenacity() -> types.ModuleType:
    """Enough of tenacity for hyperbatch.retry's module-level decorator (never retries)."""
    m = types.ModuleType("tenacity")

    class _Cond:
        def __init__(self, *a: Any, **k: Any) -> None:
            pass

        def __or__(self, other: Any) -> _Cond:
            return self

        __and__ = __ror__ = __rand__ = __or__

    def retry(*a: Any, **k: Any) -> Any:
        if a and callable(a[0]) and not k:
            return a[0]
        return lambda fn: fn

    m.retry = retry  # type: ignore[attr-defined]
    for name in (
        "retry_if_exception_type", "stop_after_attempt", "stop_after_delay",
        "wait_exponential_jitter", "wait_exponential", "wait_fixed", "retry_if_exception",
        "RetryCallState", "stop_never", "wait_random_exponential",
    ):  # fmt: skip
        setattr(m, name, _Cond)
    m.__hyperbatch_stand_in__ = True  # type: ignore[attr-defined]
    return m


def _stand_in_fastavro() -> types.ModuleType:
    m = types.ModuleType("fastavro")

    def __getattr__(name: str) -> Any:  # AttributeError: what introspection (torch) expects
        raise AttributeError(f"fastavro is not installed here (a stand-in): no fastavro.{name}")

    m.__getattr__ = __getattr__  # type: ignore[attr-defined]
    m.__hyperbatch_stand_in__ = True  # type: ignore[attr-defined]
    return m


def ensure_light_deps() -> list[str]:
    """Stand-ins for tenacity/fastavro where they are not installed; returns their names."""
    used = []
    for name, make in (("tenacity", _stand_in_tenacity), ("fastavro", _stand_in_fastavro)):
        if name in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            sys.modules[name] = make()
            used.append(name)
    return used


# ------------------------------------------------------------------------- settings


@dataclasses.dataclass
class Settings:
    platform: str  # JAX platform: gpu | cpu
    accelerator: str  # hyperbatch accelerator name
    small: bool
    # the throughput model (HF Llama config fields)
    hidden: int = 2048
    layers: int = 16
    heads: int = 32
    kv_heads: int = 8
    inter: int = 5632
    vocab: int = 32000
    # throughput stage
    batches: tuple[int, ...] = (64, 256)
    prompt_len: int = 128
    new_tokens: int = 128
    max_seq_len: int = 256
    decode_steps: int = 8
    # loop stage
    shards: int = 16
    shard_size: int = 64
    loop_batches: tuple[int, ...] = (256, 64)
    loop_threads: int = 4
    loop_prompt_tokens: tuple[int, int] = (64, 120)
    loop_max_tokens: tuple[int, int] = (8, 128)
    # attention option for every engine (auto: XLA on a GPU)
    attention: str = "auto"
    dtype: str = "bfloat16"
    budget_s: float = 420.0  # stop starting optional work after this

    @classmethod
    def make(cls, args: argparse.Namespace) -> Settings:
        acc = args.accelerator or ("nvidia-h200-141gb" if args.platform == "gpu" else "cpu")
        s = cls(platform=args.platform, accelerator=acc, small=args.small, budget_s=args.budget_s)
        if args.small:
            s.hidden, s.layers, s.heads, s.kv_heads, s.inter = 128, 2, 4, 2, 256
            s.batches, s.prompt_len, s.new_tokens, s.max_seq_len = (8, 16), 32, 16, 64
            s.shards, s.shard_size, s.loop_batches, s.loop_threads = 8, 8, (16,), 4
            s.loop_prompt_tokens, s.loop_max_tokens = (12, 30), (2, 16)
        if args.platform == "cpu":
            s.attention = "xla"  # the path a GPU takes (the CPU kernel is tested elsewhere)
        if args.layers:
            s.layers = args.layers
        if args.batches:
            s.batches = tuple(int(b) for b in args.batches.split(","))
        if args.loop_batches:
            s.loop_batches = tuple(int(b) for b in args.loop_batches.split(","))
        if args.decode_steps:
            s.decode_steps = args.decode_steps
        return s

    def over_budget(self) -> bool:
        return time.perf_counter() - T_START > self.budget_s


class Ctx:
    def __init__(self, settings: Settings, work: str):
        self.s = settings
        self.work = work
        self.results: dict[str, Any] = {}
        self.engines: dict[int, Any] = {}  # batch -> warmed-up throughput-model engine
        self.big_dir: str | None = None
        self.tiny_dir: str | None = None


# --------------------------------------------------------------------- model checkpoints


def tiny_models() -> types.ModuleType:
    """tests/helpers/tiny_models.py, loaded by path (stdlib at import; torch/transformers/
    tokenizers inside its functions; no test-only dependencies)."""
    name = "hb_gpu_check_tiny_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "tests", "helpers", "tiny_models.py")
    )
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def tiny_dir(ctx: Ctx) -> str:
    """The tests' tiny random Llama (HF layout, local BPE tokenizer), built once."""
    if ctx.tiny_dir is None:
        path = os.path.join(ctx.work, "tiny-llama")
        tiny_models().tiny_llama_dir(path, "llama")
        ctx.tiny_dir = path
    return ctx.tiny_dir


def llama_shapes(s: Settings) -> list[tuple[str, tuple[int, ...]]]:
    hd = s.hidden // s.heads
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (s.vocab, s.hidden))]
    for i in range(s.layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (s.hidden,)),
            (p + "self_attn.q_proj.weight", (s.heads * hd, s.hidden)),
            (p + "self_attn.k_proj.weight", (s.kv_heads * hd, s.hidden)),
            (p + "self_attn.v_proj.weight", (s.kv_heads * hd, s.hidden)),
            (p + "self_attn.o_proj.weight", (s.hidden, s.heads * hd)),
            (p + "post_attention_layernorm.weight", (s.hidden,)),
            (p + "mlp.gate_proj.weight", (s.inter, s.hidden)),
            (p + "mlp.up_proj.weight", (s.inter, s.hidden)),
            (p + "mlp.down_proj.weight", (s.hidden, s.inter)),
        ]
    out += [("model.norm.weight", (s.hidden,)), ("lm_head.weight", (s.vocab, s.hidden))]
    return out


def write_random_llama(path: str, s: Settings, seed: int = 0) -> int:
    """A random-weight Llama in HF layout: one bf16 model.safetensors written with numpy (no
    torch init), config.json, and the tests' local BPE tokenizer + chat template. Values come
    from one pool of N(0, 0.02) draws read at random offsets (the numbers do not matter for
    speed; drawing ~1B of them would). Returns the parameter count."""
    import numpy as np

    tm = tiny_models()
    os.makedirs(path, exist_ok=True)
    shapes = llama_shapes(s)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(seed)
    pool_n = (1 << 22) + 7919  # not a multiple of any dimension
    import ml_dtypes

    pool = (rng.standard_normal(pool_n, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    pool16 = pool.view(np.uint16)
    ones = np.ones(max(s.hidden, 1), ml_dtypes.bfloat16).view(np.uint16)
    params = 0
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape in shapes:
            n = int(np.prod(shape))
            params += n
            if name.endswith("norm.weight"):
                f.write(ones[:n].tobytes())
                continue
            at = int(rng.integers(0, pool_n))
            while n > 0:
                take = min(n, pool_n - at)
                f.write(pool16[at : at + take].tobytes())
                n -= take
                at = 0
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "intermediate_size": s.inter,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write(tm._tokenizer_json(512, True))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 2048,
        "chat_template": tm.LLAMA_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
    }
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=1)
    return params


def big_dir(ctx: Ctx) -> str:
    if ctx.big_dir is None:
        path = os.path.join(ctx.work, "random-llama")
        t0 = time.perf_counter()
        n = write_random_llama(path, ctx.s)
        size = os.path.getsize(os.path.join(path, "model.safetensors"))
        say(f"{clock()} wrote {path}: {n / 1e9:.3f} B parameters, {fmt_bytes(size)} bf16 "
            f"(hidden {ctx.s.hidden}, {ctx.s.layers} layers, {ctx.s.heads} heads, "
            f"{ctx.s.kv_heads} KV heads, intermediate {ctx.s.inter}, vocab {ctx.s.vocab}) "
            f"in {time.perf_counter() - t0:.1f}s")  # fmt: skip
        ctx.results["model_params"] = n
        ctx.big_dir = path
    return ctx.big_dir


# ----------------------------------------------------------------------------- helpers


def make_engine(ctx: Ctx, model: str, batch: int, max_seq_len: int, dtype: str, **options: Any):
    from hyperbatch.engines.base import EngineConfig
    from hyperbatch.engines.jax_llm.engine import JaxLLMEngine

    opts = {"attention": ctx.s.attention, **options}
    config = EngineConfig(
        model=model,
        batch_size=batch,
        max_seq_len=max_seq_len,
        dtype=dtype,
        accelerator=ctx.s.accelerator,
        accelerator_count=1,
        options=opts,
    )
    t0 = time.perf_counter()
    engine = JaxLLMEngine(config)
    t1 = time.perf_counter()
    engine.warmup()
    t2 = time.perf_counter()
    say(f"{clock()} engine batch {batch}, max_seq_len {engine.max_seq_len}, {dtype}, options "
        f"{opts}: loaded in {t1 - t0:.1f}s, warmup (compile {engine.compilations()} programs) "
        f"{t2 - t1:.1f}s; attention={engine.attention}, buckets={engine.buckets}")  # fmt: skip
    return engine


def big_engine(ctx: Ctx, batch: int) -> Any:
    """The throughput model's engine: one prefill bucket (prompts are at most ``prompt_len``
    tokens: two programs to compile) of ``batch // 8`` rows, the slots the engine waits for
    before it admits (its default ``refill_min_free``), so an admission round fills one call."""
    s = ctx.s
    return make_engine(
        ctx, big_dir(ctx), batch=batch, max_seq_len=s.max_seq_len, dtype=s.dtype,
        prefill_buckets=[s.prompt_len], prefill_tokens=s.prompt_len * max(1, batch // 8),
        decode_steps=s.decode_steps,
    )  # fmt: skip


def param_devices(engine: Any) -> tuple[set[str], set[str], str]:
    """(device strings, platforms, one leaf's sharding) of the engine's params + KV cache."""
    import jax

    leaves = jax.tree_util.tree_leaves(engine.programs.params)
    leaves += list(engine.programs.cache.k) + list(engine.programs.cache.v)
    devs = set()
    for leaf in leaves:
        devs |= set(leaf.devices())
    canonical = {"cuda": "gpu", "rocm": "gpu"}  # JAX reports CUDA devices as "gpu"; be lenient
    platforms = {canonical.get(d.platform, d.platform) for d in devs}
    return {str(d) for d in devs}, platforms, str(leaves[0].sharding)


def sampling(**kw: Any):
    from hyperbatch.schemas.records import sampling_from_dict

    return sampling_from_dict(kw)


class DecodeMeter:
    """Wraps ``engine.programs.decode`` (what the scheduler calls) to time every decode call and
    count what an ideal step must read: the live slots' KV cache positions."""

    def __init__(self, engine: Any):
        self.programs = engine.programs
        self.steps = engine.programs.shapes.steps
        self.inner = engine.programs.decode
        self.calls = 0
        self.seconds = 0.0
        self.live_slot_steps = 0
        self.kv_positions = 0.0  # sum over calls, steps and live slots of the context length
        engine.programs.decode = self

    def __call__(self, slots: dict) -> Any:
        t0 = time.perf_counter()
        out = self.inner(slots)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        k = self.steps
        live = len(slots)
        self.live_slot_steps += live * k
        # step j of the call attends to position+j+1 cached positions (the new one included)
        self.kv_positions += (
            sum(pos + 1 for _, pos, _ in slots.values()) * k + live * k * (k - 1) / 2
        )
        return out

    def detach(self) -> None:
        if self.programs.__dict__.get("decode") is self:
            del self.programs.decode


# ------------------------------------------------------------------------------ stages


def stage_env(ctx: Ctx) -> None:
    say(f"python {sys.version.split()[0]} ({sys.executable}) on {_platform.platform()}, "
        f"{os.cpu_count()} CPUs")  # fmt: skip
    for pkg in (
        "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "jax-cuda12-plugin",
        "numpy", "ml_dtypes", "torch", "transformers", "tokenizers", "safetensors", "jinja2",
        "tenacity", "fastavro",
    ):  # fmt: skip
        try:
            ver = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            ver = "-"
        mod = sys.modules.get(pkg)
        if mod is not None and getattr(mod, "__hyperbatch_stand_in__", False):
            ver += " (stand-in)"
        elif pkg in ("tenacity", "fastavro"):
            with contextlib.suppress(Exception):
                ver += f" ({os.path.dirname(importlib.util.find_spec(pkg).origin or '?')})"
        say(f"  {pkg:20s} {ver}")
    for var in ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                "XLA_FLAGS", "CUDA_VISIBLE_DEVICES", "HYPERBATCH_CACHE", "PYTHONPATH"):  # fmt: skip
        if os.environ.get(var):
            say(f"  ${var}={os.environ[var]}")
    import hyperbatch
    import hyperbatch.engines

    say(f"hyperbatch from {os.path.dirname(hyperbatch.__file__)}, engines from "
        f"{list(hyperbatch.engines.__path__)}")  # fmt: skip
    import jax

    say(f"jax {jax.__version__}: default backend {jax.default_backend()!r}")
    devices = jax.devices()
    say(f"jax.devices(): {devices}")
    for d in devices[:2]:
        say(f"  {d}: platform={d.platform} kind={getattr(d, 'device_kind', '?')}")
        try:
            ms = d.memory_stats() or {}
            if ms:
                say(f"    memory: limit {fmt_bytes(ms.get('bytes_limit', 0))}, in use "
                    f"{fmt_bytes(ms.get('bytes_in_use', 0))}")  # fmt: skip
        except Exception as e:  # noqa: BLE001 - informational
            say(f"    memory_stats: {e!r}")
    ctx.results["jax_devices"] = [str(d) for d in devices]
    ctx.results["jax_version"] = jax.__version__
    try:
        import torch

        cuda = torch.cuda.is_available()
        say(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, cuda available: "
            f"{cuda}")  # fmt: skip
        if cuda:
            p = torch.cuda.get_device_properties(0)
            say(f"  torch GPU 0: {p.name}, {fmt_bytes(p.total_memory)}, "
                f"{p.multi_processor_count} SMs, capability {p.major}.{p.minor}")  # fmt: skip
    except Exception as e:  # noqa: BLE001
        say(f"torch: {e!r}")
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,"
                 "clocks.mem,power.draw", "--format=csv"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            say("nvidia-smi:\n  " + (out.stdout or out.stderr).strip().replace("\n", "\n  "))
        except Exception as e:  # noqa: BLE001
            say(f"nvidia-smi: {e!r}")
    else:
        say("nvidia-smi: not on PATH")
    if ctx.s.platform != "cpu" and jax.default_backend() == "cpu":
        raise AssertionError(f"asked for platform {ctx.s.platform} but JAX's backend is cpu")
    # HBM bandwidth probe: y = x * 2 over a large bf16 array (reads + writes it once)
    import jax.numpy as jnp

    dev = jax.devices(ctx.s.platform)[0]
    n = (1 << 30) if ctx.s.platform == "gpu" else (1 << 24)  # 2 GiB (bf16) on a GPU
    x = jax.device_put(jnp.ones((n,), jnp.bfloat16), dev)
    double = jax.jit(lambda a: a * 2)
    double(x).block_until_ready()
    reps = 10
    t0 = time.perf_counter()
    for _ in range(reps):
        y = double(x)
    y.block_until_ready()
    dt = (time.perf_counter() - t0) / reps
    bw = 2 * n * 2 / dt
    say(f"copy probe (jit x*2 over {fmt_bytes(2 * n)} bf16, read + write): {dt * 1e3:.3f} ms "
        f"-> {bw / 1e12:.2f} TB/s")  # fmt: skip
    ctx.results["copy_probe_TBps"] = round(bw / 1e12, 3)
    del x, y


def stage_engine(ctx: Ctx) -> None:
    from hyperbatch.schemas.records import Request

    d = tiny_dir(ctx)
    say(f"tiny checkpoint: {d}")
    engine = make_engine(ctx, d, batch=8, max_seq_len=128, dtype=ctx.s.dtype)
    try:
        devs, platforms, shard = param_devices(engine)
        say(f"engine params + KV cache live on: {sorted(devs)} (platforms {sorted(platforms)})")
        say(f"  e.g. embed: sharding {shard}, dtype {engine.programs.params['embed'].dtype}")
        say(f"  engine.programs.device = {engine.programs.device} "
            f"({engine.programs.device.platform})")  # fmt: skip
        ctx.results["engine_devices"] = sorted(devs)
        if platforms != {ctx.s.platform}:
            raise AssertionError(f"engine arrays on {platforms}, expected {ctx.s.platform}")
        greedy = sampling(temperature=0.0, max_tokens=12)
        reqs = [
            Request("chat-0", greedy, messages=({"role": "user", "content": "Tell me a story."},)),
            Request("chat-1", greedy, messages=({"role": "user", "content": "What is Paris?"},)),
            Request("prompt-0", sampling(temperature=0.8, seed=7, max_tokens=12),
                    prompt="The quick brown fox"),
            Request("long", greedy, prompt="word " * 500),  # a prompt too long: one error result
        ]  # fmt: skip
        t0 = time.perf_counter()
        results = engine.generate(reqs)
        dt = time.perf_counter() - t0
        for r in results:
            text = (r.text or "")[:48].replace("\n", "\\n")
            say(f"  {r.record_id}: finish={r.finish_reason} tokens={r.usage.completion_tokens} "
                f"error={r.error_code} text={text!r}")  # fmt: skip
        ok = [r for r in results if r.ok]
        if len(ok) != 3 or results[-1].ok:
            raise AssertionError("expected 3 results and one PROMPT_TOO_LONG error")
        st = engine.stats()
        say(f"  generate: {dt:.2f}s; stats: busy {st.busy_seconds:.3f}s, compilations "
            f"{st.compilations}, padding waste {st.padding_waste:.1%}")  # fmt: skip
        # the engine never falls back to another platform
        from hyperbatch.engines.jax_llm.engine import AcceleratorUnavailable, accelerator_devices

        other = "cpu" if ctx.s.platform != "cpu" else "nvidia-h200-141gb"
        try:
            accelerator_devices(other, 1)
            say(f"  accelerator {other!r} also resolves here (JAX sees that platform too)")
        except AcceleratorUnavailable as e:
            say(f"  accelerator {other!r} refused as expected: {str(e)[:100]}...")
    finally:
        engine.close()


def stage_parity(ctx: Ctx) -> None:
    import jax
    import ml_dtypes
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from hyperbatch.engines.jax_llm import model, weights
    from hyperbatch.schemas.records import Request

    d = tiny_dir(ctx)
    cfg, tensors = weights.load_hf(d)
    dev = jax.devices(ctx.s.platform)[0]
    p32 = jax.device_put(weights.to_params(cfg, tensors, np.float32), dev)
    p16 = jax.device_put(weights.to_params(cfg, tensors, ml_dtypes.bfloat16), dev)
    tokens = np.random.RandomState(1).randint(0, cfg.vocab_size, size=(4, 96)).astype(np.int32)
    tok_dev = jax.device_put(tokens, dev)
    say(f"tiny llama: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_heads} heads / "
        f"{cfg.num_kv_heads} KV, vocab {cfg.vocab_size}; tokens {tokens.shape}")  # fmt: skip

    def logits(params: Any) -> np.ndarray:
        return np.asarray(model.forward_logits(params, tok_dev, cfg=cfg, block=16))

    say('fp32 comparison runs under jax.default_matmul_precision("highest") '
        "(JAX's default fp32 matmul on a GPU is TF32)")  # fmt: skip
    with jax.default_matmul_precision("highest"):
        l32 = logits(p32)
    l32_default = logits(p32)  # default precision: what an fp32 engine would compute
    l16 = logits(p16)

    ref_dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False

    def reference(dtype: Any, device: str) -> np.ndarray:
        m = AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="eager")
        m = m.eval().to(device)
        with torch.no_grad():
            out = m(torch.tensor(tokens, dtype=torch.long, device=device)).logits
        return out.float().cpu().numpy()

    r32 = reference(torch.float32, "cpu")
    try:
        r32_dev = reference(torch.float32, ref_dev) if ref_dev != "cpu" else r32
        r16 = reference(torch.bfloat16, ref_dev)
    except Exception as e:  # noqa: BLE001 - torch's CUDA beside JAX's: fall back to the CPU
        say(f"  transformers on {ref_dev} failed ({e!r}); the references run on the CPU")
        ref_dev, r32_dev = "cpu", r32
        r16 = reference(torch.bfloat16, "cpu")

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max())

    def agree(a: np.ndarray, b: np.ndarray) -> float:
        return float((a.argmax(-1) == b.argmax(-1)).mean())

    scale = float(np.abs(r32).max())
    rows = {
        "fp32 (highest) vs transformers fp32 cpu": diff(l32, r32),
        f"fp32 (highest) vs transformers fp32 {ref_dev}": diff(l32, r32_dev),
        "fp32 (default precision) vs transformers fp32 cpu": diff(l32_default, r32),
        "bf16 vs transformers fp32 cpu": diff(l16, r32),
        f"bf16 vs transformers bf16 {ref_dev}": diff(l16, r16),
        f"transformers bf16 {ref_dev} vs its fp32 cpu": diff(r16, r32),
    }
    say(f"logits [4, 96, {cfg.vocab_size}]; max |reference| = {scale:.3f}")
    for k, v in rows.items():
        say(f"  max abs diff  {k:52s} {v:.3e}")
    agreements = {
        "bf16 vs transformers fp32": agree(l16, r32),
        f"bf16 vs transformers bf16 {ref_dev}": agree(l16, r16),
        "transformers bf16 vs fp32": agree(r16, r32),
        "fp32 (default precision) vs transformers fp32": agree(l32_default, r32),
    }
    for k, v in agreements.items():
        say(f"  greedy argmax agreement  {k:44s} {v:.1%}")
    ctx.results["parity"] = {
        "max_abs_diff": {k: float(f"{v:.3e}") for k, v in rows.items()},
        "argmax_agreement": {k: round(v, 4) for k, v in agreements.items()},
        "reference_scale": round(scale, 3),
    }
    fp32_ok = rows["fp32 (highest) vs transformers fp32 cpu"] <= 1e-4
    say(f"  fp32 parity (<= 1e-4): {'PASS' if fp32_ok else 'FAIL'}")
    del p32, p16

    # The engine's decode path (prefill into slots, cached decode steps) in fp32, greedy, against
    # transformers' greedy continuation computed by full forwards (no KV cache on its side).
    n_new, prompts = 16, np.random.RandomState(2).randint(3, cfg.vocab_size, size=(4, 20))
    with jax.default_matmul_precision("highest"):
        engine = make_engine(ctx, d, batch=4, max_seq_len=64, dtype="float32")
        try:
            greedy = sampling(temperature=0.0, max_tokens=n_new, ignore_eos=True)
            reqs = [
                Request(f"g{i}", greedy, prompt="", prompt_token_ids=tuple(int(t) for t in p))
                for i, p in enumerate(prompts)
            ]
            res = engine.generate(reqs)
        finally:
            engine.close()
    ref = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    ref = ref.eval()
    seq = torch.tensor(prompts, dtype=torch.long)
    gaps = []
    with torch.no_grad():
        for _ in range(n_new):
            last = ref(seq).logits[:, -1]
            top2 = last.topk(2, dim=-1).values
            gaps.append((top2[:, 0] - top2[:, 1]).numpy())
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    expected = seq[:, prompts.shape[1] :].numpy()
    same = 0
    for i, r in enumerate(res):
        got = np.array(r.token_ids)
        if got.shape == expected[i].shape and (got == expected[i]).all():
            same += 1
        else:
            bad = int(np.argmax(got != expected[i])) if got.shape == expected[i].shape else -1
            gap = float(gaps[bad][i]) if bad >= 0 else float("nan")
            say(f"  engine greedy row {i} differs at step {bad} (reference top-2 logit gap "
                f"{gap:.2e}): got {got.tolist()} expected {expected[i].tolist()}")  # fmt: skip
    say(f"  engine fp32 greedy decode ({n_new} tokens) == transformers greedy: {same}/"
        f"{len(res)} sequences")  # fmt: skip
    ctx.results["parity"]["engine_greedy_match"] = f"{same}/{len(res)}"
    if not fp32_ok or same != len(res):
        raise AssertionError("fp32 logits diff above 1e-4 or engine greedy decode mismatch")


def _throughput_one(ctx: Ctx, batch: int) -> dict:
    import jax
    import numpy as np

    from hyperbatch.schemas.records import Request

    s = ctx.s
    hd = s.hidden // s.heads
    engine = big_engine(ctx, batch)
    ctx.engines[batch] = engine
    devs, _, _ = param_devices(engine)
    say(f"  params on {sorted(devs)}")
    leaves = jax.tree_util.tree_leaves(engine.programs.params)
    total_bytes = sum(x.nbytes for x in leaves)
    embed = engine.programs.params["embed"]
    w_bytes = total_bytes - embed.nbytes  # the embedding table is gathered, not read whole
    itemsize = engine.programs.cache.k[0].dtype.itemsize
    kv_per_pos = s.layers * 2 * s.kv_heads * hd * itemsize
    w_params = (total_bytes - embed.nbytes) / embed.dtype.itemsize
    rng = np.random.RandomState(batch)
    n_req = 2 * batch
    greedy = sampling(temperature=0.0, max_tokens=s.new_tokens, ignore_eos=True)

    def requests(n: int, sp: Any, tag: str) -> list:
        ids = rng.randint(3, 500, size=(n, s.prompt_len))
        return [Request(f"{tag}{i}", sp, prompt="", prompt_token_ids=tuple(map(int, r)))
                for i, r in enumerate(ids)]  # fmt: skip

    # one untimed pass through every program with real data
    engine.generate(requests(batch, sampling(temperature=0.0, max_tokens=2 * s.decode_steps,
                                             ignore_eos=True), "w"))  # fmt: skip
    reqs = requests(n_req, greedy, "r")
    before = engine.stats()
    meter = DecodeMeter(engine)
    t0 = time.perf_counter()
    try:
        results = engine.generate(reqs)
    finally:
        meter.detach()
    wall = time.perf_counter() - t0
    after = engine.stats()
    bad = [r for r in results if not r.ok]
    if bad:
        raise AssertionError(f"{len(bad)} error results, e.g. {bad[0]}")
    gen = sum(r.usage.completion_tokens for r in results)
    busy = after.busy_seconds - before.busy_seconds
    prefill = after.prefill_seconds - before.prefill_seconds
    steps = meter.calls * meter.steps
    step_s = meter.seconds / steps if steps else float("nan")
    kv_bytes = meter.kv_positions * kv_per_pos
    ideal_bytes = w_bytes * steps + kv_bytes + meter.live_slot_steps * s.hidden * itemsize
    t_mem = ideal_bytes / H200_HBM_BYTES_PER_S
    flops = 2 * w_params * meter.live_slot_steps + 4 * s.heads * hd * s.layers * (
        meter.kv_positions
    )
    t_flop = flops / H200_BF16_FLOPS
    decode_tokens = meter.live_slot_steps
    row = {
        "requests": n_req,
        "prompt_tokens": n_req * s.prompt_len,
        "generated_tokens": gen,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(gen / wall, 1),
        "busy_s": round(busy, 3),
        "prefill_s": round(prefill, 3),
        "decode_calls": meter.calls,
        "decode_s": round(meter.seconds, 3),
        "decode_step_ms": round(step_s * 1e3, 3),
        "decode_tokens_per_s": round(decode_tokens / meter.seconds, 1) if meter.seconds else 0,
        "mean_live_slots": round(meter.live_slot_steps / steps, 1) if steps else 0,
        "weight_bytes_per_step": int(w_bytes),
        "mean_kv_bytes_per_step": int(kv_bytes / steps) if steps else 0,
        "hbm_roofline_fraction": round(t_mem / meter.seconds, 4) if meter.seconds else 0,
        "compute_roofline_fraction": round(t_flop / meter.seconds, 4) if meter.seconds else 0,
        "padding_waste": round((after - before).padding_waste, 4),
    }
    say(f"{clock()} batch {batch}: {n_req} requests x {s.prompt_len} prompt tokens, "
        f"{s.new_tokens} new tokens each (ignore_eos, greedy)")  # fmt: skip
    say(f"  generated {gen} tokens in {wall:.2f}s -> {row['tokens_per_s']:.0f} tok/s "
        f"(prefill {prefill:.2f}s, decode {meter.seconds:.2f}s in {meter.calls} calls of "
        f"{meter.steps} steps)")  # fmt: skip
    say(f"  decode step {row['decode_step_ms']:.3f} ms, {row['decode_tokens_per_s']:.0f} "
        f"decode tok/s, mean live slots {row['mean_live_slots']}")  # fmt: skip
    say(f"  per step: weights {fmt_bytes(w_bytes)} + live KV "
        f"{fmt_bytes(row['mean_kv_bytes_per_step'])} (mean) -> HBM roofline "
        f"{(w_bytes + row['mean_kv_bytes_per_step']) / H200_HBM_BYTES_PER_S * 1e3:.3f} ms;"
        f" fraction of HBM roofline: {row['hbm_roofline_fraction']:.1%}; of the bf16 "
        f"compute roofline: {row['compute_roofline_fraction']:.1%}")  # fmt: skip
    return row


def stage_throughput(ctx: Ctx) -> None:
    s = ctx.s
    big_dir(ctx)
    rows = {}
    for batch in s.batches:
        if s.over_budget():
            say(f"{clock()} over the {s.budget_s:.0f}s budget: batch {batch} skipped")
            continue
        rows[batch] = _throughput_one(ctx, batch)
    say("roofline: an ideal decode step reads every weight once (embedding table excluded: only "
        "B rows are gathered) plus the live KV cache: bytes/step = W + sum over live slots of "
        f"ctx_len x layers x 2 (K,V) x kv_heads x head_dim x 2 B; t_HBM = bytes / "
        f"{H200_HBM_BYTES_PER_S / 1e12:.1f} TB/s (H200 datasheet); fraction = sum(t_HBM) / "
        "measured decode time (host-timed engine decode calls, dispatch to tokens on the host). "
        "Compute: 2 x non-embedding params x live tokens + 4 x heads x head_dim x layers x ctx "
        f"per token, at {H200_BF16_FLOPS / 1e12:.0f} TFLOP/s (bf16 matmul measured on an "
        "H200 here).")  # fmt: skip
    if s.platform == "cpu":
        say("  (CPU run: the fractions use the H200's numbers and mean nothing here)")
    ctx.results["throughput"] = rows
    if not rows:
        raise AssertionError("no batch ran")


def _loop_records(engine: Any, s: Settings, seed: int) -> list:
    from hyperbatch.schemas.formats import Location, Parsed
    from hyperbatch.schemas.records import Request

    words = ["the", "river", "valley", "town", "market", "harvest", "winter", "festival", "lantern", "bridge", "music", "family", "road", "station", "library", "garden", "mountain", "storm", "harbour", "engine", "letter", "painting", "school", "kitchen", "doctor", "village", "forest", "island", "train", "morning", "evening"]  # fmt: skip
    rng = random.Random(seed)
    lo, hi = s.loop_prompt_tokens
    out = []
    for i in range(s.shards * s.shard_size):
        want = rng.randint(lo, hi)
        chosen = [rng.choice(words) for _ in range(hi)]  # every word is at least one token

        def n_tokens(k: int, chosen: list = chosen) -> int:
            text = " ".join(["Summarise:", *chosen[:k]])
            return len(engine.prompt_tokens(Request("x", prompt=text)))

        a, b = 0, hi  # the most words whose prompt has at most `want` tokens
        while a < b:
            mid = (a + b + 1) // 2
            a, b = (mid, b) if n_tokens(mid) <= want else (a, mid - 1)
        text = " ".join(["Summarise:", *chosen[:a]])
        sp = sampling(temperature=0.0, max_tokens=rng.randint(*s.loop_max_tokens), ignore_eos=True)
        out.append(Parsed(Request(f"r{i:05d}", sp, prompt=text), Location("gpu_check", i + 1)))
    return out


def _loop_report(engine: Any, before: Any, device0: float, wall: float, results: list) -> dict:
    after = engine.stats()
    bad = [r for r in results if not r.ok]
    if bad:
        raise AssertionError(f"{len(bad)} error results, e.g. {bad[0]}")
    delta = after - before
    device = engine.programs.device_seconds - device0
    tokens = sum(r.usage.completion_tokens for r in results)
    return {
        "records": len(results),
        "wall_s": round(wall, 3),
        "completion_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 1),
        "padding_waste": round(delta.padding_waste, 4),
        "computed_token_slots": int(delta.computed_token_slots),
        "useful_token_slots": int(delta.useful_token_slots),
        "busy_s": round(delta.busy_seconds, 3),
        "device_idle_share": round(1 - device / delta.busy_seconds, 4) if delta.busy_seconds else 0,
    }


def _one_at_a_time(engine: Any, shards: list[list]) -> dict:
    """The old path: each shard tokenized, ordered and served alone by one generate call."""
    from hyperbatch.runners import engine_adapter

    engine.clear_prefix_cache()
    before, device0 = engine.stats(), engine.programs.device_seconds
    t0 = time.perf_counter()
    results: list = []
    for shard in shards:
        tokenized = [(p, engine.prompt_tokens(p.request)) for p in shard]
        tokenized.sort(key=lambda pt: engine_adapter._order_key(pt[0], len(pt[1])))
        results += engine.generate([p.request.with_tokens(ids) for p, ids in tokenized])
    return _loop_report(engine, before, device0, time.perf_counter() - t0, results)


def _with_the_loop(engine: Any, shards: list[list], threads: int, timeout: float) -> dict:
    """The new path: ``threads`` threads (Beam's bundles) each take a shard at a time and
    serve it through one EngineLoop (engine_adapter.serve). Closes the loop (and the engine)."""
    from hyperbatch.runners import engine_adapter

    engine.clear_prefix_cache()
    loop = engine_adapter.EngineLoop(engine, 0.0, engine.stats())
    try:
        todo: queue.Queue = queue.Queue()
        for sh in shards:
            todo.put(sh)
        results: list = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def bundle() -> None:
            while True:
                try:
                    shard = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    served = engine_adapter.serve(loop, shard)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)
                    return
                with lock:
                    results.extend(served.results)

        before, device0 = engine.stats(), engine.programs.device_seconds
        t0 = time.perf_counter()
        workers = [threading.Thread(target=bundle, daemon=True) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=timeout)
        wall = time.perf_counter() - t0
        if any(t.is_alive() for t in workers):
            raise AssertionError(f"engine loop threads still running after {timeout:.0f}s (hang?)")
        if errors:
            raise errors[0]
        return _loop_report(engine, before, device0, wall, results)
    finally:
        loop.close()  # stops the loop thread and closes the engine


def stage_loop(ctx: Ctx) -> None:
    from hyperbatch.runners import engine_adapter  # noqa: F401 - what is imported with it

    s = ctx.s
    loaded_modules = {m.split(".")[0] for m in sys.modules}
    say(f"engine_adapter imported; apache_beam loaded: {'apache_beam' in loaded_modules}")
    rows = {}
    for batch in s.loop_batches:
        if s.over_budget() and rows:
            say(f"{clock()} over the {s.budget_s:.0f}s budget: loop at batch {batch} skipped")
            continue
        engine = ctx.engines.pop(batch, None)
        if engine is None:
            engine = big_engine(ctx, batch)
        records = _loop_records(engine, s, seed=batch)
        shards = [records[i : i + s.shard_size] for i in range(0, len(records), s.shard_size)]
        say(f"{clock()} batch {batch}: {len(shards)} shards x {s.shard_size} records, prompts "
            f"{s.loop_prompt_tokens[0]}-{s.loop_prompt_tokens[1]} tokens, max_tokens "
            f"{s.loop_max_tokens[0]}-{s.loop_max_tokens[1]} (ignore_eos, greedy)")  # fmt: skip
        threads_before = threading.active_count()
        try:
            old = _one_at_a_time(engine, shards)
        except BaseException:
            engine.close()
            raise
        new = _with_the_loop(engine, shards, s.loop_threads, max(60.0, 3 * old["wall_s"] + 30))
        leaked = threading.active_count() - threads_before
        ratio = new["output_tokens_per_s"] / old["output_tokens_per_s"]
        rows[batch] = {"one_shard_at_a_time": old, "engine_loop": new, "ratio": round(ratio, 3),
                       "threads_left": leaked}  # fmt: skip
        say(f"  {'':26s} {'padding waste':>13s} {'output tok/s':>13s} {'device idle':>12s} "
            f"{'wall s':>8s}")  # fmt: skip
        named = (("one shard per generate", old), (f"engine loop, {s.loop_threads} threads", new))
        for name, r in named:
            say(f"  {name:26s} {r['padding_waste']:12.1%} {r['output_tokens_per_s']:13.0f} "
                f"{r['device_idle_share']:11.1%} {r['wall_s']:8.2f}")  # fmt: skip
        say(f"  loop / one-at-a-time throughput: {ratio:.2f}x; threads left after close: {leaked}")
    # engines of the throughput stage that the loop stage did not take
    for batch in list(ctx.engines):
        ctx.engines.pop(batch).close()
    ctx.results["loop"] = rows
    if not rows:
        raise AssertionError("no batch ran")


STAGES = (
    ("1 env", stage_env),
    ("2 engine on the accelerator", stage_engine),
    ("3 logits parity", stage_parity),
    ("4 throughput + roofline", stage_throughput),
    ("5 engine loop vs one shard at a time", stage_loop),
)


# -------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--platform", choices=("gpu", "cpu"), default="gpu")
    ap.add_argument(
        "--accelerator", help="hyperbatch accelerator (default nvidia-h200-141gb / cpu)"
    )
    ap.add_argument("--small", action="store_true", help="small shapes (a CPU smoke run)")
    ap.add_argument("--stages", default="1,2,3,4,5", help="which stages, e.g. 1,4")
    ap.add_argument("--layers", type=int, help="layers of the throughput model (default 16)")
    ap.add_argument("--batches", help="throughput batches (default 64,256)")
    ap.add_argument("--loop-batches", help="engine-loop stage batches (default 256,64)")
    ap.add_argument("--decode-steps", type=int, help="decode steps per call (default 8)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="start no optional work after this many seconds")  # fmt: skip
    ap.add_argument("--log", default=None, help="also write the output here "
                    "(default $OUT/gpu_check.log unless gpu_check.sh already tees it)")  # fmt: skip
    ap.add_argument("--json", default=None, help="results as JSON (default $OUT/gpu_check.json)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()

    out = os.environ.get("OUT")
    log = args.log or (
        os.path.join(out, "gpu_check.log") if out and not os.environ.get("GPU_CHECK_TEED") else None
    )
    if log:
        say.open(log)
    json_path = args.json or (os.path.join(out, "gpu_check.json") if out else None)
    if args.platform == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    faulthandler.enable()
    # every thread's stack if it is still running then (before gpu_check.sh's 540 s timeout)
    faulthandler.dump_traceback_later(args.budget_s + 100, exit=False)

    work = args.work or tempfile.mkdtemp(prefix="hb_gpu_check_")
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("HYPERBATCH_CACHE", os.path.join(work, "hyperbatch-cache"))
    tree = make_namespace(work)
    stand_ins = ensure_light_deps()
    s = Settings.make(args)
    ctx = Ctx(s, work)
    say(f"{clock()} gpu_check: platform {s.platform}, accelerator {s.accelerator}, "
        f"{'small' if s.small else 'full'} shapes, work dir {work}")  # fmt: skip
    say(f"  hyperbatch namespace: link tree {tree} -> {REPO}")
    if stand_ins:
        say(f"  NOTE: {', '.join(stand_ins)} not installed: stand-in modules used (imports only)")

    wanted = {w.strip() for w in args.stages.split(",")}
    status: list[tuple[str, str, float]] = []
    for name, fn in STAGES:
        if name.split()[0] not in wanted:
            continue
        say(f"\n===== stage {name} {clock()} =====")
        t0 = time.perf_counter()
        try:
            fn(ctx)
            result = "PASS"
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            result = f"FAIL: {type(e).__name__}: {str(e)[:200]}"
            say(traceback.format_exc())
        dt = time.perf_counter() - t0
        status.append((name, result, dt))
        say(f"----- stage {name}: {result} ({dt:.1f}s) {clock()}")
    for e in list(ctx.engines.values()):
        with contextlib.suppress(Exception):
            e.close()

    say(f"\n===== summary {clock()} =====")
    for name, result, dt in status:
        say(f"  {name:40s} {dt:7.1f}s  {result}")
    ctx.results["stages"] = {n: {"result": r, "seconds": round(t, 1)} for n, r, t in status}
    ctx.results["settings"] = dataclasses.asdict(s)
    ctx.results["total_s"] = round(time.perf_counter() - T_START, 1)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(ctx.results, f, indent=1, default=str)
        say(f"results: {json_path}")
    faulthandler.cancel_dump_traceback_later()
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r == "PASS" for _, r, _ in status) else 1


if __name__ == "__main__":
    sys.exit(main())
