"""Training of the scene checkpoints that ``blip2_triton`` serves (not part of the serving wheel).

``train`` is the command (``make train-scenes``, ``python -m blip2_triton_train.train``):
``captioner_training`` trains the OPT captioner, ``retriever_training`` the ITC/ITM retriever, over
``data`` (rendered scenes and token sequences), ``models`` (fresh model builders), ``vocab`` (the
tokenizers), ``negatives`` (hard negative captions), ``training`` (settings, optimiser, schedule),
``local_eval`` (in-process held-out checks) and ``plot`` (the loss curve). Scene generation, the
scene language and the served evaluation stay in ``blip2_triton.scenes``.
"""
