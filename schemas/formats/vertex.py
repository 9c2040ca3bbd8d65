"""Vertex AI batch prediction lines: Gemini requests (task chat) and text embeddings.

**Gemini** (``task: chat``) -- a Vertex batch job's input line, served by an open model::

    {"request": {"contents": [{"role": "user" | "model", "parts": [{"text"} |
                   {"fileData": {"fileUri", "mimeType"}} | {"inlineData": {"mimeType", "data"}}]}],
                 "systemInstruction"?: {"parts": [{"text"}]},
                 "generationConfig"?: {"temperature", "topP", "topK", "maxOutputTokens", "seed",
                                       "stopSequences", "candidateCount", "presencePenalty",
                                       "frequencyPenalty", "responseMimeType", "responseSchema"}}}

and Vertex's output line back: ``{"request": <the input request>, "response": {"candidates":
[{"index", "content": {"role": "model", "parts": [{"text"}]}, "finishReason": "STOP" |
"MAX_TOKENS"}], "usageMetadata": {"promptTokenCount", "candidatesTokenCount",
"totalTokenCount", "promptTokensDetails": [{"modality": "TEXT" | "IMAGE", "tokenCount"}]},
"modelVersion"}, "status": ""}`` (image tokens are prompt tokens, and also counted apart). A
record that cannot be served is an error line in ``errors/``, as in every format, in Vertex's
shape: ``{"request": <the input request, or null>, "status": "<code>: <why>", "record_id",
"code", "source_file", "source_line"}`` (an embedding line's has ``instance``). Field names
are accepted in camelCase and snake_case (as Vertex's JSON reader does). ``fileData`` images
are ``gs://`` URIs; ``inlineData`` is base64; other media types (video, PDF, audio) are
``unsupported_image_type`` errors. A ``model`` turn is an assistant message.
``responseMimeType: application/json`` constrains the answer to a JSON object, with
``responseSchema`` (Vertex's OpenAPI subset: type names in any case) to that schema.
``safetySettings`` and ``labels`` are accepted and have no effect here (no safety filter runs);
``tools``, ``toolConfig`` and ``cachedContent`` are refused.

**Text embeddings** (``task: embedding``): ``{"content", "task_type"?, "title"?}`` per line, and
Vertex-style output lines back::

    {"instance": {...the input line...},
     "predictions": [{"embeddings": {"values": [...],
                                     "statistics": {"token_count": n, "truncated": false}}}],
     "status": ""}

``task_type`` is checked against Vertex's list; the models served here embed queries and
documents alike, so it does not change the vector. ``title`` is refused: these models have no
title input (put it in ``content``).

Vertex lines carry no id: a line's id is ``<file name>:<line>`` (``"id"`` may be added to a line
to name it; it is then checked for duplicates like any other format's id).
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from hyperbatch.schemas.formats.base import (
    JobInfo,
    JsonLinesFormat,
    Location,
    Parsed,
    RecordError,
    embedding_request,
)
from hyperbatch.schemas.images import MIME_TYPES, ImageInput
from hyperbatch.schemas.records import (
    ErrorCode,
    FinishReason,
    Guided,
    GuidedKind,
    Request,
    RequestError,
    Result,
    SamplingParams,
    TaskKind,
    sampling_from_dict,
)

TASK_TYPES = (
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
)

#: generationConfig (camelCase) -> our sampling parameter
GENERATION: Mapping[str, str] = {
    "temperature": "temperature",
    "topP": "top_p",
    "topK": "top_k",
    "maxOutputTokens": "max_tokens",
    "seed": "seed",
    "stopSequences": "stop",
    "candidateCount": "n",
    "presencePenalty": "presence_penalty",
    "frequencyPenalty": "frequency_penalty",
}
RESPONSE_KEYS = frozenset({"responseMimeType", "responseSchema"})
REQUEST_KEYS = frozenset(
    {"contents", "systemInstruction", "generationConfig", "safetySettings", "labels"}
)
REFUSED = {
    "tools": "tools (function calling) are not served for Vertex lines",
    "toolConfig": "tools (function calling) are not served for Vertex lines",
    "cachedContent": "cached contents live in Vertex; send the whole request",
}
FINISH = {FinishReason.STOP: "STOP", FinishReason.LENGTH: "MAX_TOKENS"}


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def camel_keys(obj: Any) -> Any:
    """``obj`` with snake_case keys of objects written in camelCase (not inside schemas)."""
    if isinstance(obj, Mapping):
        return {
            _camel(k): (v if k in ("responseSchema", "response_schema") else camel_keys(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [camel_keys(v) for v in obj]
    return obj


def _schema(schema: Any) -> Any:
    """Vertex's OpenAPI-subset schema as JSON Schema: type names lower-cased, ``nullable``."""
    if isinstance(schema, list):
        return [_schema(s) for s in schema]
    if not isinstance(schema, Mapping):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "type" and isinstance(v, str):
            out[k] = v.lower()
        elif k in ("properties",) and isinstance(v, Mapping):
            out[k] = {name: _schema(s) for name, s in v.items()}
        elif k in ("items", "anyOf"):
            out[k] = _schema(v)
        elif k in ("nullable", "propertyOrdering", "format", "example", "title"):
            continue
        else:
            out[k] = v
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


class VertexBatch(JsonLinesFormat):
    """Vertex AI batch lines: Gemini requests (chat) and text embeddings (see the module doc)."""

    name = "vertex"
    id_key = "id"
    KEYS: ClassVar[frozenset[str]] = frozenset({"content", "task_type", "title", "id"})

    @staticmethod
    def line_id(location: Location) -> str:
        return f"{posixpath.basename(location.file)}:{location.line}"

    def parse(
        self, raw: Any, location: Location, task: TaskKind, defaults: SamplingParams
    ) -> Parsed | RecordError:
        try:
            obj = self._load(raw)
        except (UnicodeDecodeError, ValueError):
            return super().parse(raw, location, task, defaults)  # the shared error records
        if isinstance(obj, dict) and obj.get("id") is None:
            rid = self.line_id(location)
            try:
                return self._parse_obj(rid, obj, location, task, defaults)
            except RequestError as e:
                return RecordError(rid, location, e.code, e.message, self._echo(obj, task))
        out = super().parse(raw, location, task, defaults)  # a line that names its own id
        if isinstance(out, RecordError) and isinstance(obj, dict):
            out = dataclasses.replace(out, echo=self._echo(obj, task))
        return out

    @staticmethod
    def _echo(obj: dict[str, Any], task: TaskKind) -> dict[str, Any] | None:
        """What the line's output repeats: a Gemini line's request, an embedding line itself."""
        if task is TaskKind.CHAT:
            request = obj.get("request")
            return request if isinstance(request, dict) else None
        return obj

    def _parse_obj(self, rid, obj, location, task, defaults) -> Parsed:
        if task is TaskKind.CHAT:
            return self._gemini(rid, obj, location, defaults)
        if task is not TaskKind.EMBEDDING:
            raise RequestError(
                ErrorCode.INVALID_RECORD, "vertex lines are Gemini chat or embedding requests"
            )
        unknown = sorted(set(obj) - self.KEYS)
        if unknown:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"unknown field(s) {', '.join(unknown)}; a Vertex embedding line is "
                '{"content", "task_type"?}',
            )
        if "title" in obj:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                "title: this model has no title input; put the title in content",
            )
        task_type = obj.get("task_type")
        if task_type is not None and task_type not in TASK_TYPES:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"task_type {task_type!r} is not one of {', '.join(TASK_TYPES)}",
            )
        if "content" not in obj:
            raise RequestError(ErrorCode.EMPTY_INPUT, "the line has no content")
        if not isinstance(obj["content"], str):
            raise RequestError(ErrorCode.INVALID_RECORD, "content must be a string")
        req = embedding_request(rid, obj["content"], what="content")
        return Parsed(req, location, echo=obj)

    # -- Gemini ------------------------------------------------------------------------------

    def _gemini(
        self, rid: str, obj: dict[str, Any], location: Location, defaults: SamplingParams
    ) -> Parsed:
        unknown = sorted(set(obj) - {"request", "id"})
        if unknown or not isinstance(obj.get("request"), dict):
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                'a Vertex Gemini batch line is {"request": {"contents": [...], ...}}'
                + (f"; unknown field(s) {', '.join(unknown)}" if unknown else ""),
            )
        request = camel_keys(obj["request"])
        for key, why in REFUSED.items():
            if key in request:
                raise RequestError(
                    ErrorCode.UNSUPPORTED_TOOLS
                    if key != "cachedContent"
                    else ErrorCode.INVALID_RECORD,
                    f"request.{key}: {why}",
                )
        unknown = sorted(set(request) - REQUEST_KEYS)
        if unknown:
            raise RequestError(
                ErrorCode.INVALID_RECORD,
                f"request field(s) {', '.join(unknown)} are not supported; a request has "
                f"{', '.join(sorted(REQUEST_KEYS))}",
            )
        images: list[ImageInput] = []
        messages = []
        system = request.get("systemInstruction")
        if system is not None:
            content = self._parts(system, "request.systemInstruction", images)
            if images:
                raise RequestError(
                    ErrorCode.INVALID_RECORD, "request.systemInstruction may hold text only"
                )
            messages.append({"role": "system", "content": content})
        contents = request.get("contents")
        if not isinstance(contents, list) or not contents:
            raise RequestError(
                ErrorCode.EMPTY_MESSAGES, "request.contents must be a non-empty list of turns"
            )
        for i, turn in enumerate(contents):
            where = f"request.contents[{i}]"
            role = turn.get("role", "user") if isinstance(turn, dict) else None
            if role not in ("user", "model"):
                raise RequestError(
                    ErrorCode.INVALID_RECORD, f"{where}.role must be user or model, got {role!r}"
                )
            content = self._parts(turn, where, images)
            messages.append({"role": "user" if role == "user" else "assistant", "content": content})
        if not any(not isinstance(m["content"], str) or m["content"].strip() for m in messages):
            raise RequestError(ErrorCode.EMPTY_MESSAGES, "every turn is empty")
        sampling = self._sampling(request.get("generationConfig") or {})
        params = sampling_from_dict(sampling, base=defaults)
        req = Request(
            record_id=rid, sampling=params, messages=tuple(messages), input_images=tuple(images)
        )
        return Parsed(req, location, echo=obj["request"])

    @staticmethod
    def _parts(turn: Any, where: str, images: list[ImageInput]) -> str | tuple[dict[str, Any], ...]:
        parts = turn.get("parts") if isinstance(turn, dict) else None
        if isinstance(parts, dict):  # a single part, as Vertex also accepts
            parts = [parts]
        if not isinstance(parts, list) or not parts:
            raise RequestError(ErrorCode.INVALID_RECORD, f"{where}.parts must be a list of parts")
        out: list[dict[str, Any]] = []
        for j, part in enumerate(parts):
            at = f"{where}.parts[{j}]"
            if not isinstance(part, dict) or len(part) != 1:
                raise RequestError(
                    ErrorCode.INVALID_RECORD,
                    f"{at} must be one of {{text}}, {{fileData}} or {{inlineData}}",
                )
            ((kind, value),) = part.items()
            if kind == "text":
                if not isinstance(value, str):
                    raise RequestError(ErrorCode.INVALID_RECORD, f"{at}.text must be a string")
                out.append({"type": "text", "text": value})
                continue
            if kind not in ("fileData", "inlineData") or not isinstance(value, dict):
                raise RequestError(
                    ErrorCode.INVALID_RECORD,
                    f"{at}: {kind} parts are not served; use text, fileData or inlineData",
                )
            mime = value.get("mimeType")
            if not isinstance(mime, str):
                raise RequestError(ErrorCode.INVALID_RECORD, f"{at}.{kind}.mimeType is required")
            if mime.lower() not in MIME_TYPES:
                raise RequestError(
                    ErrorCode.UNSUPPORTED_IMAGE_TYPE,
                    f"{at}: {mime} is not served; images only ({', '.join(sorted(MIME_TYPES))})",
                )
            if kind == "fileData":
                uri = value.get("fileUri")
                if not isinstance(uri, str) or not uri.startswith("gs://"):
                    raise RequestError(
                        ErrorCode.IMAGE_NOT_ALLOWED,
                        f"{at}.fileData.fileUri must be a gs:// URI, got {str(uri)[:120]!r}",
                    )
                images.append(ImageInput(uri=uri, mime_type=mime.lower()))
            else:
                data = value.get("data")
                if not isinstance(data, str) or not data:
                    raise RequestError(
                        ErrorCode.INVALID_IMAGE, f"{at}.inlineData.data must be base64 text"
                    )
                images.append(
                    ImageInput(uri=f"data:{mime.lower()};base64,{data}", mime_type=mime.lower())
                )
            out.append({"type": "image", "image": len(images) - 1})
        if all(p["type"] == "text" for p in out):
            return "".join(p["text"] for p in out)
        return tuple(out)

    @staticmethod
    def _sampling(config: Any) -> dict[str, Any]:
        if not isinstance(config, dict):
            raise RequestError(ErrorCode.INVALID_SAMPLING, "generationConfig must be an object")
        unknown = sorted(set(config) - set(GENERATION) - RESPONSE_KEYS)
        if unknown:
            raise RequestError(
                ErrorCode.INVALID_SAMPLING,
                f"generationConfig field(s) {', '.join(unknown)} are not supported; supported: "
                f"{', '.join(sorted(set(GENERATION) | RESPONSE_KEYS))}",
            )
        out = {ours: config[key] for key, ours in GENERATION.items() if config.get(key) is not None}
        mime = config.get("responseMimeType", "text/plain")
        schema = config.get("responseSchema")
        if mime == "application/json":
            out["guided"] = (
                Guided.json_schema(_schema(schema))
                if schema is not None
                else Guided(GuidedKind.JSON_OBJECT, "{}")
            )
        elif mime != "text/plain":
            raise RequestError(
                ErrorCode.INVALID_GUIDED,
                f"responseMimeType must be text/plain or application/json, got {mime!r}",
            )
        elif schema is not None:
            raise RequestError(
                ErrorCode.INVALID_GUIDED, "responseSchema needs responseMimeType application/json"
            )
        return out

    # -- outputs -----------------------------------------------------------------------------

    def encode_results(self, items, job) -> bytes:
        lines = []
        for parsed, res in items:
            if res.embeddings is not None:
                line = self._embedding_line(parsed, res)
            else:
                line = {"request": parsed.echo, "response": _response(res, job.model), "status": ""}
            lines.append(json.dumps(line, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode() if lines else b""

    def encode_errors(self, errors: Sequence[RecordError], job: JobInfo) -> bytes:
        """Vertex's line for a request that failed: the input (``request`` of a Gemini line,
        ``instance`` of an embedding line; null when the line was not readable) and a non-empty
        ``status`` saying why, so that results and errors together read as a Vertex output. Our
        error record's fields ride along: ``record_id``, ``code`` (stable), ``source_file``,
        ``source_line``."""
        key = "instance" if job.task is TaskKind.EMBEDDING else "request"
        lines = []
        for e in errors:
            line = {key: e.echo, "status": f"{e.code}: {e.message}", **e.to_dict()}
            del line["message"]  # it is in the status
            lines.append(json.dumps(line, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode() if lines else b""

    @staticmethod
    def _embedding_line(parsed: Parsed, res: Result) -> dict[str, Any]:
        assert res.embeddings is not None
        predictions = [
            {
                "embeddings": {
                    "values": list(vector),
                    "statistics": {
                        "token_count": res.token_counts[i] if res.token_counts else 0,
                        "truncated": bool(res.truncated[i]) if res.truncated else False,
                    },
                }
            }
            for i, vector in enumerate(res.embeddings)
        ]
        return {"instance": dict(parsed.echo or {}), "predictions": predictions, "status": ""}


def _response(res: Result, model: str) -> dict[str, Any]:
    candidates = [
        {
            "index": c.index,
            "content": {"role": "model", "parts": [{"text": c.text}]},
            "finishReason": FINISH.get(c.finish_reason, "OTHER"),
        }
        for c in res.all_choices()
    ]
    u = res.usage
    return {
        "candidates": candidates,
        "usageMetadata": {
            "promptTokenCount": u.prompt_tokens,
            "candidatesTokenCount": u.completion_tokens,
            "totalTokenCount": u.total_tokens,
            **({"cachedContentTokenCount": u.cached_tokens} if u.cached_tokens else {}),
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": u.prompt_tokens - u.image_tokens},
                *([{"modality": "IMAGE", "tokenCount": u.image_tokens}] if u.image_tokens else []),
            ],
        },
        "modelVersion": model,
    }


#: the name this format had when it read embedding lines only
VertexEmbedding = VertexBatch
