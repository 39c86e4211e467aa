"""Checkpoint files of a run and the chunk layout they fix.

A run folder's ``checkpoints/`` holds one file per chunk of base models, named
``models-FIRST-LAST.pt`` for the contiguous model range ``FIRST..LAST``. The file is a magic
line, the SHA-256 of the payload and a ``torch.save`` payload, so corruption is detected on
load and reported with the file's name.

The files already in a run folder decide how its models are chunked: :func:`chunk_layout`
keeps every existing range as it is (so a chunk that was half trained resumes from its own
checkpoint and a finished one is never trained again, whichever backend or chunk size the
new call asks for) and splits only the models that no file holds into new chunks.

A checkpoint is tied to what its models' training depends on by keys. Files written now
(version 2) hold a :func:`chunk_key`: the recipe, the seed version, the image shape, the
classes, the chunk's model ids and each model's subset fingerprint. It does not change when
another chunk's data changes, which is what lets ``runoff update`` keep every checkpoint whose
models' subsets did not change. They also hold the :func:`plan_key` of the whole plan they
were written under, which is all that files of version 1 hold: those still resume and load
while the plan is the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import zipfile
from pathlib import Path

from ..atomic import atomic_write
from ..param_checks import check_int
from ..errors import CheckpointError, InvalidParameterError

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_bytes",
    "checkpoint_path",
    "existing_ranges",
    "chunk_layout",
    "plan_key",
    "chunk_key",
    "checkpoint_matches",
    "checkpoint_digest",
    "peek_checkpoint",
]

_MAGIC = b"RUNOFFCK1\n"
_NAME_RE = re.compile(r"^models-(\d{5,})-(\d{5,})\.pt$")


def checkpoint_bytes(obj: dict) -> bytes:
    """The bytes of the checkpoint file of ``obj`` (magic line, SHA-256, payload)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    return _MAGIC + hashlib.sha256(payload).digest() + payload


def save_checkpoint(path, obj: dict) -> None:
    """Write a checkpoint atomically and durably (temp file, fsync, ``os.replace``)."""
    write_checkpoint_bytes(path, checkpoint_bytes(obj))


def write_checkpoint_bytes(path, data: bytes) -> None:
    """Write checkpoint bytes (from :func:`checkpoint_bytes`) to ``path`` atomically."""
    with atomic_write(Path(path), fsync=True) as f:
        f.write(data)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    CheckpointError
        When the file is unreadable, truncated or altered (the message names the file).
    """
    import torch

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read ({exc})") from None
    head = len(_MAGIC) + 32
    if len(raw) < head or not raw.startswith(_MAGIC):
        raise CheckpointError(f"checkpoint {path}: not a runoff checkpoint (corrupt or truncated)")
    payload = raw[head:]
    if hashlib.sha256(payload).digest() != raw[len(_MAGIC):head]:
        raise CheckpointError(f"checkpoint {path}: corrupt (checksum mismatch)")
    try:
        obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to decode means corruption
        raise CheckpointError(f"checkpoint {path}: cannot decode ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != "runoff-checkpoint":
        raise CheckpointError(f"checkpoint {path}: not a runoff checkpoint")
    return obj


def plan_key(plan) -> str:
    """SHA-256 of the plan's canonical JSON (ties checkpoints to their plan and recipe)."""
    return hashlib.sha256(json.dumps(plan.to_dict(), sort_keys=True).encode()).hexdigest()


def chunk_key(plan, ids, fingerprints) -> str:
    """SHA-256 of what the models ``ids`` of a chunk are trained from (version-2 checkpoints).

    Parameters
    ----------
    plan : PartitionPlan
        Gives the recipe and seed version (``plan.training``), image shape, classes and std rule;
        for heads on embeddings also the head's settings and the backbone's record
        (:mod:`runoff.training.head_recipe`), which other runs' keys do not hold.
    ids : sequence of int
        The chunk's model ids.
    fingerprints : sequence of str
        Every model's subset fingerprint (:func:`runoff.plan.hashing.subset_fingerprints`).
    """
    training = plan.training or {}
    obj = {"recipe": training.get("recipe"), "seed_version": training.get("seed_version"),
           "image_shape": [int(s) for s in plan.image_shape], "n_classes": int(plan.n_classes),
           "std_rule": plan.std_rule, "ids": [int(j) for j in ids], "subsets": [fingerprints[j] for j in ids]}
    for field in ("heads", "features"):  # heads on embeddings: the head's settings and the backbone
        if field in training:
            obj[field] = training[field]
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def checkpoint_matches(obj: dict, *, plan_key: str | None, chunk_key: str | None) -> bool:
    """Whether a loaded checkpoint belongs to the run.

    Version-2 files hold the :func:`plan_key` of the plan they were written under and their
    :func:`chunk_key`: either may match (the chunk key also after an update changed the plan
    around an unchanged chunk; it needs the subset fingerprints, which a caller without the
    data reads from ``subsets.json``). Version-1 files hold the plan key only.
    """
    if plan_key is not None and obj.get("plan_key") == plan_key:
        return True
    return obj.get("version") == 2 and chunk_key is not None and obj.get("chunk_key") == chunk_key


def checkpoint_digest(path) -> str | None:
    """The SHA-256 (hex) of a checkpoint's content, as its header records it, or None when
    there is no such file or it has no runoff header. Reads the header only: the content is
    checked against it when the file is loaded (:func:`load_checkpoint`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC) + 32)
    except OSError:
        return None
    if len(head) < len(_MAGIC) + 32 or not head.startswith(_MAGIC):
        return None
    return head[len(_MAGIC):].hex()


#: The fields :func:`peek_checkpoint` reads.
PEEKED = ("version", "epoch", "plan_key", "chunk_key", "model_ids")


def peek_checkpoint(path) -> dict | None:
    """A checkpoint's :data:`PEEKED` fields, read without its tensors and unchecked; None when
    there is no such file or it cannot be read so.

    For a progress display's plan only (which chunks a call will train, and from which
    epoch): loading the whole file, checksum and all, stays :func:`load_checkpoint`'s job, and
    a run of large models must not read every file twice. The payload is ``torch.save``'s zip
    archive after the header; its pickle (``data.pkl``) holds the fields, and its tensors are
    separate records that are not read.
    """
    try:
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                return None
            with zipfile.ZipFile(f) as archive:  # (zip readers allow bytes before the archive)
                name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
                obj = _FieldsOnly(io.BytesIO(archive.read(name))).load()
    except (OSError, StopIteration, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError,
            TypeError, AttributeError, IndexError, KeyError):
        return None
    return {key: obj.get(key) for key in PEEKED} if isinstance(obj, dict) else None


class _Placeholder:
    """Stands for whatever :class:`_FieldsOnly` does not build (tensors, storages, generator states)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _FieldsOnly(pickle.Unpickler):
    """Unpickles a checkpoint's dict with placeholders for tensors: reads no tensor data and
    runs no code but :class:`collections.OrderedDict`'s."""

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            from collections import OrderedDict

            return OrderedDict
        return _Placeholder

    def persistent_load(self, pid):
        return None


def checkpoint_path(checkpoint_dir, ids) -> Path:
    """File of the chunk holding models ``ids`` (contiguous, ascending)."""
    return Path(checkpoint_dir) / f"models-{ids[0]:05d}-{ids[-1]:05d}.pt"


def existing_ranges(checkpoint_dir, n_models: int) -> list[tuple[int, int, Path]]:
    """``(first, last, path)`` of every checkpoint file in ``checkpoint_dir``, by ``first``.

    Only names are read (no file is opened), so this is cheap on a run of thousands of models.

    Raises
    ------
    CheckpointError
        A name out of range for ``n_models``, or two files holding the same model.
    """
    ckdir = Path(checkpoint_dir)
    if not ckdir.is_dir():
        return []
    found = []
    for path in ckdir.iterdir():
        m = _NAME_RE.match(path.name)
        if m is None:
            continue
        first, last = int(m.group(1)), int(m.group(2))
        if not 0 <= first <= last < n_models:
            raise CheckpointError(f"checkpoint {path}: models {first}..{last} do not fit a run of {n_models} models")
        found.append((first, last, path))
    found.sort()
    for (f0, l0, p0), (f1, l1, p1) in zip(found, found[1:]):
        if f1 <= l0:
            raise CheckpointError(f"checkpoints {p0.name} and {p1.name} both hold model {f1}; remove one of them")
    return found


def chunk_layout(n_models: int, *, chunk_size: int, checkpoint_dir=None, model_ids=None) -> list[list[int]]:
    """Chunks (lists of model ids, contiguous and ascending) to train the wanted models in.

    Parameters
    ----------
    n_models : int
        Models of the run (``k*d``).
    chunk_size : int
        Most models per new chunk. A run of models no file holds is cut into the fewest
        chunks of at most ``chunk_size``, of equal sizes (within one).
    checkpoint_dir : path-like, optional
        A run's checkpoint folder: every range a file there holds stays one chunk.
    model_ids : iterable of int, optional
        Models wanted (default all). A checkpoint's whole range is returned when it holds
        any wanted model, since a chunk trains as one.

    Returns
    -------
    list of list of int
        Ordered by first model id.
    """
    check_int(chunk_size, "chunk_size", low=1)
    wanted = set(range(n_models)) if model_ids is None else {int(j) for j in model_ids}
    if any(j < 0 or j >= n_models for j in wanted):
        raise InvalidParameterError(f"model ids must lie in [0, {n_models})")
    ranges = [] if checkpoint_dir is None else existing_ranges(checkpoint_dir, n_models)
    chunks, held = [], set()
    for first, last, _ in ranges:
        ids = list(range(first, last + 1))
        held.update(ids)
        if wanted.intersection(ids):
            chunks.append(ids)
    runs: list[list[int]] = []
    for j in sorted(wanted - held):
        if runs and j == runs[-1][-1] + 1:
            runs[-1].append(j)
        else:
            runs.append([j])
    for run in runs:
        # Equal-sized pieces (13 by 4 is 4+3+3+3, not 4+4+4+1): balanced tasks, and no
        # lone model unless asked for, since PyTorch runs a one-model chunk with the
        # ungrouped convolution kernels, whose rounding differs.
        pieces = -(-len(run) // int(chunk_size))
        size, extra = divmod(len(run), pieces)
        start = 0
        for p in range(pieces):
            stop = start + size + (p < extra)
            chunks.append(run[start:stop])
            start = stop
    return sorted(chunks)
