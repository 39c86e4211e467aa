"""The local backend: this process trains the chunks one after another."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from . import ChunkLogits, TrainedChunks, TrainingJob

__all__ = ["LocalBackend"]


@dataclass(frozen=True)
class LocalBackend:
    """Train every chunk in this process, with torch's threads (``train_run``'s default)."""

    name: str = "local"

    def session(self):
        return contextlib.nullcontext(self)

    def check(self, device) -> None:
        from ..trainer import resolve_device

        resolve_device(device)

    def train(self, job: TrainingJob) -> TrainedChunks:
        from ..progress import TrainingProgress
        from ..trainer import TrainingSet, chunk_logits, chunk_steps, resolve_device, train_chunk

        dev = resolve_device(job.device)
        if job.checkpoint_dir is not None:
            Path(job.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        data = TrainingSet(job.plan, job.train, dev)
        steps = [chunk_steps(job.plan, ids, job.recipe) for ids in job.chunks]
        out = TrainedChunks(workers=1)
        with TrainingProgress(sum(steps), enabled=job.progress, label=job.label) as bar:
            for i, ids in enumerate(job.chunks):
                bar.update(sum(steps[:i]), f"chunk {i + 1}/{len(job.chunks)}")
                res = train_chunk(
                    job.plan, data, ids, recipe=job.recipe, seed_version=job.seed_version, device=dev,
                    checkpoint_dir=job.checkpoint_dir, checkpoint_every=job.checkpoint_every,
                    checkpoint_min_interval=job.checkpoint_min_interval,
                    on_progress=lambda done, _total, base=sum(steps[:i]): bar.update(base + done),
                )
                logits = chunk_logits(res.net, ids, job.plan, job.test.images, device=dev)
                out.chunks.append(ChunkLogits(ids=list(ids), logits=logits, start_epoch=res.start_epoch))
        return out
