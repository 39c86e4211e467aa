"""What a run's test logits were computed from, so that an update can keep those still valid.

A run writes beside ``logits.npz`` a record (``logit-sources.json``): a digest of the test set
(labels and pixels, in order) and, for every checkpoint file, the SHA-256 its header holds
(the checksum of the file's content). ``runoff update`` retrains only the chunks whose models'
data changed; a chunk it restores complete from a checkpoint file with the recorded digest, on
a test set with the recorded digest, gets its columns of the old logits instead of running its
models over the test set again: the same bytes are the same models, and their logits on the
same images are what was computed then. Anything else (another test set, a file rewritten, a
chunk trained in this call, a run without the record) computes the logits as before. On a CPU
this is most of an update's time for NiN: 20-35 s of test logits per model.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .checkpoints import checkpoint_digest, checkpoint_path

__all__ = ["digest_of_test_set", "logit_sources", "reusable_columns", "kept_logits", "chunk_test_logits",
           "SOURCES_FORMAT"]

SOURCES_FORMAT = "runoff-logit-sources"


def digest_of_test_set(images, labels) -> str:
    """SHA-256 (hex) of a test set in its order: image shape, labels and pixel bytes."""
    images = np.ascontiguousarray(images)
    h = hashlib.sha256(b"runoff-testset-v1")
    h.update(np.asarray(images.shape, dtype="<i8").tobytes())
    h.update(np.asarray(labels).astype("<i8").tobytes())
    h.update(images.tobytes())
    return h.hexdigest()


def logit_sources(checkpoint_dir, chunks, images, labels) -> dict:
    """The record written with a run's logits: the test set's digest and each chunk's
    checkpoint file digest (files without a readable header are left out)."""
    files = {}
    for ids in chunks:
        path = checkpoint_path(checkpoint_dir, ids)
        digest = checkpoint_digest(path)
        if digest is not None:
            files[path.name] = digest
    return {"format": SOURCES_FORMAT, "version": 1, "test": digest_of_test_set(images, labels), "checkpoints": files}


def reusable_columns(previous, chunks, images, labels, n_models: int) -> dict:
    """Each chunk's candidate logits from an earlier computation, by its ids.

    Parameters
    ----------
    previous : (scores, sources) or None
        Earlier logits (N, n_models, C) and their :func:`logit_sources` record.
    chunks : list of list of int
    images, labels
        The test set now.
    n_models : int

    Returns
    -------
    dict
        ``tuple(ids) -> (checkpoint digest, logits (N, len(ids), C))`` for the chunks the
        record names, when the test set is the recorded one (else empty). Whether a chunk's
        columns are used is decided where it is restored (:func:`kept_logits`).
    """
    if previous is None:
        return {}
    scores, sources = previous
    if (not isinstance(sources, dict) or sources.get("format") != SOURCES_FORMAT
            or scores.ndim != 3 or scores.shape[:2] != (len(labels), n_models)
            or sources.get("test") != digest_of_test_set(images, labels)):
        return {}
    files = sources.get("checkpoints") or {}
    out = {}
    for ids in chunks:
        digest = files.get(checkpoint_path(".", ids).name)
        if isinstance(digest, str):  # a view: a chunk's ids are a contiguous range
            out[tuple(ids)] = (digest, scores[:, ids[0]:ids[-1] + 1])
    return out


def kept_logits(candidate, checkpoint_dir, ids, *, start_epoch: int, epochs: int):
    """The chunk's earlier logits when they belong to the models just restored, else None.

    They do when the chunk was restored complete (``start_epoch >= epochs``: nothing was
    trained in this call) from a checkpoint file whose digest is the one the logits were
    computed from.
    """
    if candidate is None or start_epoch < epochs or checkpoint_dir is None:
        return None
    digest, columns = candidate
    return columns if checkpoint_digest(checkpoint_path(checkpoint_dir, ids)) == digest else None


def chunk_test_logits(res, plan, images, *, earlier, checkpoint_dir, epochs: int, device):
    """A trained or restored chunk's test logits, and whether they were kept from before.

    ``res``: the chunk's :class:`~runoff.training.trainer.ChunkResult`; ``earlier``: its
    entry of :attr:`~runoff.training.backends.TrainingJob.earlier_logits` (or None). The
    earlier logits when :func:`kept_logits` allows them, else
    :func:`~runoff.training.inference.chunk_logits` of its module. Both backends call this.
    """
    logits = kept_logits(earlier, checkpoint_dir, res.ids, start_epoch=res.start_epoch, epochs=epochs)
    if logits is not None:
        return logits, True
    from .inference import chunk_logits  # (lazy: imports torch)

    return chunk_logits(res.net, res.ids, plan, images, device=device), False
