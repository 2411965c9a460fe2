"""Image bytes → pixel values, with the checkpoint's own image-processor settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..images import decode_image


class ImagePreprocessor:
    """Decodes one encoded image safely and applies the checkpoint's image processor to it."""

    def __init__(self, processor_dir: str | Path) -> None:
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(str(processor_dir))

    def __call__(self, data: bytes) -> np.ndarray:
        """``[3, H, W]`` float32 pixel values of the image in ``data``."""
        image = decode_image(data)
        pixel_values = self.processor(images=image, return_tensors="np")["pixel_values"]
        return np.asarray(pixel_values[0], dtype=np.float32)
