"""An OpenAI-compatible HTTP frontend for a blip2-triton server (``blip2-triton openai``).

Its own process: FastAPI + uvicorn in front, Triton behind over gRPC with the SDK's asyncio client.
Layout: ``config`` (the operator's choices), ``served_model`` (what the repository serves: id,
family, tokenizer), ``schemas`` (request bodies), ``messages`` (chat turns -> image + prompt, as the
SDK's ``chat``), ``image_urls`` (``image_url`` -> bytes, with limits), ``stops`` (``stop`` strings),
``errors`` (OpenAI's error JSON), ``chat`` and ``retrieval`` (the routes' work), ``sse`` (the
streamed chunks), ``guards`` (body limit, API key, metrics), ``metrics``, ``app`` (the routes),
``command`` (the CLI) and ``child`` (the frontend as a child of ``blip2-triton serve``).
"""
