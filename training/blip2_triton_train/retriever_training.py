"""Train ``Blip2ForImageTextRetrieval`` (ITC + ITM) over the captioner's trained, frozen ViT.

As BLIP-2's first stage: the image encoder is frozen and a Q-Former learns image-text contrast
(ITC) and image-text matching (ITM). ``retrieval_tunes_vision=true`` trains the retriever's copy of
the ViT too; two such 1,500-step runs with the same seed differed (text->image recall@1 85% and
78%; frozen: 82%, byte-identical when rebuilt), so it is off. Frozen, 3,000 steps reach 92%. The
Q-Former's query path starts from the captioner's; its text path is new. ITC contrasts each image
with the batch's captions plus one altered caption per image (one thing changed); ITM sees each
true pair, the image with a hard negative caption (the altered one, or one mined from ITC scores)
and the caption with an ITC-mined negative image.
"""

from __future__ import annotations

import math
import random
import time

from blip2_triton.scenes.language import caption

from .data import SceneSet, pixel_values
from .models import SceneModelSpec, new_retriever, processor_for
from .negatives import altered_caption
from .training import BatchOrder, TrainConfig, log, optimizer_for, warmup_cosine
from .vocab import bert_tokenizer

SHARED_PREFIXES = ("vision_model.", "qformer.", "query_tokens")


class TextBatcher:
    """Texts to right-padded ``input_ids`` and ``attention_mask`` (``[CLS]`` text ``[SEP]``), cached."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}

    def __call__(self, texts: list[str]):
        import torch

        for text in texts:
            if text not in self._ids:
                self._ids[text] = self.tokenizer(text)["input_ids"]
        width = max(len(self._ids[t]) for t in texts)
        ids = torch.full((len(texts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(texts), width), dtype=torch.long)
        for row, text in enumerate(texts):
            ids[row, : len(self._ids[text])] = torch.tensor(self._ids[text])
            mask[row, : len(self._ids[text])] = 1
        return ids, mask


def image_features(model, vision_states):
    """L2-normalised ITC image features [B, Q, D] from the ViT's last hidden states."""
    import torch

    queries = model.query_tokens.expand(vision_states.shape[0], -1, -1)
    out = model.qformer(
        query_embeds=queries,
        encoder_hidden_states=vision_states,
        encoder_attention_mask=torch.ones(vision_states.shape[:2], dtype=torch.long),
        return_dict=True,
    ).last_hidden_state
    return torch.nn.functional.normalize(model.vision_projection(out), dim=-1)


def text_features(model, ids, mask):
    """L2-normalised ITC text features [T, D] (the ``[CLS]`` output of the text path)."""
    import torch

    out = model.qformer(
        query_embeds=model.embeddings(input_ids=ids), query_length=0, attention_mask=mask, return_dict=True
    ).last_hidden_state
    return torch.nn.functional.normalize(model.text_projection(out[:, 0]), dim=-1)


def itm_logits(model, vision_states, ids, mask):
    """ITM logits [B, 2] for (image, text) rows, as ``forward(use_image_text_matching_head=True)``."""
    import torch

    queries = model.query_tokens.expand(vision_states.shape[0], -1, -1)
    embeds = model.embeddings(input_ids=ids, query_embeds=queries)
    full_mask = torch.cat([torch.ones(queries.shape[:2], dtype=torch.long), mask], dim=1)
    out = model.qformer(
        query_embeds=embeds,
        query_length=queries.shape[1],
        attention_mask=full_mask,
        encoder_hidden_states=vision_states,
        encoder_attention_mask=torch.ones(vision_states.shape[:2], dtype=torch.long),
        return_dict=True,
    ).last_hidden_state
    return model.itm_head(out[:, : queries.shape[1]]).mean(dim=1)


def _sample_negatives(scores, same, generator):
    """Per row, an index drawn by softmax(scores) among columns that are not a match."""
    import torch

    weights = torch.softmax(scores.detach().float(), dim=1).masked_fill(same, 0.0) + 1e-9
    weights = weights.masked_fill(same, 0.0)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def train_retriever(spec: SceneModelSpec, config: TrainConfig, data: SceneSet, captioner):
    """A trained retrieval model, its processor and its (ITC + ITM) loss per step."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(config.seed + 1)
    generator = torch.Generator().manual_seed(config.seed + 1)
    rng = random.Random(config.seed + 1)
    processor = processor_for(bert_tokenizer(spec.vocab_size), spec)
    model = new_retriever(processor.tokenizer, spec)
    shared = {k: v for k, v in captioner.state_dict().items() if k.startswith(SHARED_PREFIXES)}
    missing = model.load_state_dict(shared, strict=False)
    assert not missing.unexpected_keys, missing.unexpected_keys
    tune_vision = config.retrieval_tunes_vision
    model.vision_model.requires_grad_(tune_vision)
    model.train()
    model.vision_model.train(tune_vision)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    optimizer = optimizer_for(model, config.retrieval_learning_rate, config.weight_decay, extra=[log_scale])
    schedule = warmup_cosine(optimizer, config.retrieval_steps, config.warmup_steps)
    texts = TextBatcher(processor.tokenizer)
    mean, std = processor.image_processor.image_mean, processor.image_processor.image_std
    order = BatchOrder(len(data.scenes), rng)
    batch = config.retrieval_batch_size
    losses: list[float] = []
    started = time.monotonic()
    for step in range(config.retrieval_steps):
        picked = order.next(batch)
        scenes = [data.scenes[i] for i in picked]
        with torch.set_grad_enabled(tune_vision):
            vision = model.vision_model(pixel_values(data.images[picked], mean, std)).last_hidden_state
        captions = [caption(s) for s in scenes]
        altered = [altered_caption(s, rng) for s in scenes]
        all_texts = captions + altered
        ids, mask = texts(all_texts)
        image_feats = image_features(model, vision)
        text_feats = text_features(model, ids, mask)
        scale = log_scale.exp().clamp(max=100.0)
        sim = torch.einsum("bqd,td->bqt", image_feats, text_feats).amax(dim=1)  # [B, 2B]
        same = torch.tensor([[a == b for b in all_texts] for a in captions])  # [B, 2B]
        i2t = -(F.log_softmax(sim * scale, dim=1) * same / same.sum(1, keepdim=True)).sum(1).mean()
        same_t2i = same[:, :batch].T
        t2i = -(F.log_softmax(sim[:, :batch].T * scale, dim=1) * same_t2i / same_t2i.sum(1, keepdim=True))
        itc = (i2t + t2i.sum(1).mean()) / 2
        # ITM: true pairs, each image with a negative caption, each caption with a negative image.
        mined_text = _sample_negatives(sim[:, :batch], same[:, :batch], generator)
        use_altered = torch.rand(batch, generator=generator) < 0.5
        neg_text = torch.where(use_altered, torch.arange(batch) + batch, mined_text)
        neg_image = _sample_negatives(sim[:, :batch].T, same_t2i, generator)
        rows_image = torch.cat([torch.arange(batch), torch.arange(batch), neg_image])
        rows_text = torch.cat([torch.arange(batch), neg_text, torch.arange(batch)])
        labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long()
        logits = itm_logits(model, vision[rows_image], ids[rows_text], mask[rows_text])
        itm = F.cross_entropy(logits, labels)
        loss = itc + itm
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == config.retrieval_steps - 1:
            recent = sum(losses[-100:]) / len(losses[-100:])
            log(
                f"retriever {step:5d}/{config.retrieval_steps} loss {recent:.4f} "
                f"(itc {float(itc.detach()):.3f} itm {float(itm.detach()):.3f}; {time.monotonic() - started:.0f}s)"
            )
    return model.eval(), processor, losses
