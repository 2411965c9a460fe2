"""The three ONNX graphs of a ``Blip2ForImageTextRetrieval`` checkpoint, checked against PyTorch.

- image: ``pixel_values`` -> ``image_embeds`` (vision model, Q-Former image branch, vision
  projection, L2-normalised) and ``vision_hidden_states`` (the vision model's output, which the ITM
  head attends to), so an image runs through the vision encoder once for both heads;
- text: ``input_ids``, ``attention_mask`` -> ``text_embeds`` (Q-Former text branch, projection of
  [CLS], L2-normalised);
- itm: ``vision_hidden_states``, ``input_ids``, ``attention_mask`` -> ``itm_score`` (queries + text
  through the Q-Former with cross-attention to the image, ITM head, mean over queries, softmax[:, 1]).

Each graph is checked against transformers' own ``Blip2ForImageTextRetrieval.forward`` (not
against the wrappers below) on fresh random images and padded random texts, at batch sizes and
lengths other than the exported ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from blip2_triton.runtime import contract as C
from blip2_triton.runtime.retrieval.text_matching import RetrievalSettings

from .onnx_export import checked_difference, export_graph

TOLERANCE = 1e-4  # fp32


def _modules(model: Any, num_query_tokens: int):
    import torch
    from torch.nn.functional import normalize

    class ImageBranch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision_model, self.qformer = model.vision_model, model.qformer
            self.query_tokens, self.vision_projection = model.query_tokens, model.vision_projection

        def forward(self, pixel_values):
            hidden = self.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
            queries = self.query_tokens.expand(hidden.shape[0], -1, -1)
            out = self.qformer(  # the encoder mask would be all ones: left out, as in ItmBranch
                query_embeds=queries, encoder_hidden_states=hidden, return_dict=True
            ).last_hidden_state
            return normalize(self.vision_projection(out), dim=-1), hidden

    class TextBranch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings, self.qformer, self.text_projection = (
                model.embeddings,
                model.qformer,
                model.text_projection,
            )

        def forward(self, input_ids, attention_mask):
            embeds = self.embeddings(input_ids=input_ids)
            out = self.qformer(
                query_embeds=embeds, query_length=0, attention_mask=attention_mask, return_dict=True
            ).last_hidden_state
            return normalize(self.text_projection(out[:, 0, :]), dim=-1)

    class ItmBranch(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings, self.qformer, self.itm_head = model.embeddings, model.qformer, model.itm_head
            self.query_tokens = model.query_tokens

        def forward(self, vision_hidden_states, input_ids, attention_mask):
            queries = self.query_tokens.expand(input_ids.shape[0], -1, -1)
            embeds = self.embeddings(input_ids=input_ids, query_embeds=queries)
            query_mask = torch.ones_like(attention_mask[:, :1]).expand(-1, num_query_tokens)
            out = self.qformer(
                query_embeds=embeds,
                query_length=num_query_tokens,
                attention_mask=torch.cat([query_mask, attention_mask], dim=1),
                encoder_hidden_states=vision_hidden_states,
                # No encoder mask: all ones (transformers skips it too when not tracing); a traced one
                # is built for the query+text length and breaks the queries' cross-attention.
                return_dict=True,
            ).last_hidden_state
            logits = self.itm_head(out[:, :num_query_tokens, :]).mean(dim=1)
            return torch.softmax(logits, dim=-1)[:, 1:2]

    return ImageBranch().eval(), TextBranch().eval(), ItmBranch().eval()


def export_retrieval_onnx(
    model: Any, image_size: tuple[int, int], num_query_tokens: int, paths: dict[str, Path]
) -> None:
    """Write the ``image``, ``text`` and ``itm`` graphs to ``paths[...]`` (dynamic batch and length)."""
    import torch

    image, text, itm = _modules(model, num_query_tokens)
    pixels = torch.randn(2, 3, *image_size)
    ids = torch.full((2, 7), 5, dtype=torch.long)
    mask = torch.ones((2, 7), dtype=torch.long)
    mask[1, 5:] = 0
    with torch.no_grad():
        _, hidden = image(pixels)
    batch = {0: "batch"}
    text_axes = {0: "batch", 1: "length"}
    export_graph(
        image,
        (pixels,),
        paths["image"],
        [C.PIXEL_VALUES],
        [C.IMAGE_EMBEDS.name, C.VISION_HIDDEN_STATES],
        {C.PIXEL_VALUES: batch, C.IMAGE_EMBEDS.name: batch, C.VISION_HIDDEN_STATES: batch},
    )
    export_graph(
        text,
        (ids, mask),
        paths["text"],
        [C.INPUT_IDS, C.ATTENTION_MASK],
        [C.TEXT_EMBEDS.name],
        {C.INPUT_IDS: text_axes, C.ATTENTION_MASK: text_axes, C.TEXT_EMBEDS.name: batch},
    )
    export_graph(
        itm,
        (hidden, ids, mask),
        paths["itm"],
        [C.VISION_HIDDEN_STATES, C.INPUT_IDS, C.ATTENTION_MASK],
        [C.ITM_SCORE.name],
        {
            C.VISION_HIDDEN_STATES: batch,
            C.INPUT_IDS: text_axes,
            C.ATTENTION_MASK: text_axes,
            C.ITM_SCORE.name: batch,
        },
    )


def _random_texts(settings: RetrievalSettings, vocab_size: int, specials: set[int], generator):
    """Three padded texts of different lengths, as the runtime builds them (prefix included)."""
    import torch

    lengths = [min(settings.max_text_tokens, n) for n in (11, 6, 3)]
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in specials])
    prefix = list(settings.prefix_ids)
    width = len(prefix) + max(lengths)
    ids = torch.full((3, width), settings.pad_token_id, dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    for row, length in enumerate(lengths):
        picks = ordinary[torch.randint(len(ordinary), (length,), generator=generator)].tolist()
        tokens = prefix + picks
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


def verify_retrieval_onnx(
    model: Any,
    image_size: tuple[int, int],
    settings: RetrievalSettings,
    model_ids: Any,
    paths: dict[str, Path],
) -> dict[str, float]:
    """Max abs difference of each graph from ``model.forward`` on fresh random inputs (batch 3).

    ``model_ids(ids, mask)`` turns runtime ids into what the processor hands the model (image
    tokens put back in front when the model drops them). Raises ExportError over the tolerance.
    """
    import onnxruntime as ort
    import torch

    generator = torch.Generator().manual_seed(1234)
    pixels = torch.randn(3, 3, *image_size, generator=generator)
    tokenizer_specials = {settings.pad_token_id, *settings.prefix_ids}
    vocab = int(model.embeddings.word_embeddings.num_embeddings)
    ids, mask = _random_texts(settings, vocab, tokenizer_specials, generator)
    full_ids, full_mask = model_ids(ids, mask)
    with torch.no_grad():
        itc = model(pixel_values=pixels, input_ids=full_ids, attention_mask=full_mask, return_dict=True)
        itm = model(
            pixel_values=pixels,
            input_ids=full_ids,
            attention_mask=full_mask,
            use_image_text_matching_head=True,
            return_dict=True,
        )
    expected = {
        "image": itc.image_embeds.numpy(),
        "text": itc.text_embeds.numpy(),
        "itm": itm.logits_per_image.softmax(dim=1)[:, 1:2].numpy(),
    }
    sessions = {
        name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in paths.items()
    }
    image_embeds, hidden = sessions["image"].run(None, {C.PIXEL_VALUES: pixels.numpy()})
    feeds = {C.INPUT_IDS: ids.numpy(), C.ATTENTION_MASK: mask.numpy()}
    actual = {
        "image": image_embeds,
        "text": sessions["text"].run(None, feeds)[0],
        "itm": sessions["itm"].run(None, {C.VISION_HIDDEN_STATES: hidden, **feeds})[0],
    }
    return {name: checked_difference(name, actual[name], want, TOLERANCE) for name, want in expected.items()}
