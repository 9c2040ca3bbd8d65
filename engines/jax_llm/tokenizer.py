"""Tokenizer and chat template: HF ``tokenizer.json`` + jinja2 templates, or GGUF metadata.

Chat templates are rendered as transformers' ``apply_chat_template`` does (sandboxed jinja2 with
``trim_blocks``/``lstrip_blocks``, ``raise_exception``, ``tojson``, the special tokens as
variables, ``add_generation_prompt=True``) and the result is tokenized without adding special
tokens (the template writes them). Plain prompts get the tokenizer's own special tokens (BOS).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from hyperbatch.schemas.records import ErrorCode, RequestError

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
_SENTINEL = "\ue000hyperbatch-prefix-sentinel\ue000"


class TemplateError(Exception):
    """Raised by a template's ``raise_exception`` (becomes TEMPLATE_ERROR for the record)."""


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)


def compile_template(source: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def _token_text(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("content")
    return value


class ChatTokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str | None,
        special_tokens: Mapping[str, str | None],
        add_bos: bool = False,
    ):
        self.tokenizer = tokenizer
        self.template_source = chat_template
        self.template = compile_template(chat_template) if chat_template else None
        self.special_tokens = dict(special_tokens)
        self.add_bos = add_bos  # for tokenizers whose post-processor does not add it
        bos = self.special_tokens.get("bos_token")
        self.bos_id = tokenizer.token_to_id(bos) if bos else None
        eos = self.special_tokens.get("eos_token")
        self.eos_id = tokenizer.token_to_id(eos) if eos else None

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_hf_dir(cls, model_dir: str) -> ChatTokenizer:
        tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        config: dict[str, Any] = {}
        cfg_path = os.path.join(model_dir, "tokenizer_config.json")
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                config = json.load(f)
        template = config.get("chat_template")
        jinja_path = os.path.join(model_dir, "chat_template.jinja")
        if os.path.isfile(jinja_path):
            with open(jinja_path) as f:
                template = f.read()
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        special = {name: _token_text(config.get(name)) for name in _SPECIAL_NAMES}
        return cls(tok, template, special)

    @classmethod
    def from_gguf(cls, meta: Mapping[str, Any]) -> ChatTokenizer:
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(
                f"GGUF tokenizer model {kind!r} is not supported (byte-level BPE 'gpt2' only); "
                "use the model's Hugging Face directory instead"
            )
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        vocab = {t: i for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        tok.pre_tokenizer = _gguf_pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
        tok.decoder = decoders.ByteLevel()
        types = list(meta.get("tokenizer.ggml.token_type", []))
        tok.add_special_tokens(
            [
                AddedToken(t, special=True, normalized=False)
                for t, k in zip(tokens, types, strict=False)
                if k == 3
            ]
        )
        tok.add_tokens(
            [
                AddedToken(t, special=False, normalized=False)
                for t, k in zip(tokens, types, strict=False)
                if k == 4
            ]
        )
        special = {}
        for name, key in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        ):
            idx = meta.get(f"tokenizer.ggml.{key}")
            special[name] = tokens[int(idx)] if idx is not None else None
        return cls(
            tok,
            meta.get("tokenizer.chat_template"),
            special,
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        )

    # -- use ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The chat as the model reads it; ``tools`` (OpenAI's function tools) are handed to the
        template, which shows them to the model if it knows how."""
        if self.template is None:
            raise RequestError(
                ErrorCode.TEMPLATE_ERROR,
                "this model has no chat template; send a completion prompt instead of messages",
            )
        try:
            return self.template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=True,
                tools=[dict(t) for t in tools] if tools else None,
                documents=None,
                **self.special_tokens,
            )
        except (TemplateError, jinja2.TemplateError, TypeError, KeyError) as e:
            raise RequestError(
                ErrorCode.TEMPLATE_ERROR, f"the chat template refused these messages: {e}"
            ) from e

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[int]:
        return self.tokenizer.encode(self.render(messages, tools), add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=True).ids
        if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id, *ids]
        return ids

    def chat_prefix(
        self,
        messages: Sequence[Mapping[str, Any]],
        ids: Sequence[int],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """How many leading tokens of ``ids`` (the rendered chat) do not depend on the last
        message's content: the system prompt, history and the last message's header. 0 when the
        template gives no such clean boundary. Shared prefixes are reused from this length."""
        last = messages[-1]
        if not isinstance(last.get("content"), str) or not last["content"]:
            return 0
        probe = [*messages[:-1], {**last, "content": _SENTINEL}]
        try:
            text = self.render(probe, tools)
        except RequestError:
            return 0
        cut = text.find(_SENTINEL)
        if cut <= 0:
            return 0
        head = self.tokenizer.encode(text[:cut], add_special_tokens=False).ids
        # a BPE merge may straddle the boundary: back off until the tokens agree
        for n in (len(head), len(head) - 1):
            if 0 < n < len(ids) and list(ids[:n]) == head[:n]:
                return n
        return 0

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for (a byte-level token may hold part of a UTF-8
        character); special tokens are their text."""
        return self._token_bytes(int(token_id))

    def token_text(self, token_id: int) -> str:
        """One token as text (bytes that are not whole characters become U+FFFD)."""
        return self._token_bytes(int(token_id)).decode("utf-8", errors="replace")

    @functools.cached_property
    def _byte_level(self) -> bool:
        decoder = json.loads(self.tokenizer.to_str()).get("decoder") or {}
        kinds = [d.get("type") for d in decoder.get("decoders", [decoder])]
        return "ByteLevel" in kinds

    @functools.cached_property
    def _added(self) -> dict[int, str]:
        return {i: t.content for i, t in self.tokenizer.get_added_tokens_decoder().items()}

    @functools.lru_cache(maxsize=1 << 16)  # noqa: B019 - one tokenizer per engine, kept for its life
    def _token_bytes(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode()
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if self._byte_level:
            table = _unicode_to_byte()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
            return piece.encode()
        byte = _BYTE_PIECE.fullmatch(piece)  # SentencePiece byte fallback: <0x0A>
        if byte:
            return bytes([int(byte.group(1), 16)])
        return piece.replace("\u2581", " ").encode()


_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the character a byte-level BPE writes -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gguf_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer llama.cpp uses for ``tokenizer.ggml.pre`` (how the merges were learned)."""
    if pre in ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx"):
        split = _LLAMA3_SPLIT
    elif pre in ("qwen2", "deepseek-r1-qwen"):
        split = _QWEN2_SPLIT
    else:
        split = None
    if split is not None:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    steps: list[Any] = []
    if pre in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"):
        steps.append(pre_tokenizers.Digits(individual_digits=True))  # digits one by one
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    return pre_tokenizers.Sequence(steps)
