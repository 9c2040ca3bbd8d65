"""Tiny random-weight embedding models written as sentence-transformers directories.

``tiny_bert_dir(path, **options)`` writes a BERT (or RoBERTa-style, ``model_type="roberta"``)
checkpoint with a WordPiece ``tokenizer.json`` trained here on a built-in English corpus;
``tiny_qwen2_embedder_dir(path)`` turns the shared tiny Qwen2 checkpoint into a last-token
embedder. Both add ``modules.json``, ``1_Pooling/config.json`` and ``sentence_bert_config.json``
so sentence-transformers loads them offline as the reference.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from tests.helpers.tiny_models import CORPUS, tiny_llama_dir

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@functools.lru_cache(maxsize=2)
def wordpiece_json(vocab_size: int = 400) -> str:
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False
    )
    tok.train_from_iterator(CORPUS.splitlines() * 4, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    # A tokenizer.json may carry its own padding/truncation (all-MiniLM-L6-v2's does): the
    # encoder must override them, so the tiny one carries them too.
    tok.enable_truncation(16)
    tok.enable_padding(length=24, pad_id=0, pad_token="[PAD]")
    return tok.to_str()


def write_sentence_config(
    path: str, pooling: str, normalize: bool, max_seq_length: int, dims: int
) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    legacy = {  # the legacy key layout most published models still use
        f"pooling_mode_{k}": pooling == v
        for k, v in (
            ("cls_token", "cls"),
            ("mean_tokens", "mean"),
            ("max_tokens", "max"),
            ("mean_sqrt_len_tokens", "-"),
            ("lasttoken", "lasttoken"),
        )
    }
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    with open(os.path.join(path, "modules.json"), "w") as f:
        json.dump(modules, f)
    with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
        json.dump({"word_embedding_dimension": dims, **legacy}, f)
    with open(os.path.join(path, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": max_seq_length, "do_lower_case": False}, f)


def tiny_bert_dir(
    path: str,
    *,
    model_type: str = "bert",
    pooling: str = "mean",
    normalize: bool = True,
    max_seq_length: int = 40,
    seed: int = 0,
    **config: Any,
) -> str:
    import torch
    from transformers import AutoModel, BertConfig, RobertaConfig

    tok_json = wordpiece_json()
    vocab = len(json.loads(tok_json)["model"]["vocab"])
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        initializer_range=0.2,
        hidden_act="gelu",
        pad_token_id=0,
    )
    common.update(config)
    if model_type == "bert":
        cfg = BertConfig(**common, type_vocab_size=2)
    else:
        cfg = RobertaConfig(**{**common, "pad_token_id": 1}, type_vocab_size=1)
        cfg.max_position_embeddings += 2  # positions start at pad_token_id + 1
    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg, dtype=torch.float32, add_pooling_layer=False).eval()
    with torch.no_grad():  # norms start at 1/0 and biases at 0: randomise them so they are tested
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write(tok_json)
    tok_config = {
        "tokenizer_class": "BertTokenizer",
        "model_max_length": 512,
        "do_lower_case": True,
        **{
            k: v
            for k, v in zip(
                ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"),
                SPECIALS,
                strict=True,
            )
        },
    }
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f)
    write_sentence_config(path, pooling, normalize, max_seq_length, cfg.hidden_size)
    return path


def tiny_qwen2_embedder_dir(path: str, max_seq_length: int = 48) -> str:
    tiny_llama_dir(path, "qwen2")
    with open(os.path.join(path, "config.json")) as f:
        hidden = json.load(f)["hidden_size"]
    write_sentence_config(path, "lasttoken", True, max_seq_length, hidden)
    return path
