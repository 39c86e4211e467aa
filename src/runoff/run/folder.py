"""The layout of a run folder on disk, and its reads and writes.

A run folder is what ``runoff train`` writes and ``runoff evaluate``, ``runoff report``,
``runoff predict`` and :class:`runoff.training.ensemble.Ensemble` read::

    RUN/
      plan.json            the partition plan, with the training recipe and seeds
      subsets.json         a fingerprint of each base model's training subset (what
                           `runoff update` compares, and what checkpoints are keyed by)
      checkpoints/         models-FIRST-LAST.pt, one per chunk of base models
      logits.npz           scores (N, M, C) float32 and labels (N,) int64 of the test set
      models.json          each base model's training loss and accuracy, and flagged models
      certificates.npz     predictions and certificates per method (runoff evaluate)
      report.json  report.md  certified_accuracy.png    (runoff evaluate)
      reports/METHODS/     the same four files for another method set than the run's own
                           (dpa,dpa-roe for d = 1; fa,fa-roe for d > 1), so that
                           `runoff evaluate RUN --method fa` keeps the run's report;
                           METHODS is the set joined by "+", e.g. reports/fa/, reports/dpa+fa/
      v1/ ... vV/          DPA* only: one complete run per seed version; the top folder's
                           plan lists them and its logits are their sum
      unfinished.json      only while training or an update is unfinished: which, and how
                           many models are done (readers refuse the run until it is gone)
      .runoff-lock         only while a writer (train, update, evaluate) works in the folder
                           (:mod:`runoff.run.lock`)

A folder written by ``runoff report`` holds the same report files and also
``certificates_hist.png``. Every other module asks this one for paths and file contents;
nothing else spells a file name of a run.

**Whole runs.** A reader (``runoff evaluate``, ``report``, ``predict``,
:class:`~runoff.training.ensemble.Ensemble`) sees a finished run, before or after an update,
never a mix: :meth:`RunFolder.check_whole` raises
:class:`~runoff.errors.RunUnfinishedError` while ``unfinished.json`` is there (a writer puts
it down before it changes any model and removes it once the logits match the models) or
while the plan has no logits yet, and says which command finishes the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, atomic_write_text
from ..certificates.methods import METHODS, methods_for
from ..errors import LogitsFileError, RunDirectoryError, RunUnfinishedError
from ..plan.partition import PLAN_FILE, PartitionPlan
from . import lock as run_lock
from .logits import load_logits

__all__ = [
    "RunFolder",
    "PLAN_FILE",
    "CHECKPOINT_DIR",
    "LOGITS_FILE",
    "CERTIFICATES_FILE",
    "REPORT_JSON",
    "REPORT_MD",
    "ACCURACY_PLOT",
    "MODELS_FILE",
    "HISTOGRAM_PLOT",
    "SUBSETS_FILE",
    "LOGIT_SOURCES_FILE",
    "UNFINISHED_FILE",
    "check_logits_file",
    "REPORTS_DIR",
]

CHECKPOINT_DIR = "checkpoints"
LOGITS_FILE = "logits.npz"
CERTIFICATES_FILE = "certificates.npz"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ACCURACY_PLOT = "certified_accuracy.png"
HISTOGRAM_PLOT = "certificates_hist.png"
MODELS_FILE = "models.json"
SUBSETS_FILE = "subsets.json"
LOGIT_SOURCES_FILE = "logit-sources.json"
#: Present while training or an update of the run is unfinished (see :meth:`RunFolder.check_whole`)
UNFINISHED_FILE = "unfinished.json"
_UNFINISHED_FORMAT = "runoff-unfinished"
#: Reports of method sets other than the run's own, one folder per set
REPORTS_DIR = "reports"
#: Where ``runoff update`` keeps the old logits while it runs (removed when it is done)
UPDATE_CACHE_DIR = "update-cache"
_SUBSETS_FORMAT = "runoff-subsets"


def version_dir_name(v: int) -> str:
    """Folder of DPA* seed version ``v`` inside the top run folder."""
    return f"v{int(v)}"


class RunFolder:
    """One run folder: its paths, and its plan, logits and reports.

    Parameters
    ----------
    path : path-like
        The folder (it need not exist yet).
    """

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ paths
    @property
    def plan_path(self) -> Path:
        return self.path / PLAN_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def logits_path(self) -> Path:
        return self.path / LOGITS_FILE

    @property
    def certificates_path(self) -> Path:
        return self.path / CERTIFICATES_FILE

    def report_path(self, kind: str) -> Path:
        """``kind``: "json", "md", "accuracy_plot" or "histogram_plot"."""
        names = {"json": REPORT_JSON, "md": REPORT_MD, "accuracy_plot": ACCURACY_PLOT,
                 "histogram_plot": HISTOGRAM_PLOT}
        return self.path / names[kind]

    def report_dir(self, methods, d: int) -> Path:
        """Where ``runoff evaluate`` writes the report of ``methods`` on a run with ``d``
        models per bucket: the run folder itself for the run's own methods
        (:func:`runoff.certificates.methods.methods_for`, in any order), ``reports/METHODS/`` for any other
        set (canonical names in the order of :data:`runoff.METHODS`, joined by "+"), so that
        one method set's report never replaces another's."""
        chosen = set(methods)
        if chosen == set(methods_for(d)):
            return self.path
        return self.path / REPORTS_DIR / "+".join(m for m in METHODS if m in chosen)

    def report_dirs(self) -> list[Path]:
        """The folders that hold a report (``report.json``): the run folder, then those under
        ``reports/`` by name."""
        others = sorted(p for p in (self.path / REPORTS_DIR).glob("*") if p.is_dir())
        return [d for d in [self.path, *others] if (d / REPORT_JSON).is_file()]

    def version(self, v: int) -> "RunFolder":
        """DPA*: the run folder of seed version ``v`` (1-based)."""
        return RunFolder(self.path / version_dir_name(v))

    def version_names(self, versions: int) -> list[str]:
        return [version_dir_name(v) for v in range(1, int(versions) + 1)]

    # ------------------------------------------------------------------ state
    def has_plan(self) -> bool:
        return self.plan_path.is_file()

    def is_new(self) -> bool:
        """No folder, or an empty one (its lock file aside)."""
        return not self.path.exists() or (self.path.is_dir() and not self.entries())

    def entries(self) -> list[str]:
        """Names in the folder, its lock file aside (sorted)."""
        return sorted(p.name for p in self.path.iterdir() if p.name != run_lock.LOCK_FILE)

    # ------------------------------------------------------------------ one writer
    def writing(self, command: str):
        """Context manager: hold the folder's lock while ``command`` writes into it
        (:func:`runoff.run.lock.hold`; created if missing, removed again if left empty).

        Raises
        ------
        RunLockedError
            Another process is writing into the folder.
        """
        return run_lock.hold(self.path, command)

    def writer(self) -> dict | None:
        """Who is writing into the folder now (pid, host, command, since), or None."""
        return run_lock.holder(self.path)

    # ------------------------------------------------------------------ whole runs
    @property
    def unfinished_path(self) -> Path:
        return self.path / UNFINISHED_FILE

    def mark_unfinished(self, operation: str, *, n_models: int, models_done: int = 0, **extra) -> None:
        """Record that ``operation`` ("train" or "update") is changing the run's models; readers
        refuse the run until :meth:`mark_finished`. ``extra``: JSON fields the writer wants back
        when it is rerun (an update's report methods)."""
        self._write_unfinished({"format": _UNFINISHED_FORMAT, "operation": operation, "n_models": int(n_models),
                                "models_done": int(models_done), **extra})

    def models_done(self, n: int) -> None:
        """Update the unfinished record's count of finished models (after each chunk)."""
        obj = self.read_unfinished()
        if obj is not None:
            self._write_unfinished({**obj, "models_done": int(n)})

    def _write_unfinished(self, obj: dict) -> None:
        atomic_write_text(self.unfinished_path, json.dumps(obj) + "\n")

    def mark_finished(self) -> None:
        """The run is whole again: its logits match its models."""
        with contextlib.suppress(FileNotFoundError):
            self.unfinished_path.unlink()

    def read_unfinished(self) -> dict | None:
        """The unfinished record, or None when the run is not marked unfinished (an unreadable
        record counts as an unfinished training)."""
        if not self.unfinished_path.is_file():
            return None
        try:
            obj = json.loads(self.unfinished_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            obj = None
        if not isinstance(obj, dict) or obj.get("operation") not in ("train", "update"):
            return {"operation": "train"}
        return obj

    def is_finished(self) -> bool:
        """A run is here, whole: a plan, and nothing unfinished (:meth:`check_whole`)."""
        return self.has_plan() and self.unfinished_message() is None

    def refuse_unfinished_update(self) -> None:
        """Raise :class:`~runoff.errors.RunUnfinishedError` when an update of the run is
        unfinished: its plan is already the new data's, so only ``runoff update`` may go on."""
        record = self.read_unfinished()
        if record is not None and record["operation"] == "update":
            raise RunUnfinishedError(self.unfinished_message())

    def check_whole(self, *, logits: bool = True) -> None:
        """Raise unless the folder holds a whole, finished run (models and logits that match).

        ``logits=False``: for readers of the models alone (:class:`~runoff.training.ensemble.Ensemble`),
        which check each checkpoint themselves: only an unfinished record counts, not a plan
        without logits (a folder of ``plan.json`` and checkpoints written by ``train_ensemble``).

        Raises
        ------
        RunUnfinishedError
            Training or an update is unfinished or going on; the message says which and how to
            finish it ("rerun the same runoff train command", "rerun runoff update RUN").
        """
        message = self.unfinished_message(logits=logits)
        if message is not None:
            raise RunUnfinishedError(message)

    def unfinished_message(self, *, logits: bool = True) -> str | None:
        """Why the run is not whole (one line), or None when it is (``logits``: as
        :meth:`check_whole`)."""
        record = self.read_unfinished()
        if record is None and (not logits or not self.has_plan() or self.logits_path.is_file()):
            return None
        operation = "train" if record is None else record["operation"]
        writer = self.writer()
        if writer is not None:
            what = "training" if operation == "train" else "an update"
            return (f"{self.path}: {what} of this run is in progress, by {run_lock.describe_holder(writer)}; "
                    "wait for it to finish")
        if operation == "update":
            return f"{self.path}: an update of this run is unfinished: rerun `runoff update {self.path}` to finish it"
        count = self._models_count(record)
        return (f"{self.path}: training is unfinished{count}: rerun the same `runoff train` command to resume "
                "(finished models are kept)")

    def _models_count(self, record) -> str:
        """`` (N of M models)`` for an unfinished training, when known."""
        versions = self._versions()
        if versions:  # DPA*: the versions' counts
            done = total = 0
            for v in range(1, versions + 1):
                sub = self.version(v)
                rec = sub.read_unfinished()
                n = _n_models(sub)
                if n is None:
                    return ""
                total += n
                done += n if rec is None and sub.logits_path.is_file() else int((rec or {}).get("models_done", 0))
            return f" ({done} of {total} models)"
        if record is not None and "n_models" in record:
            return f" ({int(record.get('models_done', 0))} of {int(record['n_models'])} models)"
        return ""

    def _versions(self) -> int:
        try:
            return int((self.read_plan_json().get("training") or {}).get("versions") or 0)
        except (RunDirectoryError, TypeError, ValueError, AttributeError):
            return 0

    def check_is_folder(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunDirectoryError(f"{self.path} exists and is not a directory")

    def require_plan(self) -> None:
        """Raise unless this is a run folder (it has a plan)."""
        if not self.has_plan():
            raise RunDirectoryError(f"{self.path} is not a run folder: no {PLAN_FILE} (train one with `runoff train`)")

    # ------------------------------------------------------------------ plan
    def read_plan(self, *, train=None):
        """The folder's :class:`~runoff.plan.partition.PartitionPlan` (checked against ``train`` if given)."""
        return PartitionPlan.load(self.path, train=train)

    def write_plan(self, plan) -> Path:
        """Write ``plan.json`` (the folder is created if needed), atomically."""
        return plan.save(self.path)

    def read_plan_json(self) -> dict:
        """``plan.json`` as a dict, without validating it as a plan."""
        try:
            return json.loads(self.plan_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunDirectoryError(f"{self.plan_path}: cannot read ({exc})") from None

    # ------------------------------------------------------------------ subset fingerprints
    @property
    def subsets_path(self) -> Path:
        return self.path / SUBSETS_FILE

    def read_subsets(self, n_models: int | None = None) -> list[str] | None:
        """Each base model's subset fingerprint (:func:`runoff.plan.hashing.subset_fingerprints`),
        or None when the run has no ``subsets.json`` (trained before runoff recorded them).

        Raises
        ------
        RunDirectoryError
            An unreadable file, or one that does not hold ``n_models`` fingerprints.
        """
        if not self.subsets_path.is_file():
            return None
        try:
            obj = json.loads(self.subsets_path.read_text())
            fps = obj["fingerprints"]
            ok = obj.get("format") == _SUBSETS_FORMAT and isinstance(fps, list)
            ok = ok and all(isinstance(f, str) and len(f) == 64 for f in fps)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise RunDirectoryError(f"{self.subsets_path}: cannot read ({exc})") from None
        if not ok or (n_models is not None and len(fps) != n_models):
            raise RunDirectoryError(f"{self.subsets_path}: not a list of {n_models or 'the'} models' subset "
                                    "fingerprints (corrupt?)")
        return list(fps)

    def write_subsets(self, fingerprints, *, chunk_keyed: bool = False) -> Path:
        """Write ``subsets.json`` (one fingerprint per base model), atomically.

        ``chunk_keyed``: every checkpoint the folder holds or will hold carries a chunk key
        (a new run, or after ``runoff update``), so an update need not look for version-1
        files to upgrade (:meth:`checkpoints_chunk_keyed`)."""
        obj = {"format": _SUBSETS_FORMAT, "version": 1,
               "rule": "sha256 over the image shape and each sample's sha256 (label, pixels), canonical order",
               "fingerprints": list(fingerprints), "checkpoints_chunk_keyed": bool(chunk_keyed)}
        atomic_write_text(self.subsets_path, json.dumps(obj, indent=1) + "\n")
        return self.subsets_path

    def checkpoints_chunk_keyed(self) -> bool:
        """Whether ``subsets.json`` says that every checkpoint carries a chunk key (False when
        it does not say so, or cannot be read: the update then checks every file)."""
        try:
            return json.loads(self.subsets_path.read_text()).get("checkpoints_chunk_keyed") is True
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return False

    # ------------------------------------------------------------------ logits
    def read_logits(self) -> tuple[np.ndarray, np.ndarray]:
        """The run's test logits.

        Returns
        -------
        scores : numpy.ndarray of float32, shape (N, M, C)
        labels : numpy.ndarray of int64, shape (N,)

        Raises
        ------
        RunUnfinishedError
            Training or an update of the run is unfinished (:meth:`check_whole`).
        LogitsFileError
            Missing or unreadable file, no labels, or inconsistent shapes.
        """

        self.check_whole()
        if not self.logits_path.is_file():
            raise LogitsFileError(f"no logits file at {self.logits_path}")
        scores, labels = load_logits(self.logits_path)
        if labels is None:
            raise LogitsFileError(f"{self.logits_path}: needs arrays 'scores' and 'labels'; has no 'labels'")
        scores, labels = np.asarray(scores), np.asarray(labels)
        if scores.ndim != 3 or labels.shape != (scores.shape[0],):
            raise LogitsFileError(f"{self.logits_path}: scores must be (N, M, C) and labels (N,); "
                                  f"got {scores.shape}, {labels.shape}")
        return scores.astype(np.float32, copy=False), labels.astype(np.int64, copy=False)

    def logits_stamp(self) -> tuple | None:
        """Identity of the logits file as it is now (inode, modification time, size), or None
        when there is none: every write replaces the file, so a new stamp means new logits."""
        try:
            st = self.logits_path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def write_logits(self, scores, labels) -> Path:
        """Write ``scores`` (as float32) and ``labels`` (as int64), atomically."""
        return save_logits(self.logits_path, scores, labels)

    # ------------------------------------------------------------------ what the logits came from
    @property
    def logit_sources_path(self) -> Path:
        return self.path / LOGIT_SOURCES_FILE

    def write_logit_sources(self, sources: dict) -> Path:
        """Write the record of what ``logits.npz`` was computed from
        (:mod:`runoff.training.logit_sources`), after the logits."""
        atomic_write_text(self.logit_sources_path, json.dumps(sources, indent=1) + "\n")
        return self.logit_sources_path

    def previous_logits(self):
        """``(scores, sources)`` of the logits an update may keep columns of: the run's logits
        and their record, else those an interrupted update set aside; None when neither is
        there whole and readable (an update then computes every logit)."""
        for folder in (self.path, self.path / UPDATE_CACHE_DIR):
            found = _logits_with_sources(folder / LOGITS_FILE, folder / LOGIT_SOURCES_FILE)
            if found is not None:
                return found
        return None

    def set_logits_aside(self) -> None:
        """Move the logits and their record into ``update-cache/`` (an update is about to
        change models: the logits must not stay as the run's, but their still-valid columns
        are kept). Nothing moves unless both are there."""
        if self.logits_path.is_file() and self.logit_sources_path.is_file():
            cache = self.path / UPDATE_CACHE_DIR
            cache.mkdir(exist_ok=True)
            os.replace(self.logits_path, cache / LOGITS_FILE)
            os.replace(self.logit_sources_path, cache / LOGIT_SOURCES_FILE)

    def drop_logits_set_aside(self) -> None:
        """Delete ``update-cache/`` (the update is done)."""
        cache = self.path / UPDATE_CACHE_DIR
        for name in (LOGITS_FILE, LOGIT_SOURCES_FILE):
            with contextlib.suppress(FileNotFoundError):
                (cache / name).unlink()
        with contextlib.suppress(OSError):
            cache.rmdir()

    # ------------------------------------------------------------------ model health
    @property
    def models_path(self) -> Path:
        return self.path / MODELS_FILE

    def read_models_text(self) -> str | None:
        """``models.json`` as text, or None when the run has none (trained before runoff recorded
        model health, or a DPA* top folder). :meth:`runoff.run.health.RunHealth.read`
        parses it.

        Raises
        ------
        RunDirectoryError
            The file is there but cannot be read.
        """
        if not self.models_path.is_file():
            return None
        try:
            return self.models_path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise RunDirectoryError(f"{self.models_path}: cannot read ({exc})") from None

    def write_models_text(self, text: str) -> Path:
        """Write ``models.json`` (:meth:`runoff.run.health.RunHealth.to_json`), atomically."""
        atomic_write_text(self.models_path, text)
        return self.models_path

    # ------------------------------------------------------------------ reports
    def output_paths(self) -> list[Path]:
        """Files computed from the trained models (logits, certificates, reports)."""
        kinds = ("json", "md", "accuracy_plot", "histogram_plot")
        return [self.logits_path, self.logit_sources_path, self.certificates_path,
                *(self.report_path(kind) for kind in kinds)]

    def remove_outputs(self) -> list[str]:
        """Delete :meth:`output_paths` that exist, and the reports of other method sets
        (:data:`REPORTS_DIR`), when the models change; their names."""
        removed = []
        for path in self.output_paths():
            if path.is_file():
                path.unlink()
                removed.append(path.name)
        if (self.path / REPORTS_DIR).is_dir():
            shutil.rmtree(self.path / REPORTS_DIR)
            removed.append(REPORTS_DIR)
        return removed

    def write_text(self, kind: str, text: str) -> Path:
        path = self.report_path(kind)
        atomic_write_text(path, text)
        return path


def check_logits_file(path) -> None:
    """When ``path`` is a run folder's ``logits.npz`` (``runoff certify RUN/logits.npz``), the
    run must be whole (:meth:`RunFolder.check_whole`); any other file passes."""
    path = Path(path)
    folder = RunFolder(path.parent)
    if path.name == LOGITS_FILE and folder.has_plan():
        folder.check_whole()


def _n_models(folder: RunFolder) -> int | None:
    try:
        return int(folder.read_plan_json()["n_models"])
    except (RunDirectoryError, KeyError, TypeError, ValueError):
        return None


def _logits_with_sources(logits_path: Path, sources_path: Path):
    """``(scores, sources)`` when both files are there and readable, else None."""
    if not (logits_path.is_file() and sources_path.is_file()):
        return None

    try:
        sources = json.loads(sources_path.read_text())
        scores, _ = load_logits(logits_path)
    except (OSError, UnicodeDecodeError, ValueError):  # unreadable: recompute, never guess
        return None
    return np.asarray(scores), sources


def save_logits(path, scores, labels) -> Path:
    """Write ``scores`` (float32) and ``labels`` (int64) to an ``.npz`` file, atomically."""
    path = Path(path)
    with atomic_write(path) as f:
        np.savez(f, scores=np.asarray(scores, dtype=np.float32), labels=np.asarray(labels, dtype=np.int64))
    return path
