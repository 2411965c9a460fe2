"""Build small BLIP-2 checkpoints locally: random weights, a locally trained tokenizer.

For tests and demos on machines without a model hub. The weights are random, so the text they
produce is meaningless; what matters is that every code path (``save_pretrained`` /
``from_pretrained``, processor, generation config) is exactly that of a downloaded checkpoint.
Logits are scaled up so that greedy top-1 choices have clear margins and exact comparisons mean
something.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

CORPUS_WORDS = (  # noqa: SIM905 - one readable block of words
    "a an the photo picture image of with and on in at near under over two three many small large red "
    "green blue yellow white black dog cat bird horse car bus tree house street beach sky water field "
    "man woman child people sitting standing running eating playing holding table plate food pizza "
    "question answer what is this color how where who there are it shows looks like sunny day night"
).split()


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny checkpoint."""

    family: str = "opt"
    image_size: int = 64
    patch_size: int = 8
    num_query_tokens: int = 8
    vocab_target: int = 400
    llm_hidden: int = 64
    llm_layers: int = 2
    logit_scale: float = 30.0
    image_influence: float = 4.0
    embed_dim: int = 16  # retrieval: image_text_hidden_size
    seed: int = 0


def _corpus(seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(2000)]


PRINTABLE = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-()/&")


def build_opt_tokenizer(spec: TinySpec):
    """A BPE tokenizer with OPT's special tokens (``</s>`` as BOS and EOS), trained in a second.

    Metaspace pre-tokenisation over a printable alphabet keeps generated text readable; characters
    outside it map to ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT ids: pad=1, bos=eos=2
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_target,
        special_tokens=special,
        initial_alphabet=PRINTABLE,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec.seed), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def build_t5_tokenizer(spec: TinySpec):
    """A BPE tokenizer with T5's special tokens (pad ``<pad>`` = 0, eos ``</s>`` = 1, unk ``<unk>`` = 2).

    Like ``T5TokenizerFast`` it appends ``</s>`` to every encoded text (no BOS) and pads on the
    right; Metaspace keeps generated text readable. ``model_max_length`` 512 as Flan-T5's.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_target,
        special_tokens=special,
        initial_alphabet=PRINTABLE,
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec.seed), trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=512,
    )


def _vision_qformer_configs(spec: TinySpec):
    from transformers import Blip2QFormerConfig, Blip2VisionConfig

    vision = Blip2VisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        initializer_range=0.02,  # the config's default (1e-10) leaves the vision tower all zeros
    )
    qformer = Blip2QFormerConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        encoder_hidden_size=48,
        cross_attention_frequency=1,
        vocab_size=128,
        max_position_embeddings=64,
    )
    return vision, qformer


def _processor(tokenizer, spec: TinySpec):
    """``Blip2Processor`` over ``tokenizer``; it adds the ``<image>`` token as the real one does."""
    from transformers import Blip2Processor, BlipImageProcessor

    return Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": spec.image_size, "width": spec.image_size}),
        tokenizer=tokenizer,
        num_query_tokens=spec.num_query_tokens,
    )


def _strengthen_image(model, spec: TinySpec) -> None:
    """Stronger vision and cross-attention weights, so that different images give different texts.

    Random init leaves the image almost without influence on the text.
    """
    for name, param in model.named_parameters():
        if param.dim() >= 2 and (name.startswith("vision_model.") or "crossattention" in name):
            param.mul_(spec.image_influence)
    model.language_projection.weight.mul_(spec.image_influence)


def build_tiny_opt(output_dir: str | Path, spec: TinySpec | None = None) -> Path:
    """Write a tiny ``Blip2ForConditionalGeneration`` (OPT) checkpoint and its processor."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    spec = spec or TinySpec()
    output_dir = Path(output_dir)
    tokenizer = build_opt_tokenizer(spec)
    processor = _processor(tokenizer, spec)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision, qformer = _vision_qformer_configs(spec)
    text = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.llm_hidden,
        num_hidden_layers=spec.llm_layers,
        ffn_dim=spec.llm_hidden * 2,
        num_attention_heads=4,
        max_position_embeddings=256,
        word_embed_proj_dim=spec.llm_hidden,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=spec.num_query_tokens,
        image_token_index=image_token_id,
    )
    torch.manual_seed(spec.seed)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # A larger output projection spreads the logits, so top-1 margins are clear.
        model.language_model.get_output_embeddings().weight.mul_(spec.logit_scale)
        model.query_tokens.normal_(0.0, 1.0)
        _strengthen_image(model, spec)
        _pick_stop_token(model, processor, spec)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def _pick_stop_token(model, processor, spec: TinySpec) -> None:
    """Make a token the model emits mid-sentence its end-of-sequence token, as real checkpoints do.

    Salesforce's OPT checkpoints stop on a newline (``text_config.eos_token_id``); a random model
    would otherwise never stop early, leaving the end-of-sequence handling untested.
    """
    stop = _stop_candidate(model, processor, spec, prompt_length=spec.num_query_tokens + 1)
    if stop is None:
        return
    model.config.text_config.eos_token_id = stop
    model.language_model.config.eos_token_id = stop
    model.language_model.generation_config.eos_token_id = stop


def _stop_candidate(model, processor, spec: TinySpec, prompt_length: int) -> int | None:
    """A token that greedy captions of random images emit mid-sentence, in some but not all of them.

    ``prompt_length``: leading positions of ``generate``'s output that are not new tokens.
    """
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(spec.seed)
    images = [Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)) for _ in range(6)]
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        sequences = model.generate(**inputs, max_new_tokens=24, do_sample=False)[:, prompt_length:]
    first_seen: dict[int, list[int]] = {}
    for row in sequences.tolist():
        for position, token in enumerate(row):
            if token > 3 and position >= 3:
                first_seen.setdefault(token, [])
                if len(first_seen[token]) < sequences.shape[0] and position not in first_seen[token]:
                    first_seen[token].append(position)
    candidates = [t for t, seen in first_seen.items() if 2 <= len(seen) <= 4]
    if not candidates:
        return None
    return min(candidates, key=lambda t: (abs(min(first_seen[t]) - 8), t))


def build_tiny_t5(output_dir: str | Path, spec: TinySpec | None = None) -> Path:
    """Write a tiny Flan-T5-style ``Blip2ForConditionalGeneration`` checkpoint and its processor.

    The text config is what Salesforce's BLIP-2 Flan-T5 checkpoints have, in small: gated-GELU
    feed-forward, relative attention, pad 0 = decoder start, eos 1, an untied ``lm_head`` (no
    output rescaling) and ``bos_token_id`` 1, which transformers' BLIP-2 conversion sets for
    Flan-T5 and ``generate`` appends to the image tokens when there is no prompt.
    """
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, T5Config

    spec = spec or TinySpec(family="t5")
    output_dir = Path(output_dir)
    tokenizer = build_t5_tokenizer(spec)
    processor = _processor(tokenizer, spec)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision, qformer = _vision_qformer_configs(spec)
    text = T5Config(
        vocab_size=len(tokenizer),
        d_model=spec.llm_hidden,
        d_kv=spec.llm_hidden // 4,
        d_ff=spec.llm_hidden * 2,
        num_layers=spec.llm_layers,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        decoder_start_token_id=0,
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=spec.num_query_tokens,
        image_token_index=image_token_id,
    )
    torch.manual_seed(spec.seed)
    model = Blip2ForConditionalGeneration(config).eval()
    language_model = model.language_model
    with torch.no_grad():
        # transformers 5 builds T5 with a tied head; Flan-T5 checkpoints store their own, larger one.
        head = torch.randn(language_model.lm_head.weight.shape) * (spec.logit_scale / spec.llm_hidden**0.5)
        language_model.lm_head.weight = torch.nn.Parameter(head)
        model.query_tokens.normal_(0.0, 1.0)
        _strengthen_image(model, spec)
        _move_stop_token(model, processor, spec)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


def _move_stop_token(model, processor, spec: TinySpec) -> None:
    """Make the model emit ``</s>`` where it would emit some mid-sentence token (T5's eos is fixed).

    Swapping the two rows of ``lm_head`` leaves a text unchanged up to the first occurrence of the
    chosen token, which becomes the end; without it a random model would almost never stop early.
    """
    stop = _stop_candidate(model, processor, spec, prompt_length=1)  # after the decoder start token
    if stop is None:
        return
    eos = model.config.text_config.eos_token_id
    weight = model.language_model.lm_head.weight
    weight[[eos, stop]] = weight[[stop, eos]].clone()


def build_bert_tokenizer(spec: TinySpec):
    """A lower-casing WordPiece ``BertTokenizer`` (``[PAD]`` = 0), as the retrieval checkpoints use.

    Trained in a second on the tiny corpus; ``model_max_length`` 512 as bert-base-uncased's.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=spec.vocab_target,
        special_tokens=special,
        initial_alphabet=sorted({c.lower() for c in PRINTABLE}),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec.seed), trainer)
    return BertTokenizer(vocab=tok.get_vocab(), do_lower_case=True, model_max_length=512)


def build_tiny_retrieval(output_dir: str | Path, spec: TinySpec | None = None) -> Path:
    """Write a tiny ``Blip2ForImageTextRetrieval`` checkpoint and its processor.

    Shaped like ``Salesforce/blip2-itm-vit-g`` in small: ``Blip2Processor`` over a ``BertTokenizer``
    (which adds ``<image>``, ``image_token_index`` in the config), a Q-Former whose text embeddings
    cover the tokenizer, ``image_text_hidden_size`` = ``spec.embed_dim``. Vision, cross-attention
    and ITM-head weights are scaled up so that images and texts get clearly different scores.
    """
    import torch
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    spec = spec or TinySpec(family="retrieval")
    output_dir = Path(output_dir)
    tokenizer = build_bert_tokenizer(spec)
    processor = _processor(tokenizer, spec)
    vision, qformer = _vision_qformer_configs(spec)
    qformer_config = {
        **qformer.to_dict(),
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "use_qformer_text_input": True,  # the text branch (ITC text features, ITM) needs its own FFN
    }
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer_config,
        num_query_tokens=spec.num_query_tokens,
        image_text_hidden_size=spec.embed_dim,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(spec.seed)
    model = Blip2ForImageTextRetrieval(config).eval()
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 1.0)
        # Random init makes every text look alike (near-uniform attention, tiny word embeddings):
        # larger word embeddings, self-attention and feed-forward weights make rankings differ by text.
        model.embeddings.word_embeddings.weight.mul_(20.0)
        text_parts = ("attention.attention.", ".intermediate.", ".output.dense.")
        for name, param in model.named_parameters():
            if param.dim() < 2:
                continue
            if name.startswith("vision_model.") or "crossattention" in name:
                param.mul_(spec.image_influence)
            if name.startswith("qformer.") and any(part in name for part in text_parts):
                param.mul_(4.0)  # cross-attention included: the ITM head then depends on the image
        model.itm_head.weight.mul_(spec.image_influence * 4)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


BUILDERS = {"opt": build_tiny_opt, "t5": build_tiny_t5, "retrieval": build_tiny_retrieval}


def build_tiny_checkpoint(output_dir: str | Path, family: str = "opt", **overrides) -> Path:
    """Build a tiny checkpoint of a family ("opt", "t5", "retrieval") into ``output_dir``."""
    if family not in BUILDERS:
        raise ValueError(f"unknown tiny checkpoint family {family!r}; choose from {sorted(BUILDERS)}")
    return BUILDERS[family](output_dir, TinySpec(family=family, **overrides))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--family", default="opt", choices=sorted(BUILDERS))
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    path = build_tiny_checkpoint(args.output, args.family, image_size=args.image_size)
    print(f"tiny {args.family} checkpoint (random weights) written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
