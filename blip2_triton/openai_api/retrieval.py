"""``POST /v1/embeddings`` and ``POST /v1/score`` on a retrieval repository (``Blip2ForImageTextRetrieval``).

Embeddings: each input is a text (-> its L2-normalised text embedding, ``D`` floats) or, as an
extension, an image as a ``data:image/...;base64,`` URL (-> its L2-normalised query embeddings,
``Q x D`` floats row-major, with ``"shape": [Q, D]`` on the item). A text's ITC score against an
image is the maximum over the ``Q`` rows of their dot products. ``usage.prompt_tokens`` counts the
texts' tokens (special tokens included) and ``Q`` per image. ``encoding_format`` ``base64`` sends
little-endian float32 bytes, as OpenAI does.

Score (extension): ``{"model", "image": <image URL>, "texts": [...]}`` -> for each text
``itm_score`` (ITM head's match probability) and ``itc_score`` (the ITC score above).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np

from blip2_triton.client import AsyncBlip2Client, Blip2ClientError

from .errors import bad_request, from_client_error
from .image_urls import ImageFetcher
from .schemas import EmbeddingRequest, ScoreRequest
from .served_model import ServedModel

IMAGE_PREFIX = "data:image/"
MAX_INPUTS = 256


class Retrieval:
    """Embeddings and scores for the served retrieval model, through the SDK's asyncio client."""

    def __init__(self, client: AsyncBlip2Client, model: ServedModel, images: ImageFetcher) -> None:
        self.client = client
        self.model = model
        self.images = images

    def _check_model(self) -> None:
        if self.model.generates:
            raise bad_request(
                f"model '{self.model.id}' generates; embeddings need a retrieval repository "
                "(Blip2ForImageTextRetrieval)",
                "model",
            )

    async def embeddings(self, request: EmbeddingRequest) -> dict[str, Any]:
        self._check_model()
        inputs = [request.input] if isinstance(request.input, str) else request.input
        if not 1 <= len(inputs) <= MAX_INPUTS:
            raise bad_request(f"input takes 1 ... {MAX_INPUTS} items, got {len(inputs)}", "input")
        if request.dimensions is not None:
            raise bad_request("dimensions is not supported (the embedding size is the model's)", "dimensions")
        for index, item in enumerate(inputs):
            if not item:
                raise bad_request(f"input[{index}] is empty", "input")
        try:
            vectors = await asyncio.gather(*(self._embed(item) for item in inputs))
        except Blip2ClientError as error:
            raise from_client_error(error) from None
        data = [_item(index, vector, request.encoding_format) for index, vector in enumerate(vectors)]
        tokens = sum(
            self.model.image_tokens
            if item.startswith(IMAGE_PREFIX)
            else self.model.count_text(item, special_tokens=True)
            for item in inputs
        )
        return {
            "object": "list",
            "data": data,
            "model": self.model.id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def _embed(self, item: str) -> np.ndarray:
        if item.startswith(IMAGE_PREFIX):
            image = await self.images.fetch(item)
            return (await self.client.embed_images([image], progress=False))[0]
        return (await self.client.embed_texts([item], progress=False))[0]

    async def score(self, request: ScoreRequest) -> dict[str, Any]:
        self._check_model()
        texts = [request.texts] if isinstance(request.texts, str) else request.texts
        if not 1 <= len(texts) <= MAX_INPUTS or not all(texts):
            raise bad_request(f"texts takes 1 ... {MAX_INPUTS} non-empty strings", "texts")
        image = await self.images.fetch(request.image)
        try:
            scores = await self.client.match_batch([(image, text) for text in texts], progress=False)
        except Blip2ClientError as error:
            raise from_client_error(error) from None
        data = [
            {"object": "score", "index": index, "text": text, "itm_score": itm, "itc_score": itc}
            for index, (text, (itm, itc)) in enumerate(zip(texts, scores, strict=True))
        ]
        return {"object": "list", "data": data, "model": self.model.id}


def _item(index: int, vector: np.ndarray, encoding: str) -> dict[str, Any]:
    flat = np.ascontiguousarray(vector, dtype="<f4").reshape(-1)
    embedding: Any = base64.b64encode(flat.tobytes()).decode() if encoding == "base64" else flat.tolist()
    item = {"object": "embedding", "index": index, "embedding": embedding}
    if vector.ndim == 2:
        item["shape"] = list(vector.shape)
    return item
