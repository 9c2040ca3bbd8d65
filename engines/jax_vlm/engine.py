"""JaxVLMEngine: Idefics3 / SmolVLM on our JAX LLM engine -- images in, text out.

The text side *is* the JAX LLM engine (``engines/jax_llm``): the same Llama-family model code,
weights layout, tokenizer and chat template, slot scheduler, prefix store, sampling, guided
decoding and CPU attention kernel; this package adds what a vision-language model needs:

* **Prompts.** Messages are rendered with the model's chat template (image parts as
  ``<image>``), then each ``<image>`` is expanded to its tiles' tokens (``processor``); the
  count follows from the image's size alone, so the pipeline can check prompt lengths before
  anything is decoded. Image tokens are prompt tokens; ``usage.image_tokens`` says how many.
* **The vision stage.** Between decode calls the scheduler takes new requests; before it
  prepares them, their images are decoded (``ImageInput.pixels``: EXIF-rotated RGB),
  preprocessed (``processor``: resize, tiles, normalisation) and run through the vision tower
  and connector (``vision``) in batches of exactly ``vision_batch`` tiles (the last one padded:
  one compiled program). An image that does not decode is that request's ``invalid_image``
  error. The features wait on the host until the request's prompt is prefilled.
* **Injection at prefill.** The text model's first step is the embedding lookup
  ``embed[tokens]``: for a prefill call the programs (``VisionPrograms``) hand the model a table
  holding exactly that call's input embeddings -- the text tokens' rows of ``embed``, and the
  image features where the prompt has ``<image>`` -- and the tokens ``0..M-1``. So the prefill
  programs are the text engine's own (one more compilation for the table's shape), decode is
  untouched, and nothing is copied per request on the device but the call's embeddings.
* **Prefix reuse** stops at the first image: two prompts with different pictures have the same
  placeholder tokens, so a prefix holding an image is never shared.

Static shapes: images per request are bounded (``max_images``), tiles per image by the
processor (``longest_edge``), the vision tower runs ``vision_batch`` tiles per call, prefill and
decode are the text engine's -- the compilations do not depend on the data.

The constructor is the text engine's, with two of its hooks overridden: the checkpoint reader
(the text model sits under ``model.text_model.`` in a VLM checkpoint, beside the vision tower)
and the programs class.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeAlias

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from hyperbatch.engines import models
from hyperbatch.engines.attention import AttentionImpl
from hyperbatch.engines.base import EngineConfig, ModelInfo
from hyperbatch.engines.jax_llm import weights as text_weights
from hyperbatch.engines.jax_llm.config import ModelConfig
from hyperbatch.engines.jax_llm.engine import _DTYPES, JaxLLMEngine
from hyperbatch.engines.jax_llm.programs import DevicePrograms, PrefillRow
from hyperbatch.engines.jax_llm.scheduler import Finish, Generation, Key, WorkSource
from hyperbatch.engines.jax_llm.tokenizer import ChatTokenizer
from hyperbatch.engines.jax_vlm import config as vlm_config
from hyperbatch.engines.jax_vlm import processor, vision
from hyperbatch.engines.jax_vlm.config import VLMConfig
from hyperbatch.engines.jax_vlm.options import JaxVLMOptions
from hyperbatch.engines.options import EngineOptions
from hyperbatch.schemas.records import (
    Charge,
    ErrorCode,
    Request,
    RequestError,
    Result,
)

#: (sequence positions -> feature rows) for a prompt: ``rows[p]`` is the image-feature row of
#: position p, -1 for a text token
FeatureIndex: TypeAlias = np.ndarray


@dataclasses.dataclass
class VisionTimes:
    """Where the vision stage's time goes (seconds, summed), for benchmarks and logs."""

    decode: float = 0.0  # image bytes -> RGB pixels (Pillow)
    preprocess: float = 0.0  # resize, tiles, normalisation
    tower: float = 0.0  # vision tower + connector on the device
    images: int = 0
    tiles: int = 0
    tile_slots: int = 0  # tiles computed, padding included


def load_checkpoint(
    model_dir: str,
) -> tuple[VLMConfig, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(config, text tensors named as ``jax_llm.weights`` expects, vision + connector tensors)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = vlm_config.from_hf(json.load(f), model_dir)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(p for p in os.listdir(model_dir) if p.endswith(".safetensors"))
    text: dict[str, np.ndarray] = {}
    other: dict[str, np.ndarray] = {}
    for name in files:
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            raise text_weights.CheckpointError(f"{model_dir}: shard {name} is missing")
        for key, arr in text_weights.read_safetensors(path):
            key = key.removeprefix("model.")
            if key.startswith("text_model."):
                text[key.removeprefix("text_model.")] = arr
            elif key == "lm_head.weight":
                text[key] = arr
            else:
                other[key] = arr
    return cfg, text, other


def chat_tokenizer(model_dir: str) -> ChatTokenizer:
    """The text engine's tokenizer; the chat template from the processor's files if the
    tokenizer's config has none (``chat_template.json``)."""
    tok = ChatTokenizer.from_hf_dir(model_dir)
    if tok.template is None:
        path = os.path.join(model_dir, "chat_template.json")
        if os.path.isfile(path):
            with open(path) as f:
                template = json.load(f).get("chat_template")
            tok = ChatTokenizer(tok.tokenizer, template, tok.special_tokens, tok.add_bos)
    return tok


#: a prefill piece's image positions (mask [n] bool) and their feature rows ([k, D])
PieceFeatures = tuple[np.ndarray, np.ndarray]


class VisionPrograms(DevicePrograms):
    """The text engine's device programs, whose prefill calls read their input embeddings from a
    table built for the call: the text tokens' rows of ``embed`` and, where ``features`` says a
    piece has image tokens, their features (see the module docstring)."""

    def __init__(
        self, *args: Any, features: Callable[[PrefillRow], PieceFeatures | None], **kw: Any
    ):
        super().__init__(*args, **kw)
        self._features = features
        self._embed_rows = jax.jit(_embed_rows)

    def compilations(self) -> int:
        return super().compilations() + int(self._embed_rows._cache_size())

    def _table(self, pieces: Sequence[PrefillRow], starts: Sequence[int], size: int) -> Any:
        ids = np.zeros(size, np.int32)
        feats = np.zeros((size, self.cfg.hidden_size), np.float32)
        is_image = np.zeros(size, bool)
        for r, at in zip(pieces, starts, strict=True):
            n = len(r.ids)
            ids[at : at + n] = r.ids
            found = self._features(r)
            if found is not None:
                mask, rows = found
                is_image[at : at + n] = mask
                feats[at : at + n][mask] = rows
        table = self._embed_rows(self.params["embed"], ids, feats, is_image)
        if self.mesh is not None:  # every device reads the whole table, as it reads embed
            table = jax.device_put(table, NamedSharding(self.mesh, PartitionSpec()))
        return table

    def _with_table(self, table: Any, call: Callable[[], Any]) -> Any:
        """Run ``call`` with the call's table as the embedding (decode keeps the real one)."""
        text_params = self.params
        self.params = {**text_params, "embed": table}
        try:
            return call()
        finally:
            self.params = text_params

    def prefill_packed(self, pieces: Sequence[PrefillRow]) -> tuple[np.ndarray, int]:
        starts = list(np.cumsum([0] + [len(r.ids) for r in pieces])[:-1])
        table = self._table(pieces, starts, self.shapes.prefill_tokens)
        rows = [
            r._replace(ids=range(s, s + len(r.ids))) for r, s in zip(pieces, starts, strict=True)
        ]
        return self._with_table(table, lambda: DevicePrograms.prefill_packed(self, rows))

    def prefill(self, t: int, rows: Sequence[PrefillRow]) -> tuple[np.ndarray, int]:
        starts = [i * t for i in range(len(rows))]
        table = self._table(rows, starts, self.shapes.rows_per_bucket[t] * t)
        remapped = [
            r._replace(ids=range(s, s + len(r.ids))) for r, s in zip(rows, starts, strict=True)
        ]
        return self._with_table(table, lambda: DevicePrograms.prefill(self, t, remapped))


def _embed_rows(
    embed: jax.Array, ids: jax.Array, feats: jax.Array, is_image: jax.Array
) -> jax.Array:
    """A prefill call's input embeddings: ``embed[ids]``, image features where ``is_image``."""
    return jax.numpy.where(is_image[:, None], feats.astype(embed.dtype), embed[ids])


@dataclasses.dataclass
class _Waiting:
    """A sequence whose prompt has images, until its prompt is prefilled."""

    generation: Generation
    features: np.ndarray  # [image tokens, D] float32, in prompt order
    rows: FeatureIndex  # per prompt position: its row of ``features`` (-1: a text token)


class JaxVLMEngine(JaxLLMEngine):
    """Idefics3 / SmolVLM (SigLIP tower + pixel-shuffle connector + Llama) in JAX."""

    name = "jax-vlm"
    OPTIONS: ClassVar[type[EngineOptions]] = JaxVLMOptions
    options: JaxVLMOptions

    def __init__(self, config: EngineConfig):
        # The text engine's constructor, with this engine's checkpoint reader (the text model
        # sits under ``model.text_model.``, beside the vision tower) and programs class.
        self._vision_tensors: dict[str, np.ndarray] | None = None
        super().__init__(config)
        t0 = time.perf_counter()
        opt = self.options
        self.vision_batch = opt.vision_batch
        vparams = vision.to_params(self.vlm, self._vision_tensors or {}, _DTYPES[config.dtype])
        self._vision_tensors = None
        mesh = self.programs.mesh
        self.vision_device = (
            self.programs.device if mesh is None else NamedSharding(mesh, PartitionSpec())
        )
        self.vision_params = jax.device_put(vparams, self.vision_device)
        first = self.programs.device if mesh is None else mesh.devices.flat[0]
        self.vision_attention = AttentionImpl("cpu" if first.platform == "cpu" else "xla")
        self._images: dict[int, np.ndarray | RequestError] = {}  # request -> its features
        self._image_charges: dict[int, float] = {}  # request -> its share of the vision stage
        self._waiting: dict[int, _Waiting] = {}  # generation -> its features, until prefilled
        self._image_tokens: dict[str, int] = {}  # record id -> image tokens in its prompt
        self.times = VisionTimes()
        self._stats.load_seconds += time.perf_counter() - t0

    def _read_checkpoint(self, local: models.LocalModel) -> tuple[ModelConfig, Any]:
        if local.format != "hf" or not vlm_config.is_vlm_dir(local.path):
            raise vlm_config.UnsupportedModel(
                f"{self.config.model} is not an Idefics3/SmolVLM checkpoint directory; the "
                f"jax-vlm engine serves {', '.join(vlm_config.SUPPORTED_ARCHITECTURES)} (text "
                "models: engine jax)"
            )
        vcfg, tensors, self._vision_tensors = load_checkpoint(local.path)
        edge = self.options.longest_edge
        if edge is not None:
            vcfg = dataclasses.replace(
                vcfg, processor=dataclasses.replace(vcfg.processor, longest_edge=edge)
            )
        self.vlm = vcfg
        self.tokenizer = chat_tokenizer(local.path)
        return vcfg.text, text_weights.to_params(vcfg.text, tensors, _DTYPES[self.config.dtype])

    def _make_programs(self, *args: Any) -> DevicePrograms:
        return VisionPrograms(*args, features=self._piece_features)

    # -- contract ----------------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        return dataclasses.replace(
            super().info, architecture=self.vlm.architecture, max_images=self.options.max_images
        )

    def warmup(self) -> None:
        t0 = time.perf_counter()
        super().warmup()
        self._encode(np.zeros((self.vision_batch, 3, self.vlm.vision.image_size,
                                self.vlm.vision.image_size), np.float32))  # fmt: skip
        self._stats.warmup_seconds += time.perf_counter() - t0

    def compilations(self) -> int:
        return self.programs.compilations() + int(vision.encode._cache_size())

    def close(self) -> None:
        super().close()
        self.vision_params = None

    # -- prompts ------------------------------------------------------------------------------

    def _template_messages(self, request: Request) -> list[dict[str, Any]]:
        """Messages as the Idefics3 chat template reads them: content as a list of parts."""
        out = []
        for m in request.messages or ():
            content = m["content"]
            if isinstance(content, str):
                parts = [{"type": "text", "text": content}]
            else:
                parts = [
                    {"type": "text", "text": p["text"]}
                    if p["type"] == "text"
                    else {"type": "image"}
                    for p in content
                ]
            out.append({"role": m["role"], "content": parts})
        return out

    def _image_text(self, request: Request, index: int) -> str:
        image = request.input_images[index]
        if not image.width or not image.height:  # not read by the pipeline: probe it now
            if image.data is None:
                raise RequestError(
                    ErrorCode.INVALID_IMAGE, f"image {image.describe()} has no bytes to read"
                )
            image = image.probed(image.data)
        rows, cols = processor.tiles_of(image.width, image.height, self.vlm.processor)
        return processor.prompt_text(rows, cols, self.vlm.processor)

    def prompt_tokens(self, request: Request) -> list[int]:
        if request.messages is None:
            return self.tokenizer.encode_prompt(request.prompt or "")
        if not request.messages:
            raise RequestError(ErrorCode.EMPTY_MESSAGES, "messages is empty")
        text = self.tokenizer.render(self._template_messages(request), request.tools)
        order = _image_order(request)
        pieces = text.split(processor.IMAGE)
        if len(pieces) - 1 != len(order):
            raise RequestError(
                ErrorCode.TEMPLATE_ERROR,
                f"the chat shows {len(order)} image(s) but its text has {len(pieces) - 1} "
                f"{processor.IMAGE} marks; do not write {processor.IMAGE} in the text",
            )
        out = pieces[0]
        for k, rest in zip(order, pieces[1:], strict=True):
            out += self._image_text(request, k) + rest
        return self.tokenizer.tokenizer.encode(out, add_special_tokens=False).ids

    def _prefix(self, request: Request, ids: list[int], prefill_end: int) -> int:
        """The text engine's prefix, cut before the first image token: prompts with different
        images share the same placeholder ids, so a prefix holding one is never shared; the
        Idefics3 template reads parts, so the chat boundary is found on the parts form."""
        if not self.store.rows:
            return 0
        first = next((i for i, t in enumerate(ids) if t == self.vlm.image_token_id), len(ids))
        if request.sampling.n > 1:
            n = prefill_end - 1
        elif request.messages:
            n = self._chat_prefix(request, ids)
        else:
            n = 0
        n = min(n, first)
        ok = self.prefix_min <= n <= self.prefix_max and n < prefill_end
        return n if ok else 0

    def _chat_prefix(self, request: Request, ids: list[int]) -> int:
        messages = self._template_messages(request)
        if any(p["type"] == "image" for m in messages[:-1] for p in m["content"]):
            return 0
        sentinel = "\ue000hyperbatch-prefix\ue000"
        probe = [*messages[:-1], {**messages[-1], "content": [{"type": "text", "text": sentinel}]}]
        try:
            text = self.tokenizer.render(probe, request.tools)
        except RequestError:
            return 0
        cut = text.find(sentinel)
        if cut <= 0:
            return 0
        head = self.tokenizer.tokenizer.encode(text[:cut], add_special_tokens=False).ids
        for n in (len(head), len(head) - 1):  # a BPE merge may straddle the boundary
            if 0 < n < len(ids) and list(ids[:n]) == head[:n]:
                return n
        return 0

    # -- the vision stage ---------------------------------------------------------------------

    def _encode(self, tiles: np.ndarray) -> np.ndarray:
        x = jax.device_put(tiles, self.vision_device)
        out = vision.encode(self.vision_params, x, cfg=self.vlm, impl=self.vision_attention)
        return np.asarray(out, dtype=np.float32)

    def _vision_stage(self, taken: Sequence[tuple[Key, Request]]) -> None:
        """Decode, preprocess and encode the images of newly taken requests; their features
        (or the error of an image that does not decode) wait for ``_prepare``."""
        t0 = time.perf_counter()
        tiles: list[np.ndarray] = []
        owners: list[tuple[int, int]] = []  # (request, tiles) in tile order
        for _, request in taken:
            if not request.input_images:
                continue
            try:
                stacks = []
                for k in _image_order(request):
                    t_dec = time.perf_counter()
                    pixels = request.input_images[k].pixels()
                    t_pre = time.perf_counter()
                    stack, _, _ = processor.preprocess(pixels, self.vlm.processor)
                    self.times.decode += t_pre - t_dec
                    self.times.preprocess += time.perf_counter() - t_pre
                    stacks.append(stack)
            except RequestError as e:
                self._images[id(request)] = e
                continue
            self.times.images += len(stacks)
            n = sum(len(s) for s in stacks)
            tiles += stacks
            owners.append((id(request), n))
        if not owners:
            return
        allt = np.concatenate(tiles)
        v = self.vision_batch
        t_tower = time.perf_counter()
        outs = []
        for i in range(0, len(allt), v):
            chunk = allt[i : i + v]
            if len(chunk) < v:  # a fixed batch: one program
                pad = np.zeros((v - len(chunk), *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            outs.append(self._encode(chunk)[: min(v, len(allt) - i)])
            self.times.tile_slots += v
        self.times.tower += time.perf_counter() - t_tower
        self.times.tiles += len(allt)
        feats = np.concatenate(outs)  # [tiles, tokens per tile, D]
        d = feats.shape[-1]
        seconds = time.perf_counter() - t0
        at = 0
        for rid, n in owners:
            self._images[rid] = feats[at : at + n].reshape(-1, d)
            self._image_charges[rid] = seconds * n / len(allt)
            at += n

    def _prepare(self, key: Key, request: Request) -> list[Generation]:
        found = self._images.pop(id(request), None)
        share = self._image_charges.pop(id(request), 0.0)
        if isinstance(found, RequestError):
            raise found
        gens = super()._prepare(key, request)
        if found is None:
            if any(g.ids.count(self.vlm.image_token_id) for g in gens[:1]):
                raise RequestError(
                    ErrorCode.ENGINE_REJECTED,
                    f"the prompt holds {processor.IMAGE} tokens but the request has no images",
                )
            return gens
        ids = np.asarray(gens[0].ids)
        is_image = ids == self.vlm.image_token_id
        if int(is_image.sum()) != len(found):
            raise RequestError(
                ErrorCode.ENGINE_REJECTED,
                f"the prompt has {int(is_image.sum())} image tokens for {len(found)} image "
                "features; send the prompt's token ids only with the model's own tokenizer",
            )
        rows = np.where(is_image, np.cumsum(is_image) - 1, -1)
        self._image_tokens[request.record_id] = len(found)
        self._stats.busy_seconds += share
        self._stats.prefill_seconds += share
        self._stats.input_images += len(request.input_images)
        for g in gens:
            g.charge = g.charge + Charge(
                busy_seconds=share / len(gens), prefill_seconds=share / len(gens)
            )
            self._waiting[id(g)] = _Waiting(g, found, rows)
        return gens

    def _piece_features(self, piece: PrefillRow) -> PieceFeatures | None:
        """The image positions of a prefill piece (by its slot) and their features."""
        w = next((w for w in self._waiting.values() if w.generation.slot == piece.slot), None)
        if w is None:
            return None
        n = len(piece.ids)
        index = w.rows[piece.start : piece.start + n]
        if piece.start + n >= w.generation.prefill_end:  # its prompt is in: forget it
            del self._waiting[id(w.generation)]
        mask = index >= 0
        return mask, w.features[index[mask]]

    def _run(self, source: WorkSource, finish: Finish) -> None:
        def with_image_tokens(key: Key, res: Result) -> None:
            n = self._image_tokens.pop(res.record_id, 0)
            if n:
                self._stats.image_tokens += n
                res = dataclasses.replace(res, usage=dataclasses.replace(res.usage, image_tokens=n))
            finish(key, res)

        try:
            super()._run(_WithVision(source, self._vision_stage), with_image_tokens)
        except BaseException:
            self._images.clear()
            self._image_charges.clear()
            self._waiting.clear()
            self._image_tokens.clear()
            raise


class _WithVision:
    """A work source whose requests' images are encoded as they are taken."""

    def __init__(self, source: WorkSource, stage: Callable[[Sequence[tuple[Key, Request]]], None]):
        self.source, self.stage = source, stage

    def take(self, max_n: int, wait: bool) -> list[tuple[Key, Request]] | None:
        taken = self.source.take(max_n, wait)
        if taken:
            self.stage(taken)
        return taken


def _image_order(request: Request) -> list[int]:
    """The image indexes of a chat in the order its parts show them."""
    out = []
    for m in request.messages or ():
        content = m["content"]
        if not isinstance(content, str):
            out += [int(p["image"]) for p in content if p["type"] == "image"]
    return out
