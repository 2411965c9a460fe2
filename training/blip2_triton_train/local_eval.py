"""Held-out accuracy of a scene checkpoint run in-process with transformers (no server).

For quick checks while training; ``benchmarks/eval_scenes.py`` measures the served pipeline.
"""

from __future__ import annotations

from pathlib import Path

from blip2_triton.scenes.generator import generate_scene
from blip2_triton.scenes.heldout import heldout_questions, heldout_seeds
from blip2_triton.scenes.language import caption, vqa_prompt
from blip2_triton.scenes.metrics import Tally, exact_match, token_f1
from blip2_triton.scenes.render import render_scene


def generate_texts(model, processor, images, prompts, max_new_tokens: int = 30, batch: int = 64) -> list[str]:
    """Greedy texts for (image, prompt) pairs; an empty prompt is a caption."""
    import torch

    texts: list[str] = []
    for start in range(0, len(images), batch):
        chunk_images, chunk_prompts = images[start : start + batch], prompts[start : start + batch]
        for prompt in dict.fromkeys(chunk_prompts):  # one generate per distinct prompt layout
            rows = [i for i, p in enumerate(chunk_prompts) if p == prompt]
            inputs = processor(
                images=[chunk_images[i] for i in rows],
                text=[prompt] * len(rows) if prompt else None,
                return_tensors="pt",
                padding=True,
            )
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            new = out[:, inputs["input_ids"].shape[1] :] if "input_ids" in inputs else out
            decoded = processor.batch_decode(new, skip_special_tokens=True)
            for row, text in zip(rows, decoded, strict=True):
                texts.append((start + row, text.strip()))  # type: ignore[arg-type]
    return [t for _, t in sorted(texts)]  # type: ignore[misc]


def evaluate_checkpoint(checkpoint: str | Path, scenes: int = 200) -> dict:
    """``evaluate_local`` for a saved checkpoint."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    processor = Blip2Processor.from_pretrained(checkpoint)
    model = Blip2ForConditionalGeneration.from_pretrained(checkpoint).eval()
    return evaluate_local(model, processor, scenes)


def evaluate_local(model, processor, scenes: int = 200) -> dict:
    """Caption exact match / token F1 and VQA accuracy per kind on ``scenes`` held-out scenes."""
    size = model.config.vision_config.image_size
    chosen = [generate_scene(s) for s in heldout_seeds(scenes)]
    images = [render_scene(s, size) for s in chosen]
    captions = generate_texts(model, processor, images, [""] * len(images))
    pairs = [(i, qa) for i, s in enumerate(chosen) for qa in heldout_questions(s)]
    answers = generate_texts(
        model, processor, [images[i] for i, _ in pairs], [vqa_prompt(qa.question) for _, qa in pairs]
    )
    tally = Tally()
    for (_, qa), answer in zip(pairs, answers, strict=True):
        tally.add(qa.kind, exact_match(answer, qa.answer))
    refs = [caption(s) for s in chosen]
    return {
        "caption_exact": sum(exact_match(p, r) for p, r in zip(captions, refs, strict=True)) / len(refs),
        "caption_f1": sum(token_f1(p, r) for p, r in zip(captions, refs, strict=True)) / len(refs),
        "vqa": tally.as_dict(),
        "examples": [(r, p) for p, r in zip(captions[:5], refs[:5], strict=True)],
    }


if __name__ == "__main__":
    import json
    import sys

    print(
        json.dumps(evaluate_checkpoint(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200), indent=2)
    )
