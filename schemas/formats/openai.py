"""OpenAI Batch API files: ``{"custom_id", "method", "url", "body"}`` per line, and OpenAI batch
output lines back (a ``chat.completion`` or ``text_completion`` body with choices and usage, or
an embeddings ``list`` body for ``/v1/embeddings``); failed requests as OpenAI batch error lines.

What a body may ask for beyond sampling: ``n`` choices, ``logprobs``/``top_logprobs``,
``response_format`` (``json_object``, ``json_schema``: structured outputs), ``tools`` with
``tool_choice`` ``none``, ``required`` or a named function (the answer is constrained to a call
of the tool and written as ``tool_calls``; ``auto`` is refused: it needs a tool-call parser for
the model's chat template), and ``model``, checked against the job's served names by
``check_model``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from hyperbatch.schemas.formats.base import (
    IMAGE_FIELDS,
    ForcedToolCall,
    JobInfo,
    JsonLinesFormat,
    Parsed,
    RecordError,
    build_request,
    embedding_request,
    id_hash,
    image_entries,
    image_request,
)
from hyperbatch.schemas.records import (
    Choice,
    ErrorCode,
    FinishReason,
    Guided,
    GuidedKind,
    RequestError,
    Result,
    TaskKind,
    TokenLogprob,
    parse_size,
)

#: OpenAI's rule for response-format and function names
NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_TOOLS = 128
#: codes of errors the service caused (HTTP 500 in the error line); the rest are the request's
SERVER_ERRORS = frozenset({ErrorCode.ENGINE_FAILED})


class OpenAIBatch(JsonLinesFormat):
    """OpenAI Batch API files: ``{"custom_id", "method", "url", "body"}`` per line."""

    name = "openai"
    id_key = "custom_id"
    URLS: ClassVar[dict[str, TaskKind]] = {
        "/v1/chat/completions": TaskKind.CHAT,
        "/v1/completions": TaskKind.COMPLETION,
        "/v1/embeddings": TaskKind.EMBEDDING,
        "/v1/images/generations": TaskKind.IMAGE,
    }
    # the images API's body (OpenAI's prompt, n, size, response_format; our extensions)
    IMAGE_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"prompt", "n", "size", "response_format", "model", "user",
         "negative_prompt", "steps", "guidance_scale", "seed", "scheduler"}
    )  # fmt: skip
    EMBEDDING_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"input", "model", "encoding_format", "dimensions", "user"}
    )
    ENCODINGS = ("float", "base64")
    # body fields that map onto our sampling parameters
    SAMPLING_KEYS: ClassVar[dict[str, str]] = {
        "max_tokens": "max_tokens",
        "max_completion_tokens": "max_tokens",
        "temperature": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "seed": "seed",
        "stop": "stop",
        "presence_penalty": "presence_penalty",
        "frequency_penalty": "frequency_penalty",
    }
    # body fields accepted and ignored: they do not change what is generated
    IGNORED: ClassVar[frozenset[str]] = frozenset(
        {"user", "metadata", "store", "stream", "service_tier", "parallel_tool_calls"}
    )
    # body fields read by their own handlers below
    HANDLED: ClassVar[frozenset[str]] = frozenset(
        {"model", "n", "logprobs", "top_logprobs", "response_format", "tools", "tool_choice"}
    )

    def _parse_obj(self, rid, obj, location, task, defaults) -> Parsed:
        method = obj.get("method", "POST")
        if method != "POST":
            raise RequestError(ErrorCode.UNSUPPORTED_METHOD, f"method must be POST, got {method!r}")
        url = obj.get("url")
        kind = self.URLS.get(url) if isinstance(url, str) else None
        if kind is None:
            raise RequestError(
                ErrorCode.UNSUPPORTED_URL,
                f"url {url!r} is not supported; use one of {', '.join(self.URLS)}",
            )
        if kind is not task:
            raise RequestError(
                ErrorCode.UNSUPPORTED_URL,
                f"url {url} asks for a {kind} request but this job's task is {task}",
            )
        body = obj.get("body")
        if not isinstance(body, dict):
            raise RequestError(ErrorCode.INVALID_RECORD, "body must be a JSON object")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise RequestError(ErrorCode.INVALID_RECORD, f"model must be a string, got {model!r}")
        if kind is TaskKind.EMBEDDING:
            return self._embedding(rid, body, location, model)
        if kind is TaskKind.IMAGE:
            return self._image(rid, body, location, model)
        if body.get("stream", False):
            raise RequestError(ErrorCode.INVALID_RECORD, "stream must be false in a batch")
        content_key = "messages" if kind is TaskKind.CHAT else "prompt"
        known = set(self.SAMPLING_KEYS) | self.IGNORED | self.HANDLED | {content_key}
        if kind is TaskKind.COMPLETION:
            known -= {"tools", "tool_choice", "parallel_tool_calls"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"body field(s) {', '.join(unknown)} are not supported by this service"
                + (" for /v1/completions (tools are a chat feature)"
                   if {"tools", "tool_choice"} & set(unknown) else ""),
            )  # fmt: skip
        sampling = {}
        for key, ours in self.SAMPLING_KEYS.items():
            if body.get(key) is not None:
                value = body[key]
                sampling[ours] = [value] if key == "stop" and isinstance(value, str) else value
        if body.get("n") is not None:
            sampling["n"] = body["n"]
        sampling.update(self._logprobs(kind, body))
        guided = _response_format(body.get("response_format"))
        tools, forced = (None, None)
        if kind is TaskKind.CHAT:
            tools, forced, tool_guided = _tools(body)
            if tool_guided is not None:
                if guided is not None:
                    raise RequestError(
                        ErrorCode.INVALID_GUIDED,
                        "response_format and a forced tool call (tool_choice) both constrain "
                        "the answer; give one of them",
                    )
                guided = tool_guided
        if guided is not None:
            sampling["guided"] = guided
        if kind is TaskKind.CHAT:
            if "messages" not in body:
                raise RequestError(ErrorCode.EMPTY_MESSAGES, "body has no messages")
            req = build_request(
                rid, task, defaults, sampling, messages=body["messages"], tools=tools
            )
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            req = build_request(rid, task, defaults, sampling, prompt=prompt)
        return Parsed(req, location, model=model, tool_call=forced)

    def _embedding(self, rid: str, body: dict[str, Any], location, model: str | None) -> Parsed:
        unknown = sorted(set(body) - self.EMBEDDING_KEYS)
        if unknown:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"body field(s) {', '.join(unknown)} are not supported for /v1/embeddings",
            )
        if "input" not in body:
            raise RequestError(ErrorCode.EMPTY_INPUT, "body has no input")
        encoding = body.get("encoding_format", "float")
        if encoding not in self.ENCODINGS:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"encoding_format must be float or base64, got {encoding!r}",
            )
        req = embedding_request(rid, body["input"], body.get("dimensions"))
        return Parsed(req, location, encoding=encoding, model=model)

    def _image(self, rid: str, body: dict[str, Any], location, model: str | None) -> Parsed:
        unknown = sorted(set(body) - self.IMAGE_KEYS)
        if unknown:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"body field(s) {', '.join(unknown)} are not supported for /v1/images/generations;"
                f" supported: {', '.join(sorted(self.IMAGE_KEYS))}",
            )
        fields = {k: body.get(k) for k in IMAGE_FIELDS if k not in ("width", "height")}
        size = body.get("size")
        if size is not None:
            parsed_size = parse_size(size)
            if parsed_size is None:
                raise RequestError(
                    ErrorCode.INVALID_SIZE,
                    f'size must be like "512x512" (multiples of 8), got {size!r}',
                )
            fields["width"], fields["height"] = parsed_size
        form = body.get("response_format", "url")
        if form not in ("url", "b64_json"):
            raise RequestError(
                ErrorCode.INVALID_RECORD, f"response_format must be url or b64_json, got {form!r}"
            )
        req = image_request(
            rid, body.get("prompt"), fields, "file" if form == "url" else "b64_json"
        )
        return Parsed(req, location, model=model)

    @staticmethod
    def _logprobs(kind: TaskKind, body: dict[str, Any]) -> dict[str, Any]:
        """Chat asks with ``logprobs: true`` (+ ``top_logprobs: n``); completions with ``logprobs: n``."""
        want, top = body.get("logprobs"), body.get("top_logprobs")
        if kind is TaskKind.COMPLETION:
            return {} if want is None else {"logprobs": want}
        if top is not None and want is not True:
            raise RequestError(ErrorCode.INVALID_SAMPLING, "top_logprobs needs logprobs: true")
        if want in (None, False):
            return {}
        if want is not True:
            raise RequestError(ErrorCode.INVALID_SAMPLING, "logprobs must be true or false")
        return {"logprobs": 0 if top is None else top}

    def encode_results(self, items, job) -> bytes:
        lines = []
        for parsed, res in items:
            rid = parsed.request.record_id
            h = id_hash(job.job_id, rid)
            model = parsed.model or job.model
            if res.embeddings is not None:
                body = _embeddings_body(parsed, res, model)
            elif res.images is not None:
                body = _images_body(res, job)
            else:
                body = _completion_body(parsed, res, job, model, h)
            line = {
                "id": f"batch_req_{h}",
                "custom_id": rid,
                "response": {"status_code": 200, "request_id": f"req_{h}", "body": body},
                "error": None,
            }
            lines.append(json.dumps(line, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode() if lines else b""

    def encode_errors(self, errors: Sequence[RecordError], job: JobInfo) -> bytes:
        """OpenAI batch error lines, as OpenAI's error file holds them: ``{"id", "custom_id",
        "response": {"status_code": 400 | 500, "request_id", "body": {"error": {...}}}, "error":
        {"code", "message"}}`` with our stable code in ``error.code``. A line whose custom_id
        could not be read (not JSON, no id) has ``custom_id`` and ``response`` null, and its
        message says where it is."""
        lines = []
        for e in errors:
            h = id_hash(
                job.job_id, "error", e.location.file, str(e.location.line), e.record_id or ""
            )
            message = e.message
            response = None
            if e.record_id is None:
                message = f"{e.location}: {e.message}"
            else:
                server = e.code in SERVER_ERRORS
                response = {
                    "status_code": 500 if server else 400,
                    "request_id": f"req_{h}",
                    "body": {"error": {
                        "message": message,
                        "type": "server_error" if server else "invalid_request_error",
                        "param": None,
                        "code": str(e.code),
                    }},
                }  # fmt: skip
            line = {
                "id": f"batch_req_{h}",
                "custom_id": e.record_id,
                "response": response,
                "error": {"code": str(e.code), "message": message},
            }
            lines.append(json.dumps(line, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode() if lines else b""


def _response_format(rf: Any) -> Guided | None:
    """The constraint of a ``response_format`` (None for ``text`` or none)."""
    if rf is None:
        return None
    kinds = "text, json_object or json_schema"
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise RequestError(
            ErrorCode.INVALID_GUIDED, f"response_format must be an object with a type ({kinds})"
        )
    kind = rf["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return Guided(GuidedKind.JSON_OBJECT, "{}")
    if kind != "json_schema":
        raise RequestError(
            ErrorCode.INVALID_GUIDED, f"response_format.type must be {kinds}, got {kind!r}"
        )
    spec = rf.get("json_schema")
    if not isinstance(spec, dict):
        raise RequestError(
            ErrorCode.INVALID_GUIDED,
            'response_format json_schema needs "json_schema": {"name", "schema", "strict"?}',
        )
    name = spec.get("name")
    if not (isinstance(name, str) and NAME_RE.match(name)):
        raise RequestError(
            ErrorCode.INVALID_GUIDED,
            f"response_format.json_schema.name must be 1-64 letters, digits, _ or -, got {name!r}",
        )
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise RequestError(
            ErrorCode.INVALID_GUIDED,
            "response_format.json_schema.schema must be the JSON Schema the answer follows"
            + (" (it is missing)" if schema is None else f", got {schema!r}"[:200]),
        )
    if spec.get("strict") not in (None, True, False):
        raise RequestError(
            ErrorCode.INVALID_GUIDED, "response_format.json_schema.strict must be true or false"
        )
    # strict or not, the answer is constrained to the schema token by token
    return Guided.json_schema(schema)


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, ForcedToolCall | None,
                                          Guided | None]:  # fmt: skip
    """(tools for the chat template, the forced call, its constraint) of a chat body."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None:
        if choice not in (None, "none"):
            raise RequestError(ErrorCode.INVALID_RECORD, "tool_choice needs tools; give tools")
        return None, None, None
    if not isinstance(tools, list) or not tools or len(tools) > MAX_TOOLS:
        raise RequestError(
            ErrorCode.INVALID_RECORD, f"tools must be a list of 1 to {MAX_TOOLS} function tools"
        )
    functions: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not (isinstance(tool, dict) and tool.get("type") == "function" and isinstance(fn, dict)):
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f'tools[{i}] must be {{"type": "function", "function": {{"name", "parameters"?}}}}',
            )
        name, params = fn.get("name"), fn.get("parameters", {"type": "object", "properties": {}})
        if not (isinstance(name, str) and NAME_RE.match(name)):
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"tools[{i}].function.name must be 1-64 letters, digits, _ or -, got {name!r}",
            )
        if name in functions:
            raise RequestError(ErrorCode.INVALID_RECORD, f"tools name {name!r} twice")
        if not isinstance(params, dict):
            raise RequestError(
                ErrorCode.INVALID_RECORD, f"tools[{i}].function.parameters must be a JSON Schema"
            )
        functions[name] = params
    if choice is None or choice == "auto":
        raise RequestError(
            ErrorCode.UNSUPPORTED_TOOLS,
            "tool_choice auto (the default with tools) lets the model choose between answering "
            "and calling a tool, which needs a tool-call parser for this model's chat template; "
            'this service serves tool_choice "required" or {"type": "function", "function": '
            '{"name": ...}} (the answer is constrained to a call of the tool) and "none"',
        )
    if choice == "none":
        return tools, None, None
    if choice == "required":
        calls = [
            {"type": "object", "properties": {"name": {"const": n}, "arguments": p},
             "required": ["name", "arguments"], "additionalProperties": False}
            for n, p in functions.items()
        ]  # fmt: skip
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        return tools, ForcedToolCall(None), Guided.json_schema(schema)
    named = choice.get("function") if isinstance(choice, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function"
            and isinstance(named, dict) and isinstance(named.get("name"), str)):  # fmt: skip
        raise RequestError(
            ErrorCode.INVALID_RECORD,
            'tool_choice must be "none", "auto", "required" or {"type": "function", '
            f'"function": {{"name": ...}}}}, got {choice!r}'[:300],
        )
    if named["name"] not in functions:
        raise RequestError(
            ErrorCode.INVALID_RECORD,
            f"tool_choice names {named['name']!r}, which is not one of the tools "
            f"({', '.join(functions)})",
        )
    return tools, ForcedToolCall(named["name"]), Guided.json_schema(functions[named["name"]])


def _usage(res: Result) -> dict[str, Any]:
    return {
        "prompt_tokens": res.usage.prompt_tokens,
        "completion_tokens": res.usage.completion_tokens,
        "total_tokens": res.usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": res.usage.cached_tokens},
    }


def _completion_body(
    parsed: Parsed, res: Result, job: JobInfo, model: str, h: str
) -> dict[str, Any]:
    """A ``chat.completion`` or ``text_completion`` body with every choice."""
    choices = []
    for c in res.all_choices():
        if parsed.request.messages is not None:
            message, reason = _message(parsed, c, f"{h}-{c.index}")
            choices.append({
                "index": c.index,
                "message": message,
                "logprobs": _chat_logprobs(c.logprobs),
                "finish_reason": reason,
            })  # fmt: skip
        else:
            choices.append({
                "index": c.index,
                "text": c.text,
                "logprobs": _completion_logprobs(c.logprobs),
                "finish_reason": str(c.finish_reason),
            })  # fmt: skip
    if parsed.request.messages is not None:
        body: dict[str, Any] = {"id": f"chatcmpl-{h}", "object": "chat.completion"}
    else:
        body = {"id": f"cmpl-{h}", "object": "text_completion"}
    body.update(created=job.created, model=model, choices=choices, usage=_usage(res))
    return body


def _message(parsed: Parsed, c: Choice, call_id: str) -> tuple[dict[str, Any], str]:
    """The assistant message of one choice and its finish reason: a forced tool call that
    finished is written as ``tool_calls`` (finish reason ``tool_calls``); one cut short by
    ``max_tokens`` keeps its partial text as content (``length``)."""
    forced = parsed.tool_call
    text_message = {"role": "assistant", "content": c.text, "refusal": None}
    if forced is None or c.finish_reason is not FinishReason.STOP:
        return text_message, str(c.finish_reason)
    try:
        answer = json.loads(c.text)
    except ValueError:  # a stop string cut it: what was generated, as text
        return text_message, str(c.finish_reason)
    if forced.name is not None:
        name, arguments = forced.name, c.text
    elif isinstance(answer, dict) and isinstance(answer.get("name"), str):
        name = answer["name"]
        arguments = json.dumps(answer.get("arguments", {}), ensure_ascii=False)
    else:
        return text_message, str(c.finish_reason)
    call = {"id": f"call_{call_id}", "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip
    return {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [call],
    }, "tool_calls"


def _images_body(res: Result, job: JobInfo) -> dict[str, Any]:
    """OpenAI's images response: ``created`` and ``data`` (a URL -- the image's URI in the job
    folder -- or the file as ``b64_json``)."""
    data = [
        {"url": e["uri"]} if "uri" in e else {"b64_json": e["b64_json"]} for e in image_entries(res)
    ]
    return {"created": job.created, "data": data}


def _embeddings_body(parsed: Parsed, res: Result, model: str) -> dict[str, Any]:
    """OpenAI's embeddings response: base64 is the vector's little-endian float32 bytes."""
    assert res.embeddings is not None

    def encode(v: Sequence[float]) -> list[float] | str:
        if parsed.encoding == "base64":
            return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
        return list(v)

    data = [
        {"object": "embedding", "index": i, "embedding": encode(v)}
        for i, v in enumerate(res.embeddings)
    ]
    n = res.usage.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }


def _chat_logprobs(logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None

    def entry(token: str, logprob: float, raw: bytes | None) -> dict[str, Any]:
        return {"token": token, "logprob": logprob,
                "bytes": list(raw if raw is not None else token.encode())}  # fmt: skip

    content = []
    for t in logprobs:
        raws = t.top_bytes or (None,) * len(t.top)
        top = [entry(a, lp, raw) for (a, lp), raw in zip(t.top, raws, strict=True)]
        content.append({**entry(t.token, t.logprob, t.token_bytes), "top_logprobs": top})
    return {"content": content, "refusal": None}


def _completion_logprobs(logprobs: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    offsets, at = [], 0
    for t in logprobs:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in logprobs],
        "token_logprobs": [t.logprob for t in logprobs],
        "top_logprobs": [dict(t.top) for t in logprobs],
        "text_offset": offsets,
    }
