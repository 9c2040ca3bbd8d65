"""FakeEngine: arithmetic a reader can check by hand, for testing the plumbing (never a default).

* A chat request is rendered as one line per message, ``"<role>: <content>"``; a completion is
  its prompt. Tokens are the whitespace-separated words of the rendered text; token ids are the
  word lengths (so ``prompt_tokens`` is checkable by counting words).
* The completion is the words of the last message (or the prompt) in reverse order, joined by
  spaces and cut after ``max_tokens`` words (finish_reason "length" if words were left over),
  then cut before the first occurrence of a stop string (finish_reason "stop"). The reversed
  words end where an EOS would: with ``ignore_eos`` they repeat, so exactly ``max_tokens`` words
  come back (finish_reason "length"), as a real engine's answer would run on.
* A prompt of more than ``max_prompt_tokens`` words (option, default 512) is refused with
  PROMPT_TOO_LONG; one containing the option ``reject_word`` is refused with ENGINE_REJECTED.
* An embedding request's texts get one vector each: ``[words, characters, distinct words, 1]``
  of the text's first ``max_prompt_tokens`` words (``truncated`` if it had more); ``dimensions``
  keeps the first components (more than 4 is INVALID_DIMENSIONS); tokens are words.
* An image request's ``n`` images are solid colours: red = the prompt's word count, green = the
  image's seed, blue = its steps (each mod 256), at the requested size; image ``k`` of a seeded
  request uses ``seed + k``, an unseeded one draws its seed. Sizes must be multiples of 8.
* Input images (a chat message's image parts) are one word each, ``<image:WxH>`` in the
  prompt; in the completion's source text the image is decoded and the word says its mean
  colour too, ``<image:WxH:#rrggbb>`` (so a test sees which image arrived, upright). An image
  that does not decode is INVALID_IMAGE; ``usage.image_tokens`` counts the image words; more
  than ``max_images`` (option, default 8) per request are refused by the pipeline.
* Static shapes are simulated: each request occupies a slot of ``max_prompt_tokens`` +
  ``max_tokens`` positions, so padding waste is computable too. Each request is its own "device
  call": its charge is its own time and slots.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from hyperbatch.engines.base import Engine, EngineConfig, ModelInfo, OnResult
from hyperbatch.engines.options import EngineOptions, option
from hyperbatch.schemas.records import (
    Charge,
    Counters,
    ErrorCode,
    FinishReason,
    GeneratedImage,
    Request,
    RequestError,
    Result,
    Usage,
)


@dataclasses.dataclass(frozen=True)
class FakeOptions(EngineOptions):
    ENGINE = "fake"

    max_prompt_tokens: int = option(512, "longest prompt in words", minimum=1)
    reject_word: str | None = option(None, "refuse prompts with this word", kind=str)
    max_images: int = option(8, "input images per request", minimum=0)


class FakeEngine(Engine):
    name = "fake"
    OPTIONS: ClassVar[type[EngineOptions]] = FakeOptions

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        options = self.OPTIONS.parse(config.options)
        assert isinstance(options, FakeOptions)
        self._max_prompt = options.max_prompt_tokens
        self._reject_word = options.reject_word
        self._max_images = options.max_images
        self._stats = Counters(load_seconds=0.0)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self.config.model,
            architecture="fake",
            context_length=self._max_prompt * 2,
            max_prompt_tokens=self._max_prompt,
            vocab_size=0,
            max_images=self._max_images,
        )

    @staticmethod
    def render(request: Request) -> str:
        if request.messages is not None:
            return "\n".join(
                f"{m['role']}: {_content(m['content'], request)}" for m in request.messages
            )
        return request.prompt or ""

    def prompt_tokens(self, request: Request) -> list[int]:
        if request.texts is not None:
            return [len(w) for t in request.texts for w in t.split()[: self._max_prompt]]
        return [len(w) for w in self.render(request).split()]

    DIMENSIONS = 4

    def _embed(self, request: Request) -> Result:
        assert request.texts is not None
        dims = request.dimensions or self.DIMENSIONS
        if dims > self.DIMENSIONS:
            raise RequestError(
                ErrorCode.INVALID_DIMENSIONS,
                f"dimensions {dims}: this model gives 1 to {self.DIMENSIONS}",
            )
        vectors, truncated, counts = [], [], []
        for text in request.texts:
            if not text.strip():
                raise RequestError(ErrorCode.EMPTY_INPUT, "an input is an empty string")
            words = text.split()
            kept = words[: self._max_prompt]
            read = " ".join(kept)
            full = (float(len(kept)), float(len(read)), float(len(set(kept))), 1.0)
            vectors.append(full[:dims])
            truncated.append(len(words) > len(kept))
            counts.append(len(kept))
        n = sum(counts)
        return Result(
            record_id=request.record_id,
            usage=Usage(prompt_tokens=n),
            embeddings=tuple(vectors),
            truncated=tuple(truncated),
            token_counts=tuple(counts),
            charge=Charge(
                computed_token_slots=self._max_prompt * len(counts), useful_token_slots=n
            ),
        )

    def _draw(self, request: Request) -> Result:
        p = request.image
        assert p is not None
        assert request.prompt is not None
        width, height, steps = p.width or 64, p.height or 64, p.steps or 1
        if width % 8 or height % 8:
            raise RequestError(ErrorCode.INVALID_SIZE, f"size {width}x{height}: multiples of 8")
        words = len(request.prompt.split())
        images = []
        for k in range(p.n):
            seed = secrets.randbelow(2**63) if p.seed is None else p.seed + k
            pixels = np.empty((height, width, 3), np.uint8)
            pixels[...] = (words % 256, seed % 256, steps % 256)
            images.append(
                GeneratedImage(
                    seed=seed, width=width, height=height, steps=steps,
                    scheduler=p.scheduler or "euler",
                    guidance_scale=7.5 if p.guidance_scale is None else p.guidance_scale,
                    pixels=pixels,
                )
            )  # fmt: skip
        return Result(
            record_id=request.record_id,
            images=tuple(images),
            charge=Charge(computed_token_slots=steps * p.n, useful_token_slots=steps * p.n),
        )

    def _serve(self, request: Request) -> Result:
        if request.texts is not None:
            return self._embed(request)
        if request.image is not None:
            return self._draw(request)
        ids = request.prompt_token_ids or tuple(self.prompt_tokens(request))
        if len(ids) > self._max_prompt:
            raise RequestError(
                ErrorCode.PROMPT_TOO_LONG,
                f"prompt has {len(ids)} tokens; this model accepts at most {self._max_prompt}",
            )
        if request.messages:
            source = _content(request.messages[-1]["content"], request, decode=True)
        else:
            source = request.prompt or ""
        if self._reject_word and self._reject_word in source.split():
            raise RequestError(ErrorCode.ENGINE_REJECTED, f"contains {self._reject_word!r}")
        sp = request.sampling
        words = source.split()[::-1]
        if sp.ignore_eos and words:  # no EOS to stop at: the answer runs on to max_tokens
            words = (words * (sp.max_tokens // len(words) + 2))[: sp.max_tokens + 1]
        out = words[: sp.max_tokens]
        finish = FinishReason.LENGTH if len(words) > sp.max_tokens else FinishReason.STOP
        text = " ".join(out)
        cuts = [i for i in (text.find(s) for s in sp.stop) if i >= 0]
        if cuts:
            text, finish = text[: min(cuts)], FinishReason.STOP
            out = text.split()
        return Result(
            record_id=request.record_id,
            text=" ".join(out),
            finish_reason=finish,
            usage=Usage(
                prompt_tokens=len(ids),
                completion_tokens=len(out),
                image_tokens=len(request.input_images),
            ),
            token_ids=tuple(len(w) for w in out),
            charge=Charge(
                computed_token_slots=self._max_prompt + sp.max_tokens,
                useful_token_slots=len(ids) + len(out),
            ),
        )

    def generate(
        self, requests: Sequence[Request], on_result: OnResult | None = None
    ) -> list[Result]:
        results = []
        for r in requests:
            t0 = time.perf_counter()
            try:
                res = self._serve(r)
            except RequestError as e:
                res = Result.failed(r.record_id, e.code, e.message)
            seconds = time.perf_counter() - t0
            res = dataclasses.replace(res, charge=res.charge + Charge(busy_seconds=seconds))
            self._stats.busy_seconds += seconds
            self._stats.computed_token_slots += res.charge.computed_token_slots
            self._stats.useful_token_slots += res.charge.useful_token_slots
            self._stats.records += 1
            self._stats.results += int(res.ok)
            self._stats.errors += int(not res.ok)
            self._stats.prompt_tokens += res.usage.prompt_tokens
            self._stats.completion_tokens += res.usage.completion_tokens
            self._stats.embeddings += len(res.embeddings or ())
            self._stats.images += len(res.images or ())
            results.append(res)
            if on_result:
                on_result(res)
        return results

    def stats(self) -> Counters:
        return dataclasses.replace(self._stats)


def _content(
    content: str | Sequence[Mapping[str, Any]], request: Request, decode: bool = False
) -> str:
    """A message's content as words: text parts, and an image part as one word
    (``<image:WxH>``, with ``:#rrggbb`` its mean colour when ``decode``)."""
    if isinstance(content, str):
        return content
    words = []
    for part in content:
        if part["type"] == "text":
            words.append(part["text"])
            continue
        image = request.input_images[part["image"]]
        word = f"<image:{image.width}x{image.height}"
        if decode:
            pixels = image.pixels()  # RequestError(invalid_image) for a corrupt file
            r, g, b = (round(float(c)) for c in pixels.reshape(-1, 3).mean(axis=0))
            word += f":#{r:02x}{g:02x}{b:02x}"
        words.append(word + ">")
    return " ".join(words)
