"""A run on disk: the folder's layout and every read and write of it.

- :mod:`.folder`: :class:`~runoff.run.folder.RunFolder`, the one module that knows where a
  run keeps its plan, checkpoints, logits, health record and reports, and that every reader
  asks whether the run is whole;
- :mod:`.lock`: one writer per run folder (``RUN/.runoff-lock``);
- :mod:`.logits`: logits files (``.npz``, the reference pipeline's ``.pth``) and certificate
  files, in a run or standing alone (``runoff certify FILE``);
- :mod:`.health`: ``models.json``, each base model's training loss and accuracy and the models
  flagged as diverged, at chance or without data.

Training writes a run (:mod:`runoff.training`), reporting reads it (:mod:`runoff.reporting`);
both go through here. Nothing here imports PyTorch.
"""
