"""Train ``Blip2ForConditionalGeneration`` (OPT) end to end on scene captions and questions."""

from __future__ import annotations

import random
import time

from blip2_triton.scenes.generator import POSITIONS, SHAPES

from .data import SceneSet, SequenceBuilder, pixel_values, shape_positions
from .models import SceneModelSpec, new_captioner, processor_for
from .training import BatchOrder, TrainConfig, log, optimizer_for, warmup_cosine
from .vocab import opt_tokenizer


def train_captioner(spec: SceneModelSpec, config: TrainConfig, data: SceneSet, eval_every: int = 0):
    """A trained captioner, its processor and its loss per step.

    Each step: a batch of images through ViT, Q-Former and projection once; each image's query
    embeddings fill the image tokens of its caption and its questions; cross-entropy on the targets.
    That is ``Blip2ForConditionalGeneration.forward``, with the image encoded once per image.

    With ``config.position_aux_weight`` > 0 a linear head (used in training only, not saved) reads
    each lone shape's position from the mean of the image's query embeddings, and its loss is added
    for the first ``config.position_aux_steps`` steps: the language-model loss alone never taught the
    Q-Former to keep where a shape is; once it does, the language model's loss keeps it.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    processor = processor_for(opt_tokenizer(spec.vocab_size), spec)
    model = new_captioner(processor.tokenizer, spec, config.sharpen_cross_attention).train()
    image_token_id = model.config.image_token_id
    builder = SequenceBuilder(processor.tokenizer, spec.num_query_tokens, image_token_id)
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    position_head = torch.nn.Linear(spec.llm_hidden, len(SHAPES) * len(POSITIONS))
    optimizer = optimizer_for(
        model, config.learning_rate, config.weight_decay, extra=tuple(position_head.parameters())
    )
    schedule = warmup_cosine(optimizer, config.caption_steps, config.warmup_steps)
    order = BatchOrder(len(data.scenes), rng)
    positions = shape_positions(data.scenes) if config.position_aux_weight else None
    losses: list[float] = []
    started = time.monotonic()
    for step in range(config.caption_steps):
        picked = order.next(config.batch_size)
        pixels = pixel_values(data.images[picked], mean, std)
        input_ids, attention, labels, owner = builder.batch(
            [data.scenes[i] for i in picked],
            config.questions_per_image,
            rng,
            {"position": config.position_weight},
        )
        features = model.get_image_features(pixels, return_dict=True).pooler_output
        embeds = model.get_input_embeddings()(input_ids)
        image_slots = (input_ids == image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(image_slots, features[owner].to(embeds.dtype))
        logits = model.language_model(inputs_embeds=embeds, attention_mask=attention).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        if config.position_aux_weight and step < config.position_aux_steps:
            guesses = position_head(features.mean(1)).view(-1, len(POSITIONS))
            targets = positions[picked].flatten()
            loss = loss + config.position_aux_weight * F.cross_entropy(guesses, targets, ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if eval_every and (step + 1) % eval_every == 0:
            log(_quick_eval(model, processor))
        if step % 100 == 0 or step == config.caption_steps - 1:
            recent = sum(losses[-100:]) / len(losses[-100:])
            log(
                f"captioner {step:5d}/{config.caption_steps} loss {recent:.4f} ({time.monotonic() - started:.0f}s)"
            )
    return model.eval(), processor, losses


def _quick_eval(model, processor, scenes: int = 60) -> str:
    from .local_eval import evaluate_local

    model.eval()
    result = evaluate_local(model, processor, scenes)
    model.train()
    vqa = " ".join(f"{k} {v['accuracy']:.2f}" for k, v in result["vqa"].items())
    return f"held-out: caption exact {result['caption_exact']:.2f} f1 {result['caption_f1']:.2f}; vqa {vqa}"
