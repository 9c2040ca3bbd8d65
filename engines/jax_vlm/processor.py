"""Idefics3's image preprocessing and prompt expansion, as transformers' processor does them.

An image (RGB ``uint8 [H, W, 3]``) is resized so its longest edge is ``longest_edge`` (Pillow,
LANCZOS, the other side keeping the aspect ratio and rounded to even), then up to whole
multiples of the tile side, cut into ``rows x cols`` tiles (row-major) plus the whole image
resized to one tile (the "global" tile); an image no bigger than a tile is that one tile. Each
tile is rescaled to [0, 1] and normalised with the processor's mean and std: float32 ``[3, S,
S]``. Every tile is the same shape, so the vision tower runs on fixed batches of tiles.

In the prompt, the chat template writes ``<image>`` once per image; it is expanded to each
tile's tokens (``<fake_token_around_image><row_r_col_c>`` + ``image_seq_len`` x ``<image>``, a
newline after each row, then the global tile's ``<global-img>`` block), exactly as
``Idefics3Processor`` writes it -- so the token count of a prompt follows from the image sizes
alone (``tiles_of``), before anything is decoded.
"""

from __future__ import annotations

import math

import numpy as np

from hyperbatch.engines.jax_vlm.config import ProcessorConfig

MAX_IMAGE_SIZE = 4096  # the processor's absolute bound on either side
FAKE = "<fake_token_around_image>"
IMAGE = "<image>"
GLOBAL = "<global-img>"


def _rescale_to_max_len(height: int, width: int, max_len: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect)
        if height % 2 != 0:
            height += 1
    else:
        height = max_len
        width = int(height * aspect)
        if width % 2 != 0:
            width += 1
    return max(height, 1), max(width, 1)


def _scale_below(height: int, width: int, max_len: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect)
    return max(height, 1), max(width, 1)


def _first_resize(height: int, width: int, cfg: ProcessorConfig) -> tuple[int, int]:
    h, w = _rescale_to_max_len(height, width, cfg.longest_edge)
    return _scale_below(h, w, MAX_IMAGE_SIZE)


def _tiled_size(height: int, width: int, tile: int) -> tuple[int, int]:
    """``resize_for_vision_encoder``: both sides up to whole tiles (the aspect ratio kept)."""
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = int(width / aspect)
        height = math.ceil(height / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = int(height * aspect)
        width = math.ceil(width / tile) * tile
    return height, width


def tiles_of(width: int, height: int, cfg: ProcessorConfig) -> tuple[int, int]:
    """(rows, cols) of an image of this size: (0, 0) when it is one tile (no split)."""
    if not cfg.do_image_splitting:
        return 0, 0
    h, w = _first_resize(height, width, cfg)
    h, w = _tiled_size(h, w, cfg.tile)
    if h > cfg.tile or w > cfg.tile:
        return (h - cfg.tile) // cfg.tile + 1, (w - cfg.tile) // cfg.tile + 1
    return 0, 0


def n_tiles(rows: int, cols: int) -> int:
    return rows * cols + 1 if rows or cols else 1


def prompt_text(rows: int, cols: int, cfg: ProcessorConfig) -> str:
    """What one ``<image>`` of the rendered chat becomes (``Idefics3Processor``)."""
    seq = IMAGE * cfg.image_seq_len
    global_block = f"{FAKE}{GLOBAL}{seq}{FAKE}"
    if rows == 0 and cols == 0:
        return global_block
    out = ""
    for r in range(rows):
        for c in range(cols):
            out += f"{FAKE}<row_{r + 1}_col_{c + 1}>{seq}"
        out += "\n"
    return out + "\n" + global_block


def _resize(image: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(image)
    return np.asarray(pil.resize((width, height), resample=resample))


def preprocess(image: np.ndarray, cfg: ProcessorConfig) -> tuple[np.ndarray, int, int]:
    """An RGB uint8 ``[H, W, 3]`` image -> (tiles float32 ``[N, 3, S, S]``, rows, cols)."""
    height, width = image.shape[:2]
    h, w = _first_resize(height, width, cfg)
    image = _resize(image, h, w, cfg.resample)
    tile = cfg.tile
    if cfg.do_image_splitting:
        h, w = _tiled_size(h, w, tile)
        image = _resize(image, h, w, cfg.resample)
        if h > tile or w > tile:
            rows, cols = (h - tile) // tile + 1, (w - tile) // tile + 1
            frames = [
                image[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
                for r in range(rows)
                for c in range(cols)
            ]
            frames.append(_resize(image, tile, tile, cfg.resample))
        else:
            rows = cols = 0
            frames = [image]
    else:
        rows = cols = 0
        frames = [_resize(image, tile, tile, cfg.resample)]
    stack = np.stack(frames).transpose(0, 3, 1, 2)  # [N, 3, S, S]
    x = (stack.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    mean = np.asarray(cfg.image_mean, np.float32)[None, :, None, None]
    std = np.asarray(cfg.image_std, np.float32)[None, :, None, None]
    return ((x - mean) / std).astype(np.float32), rows, cols
