"""The host-side encoder: static shapes (compilations independent of data), padding that never
changes a vector, padding accounting, truncation reports, options and dimensions."""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest

from hyperbatch.engines.embedding import truncate_dimensions
from hyperbatch.engines.jax_encoder.batching import pack_rows, packed_batches, plan
from hyperbatch.engines.jax_encoder.config import (
    EncoderConfigError,
    EncoderOptions,
    default_buckets,
)
from hyperbatch.engines.jax_encoder.encoder import Encoder
from tests.helpers.tiny_models import CORPUS

SENTENCES = CORPUS.splitlines()


@contextlib.contextmanager
def backend_compiles():
    """Counts XLA backend compilations (of anything) inside the block."""
    seen: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _random_ids(rng, n: int, lo: int, hi: int, vocab: int) -> list[np.ndarray]:
    return [
        rng.integers(5, vocab, size=int(k)).astype(np.int32) for k in rng.integers(lo, hi + 1, n)
    ]


@pytest.mark.parametrize("batching", [{"batch_size": 4}, {"batch_tokens": 48}])
def test_compilations_depend_on_buckets_not_data(tiny_bert, batching):
    encoder = Encoder.load(tiny_bert, buckets=(8, 16, 24), **batching)
    assert encoder.buckets == (8, 16, 24, 40)  # max_seq_length 40 always closes the list
    encoder.warmup()
    assert encoder.stats.compilations == 4
    rng = np.random.default_rng(0)
    vocab = encoder.backbone.vocab_size
    with backend_compiles() as compiles:
        for n, lo, hi in [(1, 3, 3), (7, 1, 40), (33, 10, 20), (5, 39, 40), (64, 1, 8)]:
            vectors = encoder.encode(_random_ids(rng, n, lo, hi, vocab))
            assert vectors.shape == (n, encoder.dimensions)
        encoder.encode_texts(SENTENCES)
    assert compiles == []
    assert encoder.stats.compilations == 4


@pytest.mark.parametrize("attention", ["xla", "auto"])
def test_padding_never_changes_a_vector(tiny_bert, attention):
    """The same sequences alone, in a crowd of other lengths, with a different batch size and in
    a bigger bucket give the same vectors (up to float reassociation in the matmuls)."""
    tight = Encoder.load(tiny_bert, batch_size=1, buckets=(8, 16, 24, 32), attention=attention)
    loose = Encoder.load(tiny_bert, batch_size=6, buckets=(40,), attention=attention)
    rng = np.random.default_rng(1)
    vocab = tight.backbone.vocab_size
    probe = _random_ids(rng, 5, 1, 30, vocab)
    crowd = _random_ids(rng, 17, 1, 40, vocab)
    alone = np.stack([tight.encode([ids])[0] for ids in probe])
    mixed = loose.encode(crowd[:7] + probe + crowd[7:])[7 : 7 + len(probe)]
    np.testing.assert_allclose(mixed, alone, atol=2e-6, rtol=0)
    dummy_rows = loose.encode(probe[:1])  # 5 empty rows in its batch
    np.testing.assert_allclose(dummy_rows[0], alone[0], atol=2e-6, rtol=0)
    assert np.isfinite(dummy_rows).all()


def test_padding_waste_is_counted():
    """Longest first, cut into batches of 4, each padded to the smallest bucket holding its
    longest row: [16, 9, 5, 3] -> bucket 16, then [2] -> bucket 8."""
    lengths = np.array([3, 5, 9, 16, 2])
    batches = plan(lengths, lambda bucket: 4, (8, 16))
    assert [(rows.tolist(), bucket) for rows, bucket in batches] == [([3, 2, 1, 0], 16), ([4], 8)]
    # a token budget of 32: 2 rows of 16, 4 rows of 8
    batches = plan(lengths, lambda bucket: 32 // bucket, (8, 16))
    assert [(rows.tolist(), bucket) for rows, bucket in batches] == [([3, 2], 16), ([1, 0, 4], 8)]


def test_stats_count_computed_and_useful_positions(tiny_bert):
    encoder = Encoder.load(tiny_bert, batch_size=4, buckets=(8, 16))
    vocab = encoder.backbone.vocab_size
    ids = [np.arange(5, 5 + n, dtype=np.int32) % vocab for n in (3, 5, 9, 16, 2)]
    before = encoder.stats
    encoder.encode(ids)
    s = encoder.stats - before
    assert (s.batches, s.sequences) == (2, 5)
    assert s.computed_tokens == 4 * 16 + 4 * 8
    assert s.useful_tokens == 35
    assert s.padding_waste == pytest.approx(1 - 35 / 96)
    cfg_flops = encoder.backbone.flops_per_token
    assert s.useful_flops == sum(n * cfg_flops(n) for n in (3, 5, 9, 16, 2))
    assert s.busy_seconds > 0
    assert s.compilations == 2  # compiled on first use (warmup() would compile all 3)


def test_a_token_budget_sets_each_buckets_rows(tiny_bert):
    encoder = Encoder.load(tiny_bert, batch_tokens=64, buckets=(8, 16))
    assert [encoder.rows_for(b) for b in encoder.buckets] == [8, 4, 1]  # 40 -> 1 row
    ids = [np.arange(5, 5 + n, dtype=np.int32) for n in (3, 5, 9, 16, 2, 30)]
    before = encoder.stats
    encoder.encode(ids)
    s = encoder.stats - before
    # [30] in 40 (1 row), [16, 9, 5, 3] in 16 (4 rows), [2] in 8 (8 rows)
    assert (s.batches, s.computed_tokens) == (3, 40 + 4 * 16 + 8 * 8)


def test_tokenize_reports_truncation_and_counts(tiny_bert):
    encoder = Encoder.load(tiny_bert, max_seq_length=12, buckets=(12,))
    long = " ".join(SENTENCES)
    tokens = encoder.tokenize(["hello world", long, "", "the " * 10, "the " * 11])
    assert tokens.lengths.tolist()[:3] == [len(tokens.ids[0]), 12, 2]
    assert tokens.truncated.tolist() == [False, True, False, False, True]
    assert tokens.lengths.tolist()[3:] == [12, 12]  # 10 words + [CLS] [SEP] fit exactly
    cls, sep = tokens.ids[2].tolist()
    assert tokens.ids[1][0] == cls  # specials kept when truncating
    assert tokens.ids[1][-1] == sep


def test_encode_refuses_what_it_cannot_embed(tiny_bert):
    encoder = Encoder.load(tiny_bert, buckets=(16,))
    with pytest.raises(ValueError, match=r"1\.\.40"):
        encoder.encode([[]])
    with pytest.raises(ValueError, match=r"1\.\.40"):
        encoder.encode([list(range(41))])
    with pytest.raises(ValueError, match="vocabulary"):
        encoder.encode([[1, encoder.backbone.vocab_size]])
    assert encoder.encode([]).shape == (0, encoder.dimensions)


def test_options_override_the_sentence_transformers_head(tiny_bert):
    base = Encoder.load(tiny_bert, buckets=(16,))
    assert (base.head.pooling, base.head.normalize, base.max_seq_length) == ("mean", True, 40)
    cls = Encoder.load(tiny_bert, pooling="cls", normalize=False, max_seq_length=16)
    assert (cls.head.pooling, cls.head.normalize, cls.buckets) == ("cls", False, (16,))
    vectors, _ = cls.encode_texts(SENTENCES[:3])
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


def test_options_are_validated():
    with pytest.raises(EncoderConfigError, match=r"unknown encoder option.*pooling_mode"):
        EncoderOptions.from_mapping({"pooling_mode": "mean"})
    with pytest.raises(EncoderConfigError, match="pooling 'avg'") as e:
        EncoderOptions(pooling="avg", batch_size=0)
    assert "batch_size" in str(e.value)  # every problem at once
    with pytest.raises(EncoderConfigError, match="buckets"):
        EncoderOptions(buckets=(32, 16))
    with pytest.raises(EncoderConfigError, match="attention 'flash'"):
        EncoderOptions(attention="flash")
    assert EncoderOptions.from_mapping({"buckets": [8, 16]}).buckets == (8, 16)


def test_attention_kernel_choice_is_explained(tiny_bert, tiny_qwen2):
    half = Encoder.load(tiny_bert, dtype="bfloat16", buckets=(16,))
    assert half.backbone.attention == "xla"
    assert "float32 only" in half.backbone.attention_note
    with pytest.raises(EncoderConfigError, match=r"attention=cpu cannot be used: .*float32 only"):
        Encoder.load(tiny_bert, dtype="bfloat16", attention="cpu")
    with pytest.raises(EncoderConfigError, match="BERT family only"):
        Encoder.load(tiny_qwen2, attention="cpu")


def test_max_seq_length_beyond_the_positions_is_refused(tiny_bert):
    with pytest.raises(EncoderConfigError, match="exceeds the model's 64 positions"):
        Encoder.load(tiny_bert, max_seq_length=100)


def test_default_buckets():
    assert default_buckets(256) == tuple(range(16, 257, 16))
    assert default_buckets(40) == (16, 32, 40)
    assert default_buckets(512)[-3:] == (448, 480, 512)
    assert default_buckets(2048)[-3:] == (1792, 1920, 2048)


def test_truncate_dimensions_renormalises():
    v = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], np.float32)
    out = truncate_dimensions(v, 2)
    np.testing.assert_allclose(out, [[0.6, 0.8], [1.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(truncate_dimensions(v, 2, normalize=False), v[:, :2])
    with pytest.raises(ValueError, match="between 1 and 3"):
        truncate_dimensions(v, 4)


def test_pack_rows_best_fit_longest_first():
    # lengths 6, 5, 4, 3, 2 into rows of 8: 6 | 5 | 4, then 3 fills the 5's row, 2 the 6's
    rows = pack_rows(np.array([5, 3, 4, 2, 6]), 8)
    assert rows == [[4, 3], [0, 1], [2]]
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows(np.array([9]), 8)


def test_packed_batches_lay_sequences_back_to_back():
    ids = [np.arange(10, 10 + n, dtype=np.int32) for n in (5, 3, 4, 2, 6)]
    [first, second] = list(packed_batches(ids, width=8, rows=2, slots=8))
    assert first.seqs.tolist() == [4, 3, 0, 1]
    assert second.seqs.tolist() == [2]
    assert first.tokens[0].tolist() == [*range(10, 16), 10, 11]
    assert first.positions[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    assert first.segments[1].tolist() == [2] * 5 + [3] * 3
    assert first.starts[:4].tolist() == [0, 6, 8, 13]
    assert first.lengths.tolist() == [6, 2, 5, 3, 0, 0, 0, 0]
    assert second.segments[0].tolist() == [0] * 4 + [-1] * 4
    assert (second.segments[1] == -1).all()
    # a slot budget cuts a call early
    assert [b.seqs.tolist() for b in packed_batches(ids, width=8, rows=2, slots=3)] == [
        [4, 3], [0, 1, 2]
    ]  # fmt: skip


@pytest.mark.parametrize("attention", ["xla", "auto"])
def test_packed_rows_give_each_sequence_its_own_vector(tiny_bert, attention):
    """Packing is the BERT family's default: one program whatever the lengths, and each
    sequence's vector is what it gets alone in a bucket of its own."""
    packed = Encoder.load(tiny_bert, attention=attention, batch_tokens=80)
    assert packed.packed
    assert packed.buckets == (40,)
    packed.warmup()
    assert packed.stats.compilations == 1
    alone = Encoder.load(tiny_bert, batch_size=1, buckets=(8, 16, 24, 32), attention=attention)
    rng = np.random.default_rng(2)
    ids = _random_ids(rng, 23, 1, 40, packed.backbone.vocab_size)
    with backend_compiles() as compiles:
        before = packed.stats
        vectors = packed.encode(ids)
        s = packed.stats - before
    assert compiles == []
    expected = np.stack([alone.encode([x])[0] for x in ids])
    np.testing.assert_allclose(vectors, expected, atol=2e-6, rtol=0)
    assert s.useful_tokens == sum(len(x) for x in ids)
    assert s.computed_tokens == s.batches * 80
    assert s.padding_waste < 0.5 * (1 - s.useful_tokens / (len(ids) * 40))


@pytest.mark.parametrize("pooling", ["cls", "max", "mean"])
def test_packed_pooling_modes(tiny_bert, pooling):
    packed = Encoder.load(tiny_bert, pooling=pooling, normalize=False)
    bucketed = Encoder.load(tiny_bert, pooling=pooling, normalize=False, buckets=(16,))
    vectors, _ = packed.encode_texts(SENTENCES[:9])
    expected, _ = bucketed.encode_texts(SENTENCES[:9])
    np.testing.assert_allclose(vectors, expected, atol=2e-6, rtol=0)


def test_packing_options(tiny_bert, tiny_qwen2):
    assert not Encoder.load(tiny_qwen2).packed  # decoders: buckets
    with pytest.raises(EncoderConfigError, match="packing serves the BERT family"):
        Encoder.load(tiny_qwen2, packing=True)
    with pytest.raises(EncoderConfigError, match="give one or the other"):
        EncoderOptions(packing=True, buckets=(16,))
    assert not Encoder.load(tiny_bert, packing=False).packed
