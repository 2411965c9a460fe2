"""The benchmarks' checkpoints: fixed sizes, random weights, built locally.

``BENCH`` is the BLIP-2 OPT size issue 8 fixes (vision 6 x 384, patch 14 at 224 px; Q-Former 4 x 384
with 32 queries; OPT 8 x 512 with the real 50272-row output layer), whose compute dominates on a
CPU; ``QUICK`` is a small one for smoke tests. ``OPT_2_7B`` / ``SMALL_LLM`` are language models
alone, written as an export's engine folder (``blip2_stream``) (language model, tokenizer, ``llm_settings.json``)
for the engine benchmark. The tokenizer is a byte-level BPE with OPT's special
tokens, trained in seconds on synthetic words up to OPT's vocabulary size, so every output row is a
real token and the processor works end to end. Everything is written with ``save_pretrained``, so
the code paths are those of a downloaded checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

OPT_VOCAB = 50272  # rows of OPT's embedding / output layer (tokenizer + <image>, as here)
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # OPT ids: pad 1, bos = eos = 2


@dataclass(frozen=True)
class BenchSpec:
    """Sizes of a benchmark checkpoint."""

    name: str
    image_size: int
    patch_size: int
    vision_layers: int
    vision_width: int
    qformer_layers: int
    qformer_width: int
    num_query_tokens: int
    llm_layers: int
    llm_width: int
    vocab_size: int = OPT_VOCAB
    seed: int = 0

    def describe(self) -> str:
        return (
            f"vision {self.vision_layers}x{self.vision_width} (patch {self.patch_size} at "
            f"{self.image_size} px), Q-Former {self.qformer_layers}x{self.qformer_width} with "
            f"{self.num_query_tokens} queries, OPT {self.llm_layers}x{self.llm_width} with a "
            f"{self.vocab_size}-row output layer"
        )


BENCH = BenchSpec("bench", 224, 14, 6, 384, 4, 384, 32, 8, 512)
QUICK = BenchSpec("quick", 64, 16, 2, 64, 2, 64, 8, 2, 64, vocab_size=2048)


def quiet_libraries() -> None:
    """No progress bars or advice from transformers and the hub on the console: only the figures."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _synthetic_corpus(seed: int, words: int = 120_000, lines: int = 30_000) -> list[str]:
    """Lines of random lower-case words: enough distinct words for ~50k BPE merges."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(words)]
    return [" ".join(rng.choice(vocabulary) for _ in range(20)) for _ in range(lines)]


def build_tokenizer(vocab_size: int, seed: int = 0) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` with OPT's special tokens and ``vocab_size`` - 1
    tokens (the processor adds ``<image>``), BOS prepended as OPT's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_synthetic_corpus(seed), trainer)
    if tok.get_vocab_size() != vocab_size - 1:
        raise RuntimeError(f"tokenizer trained to {tok.get_vocab_size()} tokens, wanted {vocab_size - 1}")
    bos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def make_processor(image_size: int, num_query_tokens: int, vocab_size: int, seed: int = 0) -> Any:
    """``Blip2Processor`` over the trained tokenizer; it adds ``<image>`` as the real one does."""
    from transformers import Blip2Processor, BlipImageProcessor

    processor = Blip2Processor(
        image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=build_tokenizer(vocab_size, seed),
        num_query_tokens=num_query_tokens,
    )
    if len(processor.tokenizer) != vocab_size:
        raise RuntimeError(f"tokenizer has {len(processor.tokenizer)} tokens, expected {vocab_size}")
    return processor


def build_processor(spec: BenchSpec) -> Any:
    return make_processor(spec.image_size, spec.num_query_tokens, spec.vocab_size, spec.seed)


def blip2_config(spec: BenchSpec, image_token_id: int) -> Any:
    """``Blip2Config`` of ``spec``: 4x-wide MLPs, 64-wide heads, OPT with tied embeddings as OPT has."""
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    vision = Blip2VisionConfig(
        hidden_size=spec.vision_width,
        intermediate_size=spec.vision_width * 4,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=max(1, spec.vision_width // 64),
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        initializer_range=0.02,  # the config's default (1e-10) leaves the vision tower all zeros
    )
    qformer = Blip2QFormerConfig(
        hidden_size=spec.qformer_width,
        num_hidden_layers=spec.qformer_layers,
        num_attention_heads=max(1, spec.qformer_width // 64),
        intermediate_size=spec.qformer_width * 4,
        encoder_hidden_size=spec.vision_width,
        cross_attention_frequency=2,  # as Salesforce's checkpoints
    )
    text = OPTConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.llm_width,
        num_hidden_layers=spec.llm_layers,
        ffn_dim=spec.llm_width * 4,
        num_attention_heads=max(1, spec.llm_width // 64),
        max_position_embeddings=2048,
        word_embed_proj_dim=spec.llm_width,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=spec.num_query_tokens,
        image_token_index=image_token_id,
    )


def build_checkpoint(output_dir: str | Path, spec: BenchSpec = BENCH) -> Path:
    """Write ``spec``'s ``Blip2ForConditionalGeneration`` and its processor to ``output_dir``."""
    import torch
    from transformers import Blip2ForConditionalGeneration

    output_dir = Path(output_dir)
    processor = build_processor(spec)
    config = blip2_config(spec, processor.tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(spec.seed)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 1.0)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    (output_dir / "bench_spec.txt").write_text(f"{asdict(spec)}\n")
    return output_dir


def parameter_count(model: Any) -> int:
    """Unique parameters (tied weights once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --------------------------------------------------------------------------------------------------
# Language model alone, as an export's engine folder (blip2_stream)


@dataclass(frozen=True)
class LlmSpec:
    """An OPT language model for BLIP-2 (``num_query_tokens`` image tokens before the text)."""

    name: str
    layers: int
    width: int
    heads: int
    ffn: int
    num_query_tokens: int = 32
    vocab_size: int = OPT_VOCAB
    seed: int = 0

    def describe(self) -> str:
        return (
            f"OPT {self.layers} layers x {self.width} wide ({self.heads} heads, FFN {self.ffn}), "
            f"{self.vocab_size}-token vocabulary, {self.num_query_tokens} image tokens"
        )


OPT_2_7B = LlmSpec("opt-2.7b", layers=32, width=2560, heads=32, ffn=10240)  # blip2-opt-2.7b's LLM
SMALL_LLM = LlmSpec("small", layers=2, width=128, heads=2, ffn=512, vocab_size=2048)
BENCH_LLM = LlmSpec("bench", layers=8, width=512, heads=8, ffn=2048)  # make bench's OPT
LLM_MODELS = {spec.name: spec for spec in (BENCH_LLM, SMALL_LLM, OPT_2_7B)}

TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def build_llm_folder(folder: str | Path, spec: LlmSpec, dtype: str, device: str) -> Path:
    """Write what an export writes for the engine model ``blip2_stream``: ``language_model/``, ``tokenizer/``,
    ``llm_settings.json``. Weights are random, initialised on ``device`` (fast on a GPU)."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from blip2_triton.runtime.llm.checkpoint import LlmSettings

    folder = Path(folder)
    tokenizer = make_processor(224, spec.num_query_tokens, spec.vocab_size, spec.seed).tokenizer
    config = OPTConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.width,
        num_hidden_layers=spec.layers,
        ffn_dim=spec.ffn,
        num_attention_heads=spec.heads,
        max_position_embeddings=2048,
        word_embed_proj_dim=spec.width,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    with torch.device(device):
        model = OPTForCausalLM(config).to(getattr(torch, TORCH_DTYPES[dtype])).eval()
    model.save_pretrained(folder / "language_model")
    del model
    tokenizer.save_pretrained(folder / "tokenizer")
    LlmSettings(
        family="opt",
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        num_query_tokens=spec.num_query_tokens,
        bos_token_id=config.bos_token_id,
        dtype=dtype,
    ).save(folder)
    return folder
