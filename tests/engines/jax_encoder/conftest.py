"""Tiny embedding checkpoints shared by the encoder tests (built once per session)."""

from __future__ import annotations

import pytest

from tests.optional import require


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """BERT, mean pooling, normalised, max_seq_length 40."""
    require("transformers", "the tiny checkpoints are written by transformers")
    from tests.engines.jax_encoder.tiny_encoders import tiny_bert_dir

    return tiny_bert_dir(str(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def tiny_bert_cls(tmp_path_factory) -> str:
    """BERT with tanh-approximated GELU, CLS pooling, not normalised."""
    require("transformers", "the tiny checkpoints are written by transformers")
    from tests.engines.jax_encoder.tiny_encoders import tiny_bert_dir

    return tiny_bert_dir(
        str(tmp_path_factory.mktemp("tiny-bert-cls")),
        pooling="cls",
        normalize=False,
        hidden_act="gelu_pytorch_tanh",
        seed=1,
    )


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> str:
    require("transformers", "the tiny checkpoints are written by transformers")
    from tests.engines.jax_encoder.tiny_encoders import tiny_bert_dir

    return tiny_bert_dir(str(tmp_path_factory.mktemp("tiny-roberta")), model_type="roberta", seed=2)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    """The shared tiny Qwen2 as a last-token, normalised embedder (max_seq_length 48)."""
    require("transformers", "the tiny checkpoints are written by transformers")
    from tests.engines.jax_encoder.tiny_encoders import tiny_qwen2_embedder_dir

    return tiny_qwen2_embedder_dir(str(tmp_path_factory.mktemp("tiny-qwen2")))
