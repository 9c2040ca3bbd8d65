"""Tensor + data parallelism on a simulated 8-device CPU mesh gives the single-device outputs
(guided steps included: token masks and log-probabilities).

XLA reads ``--xla_force_host_platform_device_count`` once, before jax initialises, so the check
runs in a fresh subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    from hyperbatch.engines.base import EngineConfig
    from hyperbatch.engines.jax_llm.engine import JaxLLMEngine
    from tests.engines.conformance import PROMPTS, chat, completion

    model_dir = sys.argv[1]
    assert len(jax.devices()) == 8, jax.devices()
    options = {"prefill_buckets": [16, 32, 64, 128], "decode_steps": 4, "attention_block": 32}
    reqs = [chat(f"g{i}", p, max_tokens=10, ignore_eos=True) for i, p in enumerate(PROMPTS)]
    reqs += [chat("s", PROMPTS[1], temperature=1.0, top_p=0.9, seed=3, max_tokens=10,
                  ignore_eos=True), completion("c", PROMPTS[2], max_tokens=10, ignore_eos=True)]
    # the guided programs (token masks, log-probabilities) on the mesh too
    guided = [chat("r", PROMPTS[0], guided={"regex": "[0-9]{3}-[a-z]{2}"}, temperature=1.0,
                   seed=5), chat("lp", PROMPTS[3], logprobs=2, max_tokens=6, ignore_eos=True)]
    out = {}
    for n in (8, 1):
        engine = JaxLLMEngine(EngineConfig(model=model_dir, batch_size=4, max_seq_len=256,
                                           accelerator_count=n, options=options))
        engine.warmup()
        out[n] = {
            "tokens": [list(r.token_ids) for r in engine.generate(reqs)],
            "guided": [(r.text, [t.logprob for t in r.logprobs or ()])
                       for r in engine.generate(guided)],
            "mesh": dict(engine.mesh.shape) if engine.mesh is not None else None,
            "wqkv": str(getattr(engine.programs.params["layers"][0]["wqkv"].sharding, "spec", None)),
            "cache": str(getattr(engine.programs.cache.k[0].sharding, "spec", None)),
            "devices": len(engine.programs.params["layers"][0]["wqkv"].sharding.device_set),
        }
    print(json.dumps(out))
    """
)


def test_eight_device_mesh_matches_one_device(tmp_path):
    from tests.helpers.tiny_models import tiny_llama_dir

    model_dir = tiny_llama_dir(
        str(tmp_path / "tp"), "llama", num_attention_heads=8, num_key_value_heads=4
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    env = {
        **{k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"},  # it wins over:
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "HYPERBATCH_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": root,
    }
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, model_dir],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    multi, single = out["8"], out["1"]
    assert multi["mesh"] == {"data": 2, "model": 4}
    assert multi["devices"] == 8
    assert "model" in multi["wqkv"]
    assert "data" in multi["cache"]
    assert "model" in multi["cache"]
    assert single["mesh"] is None
    assert multi["tokens"] == single["tokens"]
    assert all(len(t) == 10 for t in single["tokens"])
    (regex, _), (_, logprobs) = multi["guided"]
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", regex)
    assert [g[0] for g in multi["guided"]] == [g[0] for g in single["guided"]]
    assert len(logprobs) == 6
    np.testing.assert_allclose(logprobs, single["guided"][1][1], atol=1e-4)
