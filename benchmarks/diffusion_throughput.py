"""Images/s of our JAX diffusion engine vs diffusers' PyTorch pipeline, same run, same weights.

The model is SD-1.5's architecture with a fifth of the channels (``tiny.build(..., "sd15-mini")``:
UNet (64, 128, 256, 256) with SD-1.5's block types, 2 layers per block, 8 heads; VAE decoder
(32, 64, 128, 128); a 4-layer CLIP text encoder of width 256), random weights, float32. Both
legs get the same 8 prompts, the same negative prompt, the same initial latents, Euler discrete
(from the checkpoint's scheduler config, as ``EulerDiscreteScheduler.from_config`` does),
guidance 7.5, 20 steps, 256x256, one batch of 8, and decode to uint8 images.

The machine's speed drifts with whatever else runs on it, so the legs alternate in rounds: each
round runs diffusers, then our engine on one XLA device (``jax``), then our engine with one XLA
CPU device per core and the batch split over them (``jax-cores``, ``use_cpu_cores()``: what the
engine does on ``accelerator: cpu`` unless ``engine_options.cpu_cores`` is off), each in a
fresh subprocess (load, one full warm-up call -- our engine compiles there -- then one timed
call), and takes the ratios within the round; the report gives every round and the medians. The parent also checks both legs made the same images
(PSNR on the uint8 images). ``--cores N`` pins both legs to N cores (``sched_setaffinity``, and
``torch.set_num_threads(N)``) for a per-core comparison.

    python benchmarks/diffusion_throughput.py                # 256x256, 20 steps, batch 8, 1 round
    python benchmarks/diffusion_throughput.py --rounds 3 --cores 1
    python benchmarks/diffusion_throughput.py --quick        # 128x128, 4 steps, batch 2 (smoke run)

Needs the ``test`` extra (diffusers, torch) for the reference and to build the checkpoint.
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

PROMPTS = [
    "a photo of a cat sitting on a red sofa",
    "an astronaut riding a horse on the moon, digital art",
    "a watercolor painting of a lighthouse by the sea at sunset",
    "portrait of an old man with a beard, oil painting",
    "a futuristic city skyline at night with neon lights",
    "a bowl of fruit on a wooden table, still life",
    "a mountain landscape with a lake and pine trees",
    "a cute robot painting the sky blue",
]
NEGATIVE = "blurry, low quality"
LEGS = ("diffusers", "jax", "jax-cores")
LOAD_BEFORE = "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _latents(batch: int, size: int) -> Any:
    import numpy as np

    return (
        np.random.default_rng(0)
        .standard_normal((batch, 4, size // 8, size // 8))
        .astype(np.float32)
    )


def _prompts(batch: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(batch)]


def leg_diffusers(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    pipe = StableDiffusionPipeline.from_pretrained(args.model_dir, torch_dtype=torch.float32)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.from_numpy(_latents(args.batch, args.size))

    def run() -> np.ndarray:
        with torch.inference_mode():
            out = pipe(
                _prompts(args.batch),
                negative_prompt=[NEGATIVE] * args.batch,
                num_inference_steps=args.steps,
                guidance_scale=7.5,
                latents=latents,
                height=args.size,
                width=args.size,
                output_type="np",
            ).images
        return (out * 255).round().astype("uint8")

    return _timed(run, args)


def leg_jax(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from hyperbatch.engines.jax_diffusion.generation import DiffusionModel, use_cpu_cores

    if args.leg == "jax-cores":
        use_cpu_cores()  # one XLA device per core: the batch is split over the cores

    model = DiffusionModel.load(
        args.model_dir,
        batch_size=args.batch,
        resolutions=((args.size, args.size),),
        max_steps=max(args.steps, 1),
    )
    t0 = time.perf_counter()
    model.warmup()
    log(f"jax: compiled in {time.perf_counter() - t0:.1f}s")
    latents = _latents(args.batch, args.size)

    def run() -> np.ndarray:
        return model.generate(
            _prompts(args.batch),
            [NEGATIVE] * args.batch,
            steps=args.steps,
            guidance=7.5,
            scheduler="euler",
            latents=latents,
            width=args.size,
            height=args.size,
        ).images

    result = _timed(run, args)
    result["compilations"] = model.compilations
    result["devices"] = 1 if model.mesh is None else model.mesh.size
    return result


def _timed(run: Any, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    t0 = time.perf_counter()
    run()  # warm-up
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    images = run()
    elapsed = time.perf_counter() - t0
    np.save(args.images_out, images)
    return {"warmup_s": warm, "time_s": elapsed}


def _psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="128x128, 4 steps, batch 2")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (diffusers, ours)")
    parser.add_argument("--cores", type=int, help="pin both legs to this many cores")
    parser.add_argument("--model-dir", help="reuse a checkpoint built by an earlier run")
    parser.add_argument("--only", choices=LEGS, help="run one leg")
    parser.add_argument("--leg", choices=LEGS, help=argparse.SUPPRESS)
    parser.add_argument("--images-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.size, args.steps, args.batch = 128, 4, 2

    if args.leg:  # inside a subprocess
        if args.cores:
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
        result = leg_diffusers(args) if args.leg == "diffusers" else leg_jax(args)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="diffusion-bench-") as tmp:
        if not args.model_dir:
            from hyperbatch.engines.jax_diffusion import tiny

            args.model_dir = os.path.join(tmp, "sd15-mini")
            log(f"building the sd15-mini checkpoint in {args.model_dir}")
            tiny.build(args.model_dir, "sd15-mini", seed=0)
        legs = [leg for leg in LEGS if not args.only or leg == args.only]
        rounds: list[dict[str, dict[str, Any]]] = []
        psnrs = []
        for r in range(args.rounds):
            results: dict[str, dict[str, Any]] = {}
            images: dict[str, Any] = {}
            for leg in legs:
                log(f"round {r + 1}/{args.rounds}: {leg}")
                results[leg], images[leg] = _run_leg(leg, args, tmp)
                log(f"  {leg}: {args.batch / results[leg]['time_s']:.3f} images/s")
            rounds.append(results)
            for leg in legs:
                if leg != "diffusers" and "diffusers" in images:
                    psnrs.append(_psnr(images[leg], images["diffusers"]))
                    diff = int(abs(images[leg].astype(int) - images["diffusers"]).max())
                    log(
                        f"  {leg} vs diffusers: PSNR {psnrs[-1]:.1f} dB on uint8, max |diff| {diff}"
                    )

    n = args.batch
    cores = args.cores or len(os.sched_getaffinity(0))
    print(
        f"sd15-mini, {args.size}x{args.size}, {args.steps} Euler steps, batch {n}, float32, "
        f"{cores} of {os.cpu_count()} CPUs, load average before: {LOAD_BEFORE}"
    )
    for i, results in enumerate(rounds):
        line = "   ".join(
            f"{leg} {n / res['time_s']:.3f} images/s ({res['time_s']:.1f}s)"
            for leg, res in results.items()
        )
        print(f"  round {i + 1}: {line}")
    if "diffusers" in legs:
        for leg in legs[1:]:
            ratios = sorted(r["diffusers"]["time_s"] / r[leg]["time_s"] for r in rounds)
            print(
                f"  {leg:9s} median speed-up {ratios[len(ratios) // 2]:.2f}x diffusers "
                f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}; goal >= 1.5x)"
            )
        if psnrs:
            print(f"  same images: PSNR >= {min(psnrs):.1f} dB on uint8 against diffusers'")
    print(json.dumps({"config": vars(args) | {"model_dir": None}, "rounds": rounds}))


def _run_leg(leg: str, args: argparse.Namespace, tmp: str) -> tuple[dict[str, Any], Any]:
    import numpy as np

    out = os.path.join(tmp, f"{leg}.npy")
    cmd = [sys.executable, os.path.abspath(__file__), "--leg", leg, "--images-out", out]
    for flag in ("model_dir", "size", "steps", "batch", "cores"):
        value = getattr(args, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        log(proc.stderr[-4000:])
        raise SystemExit(f"the {leg} leg failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out)


if __name__ == "__main__":
    main()
