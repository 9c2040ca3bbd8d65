"""OpenAI's batch output line and the response bodies it carries, as JSON Schema (draft 2020-12).

Written from OpenAI's published API reference: ``openapi.yaml`` of github.com/openai/openai-openapi,
``info.version: "2.3.0"`` (commit 578000861507cd19620e3f1092adf62303757c0a), components
``BatchRequestOutput`` (the per-line object of a batch's output and error files),
``CreateChatCompletionResponse``, ``ChatCompletionResponseMessage``,
``ChatCompletionMessageToolCall``, ``ChatCompletionTokenLogprob``, ``CreateCompletionResponse``,
``CompletionUsage`` and ``ErrorResponse``/``Error``. OpenAPI 3.0's ``nullable: true`` is written as
a type union with ``"null"``; ``required`` lists are the reference's.

Stricter than the reference, on purpose (drift in what we write must fail): the objects we write
have ``additionalProperties: false`` (a field we add by mistake, or one OpenAI does not have, is
caught), and a batch line's four keys are required (OpenAI's example lines always carry them).
"""

from __future__ import annotations

from typing import Any


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI 3.0 ``nullable: true``."""
    kind = schema["type"]
    return {**schema, "type": [kind, "null"] if isinstance(kind, str) else [*kind, "null"]}


def closed(properties: dict[str, Any], required: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required,
            "additionalProperties": False, **extra}  # fmt: skip


INT, STR, NUM = {"type": "integer"}, {"type": "string"}, {"type": "number"}

# BatchRequestOutput: {"id", "custom_id", "response": {"status_code", "request_id", "body"} | null,
# "error": {"code", "message"} | null}
BATCH_REQUEST_OUTPUT = closed(
    {
        "id": STR,
        "custom_id": STR,
        "response": nullable(closed(
            {"status_code": INT, "request_id": STR, "body": {"type": "object"}},
            ["status_code", "request_id", "body"],
        )),
        "error": nullable(closed({"code": STR, "message": STR}, ["code", "message"])),
    },
    ["id", "custom_id", "response", "error"],
)  # fmt: skip

# ErrorResponse: {"error": Error}; Error requires type, message, param, code (param, code nullable)
ERROR_RESPONSE = closed(
    {"error": closed(
        {"code": nullable(STR), "message": STR, "param": nullable(STR), "type": STR},
        ["type", "message", "param", "code"],
    )},
    ["error"],
)  # fmt: skip

COMPLETION_USAGE = closed(
    {
        "completion_tokens": INT,
        "prompt_tokens": INT,
        "total_tokens": INT,
        "completion_tokens_details": closed({"audio_tokens": INT, "reasoning_tokens": INT}, []),
        "prompt_tokens_details": closed({"audio_tokens": INT, "cached_tokens": INT}, []),
    },
    ["prompt_tokens", "completion_tokens", "total_tokens"],
)

_BYTES = nullable({"type": "array", "items": INT})
CHAT_COMPLETION_TOKEN_LOGPROB = closed(
    {
        "token": STR,
        "logprob": NUM,
        "bytes": _BYTES,
        "top_logprobs": {
            "type": "array",
            "items": closed(
                {"token": STR, "logprob": NUM, "bytes": _BYTES}, ["token", "logprob", "bytes"]
            ),
        },
    },
    ["token", "logprob", "bytes", "top_logprobs"],
)

CHAT_COMPLETION_MESSAGE_TOOL_CALL = closed(
    {
        "id": STR,
        "type": {"type": "string", "enum": ["function"]},
        "function": closed({"name": STR, "arguments": STR}, ["name", "arguments"]),
    },
    ["id", "type", "function"],
)

CHAT_COMPLETION_RESPONSE_MESSAGE = closed(
    {
        "content": nullable(STR),
        "refusal": nullable(STR),
        "tool_calls": {"type": "array", "items": CHAT_COMPLETION_MESSAGE_TOOL_CALL},
        "role": {"type": "string", "enum": ["assistant"]},
    },
    ["role", "content", "refusal"],
)

_LOGPROB_LIST = nullable({"type": "array", "items": CHAT_COMPLETION_TOKEN_LOGPROB})
CREATE_CHAT_COMPLETION_RESPONSE = closed(
    {
        "id": STR,
        "choices": {
            "type": "array",
            "items": closed(
                {
                    "finish_reason": {"type": "string", "enum": [
                        "stop", "length", "tool_calls", "content_filter", "function_call"]},
                    "index": INT,
                    "message": CHAT_COMPLETION_RESPONSE_MESSAGE,
                    "logprobs": nullable(closed({"content": _LOGPROB_LIST,
                                                 "refusal": _LOGPROB_LIST},
                                                ["content", "refusal"])),
                },
                ["finish_reason", "index", "message", "logprobs"],
            ),
        },
        "created": INT,
        "model": STR,
        "service_tier": nullable({"type": "string", "enum": ["scale", "default"]}),
        "system_fingerprint": STR,
        "object": {"type": "string", "enum": ["chat.completion"]},
        "usage": COMPLETION_USAGE,
    },
    ["choices", "created", "id", "model", "object"],
)  # fmt: skip

CREATE_COMPLETION_RESPONSE = closed(
    {
        "id": STR,
        "choices": {
            "type": "array",
            "items": closed(
                {
                    "finish_reason": {"type": "string",
                                      "enum": ["stop", "length", "content_filter"]},
                    "index": INT,
                    "logprobs": nullable(closed(
                        {
                            "text_offset": {"type": "array", "items": INT},
                            "token_logprobs": {"type": "array", "items": NUM},
                            "tokens": {"type": "array", "items": STR},
                            "top_logprobs": {"type": "array", "items": {
                                "type": "object", "additionalProperties": NUM}},
                        },
                        [],
                    )),
                    "text": STR,
                },
                ["finish_reason", "index", "logprobs", "text"],
            ),
        },
        "created": INT,
        "model": STR,
        "system_fingerprint": STR,
        "object": {"type": "string", "enum": ["text_completion"]},
        "usage": COMPLETION_USAGE,
    },
    ["id", "object", "created", "model", "choices"],
)  # fmt: skip

#: the response body of a 200 line, by the request's url
BODIES = {
    "/v1/chat/completions": CREATE_CHAT_COMPLETION_RESPONSE,
    "/v1/completions": CREATE_COMPLETION_RESPONSE,
}
