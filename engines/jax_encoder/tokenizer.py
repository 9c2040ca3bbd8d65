"""Texts -> token ids exactly as sentence-transformers tokenizes them, with truncation reported.

sentence-transformers calls the Hugging Face tokenizer with ``truncation="longest_first"`` and
``max_length = max_seq_length``: special tokens are kept and the text is cut from the right so
the whole sequence (specials included) fits. A ``tokenizer.json`` may carry its own padding and
truncation settings (all-MiniLM-L6-v2's pads and truncates to 128); transformers overrides them
per call, and so do we. ``do_lower_case`` from ``sentence_bert_config.json`` prepends a Lowercase
normaliser when the tokenizer lacks one, as sentence-transformers does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer, normalizers


class Tokenized(NamedTuple):
    ids: list[np.ndarray]  # int32 token ids per text, special tokens included, truncated
    truncated: np.ndarray  # [N] bool: the text had more tokens than max_seq_length
    lengths: np.ndarray  # [N] int32: len(ids[i]), the tokens the model reads


def _has_lowercase(normalizer_json: dict | None) -> bool:
    if not normalizer_json:
        return False
    kind = normalizer_json.get("type")
    if kind == "Lowercase":
        return True
    if kind == "BertNormalizer":
        return bool(normalizer_json.get("lowercase"))
    if kind == "Sequence":
        return any(_has_lowercase(n) for n in normalizer_json.get("normalizers", []))
    return False


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, max_seq_length: int):
        self.max_seq_length = max_seq_length
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.enable_truncation(
            max_seq_length, strategy="longest_first", direction="right", stride=0
        )

    @classmethod
    def from_dir(cls, model_dir: str, max_seq_length: int, do_lower_case: bool = False):
        path = os.path.join(model_dir, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{model_dir} has no tokenizer.json; save the tokenizer with a fast (Rust) "
                "tokenizer: AutoTokenizer.from_pretrained(...).save_pretrained(dir)"
            )
        tok = Tokenizer.from_file(path)
        if do_lower_case:
            current = json.loads(tok.to_str()).get("normalizer")
            if not _has_lowercase(current):
                chain = [normalizers.Lowercase()]
                if tok.normalizer is not None:
                    chain.append(tok.normalizer)
                tok.normalizer = normalizers.Sequence(chain)
        return cls(tok, max_seq_length)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: Sequence[str]) -> Tokenized:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int32) for e in encodings]
        truncated = np.fromiter((bool(e.overflowing) for e in encodings), bool, len(encodings))
        lengths = np.fromiter((len(x) for x in ids), np.int32, len(ids))
        return Tokenized(ids, truncated, lengths)
