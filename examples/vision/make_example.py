"""Build what the vision example reads: a tiny random-weight SmolVLM checkpoint and test photos.

    python examples/vision/make_example.py      # -> tiny-vlm/, photos/, gemini.jsonl beside it

``tiny-vlm/`` is an Idefics3 (SmolVLM) checkpoint in the Hugging Face layout -- safetensors, a
locally built tokenizer, SmolVLM's chat template and image processor config -- from random
weights: its captions are gibberish, it shows the machinery (reading, tiling, the vision tower,
image tokens in the prompt, the manifest). ``photos/`` holds Pillow-drawn pictures in several
sizes and formats, and three that are errors on purpose: a truncated PNG, a GIF, a text file
named ``.jpg``. ``gemini.jsonl`` holds Vertex AI batch lines (Gemini's format) asking about two
of the photos inline and one text-only question. Needs the ``test`` extra (torch, transformers)
for the checkpoint; the engine itself does not.
"""

from __future__ import annotations

import base64
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SIZES = [(320, 240), (240, 320), (128, 128), (512, 128), (64, 96), (200, 150)]


def build(here: str = HERE) -> None:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from tests.helpers import images as pics
    from tests.helpers.tiny_vlm import tiny_idefics3_dir

    model = os.path.join(here, "tiny-vlm")
    if not os.path.isfile(os.path.join(model, "config.json")):
        tiny_idefics3_dir(model)
    photos = os.path.join(here, "photos")
    os.makedirs(os.path.join(photos, "shop"), exist_ok=True)
    inline = []
    for i, (w, h) in enumerate(SIZES):
        fmt, ext = [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")][i % 3]
        data = pics.encode(pics.drawn(w, h, seed=i, text=f"item {i}"), fmt)
        with open(os.path.join(photos, "shop", f"item{i}.{ext}"), "wb") as f:
            f.write(data)
        if i < 2:
            inline.append((f"image/{fmt.lower()}", base64.b64encode(data).decode()))
    broken = {
        "truncated.png": pics.truncated(pics.encode(pics.drawn(64, 64, seed=7), "PNG")),
        "animation.gif": pics.gif(),
        "notes.jpg": b"not a picture",
    }
    for name, data in broken.items():
        with open(os.path.join(photos, name), "wb") as f:
            f.write(data)
    lines = [
        {"request": {"contents": [{"role": "user", "parts": [
            {"inlineData": {"mimeType": mime, "data": b64}},
            {"text": "What product is this? Answer in three words."}]}],
            "generationConfig": {"temperature": 0, "maxOutputTokens": 16}}}
        for mime, b64 in inline
    ] + [{"request": {
        "systemInstruction": {"parts": [{"text": "You answer briefly."}]},
        "contents": [{"role": "user", "parts": [{"text": "Name a primary colour."}]}],
        "generationConfig": {"temperature": 0, "maxOutputTokens": 8}}}]  # fmt: skip
    with open(os.path.join(here, "gemini.jsonl"), "w") as f:
        f.write("".join(json.dumps(line) + "\n" for line in lines))


if __name__ == "__main__":
    build()
    print(HERE)
