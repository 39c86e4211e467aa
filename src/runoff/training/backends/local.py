"""The local backend: this process trains the chunks one after another."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..logit_sources import chunk_test_logits
from .base import ChunkLogits, TrainedChunks, TrainingJob

__all__ = ["LocalBackend"]


@dataclass(frozen=True)
class LocalBackend:
    """Train every chunk in this process, with torch's threads (``train_run``'s default)."""

    name: str = "local"

    def session(self):
        return contextlib.nullcontext(self)

    def check(self, device) -> None:
        from ..device import resolve_device  # (lazy: imports torch)

        resolve_device(device)

    def train(self, job: TrainingJob) -> TrainedChunks:
        from ..device import resolve_device  # (lazy: imports torch)

        if job.heads is not None:  # heads on embeddings: fitted, not trained by epochs
            from ..feature_runs import train_heads  # (lazy: imports torch)

            return train_heads(job)
        from ..trainer import TrainingSet, trained_chunks  # (lazy: imports torch)

        dev = resolve_device(job.device)
        out = TrainedChunks(workers=1)
        # each chunk's logits are taken as soon as it is trained; its module is then let go
        for res in trained_chunks(job.plan, TrainingSet(job.plan, job.train, dev, fingerprints=job.fingerprints), job.chunks, recipe=job.recipe,
                                  seed_version=job.seed_version, device=dev, checkpoint_dir=job.checkpoint_dir,
                                  checkpoint_every=job.checkpoint_every,
                                  checkpoint_min_interval=job.checkpoint_min_interval,
                                  progress=job.progress, label=job.label,
                                  progress_interval=job.progress_interval, on_nan=job.on_nan,
                                  restart_stale=job.restart_stale, recipe_origin=job.recipe_origin):
            logits, kept = chunk_test_logits(res, job.plan, job.test.images, earlier=job.earlier(res.ids),
                                             checkpoint_dir=job.checkpoint_dir, epochs=job.recipe.epochs, device=dev)
            out.chunks.append(ChunkLogits(ids=list(res.ids), logits=logits, start_epoch=res.start_epoch,
                                          health=res.health, kept_logits=kept))
            job.chunk_done(res.ids)
        return out
