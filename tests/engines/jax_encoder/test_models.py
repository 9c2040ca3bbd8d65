"""The encoder equals transformers (token states) and sentence-transformers (vectors) on tiny
random checkpoints: BERT (exact and tanh GELU), RoBERTa-style positions, a Qwen2 embedder."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from hyperbatch.engines.jax_encoder import backbones, cpu_attention
from hyperbatch.engines.jax_encoder.encoder import Encoder
from tests.helpers.tiny_models import CORPUS
from tests.optional import require, unavailable

TEXTS = [
    *CORPUS.splitlines()[:12],
    "",
    "   spaced    out   ",
    "Ünïcödé ÀCCENTS and 中文 characters, emoji 🙂 and tabs\tand\nnewlines",
    " ".join(CORPUS.split()[:120]),  # longer than every max_seq_length here: truncated
]


def _padded(lengths: list[int], vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), max(lengths)), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(5, vocab, size=n)
    return tokens, np.asarray(lengths, np.int32)


def _reference_states(model_dir: str, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    torch = require("torch", "the reference implementation runs on torch")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    mask = (np.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask),
        )
    return out.last_hidden_state.numpy()


@pytest.fixture(params=["xla", "cpu"])
def attention(request) -> str:
    """Both attention implementations: XLA's (every platform) and the CPU kernel."""
    if request.param == "cpu":
        try:
            cpu_attention.load()
        except cpu_attention.KernelUnavailable as e:
            unavailable("the CPU encoder-attention kernel", str(e))
    return request.param


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_bert_cls", "tiny_roberta"])
def test_bert_hidden_states_match_transformers(request, fixture, attention):
    model_dir = request.getfixturevalue(fixture)
    backbone = backbones.load(model_dir, "float32", attention)
    assert backbone.attention == attention
    _check_hidden_states(model_dir, backbone)


def test_decoder_hidden_states_match_transformers(tiny_qwen2):
    backbone = backbones.load(tiny_qwen2, "float32")
    assert backbone.decoder
    _check_hidden_states(tiny_qwen2, backbone)


def _check_hidden_states(model_dir: str, backbone: backbones.Backbone) -> None:
    tokens, lengths = _padded([37, 5, 20, 1, 30], backbone.vocab_size)
    ours = np.asarray(jax.jit(backbone.hidden)(backbone.params, tokens, lengths))
    expected = _reference_states(model_dir, tokens, lengths)
    real = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
    assert ours.shape == expected.shape
    diff = np.abs(ours - expected)[real].max()
    print(f"{model_dir}: hidden states max abs diff {diff:.2e}")
    assert diff <= 1e-4, f"max abs diff {diff}"
    assert np.abs(expected[real]).max() > 0.5  # not a comparison of near-zero numbers


def _sentence_transformer(model_dir: str):
    require("sentence_transformers", "sentence-transformers is the reference for the vectors")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_dir, device="cpu")


@pytest.mark.parametrize(
    ("fixture", "attention"),
    [("tiny_bert", "xla"), ("tiny_bert", "cpu"), ("tiny_bert_cls", "cpu"), ("tiny_qwen2", "xla")],
    indirect=["attention"],
)
def test_vectors_match_sentence_transformers(request, fixture, attention):
    model_dir = request.getfixturevalue(fixture)
    reference = _sentence_transformer(model_dir)
    encoder = Encoder.load(model_dir, batch_size=4, buckets=(8, 16), attention=attention)
    texts = [t for t in TEXTS if t] if encoder.backbone.decoder else TEXTS
    features = reference.tokenize(texts)
    expected_lengths = features["attention_mask"].sum(1).numpy()
    expected = reference.encode(texts, convert_to_numpy=True)

    vectors, tokens = encoder.encode_texts(texts)
    np.testing.assert_array_equal(tokens.lengths, expected_lengths)
    ref_ids = features["input_ids"].numpy()
    ref_mask = features["attention_mask"].numpy().astype(bool)  # either padding side
    for i, ids in enumerate(tokens.ids):
        np.testing.assert_array_equal(ids, ref_ids[i][ref_mask[i]])
    assert tokens.truncated.tolist() == [n == encoder.max_seq_length for n in expected_lengths]
    assert tokens.truncated[-1]
    assert vectors.shape == expected.shape == (len(texts), encoder.dimensions)
    diff = np.abs(vectors - expected).max()
    print(f"{model_dir} ({attention}): vectors max abs diff {diff:.2e}")
    assert diff <= 1e-5
    assert np.abs(expected).max() > 0.05


def test_bfloat16_stays_close_to_float32(tiny_bert):
    texts = [t for t in TEXTS if t]
    full, _ = Encoder.load(tiny_bert, batch_size=8, buckets=(16,)).encode_texts(texts)
    half, _ = Encoder.load(tiny_bert, dtype="bfloat16", batch_size=8, buckets=(16,)).encode_texts(
        texts
    )
    cosine = np.sum(full * half, axis=1)  # both normalised
    assert cosine.min() >= 0.99, cosine
