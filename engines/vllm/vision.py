"""Images for vLLM: a chat's image parts become ``multi_modal_data`` beside its token ids.

vLLM serves vision-language models itself (its own preprocessing and vision tower); we hand it
the prompt's token ids as the model's chat template renders them -- messages in the parts form
multimodal templates read (``{"type": "image"}`` where an image goes) -- and the decoded images
(``ImageInput.pixels``: EXIF-rotated RGB) in the order the chat shows them; vLLM expands each
image placeholder into the image's tokens. Per-request failures stay per-request: an image that
does not decode is that request's ``invalid_image`` error, more images than the limit a
``too_many_images`` one, a prompt too long once vLLM has expanded its images a
``prompt_too_long`` one (``VLLMEngine._add``). How many images a request may show:
``limit_mm_per_prompt`` (vLLM's engine argument, from ``engine_options.max_images``; vLLM's
own default otherwise); 0 for a text model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyperbatch.schemas.images import image_indexes
from hyperbatch.schemas.records import ErrorCode, Request, RequestError


def max_images(llm: Any) -> int:
    """Images one request may show this model: the limit vLLM enforces (0: a text model)."""
    model_config = llm.llm_engine.model_config
    if not getattr(model_config, "is_multimodal_model", False):
        return 0
    mm = model_config.multimodal_config
    return int(mm.get_limit_per_prompt("image")) if mm is not None else 0


def template_messages(request: Request, multimodal: bool) -> list[dict[str, Any]]:
    """The request's messages for the chat template: as they are for a text model; content as
    a list of parts for a multimodal one (its template reads parts)."""
    out = []
    for m in request.messages or ():
        content = m["content"]
        if multimodal:
            content = (
                [{"type": "text", "text": content}]
                if isinstance(content, str)
                else [_part(p) for p in content]
            )
        out.append({**m, "content": content})
    return out


def _part(p: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "text", "text": p["text"]} if p["type"] == "text" else {"type": "image"}


def engine_prompt(request: Request, ids: list[int], most: int) -> dict[str, Any]:
    """vLLM's prompt for a request: its token ids, and its decoded images if it has any;
    RequestError ``too_many_images`` for more than ``most``, ``invalid_image`` for one that
    does not decode -- that request's error, before vLLM sees it."""
    prompt: dict[str, Any] = {"prompt_token_ids": list(ids)}
    if request.input_images:
        from PIL import Image

        order = image_indexes(request.messages or ())
        if len(order) > most:
            raise RequestError(
                ErrorCode.TOO_MANY_IMAGES,
                f"the request shows {len(order)} images; this model takes at most {most} per "
                "request here (engine_options.max_images, vLLM's limit_mm_per_prompt)"
                if most
                else "the model reads text only; serve images with a vision-language model",
            )
        images = [Image.fromarray(request.input_images[k].pixels()) for k in order]
        prompt["multi_modal_data"] = {"image": images}
    return prompt


def too_long(error: Exception) -> bool:
    """Is vLLM's refusal about the prompt's length (counted with its images' tokens)?"""
    return "longer than the maximum model length" in str(error)


def image_tokens(llm: Any, prompt_token_ids: Any) -> int:
    """Prompt tokens that stand for images (the model's image token, as vLLM expanded it)."""
    config = llm.llm_engine.model_config.hf_config
    token = getattr(config, "image_token_id", None)
    if token is None:
        token = getattr(config, "image_token_index", None)
    if token is None or not prompt_token_ids:
        return 0
    return sum(1 for t in prompt_token_ids if t == token)
