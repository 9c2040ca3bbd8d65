"""What every embedding engine shares (``task: embedding``): checking requests, embedding every
text of a call together, handing each request its vectors in order (``dimensions`` applied), its
token counts and truncation flags, and its share of the device work; counting it all.

An engine subclasses ``EmbeddingEngine`` and implements ``embed(texts)``: the vectors of a list
of texts, how many tokens of each were read, which were cut to the model's length, and what the
device did (``Embedded``). Light: numpy only (no jax, no vllm).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from hyperbatch.engines.base import Engine, OnResult, RequestSource
from hyperbatch.schemas.records import (
    Charge,
    Counters,
    ErrorCode,
    Request,
    RequestError,
    Result,
    Usage,
)

#: an upper bound for a request's text count (OpenAI allows 2048 inputs per request)
MAX_INPUTS = 2048
NORM_EPS = 1e-12  # torch.nn.functional.normalize's default


def truncate_dimensions(vectors: np.ndarray, dimensions: int, normalize: bool = True) -> np.ndarray:
    """The first ``dimensions`` components of each row, renormalised to unit length (OpenAI's
    ``dimensions``; meaningful for models trained Matryoshka-style)."""
    if not 1 <= dimensions <= vectors.shape[-1]:
        raise ValueError(f"dimensions must be between 1 and {vectors.shape[-1]}, got {dimensions}")
    out = np.asarray(vectors[..., :dimensions], dtype=np.float32)
    if normalize:
        norm = np.linalg.norm(out, axis=-1, keepdims=True)
        out = out / np.maximum(norm, NORM_EPS)
    return out


@dataclasses.dataclass(frozen=True)
class Embedded:
    """The vectors of a call's texts, in order, and what computing them took."""

    vectors: np.ndarray  # [texts, dimensions] float32
    lengths: np.ndarray  # [texts] tokens read per text (after truncation)
    truncated: np.ndarray  # [texts] bool: the text was cut to the model's length
    busy_seconds: float
    computed_token_slots: float  # positions computed, padding included
    errors: Mapping[int, str] = dataclasses.field(default_factory=dict)  # text -> why it failed


class EmbeddingEngine(Engine):
    """An engine for embedding requests; ``embed`` is what a subclass provides."""

    #: the model's vector size, and whether its vectors are unit length (set by the subclass)
    dimensions: int
    normalize: bool = True
    _stats: Counters  # the engine's running totals

    #: requests taken from the source per call: many, so that each length bucket's batches fill
    #: (a call's texts are sorted into the buckets together)
    CALL_REQUESTS = 4096

    def serve(self, source: RequestSource, on_result: OnResult) -> None:
        while (batch := source.take(self.CALL_REQUESTS, wait=True)) is not None:
            if batch:
                self.generate(batch, on_result)

    @abc.abstractmethod
    def embed(self, texts: Sequence[str]) -> Embedded:
        """Embed ``texts`` (none empty), truncating as sentence-transformers does."""

    def check(self, request: Request) -> None:
        """RequestError for a request this engine cannot embed."""
        if not request.texts:
            raise RequestError(ErrorCode.EMPTY_INPUT, "the request has no text to embed")
        empty = [i for i, t in enumerate(request.texts) if not t.strip()]
        if empty:
            raise RequestError(
                ErrorCode.EMPTY_INPUT, f"input {empty[0]} is an empty string: give it some text"
            )
        if request.dimensions is not None and not 1 <= request.dimensions <= self.dimensions:
            raise RequestError(
                ErrorCode.INVALID_DIMENSIONS,
                f"dimensions {request.dimensions}: this model gives 1 to {self.dimensions}",
            )

    def generate(
        self, requests: Sequence[Request], on_result: OnResult | None = None
    ) -> list[Result]:
        results: list[Result | None] = [None] * len(requests)
        texts: list[str] = []
        owners: list[int] = []  # the request of each text
        for i, r in enumerate(requests):
            try:
                self.check(r)
            except RequestError as e:
                results[i] = Result.failed(r.record_id, e.code, e.message)
                continue
            assert r.texts is not None
            texts.extend(r.texts)
            owners.extend([i] * len(r.texts))
        st = self._stats
        if texts:
            done = self.embed(texts)
            useful = int(done.lengths.sum())
            st.busy_seconds += done.busy_seconds
            st.computed_token_slots += done.computed_token_slots
            st.useful_token_slots += useful
            owner = np.asarray(owners)
            for i, r in enumerate(requests):
                if results[i] is not None:
                    continue
                rows = np.flatnonzero(owner == i)
                mine = int(done.lengths[rows].sum())
                share = mine / useful if useful else 0.0
                charge = Charge(
                    busy_seconds=done.busy_seconds * share,
                    computed_token_slots=done.computed_token_slots * share,
                    useful_token_slots=mine,
                )
                failed = [done.errors[j] for j in rows if j in done.errors]
                if failed:
                    res = Result.failed(r.record_id, ErrorCode.ENGINE_FAILED, failed[0])
                    results[i] = dataclasses.replace(res, charge=charge)
                    continue
                vectors = done.vectors[rows]
                if r.dimensions is not None and r.dimensions != self.dimensions:
                    vectors = truncate_dimensions(vectors, r.dimensions, self.normalize)
                results[i] = Result(
                    record_id=r.record_id,
                    usage=Usage(prompt_tokens=mine),
                    embeddings=tuple(tuple(float(x) for x in v) for v in vectors),
                    truncated=tuple(bool(t) for t in done.truncated[rows]),
                    token_counts=tuple(int(n) for n in done.lengths[rows]),
                    charge=charge,
                )
        final = [r for r in results if r is not None]
        for res in final:
            st.records += 1
            st.results += int(res.ok)
            st.errors += int(not res.ok)
            st.prompt_tokens += res.usage.prompt_tokens
            st.embeddings += len(res.embeddings or ())
            if on_result is not None:
                on_result(res)
        return final
