"""A ``Blip2ForImageTextRetrieval`` checkpoint: its sizes, how its texts reach the Q-Former, loading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blip2_triton.runtime.retrieval.text_matching import RetrievalSettings

from .checkpoint import Checkpoint, load_pretrained
from .errors import ExportError
from .hub import CheckpointSource

RETRIEVAL_ARCHITECTURE = "Blip2ForImageTextRetrieval"


@dataclass
class RetrievalCheckpoint(Checkpoint):
    """A loaded retrieval checkpoint (``model`` is a ``Blip2ForImageTextRetrieval``, fp32)."""

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.image_text_hidden_size)

    @property
    def vision_tokens(self) -> int:
        """Positions of the vision encoder's output: [CLS] + one per patch."""
        return int(self.model.vision_model.embeddings.position_embedding.shape[1])

    @property
    def vision_hidden(self) -> int:
        return int(self.model.config.vision_config.hidden_size)

    def template_values(self) -> dict[str, Any]:
        return {
            **super().template_values(),
            "embed_dim": self.embed_dim,
            "vision_tokens": self.vision_tokens,
            "vision_hidden": self.vision_hidden,
        }

    def text_settings(self) -> RetrievalSettings:
        """How texts reach the Q-Former, read from the processor and the config (see runtime.retrieval.text_matching)."""
        config, processor = self.model.config, self.processor
        tokenizer = processor.tokenizer
        processor_queries = getattr(processor, "num_query_tokens", None)
        if config.image_token_index is not None:
            if processor_queries != self.num_query_tokens:
                raise ExportError(
                    f"{self.source}: the model drops the first {self.num_query_tokens} text ids (its config "
                    f"has image_token_index), but its processor puts {processor_queries or 0} image tokens "
                    "there; fix num_query_tokens in processor_config.json"
                )
            prefix: tuple[int, ...] = ()
        elif processor_queries:
            image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token.content)
            prefix = (int(image_token_id),) * int(processor_queries)
        else:
            prefix = ()
        positions = int(config.qformer_config.max_position_embeddings) - len(prefix)
        model_max = getattr(tokenizer, "model_max_length", None) or positions
        max_text_tokens = min(positions, int(model_max)) if model_max < 1_000_000 else positions
        if max_text_tokens < 3:
            raise ExportError(f"{self.source}: the Q-Former has room for {max_text_tokens} text tokens only")
        pad = tokenizer.pad_token_id
        return RetrievalSettings(
            num_query_tokens=self.num_query_tokens,
            embed_dim=self.embed_dim,
            max_text_tokens=max_text_tokens,
            pad_token_id=int(pad) if pad is not None else 0,
            prefix_ids=prefix,
            vocab_size=int(self.model.embeddings.word_embeddings.num_embeddings),
        )

    def model_ids(self, ids, mask):
        """Runtime ids -> what the processor hands the model (the image tokens it later drops)."""
        import torch

        if self.model.config.image_token_index is None:
            return ids, mask
        count = self.num_query_tokens
        images = torch.full((ids.shape[0], count), int(self.model.config.image_token_index), dtype=ids.dtype)
        return torch.cat([images, ids], dim=1), torch.cat([torch.ones_like(images), mask], dim=1)


def is_retrieval_config(config: Any) -> bool:
    """Whether a checkpoint's config names ``Blip2ForImageTextRetrieval``."""
    return RETRIEVAL_ARCHITECTURE in (getattr(config, "architectures", None) or [])


def load_retrieval_checkpoint(source: CheckpointSource) -> RetrievalCheckpoint:
    """Load a ``Blip2ForImageTextRetrieval`` checkpoint (fp32) and its processor."""
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor

    model = load_pretrained(Blip2ForImageTextRetrieval, source).eval()
    processor = load_pretrained(Blip2Processor, source)
    if not getattr(model.config.qformer_config, "use_qformer_text_input", False):
        raise ExportError(f"{source.name}: the Q-Former has no text branch (use_qformer_text_input is false)")
    return RetrievalCheckpoint(source=source.name, model=model, processor=processor)
