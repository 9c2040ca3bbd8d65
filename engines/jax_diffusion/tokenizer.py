"""CLIP's BPE tokenizer built from a checkpoint's ``vocab.json`` and ``merges.txt`` (nothing is
fetched), producing the ids transformers' ``CLIPTokenizer`` gives the SD pipelines: NFC, collapsed
whitespace, lower case, CLIP's split pattern, byte-level BPE with ``</w>`` word ends; then
``[bos] + ids[:max_length - 2] + [eos]`` padded to ``max_length`` (77).

``encode`` also says, per text, whether it was truncated (the pipelines only log a warning).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _token(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class ClipTokenizer:
    def __init__(
        self,
        vocab_file: str,
        merges_file: str,
        *,
        max_length: int = 77,
        bos: str = "<|startoftext|>",
        eos: str = "<|endoftext|>",
        pad: str = "<|endoftext|>",
        unk: str = "<|endoftext|>",
    ) -> None:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        vocab, merges = BPE.read_file(vocab_file, merges_file)
        tok = Tokenizer(
            BPE(
                vocab=vocab,
                merges=merges,
                dropout=None,
                continuing_subword_prefix="",
                end_of_word_suffix="</w>",
                fuse_unk=False,
                unk_token=unk,
            )
        )
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        specials = list(dict.fromkeys(t for t in (bos, eos, unk, pad) if t))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        self._tok = tok
        self.max_length = max_length
        for name, text in (("bos", bos), ("eos", eos), ("pad", pad)):
            if tok.token_to_id(text) is None:
                raise ValueError(
                    f"{vocab_file}: the {name} token {text!r} is not in the vocabulary"
                )
        self.bos_id = tok.token_to_id(bos)
        self.eos_id = tok.token_to_id(eos)
        self.pad_id = tok.token_to_id(pad)

    @classmethod
    def from_dir(cls, path: str) -> ClipTokenizer:
        """A checkpoint's ``tokenizer/`` folder (``vocab.json``, ``merges.txt`` and optionally
        ``tokenizer_config.json``/``special_tokens_map.json`` for the special tokens and length)."""
        settings: dict[str, Any] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            file = os.path.join(path, name)
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as f:
                    settings.update(json.load(f))
        for name in ("vocab.json", "merges.txt"):
            if not os.path.isfile(os.path.join(path, name)):
                raise FileNotFoundError(f"{path}: {name} is missing (a CLIP tokenizer needs it)")
        kwargs: dict[str, Any] = {
            k: _token(settings[f"{k}_token"])
            for k in ("bos", "eos", "pad", "unk")
            if _token(settings.get(f"{k}_token"))
        }
        max_length = settings.get("model_max_length", 77)
        if not isinstance(max_length, int) or max_length > 4096:  # "1e30" in some configs
            max_length = 77
        return cls(
            os.path.join(path, "vocab.json"),
            os.path.join(path, "merges.txt"),
            max_length=max_length,
            **kwargs,
        )

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [N, max_length] int32, truncated [N] bool)``."""
        ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
        truncated = np.zeros(len(texts), bool)
        room = self.max_length - 2
        for i, enc in enumerate(self._tok.encode_batch(texts, add_special_tokens=False)):
            body = enc.ids
            truncated[i] = len(body) > room
            row = [self.bos_id, *body[:room], self.eos_id]
            ids[i, : len(row)] = row
        return ids, truncated
