"""Training: base models, the batched trainer, checkpoints, backends, and trained ensembles.

The way through: :mod:`.runs` (``train_run``, ``train_dpa_star``) turns a data set and a
partition plan into a run folder; it cuts the models into chunks (:func:`.layout.run_chunks`)
and hands them to a backend (:mod:`.backends`: ``local`` or ``ray``), which trains each chunk
with :func:`.trainer.train_chunk` and returns its test logits. :mod:`.ensemble` loads a
finished run to predict and certify new inputs.

Nothing is imported here, so ``import runoff.training`` stays light; PyTorch is imported by
the modules that train.
"""
