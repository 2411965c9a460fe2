"""Tokenizers trained on the scene language with the ``tokenizers`` library.

``opt_tokenizer``: BPE with OPT's special tokens (``</s>`` = 2 is BOS and EOS, ``<pad>`` = 1),
Metaspace pre-tokenisation over a printable alphabet, so any prompt tokenises and every scene
word is one token. ``bert_tokenizer``: a lower-casing WordPiece ``BertTokenizer`` for the
retrieval checkpoint, shaped like the one ``Salesforce/blip2-itm-vit-g`` uses.
"""

from __future__ import annotations

from collections.abc import Iterator

from blip2_triton.scenes.generator import generate_scene
from blip2_triton.scenes.language import caption, questions, vqa_prompt

PRINTABLE = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?'\"-()/&")
CORPUS_SEEDS = range(-3000, 0)  # negative seeds: never a training or held-out scene


def scene_corpus() -> Iterator[str]:
    """Captions, prompts and answers of a few thousand scenes."""
    for seed in CORPUS_SEEDS:
        scene = generate_scene(seed)
        yield caption(scene)
        for qa in questions(scene):
            yield f"{vqa_prompt(qa.question)} {qa.answer}"


def opt_tokenizer(vocab_size: int = 256):
    """A ``PreTrainedTokenizerFast`` laid out as OPT's: ``</s>`` before every text, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=PRINTABLE,
        show_progress=False,
    )
    tok.train_from_iterator(scene_corpus(), trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )


def bert_tokenizer(vocab_size: int = 256):
    """A lower-casing WordPiece ``BertTokenizer`` (``[PAD]`` = 0, ``[CLS]`` text ``[SEP]``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        initial_alphabet=sorted({c.lower() for c in PRINTABLE}),
        show_progress=False,
    )
    tok.train_from_iterator(scene_corpus(), trainer)
    return BertTokenizer(vocab=tok.get_vocab(), do_lower_case=True, model_max_length=512)
