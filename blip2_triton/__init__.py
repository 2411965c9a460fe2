"""blip2-triton: serve BLIP-2 on NVIDIA Triton Inference Server."""

__version__ = "0.1.0"
