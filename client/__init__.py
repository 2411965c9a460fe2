"""Python client SDK for a blip2-triton server."""
