"""JaxDiffusionEngine: text-to-image requests served by our JAX diffusion engine (``engine: jax``,
``task: image``).

A request is a prompt and its ``ImageParams`` (the pipeline has filled in the job's defaults);
``n`` images each (image ``k`` of a seeded request uses seed ``seed + k``). The engine checks
each request against what the loaded programs serve (sizes, ``max_steps``, schedulers), expands
the valid ones into image rows, sorts them by (size, steps) so each fixed-size batch holds
rows of one size and near-equal step counts, and generates them size by size. A request gets
its images (uint8 pixels, the seed each used, whether its prompt was truncated) and its share of
the device time by denoising steps. Padding: a batch computes ``batch_size`` rows for as many
steps as its longest row, so idle rows and the steps shorter rows skip count as waste
(``computed_token_slots`` / ``useful_token_slots`` are image-steps here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import time
from collections.abc import Sequence
from typing import ClassVar

from hyperbatch import accelerators
from hyperbatch.engines import models
from hyperbatch.engines.base import Engine, EngineConfig, ModelInfo, OnResult
from hyperbatch.engines.jax_diffusion.generation import (
    DiffusionModel,
    DiffusionOptions,
    cpu_device_count_chosen,
    use_cpu_cores,
)
from hyperbatch.engines.jax_diffusion.options import DiffusionEngineOptions
from hyperbatch.engines.jax_diffusion.schedulers import SCHEDULERS
from hyperbatch.engines.jax_llm.engine import accelerator_devices
from hyperbatch.engines.options import EngineOptions
from hyperbatch.schemas.records import (
    Charge,
    Counters,
    ErrorCode,
    GeneratedImage,
    Request,
    RequestError,
    Result,
    parse_size,
)

DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclasses.dataclass(frozen=True)
class _Row:
    request: int  # index of its request
    prompt: str
    negative: str | None
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    seed: int  # drawn for a request that gave none (and reported)


class JaxDiffusionEngine(Engine):
    name = "jax"
    OPTIONS: ClassVar[type[EngineOptions]] = DiffusionEngineOptions

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        t0 = time.perf_counter()
        opt = DiffusionEngineOptions.parse(config.options)
        cpu = accelerators.get(config.accelerator).kind == "cpu"
        if opt.cpu_cores and cpu and not cpu_device_count_chosen():
            # small convolutions parallelise poorly over cores within one XLA device; where JAX
            # already runs in this process (RuntimeError), its devices stay as they are
            with contextlib.suppress(RuntimeError):
                use_cpu_cores()
        accelerator_devices(config.accelerator, config.accelerator_count)  # or refuse: no fallback
        sizes = [parse_size(s) for s in (opt.sizes or ("512x512",))]
        if config.model in models.CATALOGUE:
            raise models.ModelNotFound(
                f"{config.model} is not a diffusion checkpoint; image jobs need a diffusers-layout "
                "folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)"
            )
        self.model = DiffusionModel.load(
            config.model,
            DiffusionOptions(
                dtype=DTYPES.get(config.dtype, config.dtype),
                batch_size=config.batch_size,
                resolutions=tuple(size for size in sizes if size is not None),
                max_steps=opt.max_steps,
                data_parallel=opt.data_parallel,
                attention=opt.attention,
                query_block=opt.query_block,
                vae_chunks=opt.vae_chunks,
                variant=opt.variant,
                cache_dir=config.cache_dir,
            ),
        )
        self._stats = Counters(load_seconds=time.perf_counter() - t0)

    @property
    def info(self) -> ModelInfo:
        ck = self.model.checkpoint
        return ModelInfo(
            name=self.config.model,
            architecture=ck.kind,
            context_length=0,
            max_prompt_tokens=1 << 30,  # prompts are truncated to the text encoder's window
            vocab_size=0,
        )

    def prompt_tokens(self, request: Request) -> list[int]:
        raise RequestError(
            ErrorCode.ENGINE_REJECTED, "the diffusion engine tokenizes prompts itself"
        )

    def warmup(self) -> None:
        t0 = time.perf_counter()
        self.model.warmup()
        self._stats.warmup_seconds += time.perf_counter() - t0

    def stats(self) -> Counters:
        self._stats.compilations = self.model.compilations
        return dataclasses.replace(self._stats)

    def _rows(self, index: int, request: Request) -> list[_Row]:
        """The request's image rows, or RequestError for what the loaded programs cannot do."""
        p = request.image
        if p is None or not request.prompt:
            raise RequestError(ErrorCode.ENGINE_REJECTED, "not an image request")
        width, height = p.width or 0, p.height or 0
        if (width, height) not in self.model.resolutions:
            served = ", ".join(f"{w}x{h}" for w, h in self.model.resolutions)
            raise RequestError(
                ErrorCode.INVALID_SIZE,
                f"size {width}x{height} is not served by this job; it serves {served}",
            )
        steps = p.steps or 0
        if not 1 <= steps <= self.model.options.max_steps:
            raise RequestError(
                ErrorCode.INVALID_STEPS,
                f"steps {steps}: this job serves 1 to {self.model.options.max_steps} "
                "(engine_options.max_steps)",
            )
        scheduler = p.scheduler or "euler"
        if scheduler not in SCHEDULERS:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}",
            )
        guidance = 7.5 if p.guidance_scale is None else p.guidance_scale
        return [
            _Row(index, request.prompt, p.negative_prompt, width, height, steps, guidance,
                 scheduler, secrets.randbelow(2**63) if p.seed is None else (p.seed + k) % 2**64)
            for k in range(p.n)
        ]  # fmt: skip

    def generate(
        self, requests: Sequence[Request], on_result: OnResult | None = None
    ) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        rows: list[_Row] = []
        for i, r in enumerate(requests):
            try:
                rows += self._rows(i, r)
            except RequestError as e:
                results[i] = Result.failed(r.record_id, e.code, e.message)
        images: dict[int, list[GeneratedImage]] = {}
        busy_of: dict[int, float] = {}
        computed_of: dict[int, float] = {}
        steps_of: dict[int, int] = {}
        batch = self.model.options.batch_size
        rows.sort(key=lambda row: (row.width, row.height, row.steps))
        st = self._stats
        start = 0
        while start < len(rows):
            size = (rows[start].width, rows[start].height)
            end = start
            while end < len(rows) and (rows[end].width, rows[end].height) == size:
                end += 1
            group = rows[start:end]
            out = self.model.generate(
                [row.prompt for row in group],
                [row.negative for row in group],
                seeds=[row.seed for row in group],
                width=size[0],
                height=size[1],
                steps=[row.steps for row in group],
                guidance=[row.guidance for row in group],
                scheduler=[row.scheduler for row in group],
            )
            busy = out.timings.total_s
            # a batch runs batch_size rows for as many steps as its longest row
            computed = sum(
                batch * max(row.steps for row in group[k : k + batch])
                for k in range(0, len(group), batch)
            )
            useful = sum(row.steps for row in group)
            st.busy_seconds += busy
            st.computed_token_slots += computed
            st.useful_token_slots += useful
            for k, row in enumerate(group):
                share = row.steps / useful
                images.setdefault(row.request, []).append(
                    GeneratedImage(
                        seed=row.seed, width=row.width, height=row.height, steps=row.steps,
                        scheduler=row.scheduler, guidance_scale=row.guidance,
                        truncated=bool(out.truncated[k]), pixels=out.images[k],
                    )
                )  # fmt: skip
                busy_of[row.request] = busy_of.get(row.request, 0.0) + busy * share
                computed_of[row.request] = computed_of.get(row.request, 0.0) + computed * share
                steps_of[row.request] = steps_of.get(row.request, 0) + row.steps
            start = end
        for i, r in enumerate(requests):
            if results[i] is None:
                results[i] = Result(
                    record_id=r.record_id,
                    images=tuple(images.get(i, ())),
                    charge=Charge(
                        busy_seconds=busy_of.get(i, 0.0),
                        computed_token_slots=computed_of.get(i, 0.0),
                        useful_token_slots=steps_of.get(i, 0),
                    ),
                )
        final = [r for r in results if r is not None]
        for res in final:
            st.records += 1
            st.results += int(res.ok)
            st.errors += int(not res.ok)
            st.images += len(res.images or ())
            if on_result is not None:
                on_result(res)
        return final
