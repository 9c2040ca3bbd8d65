"""VLLMEngine: vLLM's offline engine inside the worker process, behind our Engine contract.

One ``vllm.LLM`` per worker process (the pipeline's adapter shares it between threads). Chat
requests are rendered with the model's chat template and completions tokenized as plain
prompts, both through vLLM's own tokenizer; every request is added to vLLM's engine on its own,
so one that vLLM rejects becomes an error result for that record only; the engine is then
stepped until all are done, reporting each result as it finishes; results come back in input
order with usage (prompt, completion, prefix-cached tokens) and finish reason. A request's
constraint (``guided``) becomes vLLM's structured outputs (llguidance by default, as our JAX
engine: a constraint it cannot enforce is an ``unsupported_guided`` error for that record);
``n > 1`` and log-probabilities are vLLM's own.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from hyperbatch.engines.base import (
    Engine,
    EngineConfig,
    ListSource,
    ModelInfo,
    OnResult,
    RequestSource,
)
from hyperbatch.engines.models import resolve_model
from hyperbatch.engines.options import EngineOptions
from hyperbatch.engines.vllm import args as vargs
from hyperbatch.engines.vllm import vision
from hyperbatch.engines.vllm.options import VLLMOptions
from hyperbatch.schemas.records import (
    Charge,
    Choice,
    Counters,
    ErrorCode,
    FinishReason,
    Request,
    RequestError,
    Result,
    SamplingParams,
    TokenLogprob,
    Usage,
)

log = logging.getLogger(__name__)


class VLLMEngine(Engine):
    name = "vllm"
    OPTIONS: ClassVar[type[EngineOptions]] = VLLMOptions

    def __init__(self, config: EngineConfig):
        super().__init__(config)
        self.options = VLLMOptions.parse(config.options)
        t0 = time.perf_counter()
        for key, value in vargs.engine_env(config).items():
            os.environ.setdefault(key, value)
        local = resolve_model(config.model, config.cache_dir)
        path = local.path
        if local.format == "gguf":
            from hyperbatch.engines.vllm.convert import gguf_to_hf

            path = gguf_to_hf(local.path, config.cache_dir)
        import vllm
        import vllm.exceptions

        self._vllm = vllm
        # what vLLM raises for a request it refuses (a client error: this record, not the job)
        self._rejections = (ValueError, TypeError, vllm.exceptions.VLLMClientError)
        self.engine_args = vargs.engine_args(config, path)
        self.llm = vllm.LLM(**self.engine_args)
        self._engine = self.llm.llm_engine
        self._tokenizer = self.llm.get_tokenizer()
        self._max_len = int(self.llm.llm_engine.model_config.max_model_len)
        eos = self._tokenizer.eos_token_id
        self._info = ModelInfo(
            name=config.model,
            architecture=str(self.llm.llm_engine.model_config.hf_config.model_type),
            context_length=self._max_len,
            max_prompt_tokens=self._max_len - 1,
            vocab_size=len(self._tokenizer),
            eos_token_ids=(eos,) if eos is not None else (),
            max_images=vision.max_images(self.llm),  # 0 for a text model
        )
        self._stats = Counters(load_seconds=time.perf_counter() - t0)
        self._next_id = 0

    @property
    def info(self) -> ModelInfo:
        return self._info

    def warmup(self) -> None:
        """One short request, so vLLM's first-step setup is not paid by the first shard."""
        t0 = time.perf_counter()
        probe = Request("warmup", SamplingParams(max_tokens=2, temperature=0.0), prompt="Hello")
        self.generate([probe])
        self._stats = Counters(
            load_seconds=self._stats.load_seconds, warmup_seconds=time.perf_counter() - t0
        )

    def prompt_tokens(self, request: Request) -> list[int]:
        if request.messages is None:
            return list(self._tokenizer.encode(request.prompt or ""))
        try:
            ids = self._tokenizer.apply_chat_template(
                vision.template_messages(request, self._info.max_images > 0),
                tools=[dict(t) for t in request.tools] if request.tools else None,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        except Exception as e:
            raise RequestError(ErrorCode.TEMPLATE_ERROR, f"chat template failed: {e}") from e
        return list(ids)

    def _sampling(self, request: Request) -> Any:
        kwargs = vargs.sampling_kwargs(request.sampling)
        if "structured_outputs" in kwargs:
            params = self._vllm.sampling_params.StructuredOutputsParams
            kwargs["structured_outputs"] = params(**kwargs["structured_outputs"])
        return self._vllm.SamplingParams(
            **kwargs, output_kind=self._vllm.sampling_params.RequestOutputKind.FINAL_ONLY
        )

    def generate(
        self, requests: Sequence[Request], on_result: OnResult | None = None
    ) -> list[Result]:
        results: dict[int, Result] = {}
        index = {id(r): i for i, r in enumerate(requests)}

        def done(res: Result, request: Request) -> None:
            results[index[id(request)]] = res
            if on_result:
                on_result(res)

        self._serve(ListSource(requests), done)
        return [results[i] for i in sorted(results)]

    def serve(self, source: RequestSource, on_result: OnResult) -> None:
        """The engine loop: requests join vLLM's scheduler as they arrive."""
        self._serve(source, lambda res, _request: on_result(res))

    def _serve(self, source: RequestSource, done: Callable[[Result, Request], None]) -> None:
        pending: dict[str, Request] = {}
        spent: dict[str, float] = {}  # busy seconds charged so far, per request in flight
        closed = False
        while True:
            if not closed:
                taken = source.take(2 * max(1, self.config.batch_size), wait=not pending)
                closed = taken is None
                for req in taken or ():
                    refused = self._add(req, pending, spent)
                    if refused is not None:
                        self._account(refused)
                        done(refused, req)
            if not pending:
                if closed:
                    return
                continue
            if not self._engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM finished without {len(pending)} requests")
            t0 = time.perf_counter()
            outputs = self._engine.step()
            seconds = time.perf_counter() - t0
            # a step's time is shared equally by the requests in flight in it
            self._stats.busy_seconds += seconds
            for rid in pending:
                spent[rid] += seconds / len(pending)
            for out in outputs:
                if not out.finished or out.request_id not in pending:
                    continue
                req = pending.pop(out.request_id)
                res = self._result(req, out, spent.pop(out.request_id))
                self._account(res)
                done(res, req)

    def _add(
        self, req: Request, pending: dict[str, Request], spent: dict[str, float]
    ) -> Result | None:
        """Hand one request to vLLM; the error result if it cannot be served."""
        try:
            ids = req.prompt_token_ids or tuple(self.prompt_tokens(req))
            if len(ids) > self._info.max_prompt_tokens:
                raise RequestError(
                    ErrorCode.PROMPT_TOO_LONG,
                    f"prompt is {len(ids)} tokens; max_model_len is {self._max_len}",
                )
            self._next_id += 1
            rid = f"hb-{self._next_id}"  # outputs carry this id (vLLM adds a suffix inside)
            # + the decoded images, if any (vLLM preprocesses them and expands their tokens)
            prompt = vision.engine_prompt(req, list(ids), self._info.max_images)
            self._engine.add_request(rid, prompt, self._sampling(req))
        except RequestError as e:
            return Result.failed(req.record_id, e.code, e.message)
        except self._rejections as e:  # vLLM's own validation of this request
            if req.sampling.guided is not None and _about_the_constraint(e):
                return Result.failed(req.record_id, ErrorCode.UNSUPPORTED_GUIDED, str(e))
            if vision.too_long(e):  # the prompt with its images' tokens expanded
                return Result.failed(req.record_id, ErrorCode.PROMPT_TOO_LONG, str(e))
            return Result.failed(req.record_id, ErrorCode.ENGINE_REJECTED, str(e))
        pending[rid], spent[rid] = req, 0.0
        return None

    def _result(self, request: Request, out: Any, seconds: float) -> Result:
        completions = sorted(out.outputs, key=lambda c: c.index)
        for completion in completions:
            reason = completion.finish_reason
            if reason not in ("stop", "length"):
                failed = Result.failed(
                    request.record_id, ErrorCode.ENGINE_FAILED, f"vLLM finished with {reason!r}"
                )
                return dataclasses.replace(failed, charge=Charge(busy_seconds=seconds))
        choices = tuple(
            Choice(
                index=i,
                text=c.text,
                finish_reason=FinishReason(c.finish_reason),
                token_ids=tuple(c.token_ids),
                logprobs=self._logprobs(request, c),
            )
            for i, c in enumerate(completions)
        )
        first = choices[0]
        generated = sum(len(c.token_ids) for c in choices)
        # paged attention computes no padding: every position computed is a real token
        cached = int(out.num_cached_tokens or 0)
        useful = len(out.prompt_token_ids) - cached + generated
        return Result(
            record_id=request.record_id,
            text=first.text,
            finish_reason=first.finish_reason,
            usage=Usage(
                prompt_tokens=len(out.prompt_token_ids),
                completion_tokens=generated,
                cached_tokens=cached,
                image_tokens=vision.image_tokens(self.llm, out.prompt_token_ids),
            ),
            token_ids=first.token_ids,
            logprobs=first.logprobs,
            charge=Charge(
                busy_seconds=seconds, computed_token_slots=useful, useful_token_slots=useful
            ),
            choices=choices if len(choices) > 1 else (),
        )

    def _logprobs(self, request: Request, completion: Any) -> tuple[TokenLogprob, ...] | None:
        k = request.sampling.logprobs
        if k is None or completion.logprobs is None:
            return None
        out = []
        # one dict per generated token: the sampled token plus the k most likely, by token id
        for token_id, position in zip(completion.token_ids, completion.logprobs, strict=True):
            chosen = position[token_id]
            ranked = sorted(position.values(), key=lambda lp: -lp.logprob)[:k]
            out.append(TokenLogprob(
                token=chosen.decoded_token or "",
                logprob=float(chosen.logprob),
                top=tuple((lp.decoded_token or "", float(lp.logprob)) for lp in ranked),
            ))  # fmt: skip
        return tuple(out)

    def _account(self, r: Result) -> None:
        s = self._stats
        s.records += 1
        s.results += int(r.ok)
        s.errors += int(not r.ok)
        s.prompt_tokens += r.usage.prompt_tokens
        s.completion_tokens += r.usage.completion_tokens
        s.cached_tokens += r.usage.cached_tokens
        s.computed_token_slots += r.charge.computed_token_slots
        s.useful_token_slots += r.charge.useful_token_slots

    def stats(self) -> Counters:
        return dataclasses.replace(self._stats)

    def close(self) -> None:
        self._engine = None
        shutdown(self)


def _about_the_constraint(error: Exception) -> bool:
    """Is vLLM's refusal of a guided request about its constraint (a grammar it cannot build)?"""
    text = str(error).lower()
    return any(
        w in text for w in ("structured", "grammar", "schema", "regex", "choice", "json", "lark")
    )


def shutdown(owner: Any) -> None:
    """Drop ``owner.llm`` (a ``vllm.LLM``) and stop its engine core: its threads and memory go
    with the last reference, so none may be left here when the garbage is collected."""
    llm = getattr(owner, "llm", None)
    if llm is None:
        return
    owner.llm = None
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm
    gc.collect()
