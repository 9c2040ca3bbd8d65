"""Build the tiny random-weight Stable Diffusion checkpoint the CPU image example uses.

    python examples/images/make_tiny_model.py                 # -> examples/images/tiny-sd/
    python examples/images/make_tiny_model.py --out /tmp/m --preset tiny-sdxl

Writes a diffusers-layout folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/ with a
local CLIP vocab.json/merges.txt, scheduler/) from random weights: the model paints noise, it
only shows the machinery. Needs the ``test`` extra (diffusers, transformers, torch).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    from hyperbatch.engines.jax_diffusion import tiny

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(HERE, "tiny-sd"), help="checkpoint folder")
    parser.add_argument("--preset", default="tiny-sd", choices=tiny.PRESETS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if os.path.exists(os.path.join(args.out, "model_index.json")):
        print(f"{args.out} already holds a checkpoint; delete it to rebuild", file=sys.stderr)
        return
    tiny.build(args.out, args.preset, seed=args.seed)
    print(args.out)


if __name__ == "__main__":
    main()
