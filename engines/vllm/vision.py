"""Images for vLLM: a chat's image parts become ``multi_modal_data`` beside its token ids.

vLLM serves vision-language models itself (its own preprocessing and vision tower); we hand it
the prompt's token ids as the model's chat template renders them -- messages in the parts form
multimodal templates read (``{"type": "image"}`` where an image goes) -- and the decoded images
(``ImageInput.pixels``: EXIF-rotated RGB) in the order the chat shows them; vLLM expands each
image placeholder into the image's tokens. An image that does not decode is that request's
``invalid_image`` error. How many images a request may show: ``limit_mm_per_prompt`` (vLLM's
engine argument, from ``engine_options``; vLLM's default otherwise); 0 for a text model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyperbatch.schemas.records import Request

#: images per request when the job does not say (vLLM's own default is 1 per prompt for many
#: models; a request with more is refused by vLLM as a per-record error)
DEFAULT_MAX_IMAGES = 4


def max_images(llm: Any) -> int:
    """Images one request may show this model (0: not a vision-language model)."""
    model_config = llm.llm_engine.model_config
    if not getattr(model_config, "is_multimodal_model", False):
        return 0
    mm = getattr(model_config, "multimodal_config", None)
    limits = getattr(mm, "limit_per_prompt", None) or {}
    image = limits.get("image")
    count = getattr(image, "count", image)
    return int(count) if count is not None else DEFAULT_MAX_IMAGES


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


def engine_prompt(request: Request, ids: list[int]) -> dict[str, Any]:
    """vLLM's prompt for a request: its token ids, and its decoded images if it has any
    (RequestError ``invalid_image`` for one that does not decode)."""
    prompt: dict[str, Any] = {"prompt_token_ids": list(ids)}
    if request.input_images:
        from PIL import Image

        order = [
            int(p["image"])
            for m in request.messages or ()
            if not isinstance(m["content"], str)
            for p in m["content"]
            if p["type"] == "image"
        ]
        images = [Image.fromarray(request.input_images[k].pixels()) for k in order]
        prompt["multi_modal_data"] = {"image": images}
    return prompt


def image_tokens(llm: Any, prompt_token_ids: Any) -> int:
    """Prompt tokens that stand for images (the model's image token, as vLLM expanded it)."""
    config = llm.llm_engine.model_config.hf_config
    token = getattr(config, "image_token_id", None)
    if token is None:
        token = getattr(config, "image_token_index", None)
    if token is None or not prompt_token_ids:
        return 0
    return sum(1 for t in prompt_token_ids if t == token)
