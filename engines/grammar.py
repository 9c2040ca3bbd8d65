"""Structured outputs: a request's ``Guided`` constraint as an llguidance grammar, one matcher per
generated sequence, and the packed token bitmasks our JAX engine applies on the device.

A bitmask row holds ``ceil(V / 32)`` int32 words; bit ``j`` of word ``i`` allows token
``32 * i + j`` (llguidance's layout). A row of ``-1`` words allows every token: rows of requests
without a constraint, and idle slots. JSON schemas compile with compact whitespace (no run of
spaces or newlines can eat the token budget), which is what vLLM's ``disable_any_whitespace``
gives; ``grammar`` is a Lark grammar in llguidance's dialect (GBNF is converted).

A constraint llguidance cannot enforce (a JSON Schema feature it does not implement, a regex with
look-around, a grammar that does not parse) is a ``RequestError(UNSUPPORTED_GUIDED)`` with
llguidance's reason: an error record for that request, never a silent unconstrained answer.
Compiling a grammar costs milliseconds: each distinct constraint is compiled once (an LRU of
matchers in their start state) and copied for every sequence that uses it.

The module imports llguidance (``hyperbatch[jax]`` installs it); engines import it when the first
constrained request arrives, so an engine without it still serves everything else.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import llguidance
import llguidance.numpy as llg_numpy
import numpy as np

from hyperbatch.schemas.records import ErrorCode, Guided, GuidedKind, RequestError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

#: JSON compiled without free whitespace between tokens (compact JSON)
JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
CACHE_SIZE = 256  # distinct constraints kept compiled
Matcher = llguidance.LLMatcher


def words(vocab_size: int) -> int:
    """int32 words per bitmask row."""
    return (vocab_size + 31) // 32


def allow_all(rows: int, vocab_size: int) -> np.ndarray:
    """A bitmask [rows, words] that allows every token."""
    return np.full((rows, words(vocab_size)), -1, dtype=np.int32)


def grammar_text(guided: Guided) -> str:
    """The llguidance grammar of a constraint (not yet checked: ``Grammars.matcher`` does)."""
    try:
        if guided.kind is GuidedKind.JSON_SCHEMA:
            return Matcher.grammar_from_json_schema(guided.value, defaults=JSON_OPTIONS)
        if guided.kind is GuidedKind.JSON_OBJECT:
            return Matcher.grammar_from_json_schema('{"type": "object"}', defaults=JSON_OPTIONS)
        if guided.kind is GuidedKind.REGEX:
            return Matcher.grammar_from_regex(guided.value)
        if guided.kind is GuidedKind.CHOICE:
            return llguidance.grammar_from("choice", guided.value)
        return llguidance.grammar_from("grammar", guided.value)
    except ValueError as e:
        raise RequestError(ErrorCode.UNSUPPORTED_GUIDED, f"{guided.kind}: {e}") from e


class Grammars:
    """Constraints compiled for one tokenizer: matchers for requests, bitmasks for batches."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_ids: Iterable[int]):
        """``tokenizer_json``: the Hugging Face ``tokenizer.json`` text of the model's tokenizer;
        ``vocab_size``: the model's (logits') vocabulary, which bounds the bitmask; ``eos_ids``:
        the tokens that end a sequence (allowed once the grammar is complete)."""
        eos = sorted(set(eos_ids))
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer_json, n_vocab=vocab_size, eos_token=eos or None
        )
        self.executor = llguidance.LLExecutor()
        self._start: collections.OrderedDict[Guided, Matcher] = collections.OrderedDict()

    def matcher(self, guided: Guided) -> Matcher:
        """A fresh matcher for one sequence; RequestError(UNSUPPORTED_GUIDED) with the reason
        when llguidance cannot enforce the constraint."""
        start = self._start.get(guided)
        if start is None:
            start = Matcher(self.tokenizer, grammar_text(guided), log_level=0)
            if start.is_error():
                raise RequestError(
                    ErrorCode.UNSUPPORTED_GUIDED,
                    f"the {guided.kind} constraint cannot be enforced: {start.get_error()}",
                )
            self._start[guided] = start
            while len(self._start) > CACHE_SIZE:
                self._start.popitem(last=False)
        else:
            self._start.move_to_end(guided)
        return start.deep_copy()

    def fill(self, rows: Sequence[tuple[Matcher, int]], bitmask: np.ndarray) -> None:
        """Write each matcher's allowed next tokens into its row of ``bitmask`` (in parallel)."""
        if len(rows) == 1:
            matcher, row = rows[0]
            llg_numpy.fill_next_token_bitmask(matcher, bitmask, row)
        elif rows:
            llg_numpy.fill_next_token_bitmask_par(self.executor, list(rows), bitmask)


def unpack(bitmask: np.ndarray, vocab_size: int) -> np.ndarray:
    """The allowed tokens of packed rows, as booleans [rows, vocab_size] (tests, host checks)."""
    bits = np.unpackbits(bitmask.view(np.uint8), axis=-1, bitorder="little")
    return bits[:, :vocab_size].astype(bool)


def describe(guided: Guided) -> str:
    """A short description of a constraint for messages."""
    text = json.dumps(guided.to_dict(), ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."
