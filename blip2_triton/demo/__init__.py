"""The demo: ``make demo``, ``blip2-triton demo`` and ``python -m blip2_triton.demo``."""
