"""Held-out scenes through a served pipeline: caption and VQA accuracy, retrieval recall.

Talks to a running server with the SDK (``Blip2Client``) only, so it measures what users get:
images go as PNG bytes, questions through the OPT VQA prompt, retrieval through
``blip2_image_embed`` / ``blip2_text_embed`` (ITC) and ``blip2_itm`` (ITM re-rank).
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence

import numpy as np

from .generator import Scene, generate_scene
from .heldout import HELDOUT_BASE, heldout_questions, heldout_seeds
from .language import caption, vqa_prompt
from .metrics import Tally, exact_match, recall_at_k, rerank, token_f1
from .render import render_scene

GALLERY_OFFSET = 500_000  # retrieval galleries are drawn from seeds HELDOUT_BASE + 500000 on


def png_bytes(scene: Scene, size: int) -> bytes:
    """The scene rendered at ``size`` as PNG file bytes (lossless, as the server decodes it)."""
    buffer = io.BytesIO()
    render_scene(scene, size).save(buffer, "PNG")
    return buffer.getvalue()


def heldout_scenes(count: int, offset: int = 0) -> list[Scene]:
    return [generate_scene(s) for s in heldout_seeds(count, offset)]


def gallery_scenes(count: int) -> list[Scene]:
    """``count`` held-out scenes with pairwise different captions (each text has one right image)."""
    chosen: dict[str, Scene] = {}
    seed = HELDOUT_BASE + GALLERY_OFFSET
    while len(chosen) < count:
        scene = generate_scene(seed)
        chosen.setdefault(caption(scene), scene)
        seed += 1
    return list(chosen.values())


def evaluate_generation(client, scenes: Sequence[Scene], size: int) -> dict:
    """Captions (empty prompt) and one question of each kind per scene, through ``client``.

    Returns scores and every prediction (so two runs can be compared token for token).
    """
    images = [png_bytes(s, size) for s in scenes]
    started = time.monotonic()
    captions = client.caption_batch(images, progress=False)
    caption_seconds = time.monotonic() - started
    pairs = [(i, qa) for i, s in enumerate(scenes) for qa in heldout_questions(s)]
    started = time.monotonic()
    answers = client.caption_batch(
        [images[i] for i, _ in pairs], prompt=[vqa_prompt(qa.question) for _, qa in pairs], progress=False
    )
    answer_seconds = time.monotonic() - started
    references = [caption(s) for s in scenes]
    tally = Tally()
    for (_, qa), answer in zip(pairs, answers, strict=True):
        tally.add(qa.kind, exact_match(answer, qa.answer))
    return {
        "scenes": len(scenes),
        "caption_exact": float(
            np.mean([exact_match(p, r) for p, r in zip(captions, references, strict=True)])
        ),
        "caption_f1": float(np.mean([token_f1(p, r) for p, r in zip(captions, references, strict=True)])),
        "vqa": tally.as_dict(),
        "captions_per_second": len(scenes) / caption_seconds,
        "answers_per_second": len(pairs) / answer_seconds,
        "predictions": {
            "captions": list(zip([s.seed for s in scenes], references, captions, strict=True)),
            "answers": [
                (scenes[i].seed, qa.question, qa.answer, a) for (i, qa), a in zip(pairs, answers, strict=True)
            ],
        },
    }


def evaluate_retrieval(client, scenes: Sequence[Scene], size: int, rerank_top: int = 10) -> dict:
    """Recall@1/5 text->image and image->text over a gallery, by ITC alone and ITC + ITM re-rank.

    Row ``i`` of each score matrix is query ``i``; text ``i`` is the caption of image ``i``.
    """
    images = [png_bytes(s, size) for s in scenes]
    texts = [caption(s) for s in scenes]
    image_embeds = client.embed_images(images, progress=False)  # [N, Q, D]
    text_embeds = client.embed_texts(texts, progress=False)  # [N, D]
    itc = np.einsum("iqd,td->itq", image_embeds, text_embeds).max(axis=2)  # [image, text]
    truth = list(range(len(scenes)))
    itm_cache: dict[tuple[int, int], float] = {}

    def itm(pairs: list[tuple[int, int]]) -> list[float]:
        """Re-rank score of (image, text) pairs: ITM match probability + ITC cosine, as LAVIS ranks."""
        todo = [p for p in dict.fromkeys(pairs) if p not in itm_cache]
        scores = client.match_batch([(images[i], texts[t]) for i, t in todo], progress=False)
        for pair, (itm_score, itc_score) in zip(todo, scores, strict=True):
            itm_cache[pair] = itm_score + itc_score
        return [itm_cache[p] for p in pairs]

    t2i = itc.T
    t2i_reranked = rerank(t2i, lambda t, cols: itm([(int(i), t) for i in cols]), rerank_top)
    i2t_reranked = rerank(itc, lambda i, cols: itm([(i, int(t)) for t in cols]), rerank_top)
    return {
        "gallery": len(scenes),
        "rerank_top": rerank_top,
        "text_to_image": {
            "itc": recall_at_k(t2i, truth),
            "itc_itm": recall_at_k(t2i_reranked, truth),
        },
        "image_to_text": {
            "itc": recall_at_k(itc, truth),
            "itc_itm": recall_at_k(i2t_reranked, truth),
        },
    }
