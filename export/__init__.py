"""Turn a BLIP-2 checkpoint into a self-contained Triton model repository."""
