"""Runs whose base models are small heads on frozen embeddings (issue 25): data, chunks, checkpoints.

``runoff train --features SPEC`` (or ``--dataset npz:FILE`` of float embeddings) trains each
base model as a head (:func:`runoff.training.heads.fit_heads`) on its own subset's embeddings.
Everything else is a run as any other:

* **The plan** is built from the data as loaded, exactly as without ``--features``: from the
  original images (the same buckets and fingerprints), or, for embeddings that came as such,
  from their bytes (:func:`~runoff.data.features.embedded.hashable_dataset`, sha256 only). The
  embeddings are computed in the loaded order and put in the plan's canonical order. The
  plan's ``training`` record holds the head's settings and the backbone's record (spec,
  weights digest, embedding size), so a resume or an update with another backbone or other
  head settings is another plan, and is refused.
* **Chunks** are those of :func:`~runoff.training.layout.run_chunks`; each chunk's heads are
  fitted in one call and saved as its checkpoint file (``models-FIRST-LAST.pt``, the same
  keys as any chunk's: :func:`~runoff.training.checkpoints.chunk_key` covers the head's
  settings and the backbone), so resume, ``runoff update`` (only the chunks whose subsets
  changed are fitted again) and kept test logits work as for trained networks. A head fitted
  in any chunk equals itself bit for bit (:mod:`runoff.training.heads`), so chunk-mates fitted
  again come out the same.
* Heads are fitted with one torch thread unless told otherwise (``threads``): these many small
  operations run several times faster on one thread than on two on a loaded machine.

This module imports PyTorch (through :mod:`.heads`); ``train_run`` imports it lazily.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.custom import NPZ_PREFIX, parse_image_size
from ..data.datasets import default_data_root, load_dataset
from ..data.download import download as fetch
from ..data.features import (Backbone, check_backbone_record, compute_embeddings, embed_dataset, hashable_dataset,
                             load_backbone, load_npz_features)
from ..errors import CheckpointError, InvalidParameterError, RunDirectoryError, TrainingDivergedError
from ..param_checks import check_int
from ..plan.hashing import content_order
from ..plan.partition import make_plan
from ..run.folder import RunFolder
from .backends.base import ChunkLogits, TrainedChunks
from .checkpoints import (checkpoint_bytes, checkpoint_matches, checkpoint_path, chunk_key, existing_ranges,
                          load_checkpoint, peek_checkpoint, plan_key, write_checkpoint_bytes)
from .head_recipe import HeadRecipe, is_embeddings, is_heads_training
from .heads import Heads, fit_heads
from .logit_sources import kept_logits
from .progress import ChunkWork, TrainingProgress

__all__ = ["HeadsData", "load_embedded", "heads_plan", "heads_data", "heads_chunk", "train_heads",
           "load_heads", "run_backbone", "update_data", "heads_logits", "input_features"]


@dataclass(frozen=True)
class HeadsData:
    """What fitting a run's heads needs besides its plan: embeddings in canonical order.

    Attributes
    ----------
    recipe : HeadRecipe
    train_features : numpy.ndarray of float32, shape (n, D)
        The training set's embeddings in the plan's canonical order.
    train_labels : numpy.ndarray of int64, shape (n,)
        In the same order.
    test_features : numpy.ndarray of float32, shape (N, D)
        The test set's, in its loaded order (that of its labels).
    threads : int, default 1
        Torch threads while heads are fitted.
    """

    recipe: HeadRecipe
    train_features: np.ndarray
    train_labels: np.ndarray
    test_features: np.ndarray
    threads: int = 1


# ---------------------------------------------------------------------------- data and plan
def load_embedded(dataset, *, backbone: Backbone | None, data_root=None, image_size=None, download=False,
                  cache_dir=None, device="cpu", progress=False):
    """The data of a heads run and its embeddings, in the loaded order.

    Parameters
    ----------
    dataset : str
        Any data set name; ``npz:FILE`` of float embeddings takes ``backbone=None``.
    backbone : Backbone or None
        Loaded (and checked) by the caller, before anything is read or written.

    Returns
    -------
    train, test : Dataset
        What the plan hashes: the images as loaded, or the embeddings' bytes.
    train_features, test_features : numpy.ndarray of float32, shapes (n, D), (N, D)
    record : dict or None
        The backbone's :meth:`~runoff.data.features.Backbone.record` (None: embeddings given).
    """
    if backbone is None:
        train_emb, test_emb = load_npz_features(dataset[len(NPZ_PREFIX):])
        return (hashable_dataset(train_emb), hashable_dataset(test_emb), train_emb.features, test_emb.features,
                None)
    if download:
        fetch(dataset, data_root if data_root is not None else default_data_root())
    train, test = load_dataset(dataset, root=data_root, image_size=image_size)
    started = time.perf_counter()
    if progress:
        print(f"embedding {len(train)} training and {len(test)} test images with {backbone.spec} "
              "(cached: unchanged images are not embedded again)", flush=True)
    module = backbone.module.to(device)
    embedded = [embed_dataset(part, Backbone(backbone.spec, module, backbone.weights_digest), cache_dir=cache_dir,
                              device=device).features for part in (train, test)]
    if progress:
        print(f"embeddings of size {embedded[0].shape[1]} ready in {time.perf_counter() - started:.1f} s", flush=True)
    return train, test, embedded[0], embedded[1], backbone.record(embedded[0].shape[1])


def heads_training(recipe: HeadRecipe, record, *, seed_version: int, train) -> dict:
    """A heads run's plan ``training`` record (see :mod:`runoff.training.head_recipe`)."""
    training = {"heads": recipe.to_dict(), "features": record, "seed_version": int(seed_version),
                "seed_rule": "mlp heads: seed v, model id j"}
    if train.class_names is not None:
        training["class_names"] = list(train.class_names)
    return training


def heads_plan(dataset, *, recipe: HeadRecipe, features, k, d, spread, hash, seed_version, data_root=None,
               image_size=None, download=False, cache_dir=None, device="cpu", threads=1, progress=False,
               names=None):
    """Load (and embed) the data and build the plan of a heads run; nothing is written.

    ``features``: the ``--features`` spec, a loaded :class:`Backbone`, or None for ``npz:``
    embeddings. Returns ``(plan, train, test, HeadsData)``.

    Raises
    ------
    InvalidParameterError
        ``--hash pixelsum`` on embeddings that came as such, ``--features`` with them, none
        with image data.
    """
    names = names or {}
    embeddings = is_embeddings(dataset)
    if embeddings and features is not None:
        raise InvalidParameterError(f"{dataset} holds embeddings already: drop {names.get('features', 'features')}")
    if not embeddings and features is None:
        raise InvalidParameterError(f"heads train on embeddings: give {names.get('features', 'features')} (a backbone "
                                    "for the images) or an npz: file of float embeddings x_train, x_test (N, D)")
    if embeddings and hash == "pixelsum":
        raise InvalidParameterError(f"{names.get('hash', 'hash')} pixelsum does not apply to embeddings (a sum of "
                                    "float bytes means nothing): use sha256, their default")
    backbone = None if features is None else (features if isinstance(features, Backbone) else
                                              load_backbone(features))
    train, test, train_x, test_x, record = load_embedded(dataset, backbone=backbone, data_root=data_root,
                                                         image_size=image_size, download=download,
                                                         cache_dir=cache_dir, device=device, progress=progress)
    training = heads_training(recipe, record, seed_version=seed_version, train=train)
    if image_size is not None:  # folder: images resized to (H, W); `runoff update` reads them alike
        training["image_size"] = list(parse_image_size(image_size))
    plan = make_plan(train, k=k, d=d, spread=spread, hash=hash, training=training)
    return plan, train, test, heads_data(plan, train, train_x, test_x, threads=threads)


def heads_data(plan, train, train_features, test_features, *, threads=1) -> HeadsData:
    """:class:`HeadsData` of a plan: the embeddings (loaded order) put in its canonical order."""
    order = content_order(train.images, train.labels)
    return HeadsData(HeadRecipe.from_dict(plan.training["heads"]), np.ascontiguousarray(train_features[order]),
                     train.labels[order], np.ascontiguousarray(test_features),
                     threads=check_int(threads, "threads", low=1))


def run_backbone(training: dict, *, source: str) -> Backbone | None:
    """The backbone a heads run records, loaded and checked against the record (None: embeddings given).

    Raises
    ------
    CheckpointError
        Its weights (or spec) now differ from those the run was trained with.
    """
    record = training.get("features")
    if record is None:
        return None
    backbone = load_backbone(record.get("spec"))
    check_backbone_record(record, backbone, source=source)
    return backbone


def update_data(old, *, dataset, data_root, image_size, download, cache_dir=None, device="cpu", threads=1,
                progress=False):
    """The new data of ``runoff update`` on a heads run: ``(train, test, train_x, test_x)`` in the
    loaded order, embedded with the run's own backbone (refused when its weights changed)."""
    backbone = run_backbone(old.training, source=f"the run of {old.dataset}")
    train, test, train_x, test_x, record = load_embedded(dataset, backbone=backbone, data_root=data_root,
                                                         image_size=image_size, download=download,
                                                         cache_dir=cache_dir, device=device, progress=progress)
    if record is not None and record != old.training.get("features"):
        raise RunDirectoryError(f"the backbone's embeddings changed ({old.training.get('features')} -> {record}): "
                                "not an update; train a new run")
    return train, test, train_x, test_x


# ---------------------------------------------------------------------------- chunks
@contextlib.contextmanager
def _torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def heads_state(heads: Heads, *, plan_key: str, chunk_key: str) -> dict:
    """A chunk of heads as a checkpoint payload (:func:`~runoff.training.checkpoints.save_checkpoint`)."""
    arrays = heads.to_arrays()
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items() if k not in ("kind", "n_classes")}
    return {"format": "runoff-checkpoint", "version": 2, "chunk_key": chunk_key, "plan_key": plan_key,
            "model_ids": [int(j) for j in heads.model_ids], "epoch": 1, "heads": {
                "kind": heads.kind, "n_classes": int(heads.n_classes), **tensors}}


def restore_heads(obj: dict, path, ids, recipe: HeadRecipe, dim: int) -> Heads:
    """The heads of a checkpoint payload, checked against the chunk's ids, head kind and embedding size."""
    def bad(msg):
        return CheckpointError(f"checkpoint {path}: {msg}")

    payload = obj.get("heads")
    if not isinstance(payload, dict):
        raise bad("holds no heads (a checkpoint of trained networks, not of heads on embeddings)")
    if obj.get("model_ids") != list(ids) or obj.get("epoch") != 1:
        raise bad(f"holds models {obj.get('model_ids')!r} at epoch {obj.get('epoch')!r}; expected {list(ids)}")
    try:
        heads = Heads.from_arrays({k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in payload.items()})
        ok = (heads.kind == recipe.kind and heads.model_ids.tolist() == list(ids) and heads.mean.shape == (len(ids), dim)
              and all(v.shape[0] == len(ids) for v in heads.params.values()))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise bad(f"unreadable heads ({exc})") from None
    if not ok:
        raise bad(f"its heads do not fit the run ({recipe.kind} heads on embeddings of size {dim})")
    return heads


def _fit_chunk(plan, data: HeadsData, ids, *, seed_version: int) -> Heads:
    r = data.recipe
    return fit_heads(data.train_features, data.train_labels, [plan.subsets[j] for j in ids], n_classes=plan.n_classes,
                     head=r.kind, l2=r.l2, hidden=r.hidden, max_iter=r.max_iter, tol=r.tol, lr=r.lr, dtype=r.dtype,
                     seed=seed_version, model_ids=ids)


def _chunk_heads(plan, data: HeadsData, ids, keys: dict, *, seed_version: int, checkpoint_dir, on_nan: str,
                 restart_stale: bool):
    """A chunk's heads, restored from its checkpoint or fitted (and saved); whether restored (1)
    or not (0); and the checkpoint file's bytes when fitted now (None: restored, or no folder)."""
    path = None if checkpoint_dir is None else checkpoint_path(checkpoint_dir, ids)
    if path is not None and path.exists():
        obj = load_checkpoint(path)
        if checkpoint_matches(obj, **keys):
            return restore_heads(obj, path, ids, data.recipe, data.train_features.shape[1]), 1, None
        if not restart_stale:
            raise CheckpointError(f"checkpoint {path}: it belongs to another plan or recipe, or its models' "
                                  "training data changed")
    heads = _fit_chunk(plan, data, ids, seed_version=seed_version)
    bad = [int(j) for j, loss in zip(ids, heads.loss) if not np.isfinite(loss)]
    if bad and on_nan == "stop":
        raise TrainingDivergedError(f"heads {', '.join(map(str, bad))}: training loss not finite; raise l2, or "
                                    "fit on and flag them with --on-nan skip")
    if path is None:
        return heads, 0, None
    final = checkpoint_bytes(heads_state(heads, **keys))
    # a Ray task on a node without the driver's file system makes the folder for itself
    path.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint_bytes(path, final)
    return heads, 0, final


def heads_chunk(plan, data: HeadsData, ids, *, pkey: str, fingerprints, seed_version: int, checkpoint_dir=None,
                on_nan: str = "stop", restart_stale: bool = False, earlier=None):
    """Fit (or restore) one chunk of heads and take its test logits: what every backend runs per chunk.

    The local backend calls it chunk after chunk (:func:`train_heads`), the Ray backend once per
    task, so both are the same computation and give the same logits bit for bit.

    Parameters
    ----------
    plan : PartitionPlan
    data : HeadsData
    ids : list of int
        The chunk's model ids.
    pkey : str
        The plan's :func:`~runoff.training.checkpoints.plan_key` (computed once per run).
    fingerprints : list of str
        The plan's subset fingerprints.
    seed_version : int
    checkpoint_dir : path-like, optional
        Where the chunk's checkpoint is read and written (None: neither).
    on_nan : {"stop", "skip"}, default "stop"
    restart_stale : bool, default False
        Fit again a chunk whose checkpoint holds other data instead of refusing it.
    earlier : tuple or None
        :meth:`~runoff.training.backends.TrainingJob.earlier` of the chunk.

    Returns
    -------
    chunk : ChunkLogits
        ``start_epoch`` 1 for a chunk restored from its checkpoint, 0 for one fitted now.
    checkpoint : bytes or None
        The checkpoint file written for a chunk fitted now (the Ray backend's driver writes it
        into a run folder that lacks it); None otherwise.
    """
    keys = {"plan_key": pkey, "chunk_key": chunk_key(plan, ids, fingerprints)}
    with _torch_threads(data.threads):
        heads, start, final = _chunk_heads(plan, data, ids, keys, seed_version=seed_version,
                                           checkpoint_dir=checkpoint_dir, on_nan=on_nan, restart_stale=restart_stale)
        logits = kept_logits(earlier, checkpoint_dir, ids, start_epoch=start, epochs=1)
        kept = logits is not None
        if not kept:
            logits = heads.logits(data.test_features)
    return ChunkLogits(ids=list(ids), logits=logits, start_epoch=start,
                       health=heads_health(heads, plan, data.train_labels), kept_logits=kept), final


def heads_health(heads: Heads, plan, labels) -> dict:
    """A chunk's ``health`` (:func:`runoff.training.trainer.model_health`'s fields, and ``converged``)."""
    majority = []
    for j in heads.model_ids:
        y = labels[plan.subsets[int(j)]]
        majority.append(float(np.bincount(y).max() / len(y)) if len(y) else 1.0)
    ids = [int(j) for j in heads.model_ids]
    return {"ids": ids, "loss": heads.loss.tolist(), "accuracy": heads.train_accuracy.tolist(), "majority": majority,
            "diverged": [j for j, v in zip(ids, heads.loss) if not np.isfinite(v)],
            "converged": [bool(c) for c in heads.converged]}


def heads_progress(job, fingerprints) -> TrainingProgress:
    """The progress display of fitting ``job``'s heads, whichever backend fits them: one step per
    head, a chunk whose checkpoint is finished counted as kept."""
    pkey, work = plan_key(job.plan), []
    for ids in job.chunks if job.progress else []:
        obj = None if job.checkpoint_dir is None else peek_checkpoint(checkpoint_path(job.checkpoint_dir, ids))
        done = obj is not None and obj.get("epoch") == 1 and checkpoint_matches(
            obj, plan_key=pkey, chunk_key=chunk_key(job.plan, ids, fingerprints))
        work.append(ChunkWork(ids=list(ids), steps=len(ids), done=len(ids) if done else 0,
                              samples=sum(len(job.plan.subsets[j]) for j in ids), finished=done))
    recipe = job.heads.recipe
    what = f"{recipe.kind} heads, l2={recipe.l2:g}" + (f": {job.recipe_origin}" if job.recipe_origin else "")
    return TrainingProgress(work, recipe=what, enabled=job.progress, label=job.label,
                            interval=job.progress_interval)


def train_heads(job) -> TrainedChunks:
    """Fit (or restore) every chunk of heads of ``job`` (a :class:`~runoff.training.backends.TrainingJob`
    with ``heads``) in this process, and take each chunk's test logits (:func:`heads_chunk`).

    Returns
    -------
    TrainedChunks
        ``start_epoch`` 1 for a chunk restored from its checkpoint, 0 for one fitted now.
    """
    plan = job.plan
    fingerprints = job.fingerprints or plan.subset_fingerprints(job.train, check=False)
    if job.checkpoint_dir is not None:
        Path(job.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    pkey, out = plan_key(plan), TrainedChunks(workers=1)
    with heads_progress(job, fingerprints) as bar:
        done = bar.restored
        for i, ids in enumerate(job.chunks):
            chunk, _ = heads_chunk(plan, job.heads, ids, pkey=pkey, fingerprints=fingerprints,
                                   seed_version=job.seed_version, checkpoint_dir=job.checkpoint_dir,
                                   on_nan=job.on_nan, restart_stale=job.restart_stale, earlier=job.earlier(ids))
            out.chunks.append(chunk)
            if not chunk.start_epoch:
                done += len(ids)
                bar.update(done)
            bar.chunk_finished(i)
            job.chunk_done(ids)
    return out


# ---------------------------------------------------------------------------- loading a run
def load_heads(run_dir, plan) -> list:
    """The heads of a finished heads run folder: ``[(model ids, Heads), ...]`` by first id.

    Raises
    ------
    RunDirectoryError
        No checkpoints, or models missing or held twice.
    CheckpointError
        A checkpoint corrupt, or of another plan.
    """
    folder = RunFolder(run_dir)
    if not is_heads_training(plan.training):
        raise RunDirectoryError(f"{folder.plan_path}: not a run of heads on embeddings")
    recipe = HeadRecipe.from_dict(plan.training["heads"])
    dim = int((plan.training.get("features") or {}).get("embedding_size") or plan.image_shape[1] // 4)
    ranges = existing_ranges(folder.checkpoint_dir, plan.n_models)
    if not ranges:
        raise RunDirectoryError(f"{run_dir}: no trained heads (no checkpoints in {folder.checkpoint_dir}); run "
                                "`runoff train` into it")
    fingerprints, pkey = folder.read_subsets(plan.n_models), plan_key(plan)
    covered, members = np.zeros(plan.n_models, dtype=np.int64), []
    for first, last, path in ranges:
        ids = list(range(first, last + 1))
        obj = load_checkpoint(path)
        ckey = None if fingerprints is None else chunk_key(plan, ids, fingerprints)
        if not checkpoint_matches(obj, plan_key=pkey, chunk_key=ckey):
            raise CheckpointError(f"checkpoint {path}: it belongs to another plan or recipe, or its models' "
                                  "training data changed")
        members.append((ids, restore_heads(obj, path, ids, recipe, dim)))
        covered[ids] += 1
    if (covered != 1).any():
        raise RunDirectoryError(f"{run_dir}: models {np.flatnonzero(covered != 1).tolist()[:10]} are in no checkpoint "
                                "or in several; rerun `runoff train` into it")
    return members


def heads_logits(members, plan, features) -> np.ndarray:
    """Every head's logits of ``features`` ``(N, D)``: float32 ``(N, k*d, C)`` (``members`` from :func:`load_heads`)."""
    scores = np.zeros((features.shape[0], plan.n_models, plan.n_classes), dtype=np.float32)
    for ids, heads in members:
        scores[:, ids] = heads.logits(features)
    return scores


def input_features(backbone: Backbone | None, x, plan, *, check_images, device="cpu") -> np.ndarray:
    """New inputs as a heads run sees them: images (checked by ``check_images``) through its
    backbone, or, for a run on embeddings given as such, embeddings ``(N, D)`` as they are."""
    if backbone is not None:
        return compute_embeddings(backbone.module, check_images(x), device=device)
    dim = int(plan.image_shape[1]) // 4
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != dim or not np.issubdtype(arr.dtype, np.floating) or not len(arr):
        raise InvalidParameterError(f"this run's heads were trained on embeddings given as such: inputs must be float "
                                    f"embeddings (N, {dim}); got {arr.dtype} {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidParameterError("inputs must be finite embeddings; got NaN or inf")
    return arr.astype(np.float32)
