"""The host API an engine wraps: ``DiffusionModel.load`` a checkpoint, ``warmup`` its programs,
``generate`` images for lists of prompts.

Invariants:

* One compiled program per declared resolution (``DiffusionOptions.resolutions``) at the fixed
  ``batch_size``; ``warmup`` compiles them all and ``compilations`` counts every compilation, so
  a caller can check that requests never cause new ones (prompts, seeds, steps up to
  ``max_steps``, guidance and scheduler are data).
* A row's image depends only on its own inputs (prompt, negative prompt, seed, steps, guidance,
  scheduler), not on the batch it shares or its position there.
* ``generate`` pads the last batch with idle rows (zero steps) and reports them as
  ``padding_slots``; results come back in input order.
* The image batch is split over ``data_parallel`` devices (a one-axis ``data`` mesh, each device
  running the one-device program on its rows under ``shard_map``); parameters are replicated.
  Same images as one device (bit for bit in the tests; a different per-device batch size may
  change the last float bits, at most one uint8 level).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import secrets
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hyperbatch.engines.jax_diffusion import loading, program, schedulers
from hyperbatch.engines.jax_diffusion.layers import KINDS, AttentionImpl
from hyperbatch.engines.jax_diffusion.loading import Checkpoint, PipelineParams

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MAX_SEED = 2**64


def use_cpu_cores(cores: int | None = None) -> int:
    """Expose each CPU core as its own XLA device, so the data-parallel mesh gives every core a
    slice of the image batch (on a CPU host this beats one device whose small ops parallelise
    poorly over cores). Call it right after importing JAX, before any computation; returns the
    device count. ``cores`` defaults to the cores this process may run on."""
    import os

    n = cores or len(os.sched_getaffinity(0))
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:
        raise RuntimeError(
            "use_cpu_cores() must run before JAX computes anything (it fixes the CPU device count)"
        ) from e
    return n


def cpu_device_count_chosen() -> bool:
    """Whether someone chose the CPU device count: ``JAX_NUM_CPU_DEVICES`` (or
    ``jax_num_cpu_devices``) or ``XLA_FLAGS``' ``--xla_force_host_platform_device_count``."""
    import os

    return (
        jax.config.jax_num_cpu_devices >= 0
        or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
    )


class UnservedSize(ValueError):
    """A request's size is not one of the resolutions the programs were built for."""


class InvalidRequest(ValueError):
    """A request's parameters are out of range (the message names the parameter)."""


@dataclasses.dataclass(frozen=True)
class DiffusionOptions:
    """How the programs are built: every field is fixed for the life of a loaded model."""

    dtype: str = "float32"  # float32 | bfloat16 | float16 (params and activations)
    batch_size: int = 8  # images per program call (static)
    resolutions: tuple[tuple[int, int], ...] = ((512, 512),)  # (width, height) pairs served
    max_steps: int = 50  # step tables are padded to this; requests may ask for up to it
    data_parallel: int | None = None  # devices the batch is split over (default: all local)
    attention: str = "auto"  # "cpu" | "xla" | "auto" (cpu on CPU hosts, xla on accelerators)
    query_block: int = 4096  # attention processes at most this many query positions at a time
    vae_chunks: int = 1  # decode the batch in this many sequential parts (memory)
    variant: str | None = None  # safetensors variant to read ("fp16"), None = full files
    cache_dir: str | None = None  # where gs:// checkpoints are copied

    def validate(self) -> None:
        problems = []
        if self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_steps < 1:
            problems.append(f"max_steps must be at least 1, got {self.max_steps}")
        if not self.resolutions:
            problems.append("resolutions must name at least one (width, height)")
        for res in self.resolutions:
            if len(res) != 2 or any(int(v) <= 0 or int(v) % 8 for v in res):
                problems.append(f"resolution {res!r} must be (width, height), multiples of 8")
        if self.vae_chunks < 1 or self.batch_size % self.vae_chunks:
            problems.append(
                f"vae_chunks {self.vae_chunks} must divide batch_size {self.batch_size}"
            )
        if self.attention not in ("auto", *KINDS):
            problems.append(f"attention {self.attention!r} is not one of auto, {', '.join(KINDS)}")
        if self.query_block < 1:
            problems.append(f"query_block must be at least 1, got {self.query_block}")
        if problems:
            raise ValueError("invalid diffusion options: " + "; ".join(problems))


@dataclasses.dataclass
class Timings:
    tokenize_s: float = 0.0  # host: tokenizing and building the batches' inputs
    compile_s: float = 0.0  # programs compiled during this call (0 after warmup)
    device_s: float = 0.0  # running the programs and fetching the images
    total_s: float = 0.0


@dataclasses.dataclass
class GenerationResult:
    images: np.ndarray  # uint8 [N, H, W, 3], in input order
    seeds: list[int]  # the seed each image used (drawn when the caller gave none)
    truncated: list[bool]  # the prompt was longer than a text encoder's window and was cut
    negative_truncated: list[bool]  # the same for the negative prompt
    batches: int
    padding_slots: int  # idle rows computed in the last batch
    timings: Timings
    float_images: np.ndarray | None = None  # float32 [N, H, W, 3] in [0, 1] when asked for


def _per_item(value: Any, n: int, name: str) -> list[Any]:
    """``value`` for each of ``n`` prompts: a scalar repeated, or a sequence of ``n``."""
    if isinstance(value, str) or not isinstance(value, Sequence | np.ndarray):
        return [value] * n
    if len(value) != n:
        raise InvalidRequest(f"{name} has {len(value)} entries for {n} prompts")
    return list(value)


class DiffusionModel:
    """A loaded checkpoint with its compiled programs (see the module docstring)."""

    def __init__(
        self, checkpoint: Checkpoint, host_params: PipelineParams, options: DiffusionOptions
    ):
        options.validate()
        self.checkpoint = checkpoint
        self.options = options
        self.dtype = DTYPES[options.dtype]
        upcast = (
            options.dtype == "float16" and checkpoint.kind == "sdxl" and checkpoint.vae.force_upcast
        )
        self.vae_dtype = jnp.float32 if upcast else self.dtype
        devices = jax.local_devices()
        dp = options.data_parallel or math.gcd(len(devices), options.batch_size)
        if dp > len(devices):
            raise ValueError(f"data_parallel={dp} but only {len(devices)} devices are available")
        if options.batch_size % dp:
            raise ValueError(
                f"batch_size {options.batch_size} must be a multiple of data_parallel {dp}"
            )
        self.mesh = Mesh(np.asarray(devices[:dp]), ("data",)) if dp > 1 else None
        if (options.batch_size // dp) % options.vae_chunks:
            raise ValueError(
                f"vae_chunks {options.vae_chunks} must divide the {options.batch_size // dp} "
                "images each device decodes"
            )
        kind = options.attention
        if kind == "auto":
            kind = "cpu" if devices[0].platform == "cpu" else "xla"
        self.attention = AttentionImpl(kind, options.query_block)
        scale = checkpoint.vae.scale_factor
        for width, height in options.resolutions:
            if width % scale or height % scale:
                raise ValueError(
                    f"resolution {width}x{height} is not a multiple of the VAE's {scale}"
                )
        self.params = self._to_device(host_params)
        self._compiled: dict[tuple[int, int, bool], Any] = {}
        self._plans: dict[tuple[str, int], tuple[schedulers.StepTable, float]] = {}
        self._compilations = 0

    @classmethod
    def load(
        cls, source: str, options: DiffusionOptions | None = None, **overrides: Any
    ) -> DiffusionModel:
        """Read a diffusers-layout checkpoint (local folder or ``gs://``); ``overrides`` are
        ``DiffusionOptions`` fields (unknown names are errors)."""
        options = dataclasses.replace(options or DiffusionOptions(), **overrides)
        options.validate()
        checkpoint, host = loading.read(source, options.variant, options.cache_dir)
        return cls(checkpoint, host, options)

    # --- device state -----------------------------------------------------------------------

    def _to_device(self, host: PipelineParams) -> PipelineParams:
        def cast(dtype):
            return lambda a: None if a is None else np.asarray(a, np.float32).astype(dtype)

        moved = PipelineParams(
            text_encoders=jax.tree.map(cast(self.dtype), host.text_encoders),
            unet=jax.tree.map(cast(self.dtype), host.unet),
            vae=jax.tree.map(cast(self.vae_dtype), host.vae),
        )
        if self.mesh is None:
            return jax.device_put(moved)
        return jax.device_put(moved, NamedSharding(self.mesh, P()))

    def _input_specs(self) -> program.BatchInputs:
        """How a batch is split over the mesh: by image row (``ids`` has it on axis 1)."""
        rows = P("data")
        return program.BatchInputs(
            ids=P(None, "data"),
            zero_negative=rows,
            key_data=rows,
            latents=rows,
            use_latents=rows,
            table=schedulers.StepTable(*([rows] * len(schedulers.StepTable._fields))),
            init_sigma=rows,
            num_steps=P(),
            guidance=rows,
            time_ids=rows,
        )

    @property
    def compilations(self) -> int:
        """Programs compiled so far (each (resolution, output kind) once)."""
        return self._compilations

    @property
    def resolutions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self.options.resolutions)

    def _program(self, width: int, height: int, float_output: bool) -> tuple[Any, float]:
        key = (width, height, float_output)
        if key in self._compiled:
            return self._compiled[key], 0.0
        ck, opts = self.checkpoint, self.options
        scale = ck.vae.scale_factor
        latent_shape = (ck.unet.in_channels, height // scale, width // scale)

        def run(params: PipelineParams, inputs: program.BatchInputs) -> jax.Array:
            self._compilations += 1  # runs once per trace, i.e. per compilation
            latents = program.denoise(ck, params, inputs, latent_shape, self.dtype, self.attention)
            images = program.decode_images(
                ck, params, latents, self.vae_dtype, self.attention, opts.vae_chunks
            )
            return images if float_output else program.to_uint8(images)

        if self.mesh is None:
            jitted = jax.jit(run)
        else:  # pure data parallelism: every device runs the one-device program on its rows
            specs = self._input_specs()
            local = jax.shard_map(
                run, mesh=self.mesh, in_specs=(P(), specs), out_specs=P("data"), check_vma=False
            )
            to_mesh = functools.partial(NamedSharding, self.mesh)
            jitted = jax.jit(
                local,
                in_shardings=(
                    to_mesh(P()),
                    jax.tree.map(to_mesh, specs, is_leaf=lambda x: isinstance(x, P)),
                ),
                out_shardings=to_mesh(P("data")),
            )
        start = time.perf_counter()
        example = self._batch_inputs([_Row.idle()] * opts.batch_size, width, height)
        compiled = jitted.lower(self.params, example).compile()
        self._compiled[key] = compiled
        return compiled, time.perf_counter() - start

    def warmup(self) -> dict[tuple[int, int], float]:
        """Compile the program of every declared resolution; seconds per (width, height)."""
        return {(w, h): self._program(w, h, False)[1] for w, h in self.resolutions}

    # --- requests ---------------------------------------------------------------------------

    def _plan(self, scheduler: str, steps: int) -> tuple[schedulers.StepTable, float]:
        key = (scheduler, steps)
        if key not in self._plans:
            plan = schedulers.plan(scheduler, self.checkpoint.scheduler_config, steps)
            self._plans[key] = (schedulers.padded(plan, self.options.max_steps), plan.init_sigma)
        return self._plans[key]

    def _batch_inputs(self, rows: list[_Row], width: int, height: int) -> program.BatchInputs:
        ck = self.checkpoint
        b = len(rows)
        encoders = []
        for tok in ck.tokenizers:
            neg, _ = tok.encode([r.negative or "" for r in rows])
            pos, _ = tok.encode([r.prompt for r in rows])
            encoders.append(np.stack([neg, pos], axis=1))
        scale = ck.vae.scale_factor
        latents = np.zeros((b, ck.unet.in_channels, height // scale, width // scale), np.float32)
        use = np.zeros(b, bool)
        tables, sigmas = [], []
        for i, r in enumerate(rows):
            if r.latents is not None:
                latents[i], use[i] = r.latents, True
            if r.steps == 0:  # an idle slot
                table, sigma = schedulers.idle(self.options.max_steps), 1.0
            else:
                table, sigma = self._plan(r.scheduler, r.steps)
            tables.append(table)
            sigmas.append(sigma)
        table = schedulers.StepTable(*(np.stack(cols) for cols in zip(*tables, strict=True)))
        return program.BatchInputs(
            ids=np.stack(encoders),
            zero_negative=np.array(
                [r.negative is None and ck.force_zeros_for_empty_prompt for r in rows], bool
            ),
            key_data=np.array(
                [[(r.seed >> 32) & 0xFFFFFFFF, r.seed & 0xFFFFFFFF] for r in rows], np.uint32
            ),
            latents=latents,
            use_latents=use,
            table=table,
            init_sigma=np.asarray(sigmas, np.float32),
            num_steps=np.int32(max(r.steps for r in rows)),
            guidance=np.array([r.guidance for r in rows], np.float32),
            time_ids=np.tile(np.array([height, width, 0, 0, height, width], np.float32), (b, 1)),
        )

    def generate(
        self,
        prompts: Sequence[str],
        negative_prompts: str | Sequence[str | None] | None = None,
        *,
        seeds: int | Sequence[int] | None = None,
        width: int | None = None,
        height: int | None = None,
        steps: int | Sequence[int] | None = None,
        guidance: float | Sequence[float] = 7.5,
        scheduler: str | Sequence[str] = "euler",
        latents: np.ndarray | None = None,
        return_float: bool = False,
    ) -> GenerationResult:
        """Images for ``prompts``, ``batch_size`` at a time. Per-prompt values may be given as
        sequences (``negative_prompts``, ``seeds``, ``steps``, ``guidance``, ``scheduler``);
        ``width``/``height`` default to the first declared resolution, ``steps`` to 30 (at most
        ``max_steps``). A ``None`` negative prompt
        is diffusers' default (the empty prompt; all-zero embeddings for SDXL). ``latents``
        (``[N, C, h, w]``, diffusers' layout) replace the seeds' initial noise."""
        start = time.perf_counter()
        n = len(prompts)
        if width is None or height is None:
            width, height = self.resolutions[0]
        if (width, height) not in self.resolutions:
            served = ", ".join(f"{w}x{h}" for w, h in self.resolutions)
            raise UnservedSize(f"size {width}x{height} is not served; this model serves {served}")
        if seeds is None:
            seeds = [secrets.randbelow(2**63) for _ in range(n)]
        if steps is None:
            steps = min(30, self.options.max_steps)
        rows = [
            _Row(prompt, negative, int(seed), int(s), float(g), sched, None)
            for prompt, negative, seed, s, g, sched in zip(
                prompts,
                _per_item(negative_prompts, n, "negative_prompts"),
                _per_item(seeds, n, "seeds"),
                _per_item(steps, n, "steps"),
                _per_item(guidance, n, "guidance"),
                _per_item(scheduler, n, "scheduler"),
                strict=True,
            )
        ]
        for r in rows:
            r.check(self.options.max_steps)
        if latents is not None:
            latents = np.asarray(latents, np.float32)
            scale = self.checkpoint.vae.scale_factor
            want = (n, self.checkpoint.unet.in_channels, height // scale, width // scale)
            if latents.shape != want:
                raise InvalidRequest(f"latents have shape {latents.shape}, expected {want}")
            rows = [dataclasses.replace(r, latents=latents[i]) for i, r in enumerate(rows)]
        truncated = self._truncation([r.prompt for r in rows])
        negative_truncated = self._truncation([r.negative or "" for r in rows])

        timings = Timings()
        compiled, timings.compile_s = self._program(width, height, return_float)
        b = self.options.batch_size
        outputs = []
        batches = math.ceil(n / b) if n else 0
        dispatched = time.perf_counter()
        for k in range(batches):
            chunk = rows[k * b : (k + 1) * b]
            chunk = chunk + [_Row.idle()] * (b - len(chunk))
            t0 = time.perf_counter()
            inputs = self._batch_inputs(chunk, width, height)
            timings.tokenize_s += time.perf_counter() - t0
            outputs.append(compiled(self.params, inputs))  # dispatched; runs while we go on
        host = [np.asarray(o) for o in outputs]
        # batch k+1's inputs are built while batch k runs: device time is the rest
        timings.device_s = time.perf_counter() - dispatched - timings.tokenize_s
        images = np.concatenate(host)[:n] if host else np.zeros((0, height, width, 3), np.uint8)
        timings.total_s = time.perf_counter() - start
        result = GenerationResult(
            images=images if not return_float else to_uint8_host(images),
            seeds=[r.seed for r in rows],
            truncated=truncated,
            negative_truncated=negative_truncated,
            batches=batches,
            padding_slots=batches * b - n,
            timings=timings,
            float_images=images if return_float else None,
        )
        return result

    def _truncation(self, texts: list[str]) -> list[bool]:
        flags = np.zeros(len(texts), bool)
        for tok in self.checkpoint.tokenizers:
            flags |= tok.encode(texts)[1]
        return flags.tolist()


def to_uint8_host(images: np.ndarray) -> np.ndarray:
    return np.round(images * 255.0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class _Row:
    prompt: str
    negative: str | None
    seed: int
    steps: int
    guidance: float
    scheduler: str
    latents: np.ndarray | None

    @staticmethod
    def idle() -> _Row:
        return _Row("", "", 0, 0, 0.0, "euler", None)

    def check(self, max_steps: int) -> None:
        if not 0 <= self.seed < MAX_SEED:
            raise InvalidRequest(f"seed {self.seed} is outside [0, 2**64)")
        if not 1 <= self.steps <= max_steps:
            raise InvalidRequest(f"steps {self.steps} is outside [1, {max_steps}] (max_steps)")
        if not (self.guidance >= 0 and math.isfinite(self.guidance)):
            raise InvalidRequest(f"guidance {self.guidance} must be a finite number >= 0")
        if self.scheduler not in schedulers.SCHEDULERS:
            raise InvalidRequest(
                f"scheduler {self.scheduler!r} is not one of {', '.join(schedulers.SCHEDULERS)}"
            )
