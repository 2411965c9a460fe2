"""Turn a BLIP-2 checkpoint into a self-contained Triton model repository.

One pipeline (``repository.export_repository``: stage beside the output, validate every config,
manifest, move into place) over one ``RepositoryWriter`` per architecture
(``generation_repository``, ``retrieval_repository``). Options are declared once in ``options``.
"""
