"""Loading: sharded HF safetensors, chat templates as transformers renders them, GGUF (tiny and
SmolLM2), and gs:// models through the GCS emulator."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")
require("torch", "the reference implementation (transformers on PyTorch)")
require("transformers", "the reference implementation")

import jax
import jax.numpy as jnp
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hyperbatch import storage
from hyperbatch.engines import models
from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.jax_llm import model, weights
from hyperbatch.engines.jax_llm.engine import JaxLLMEngine
from hyperbatch.engines.jax_llm.tokenizer import ChatTokenizer
from hyperbatch.schemas.records import ErrorCode, RequestError
from tests.engines.conformance import PROMPTS, chat, completion
from tests.engines.jax_llm.test_engine import make_engine
from tests.helpers.tiny_models import VARIANTS, tiny_gguf

CHATS = [
    [{"role": "user", "content": PROMPTS[0]}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": PROMPTS[4]}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": PROMPTS[1]},
    ],
]


def test_sharded_safetensors_are_all_read(tiny_dirs, tmp_path):
    d = tiny_dirs["llama"]
    shards = [f for f in os.listdir(d) if f.endswith(".safetensors")]
    assert len(shards) > 1
    assert os.path.isfile(os.path.join(d, "model.safetensors.index.json"))
    cfg, tensors = weights.load_hf(d)
    assert len([k for k in tensors if k.startswith("layers.")]) == 9 * cfg.num_layers
    # a shard named by the index but missing is a clear error
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in os.listdir(d):
        if f != shards[0]:
            os.symlink(os.path.join(d, f), broken / f)
    with pytest.raises(weights.CheckpointError, match="missing"):
        weights.load_hf(str(broken))


@pytest.mark.parametrize("variant", VARIANTS)
def test_chat_template_renders_like_transformers(tiny_dirs, variant):
    ours = ChatTokenizer.from_hf_dir(tiny_dirs[variant])
    theirs = AutoTokenizer.from_pretrained(tiny_dirs[variant])
    for messages in CHATS:
        expected = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert ours.render(messages) == expected
        ids = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert ours.encode_chat(messages) == list(ids)
        prefix = ours.chat_prefix(messages, ours.encode_chat(messages))
        assert 0 < prefix < len(ids)
    assert ours.encode_prompt(PROMPTS[2]) == theirs(PROMPTS[2])["input_ids"]
    assert 10 <= len(ours.encode_chat(CHATS[0])) <= 80  # plausible lengths, not bytes


def test_template_raise_exception_is_a_template_error(tiny_dirs):
    tok = ChatTokenizer.from_hf_dir(tiny_dirs["llama"])
    bad = [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]
    with pytest.raises(RequestError) as e:
        tok.encode_chat(bad)
    assert e.value.code == ErrorCode.TEMPLATE_ERROR
    assert "system message must come first" in e.value.message


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
def test_tiny_gguf_equals_the_hf_checkpoint(tiny_dirs, tmp_path, quant):
    """llama.cpp permutes Q/K rows for its RoPE; the loader must undo it exactly."""
    d = tiny_dirs["smollm2"]
    path = tiny_gguf(d, str(tmp_path / f"tiny-{quant}.gguf"), quant=quant)
    cfg_g, tensors_g, meta = weights.load_gguf(path)
    cfg_h, tensors_h = weights.load_hf(d)
    assert cfg_g.tie_word_embeddings
    assert cfg_g.num_kv_heads == cfg_h.num_kv_heads
    tokens = jnp.asarray(np.random.RandomState(4).randint(0, cfg_h.vocab_size, size=(2, 30)))
    lg = model.forward_logits(
        jax.tree.map(jnp.asarray, weights.to_params(cfg_g, tensors_g, np.float32)),
        tokens,
        cfg=cfg_g,
    )
    lh = model.forward_logits(
        jax.tree.map(jnp.asarray, weights.to_params(cfg_h, tensors_h, np.float32)),
        tokens,
        cfg=cfg_h,
    )
    diff = float(np.abs(np.asarray(lg) - np.asarray(lh)).max())
    assert diff <= (1e-4 if quant == "F32" else 0.05 * float(np.abs(np.asarray(lh)).max()))
    ours, hf = ChatTokenizer.from_gguf(meta), ChatTokenizer.from_hf_dir(d)
    for messages in CHATS:
        assert ours.encode_chat(messages) == hf.encode_chat(messages)
    assert ours.eos_id == hf.eos_id


@pytest.fixture(scope="module")
def smollm2_gguf() -> str:
    return models.resolve_model("smollm2-135m-instruct").path


def test_our_gguf_reader_reads_what_gguf_reads(smollm2_gguf):
    """``models.open_gguf`` (gguf's reader over a plain view of the map) gives the same fields
    and the same tensor bytes as ``gguf.GGUFReader``."""
    from gguf import GGUFReader

    theirs, ours = GGUFReader(smollm2_gguf), models.open_gguf(smollm2_gguf)
    assert weights.gguf_metadata(ours) == weights.gguf_metadata(theirs)
    assert len(ours.tensors) == len(theirs.tensors) > 0
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.name, a.tensor_type, a.data_offset) == (b.name, b.tensor_type, b.data_offset)
        assert type(a.data) is np.ndarray
        np.testing.assert_array_equal(a.data, b.data)


def test_smollm2_gguf_metadata_and_tokenizer(smollm2_gguf):
    from gguf import GGUFReader

    meta = weights.gguf_metadata(GGUFReader(smollm2_gguf))
    tok = ChatTokenizer.from_gguf(meta)
    theirs = AutoTokenizer.from_pretrained(
        os.path.dirname(smollm2_gguf), gguf_file=os.path.basename(smollm2_gguf)
    )
    for messages in CHATS:
        expected = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert tok.render(messages) == expected
        assert tok.encode_chat(messages) == theirs.encode(expected, add_special_tokens=False)
    # llama.cpp's "smollm" pre-tokenizer splits digits one by one, as SmolLM2's own tokenizer does
    assert tok.decode(tok.encode_prompt("1999")) == "1999"
    assert len(tok.encode_prompt("1999")) == 4
    assert tok.tokenizer.id_to_token(tok.eos_id) == "<|im_end|>"


def test_engine_loads_a_gs_model_into_the_cache_once(gcs_bucket, tiny_dirs, tmp_path, monkeypatch):
    d = tiny_dirs["smollm2"]
    url = f"{gcs_bucket}/models/tiny"
    for name in os.listdir(d):
        storage.upload_file(os.path.join(d, name), f"{url}/{name}")
    calls: list[str] = []
    real = storage.download
    monkeypatch.setattr(storage, "download", lambda src, dst: (calls.append(src), real(src, dst)))
    cache = str(tmp_path / "cache")
    remote = JaxLLMEngine(
        EngineConfig(
            model=url,
            batch_size=4,
            max_seq_len=256,
            cache_dir=cache,
            options={
                "prefill_buckets": [16, 32, 64, 128],
                "decode_steps": 4,
                "attention_block": 32,
            },
        )
    )
    remote.warmup()
    assert len(calls) == len(os.listdir(d))
    local = make_engine(d)
    reqs = [chat("a", PROMPTS[0], max_tokens=6, ignore_eos=True), completion("b", "Hello")]
    assert [r.token_ids for r in remote.generate(reqs)] == [
        r.token_ids for r in local.generate(reqs)
    ]
    models.resolve_model(url, cache_dir=cache)  # verified against generations: no re-download
    assert len(calls) == len(os.listdir(d))


def test_unsupported_architecture_is_refused(tiny_dirs, tmp_path):
    import json
    import shutil

    d = tmp_path / "gpt2ish"
    shutil.copytree(tiny_dirs["llama"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not supported by the jax engine"):
        JaxLLMEngine(EngineConfig(model=str(d)))


def test_reference_transformers_loads_the_tiny_gguf(tiny_dirs, tmp_path):
    """Sanity check of the helper itself: transformers' GGUF loader agrees with our GGUF file."""
    d = tiny_dirs["smollm2"]
    path = tiny_gguf(d, str(tmp_path / "t.gguf"))
    ref = AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="t.gguf", dtype=torch.float32
    ).eval()
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    x = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(ref(x).logits, hf(x).logits, atol=1e-4)
    assert os.path.isfile(path)
