"""A scikit-learn classifier that trains a certified partition ensemble of any base learner.

:class:`PartitionEnsembleClassifier` splits the training rows into ``k*d`` buckets by a
content hash of each row and its label, trains one clone of a scikit-learn classifier per
subset (DPA for ``d = 1``, Finite Aggregation for ``d > 1``), aggregates the clones' scores by
plurality vote or Run-Off Election and certifies every prediction with
:func:`runoff.certify`: the certificate is the number of training rows an attacker could
insert or remove without changing that prediction.

Needs scikit-learn >= 1.6 (``pip install 'runoff[sklearn]'``; importing this module without
it raises :class:`~runoff.errors.MissingDependencyError`); ``import runoff`` alone never
imports it.

Why the certificates hold
-------------------------
A training row lies in exactly one bucket, and the bucket depends on nothing but the row's
own bytes and label. Base model ``j`` is fitted on the rows of the buckets ``h`` with
``(h + s) mod (k*d) == j`` for a shift ``s`` of the spread, in an order that depends on the
rows' content only, and on nothing else of the training set. Inserting or removing one row
therefore changes the training data of at most the ``d`` models of its bucket (``1`` for DPA),
and the certificates of :func:`runoff.certify` hold for *any* outputs of those models, whatever
they were trained on. Empty subsets and subsets that miss classes (below) are covered too.

Two things must hold for that argument, and are the user's side of the contract:

* **A fixed label space.** By default the classes are those found in ``y``. An attacker who
  adds rows with a label never seen before, or removes every row of a class, changes that
  list, and with it the classes an empty subset votes for and the order that breaks ties.
  Pass ``classes=`` (every label of the task) to fix the label space; then the certificate
  covers every insertion and removal of rows whose labels lie in it.
* **Deterministic base learners.** Every clone is fitted with the estimator's parameters as
  given, ``random_state`` included: an integer seed gives the same fit for the same subset
  every time; ``random_state=None`` gives a certificate for the ensemble as fitted, but
  refitting may change models whose subsets did not change.
"""

from __future__ import annotations

import hashlib
import numbers
import warnings

import numpy as np

from .errors import MissingDependencyError, require

_sklearn = require("sklearn", "runoff.sklearn", hint="pip install 'runoff[sklearn]'")
try:
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - scikit-learn < 1.6
    raise MissingDependencyError(
        f"runoff.sklearn needs scikit-learn >= 1.6, but {_sklearn.__version__} is installed; "
        "upgrade it with: pip install -U 'scikit-learn>=1.6'"
    ) from None

from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.preprocessing import LabelEncoder
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils import get_tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from .certificates import certified_accuracy as _certified_accuracy
from .certificates import certify_ensemble
from .certificates.methods import methods_for
from .param_checks import check_choice, check_int, check_n_jobs, invalid, shown
from .plan.spread import model_subsets, reference_spread, validate_spread

__all__ = ["ROW_HASHES", "AGGREGATIONS", "ConstantModel", "PartitionEnsembleClassifier", "row_hashes"]

#: How a training row's bucket is chosen: content hashes of a row of features and its label
#: (:func:`row_hashes`). Not the image hashes of :data:`runoff.plan.hashing.IMAGE_HASHES`.
ROW_HASHES = ("sha256",)
#: Aggregation rules: Run-Off Election or plurality vote.
AGGREGATIONS = ("roe", "plurality")

_HEADER = b"runoff-sklearn-sha256-v1"


def _label_bytes(label) -> bytes:
    """Canonical bytes of one label: equal labels (``1 == 1.0 == True``) give equal bytes."""
    if isinstance(label, (bool, np.bool_)):
        label = int(label)
    if isinstance(label, (numbers.Integral, np.integer)):
        return b"i" + str(int(label)).encode("ascii")
    if isinstance(label, (numbers.Real, np.floating)):
        value = float(label)
        if value.is_integer():
            return b"i" + str(int(value)).encode("ascii")
        return b"f" + np.float64(value).astype("<f8").tobytes()
    if isinstance(label, str):
        return b"s" + label.encode("utf-8")
    if isinstance(label, bytes):
        return b"b" + label
    return b"r" + repr(label).encode("utf-8")


def row_hashes(X, y) -> list[bytes]:
    """SHA-256 digest of every training row and its label.

    The digest covers ``b"runoff-sklearn-sha256-v1"``, the number of features (little-endian
    int64), the length of the label's canonical bytes (little-endian int64), those bytes, and
    the row as float64 little-endian values (``-0.0`` is written as ``0.0``). Canonical label
    bytes: integers (and floats or booleans with an integer value) as ``b"i"`` and their
    decimal digits; other floats as ``b"f"`` and their float64 bytes; strings as ``b"s"`` and
    UTF-8; bytes as ``b"b"`` and themselves; anything else as ``b"r"`` and ``repr()``.

    Parameters
    ----------
    X : array-like of shape (n, n_features), numeric
    y : array-like of shape (n,)

    Returns
    -------
    list of bytes
        One 32-byte digest per row.
    """
    X = np.asarray(X, dtype=np.float64)
    rows = np.ascontiguousarray(X + 0.0, dtype="<f8").reshape(X.shape[0], -1)
    header = _HEADER + np.asarray([rows.shape[1]], dtype="<i8").tobytes()
    out = []
    for i, label in enumerate(np.asarray(y, dtype=object)):
        lab = _label_bytes(label)
        h = hashlib.sha256(header)
        h.update(np.asarray([len(lab)], dtype="<i8").tobytes())
        h.update(lab)
        h.update(rows[i].tobytes())
        out.append(h.digest())
    return out


class ConstantModel:
    """Base model of a subset that is empty or holds a single class.

    ``scores_`` (one value per class of the ensemble) is returned for every input.

    * empty subset: all zeros. Its round-1 vote is the first class of ``classes_`` (ties go
      to the smaller index) and its run-off preference between two classes is the earlier
      one.
    * one class ``c``: 1 for ``c``, 0 for the others; it votes ``c`` and prefers ``c`` in
      every run-off, and among the other classes the earlier one.
    """

    def __init__(self, scores, classes, n_samples):
        self.scores_ = np.asarray(scores, dtype=np.float64)
        self.classes_ = classes
        self.n_samples_ = int(n_samples)

    def decision_scores(self, X):
        """Scores for ``X``: ``scores_`` repeated, shape (n, n_classes)."""
        return np.broadcast_to(self.scores_, (X.shape[0], self.scores_.shape[0]))

    def predict(self, X):
        return np.full(X.shape[0], self.classes_[int(np.argmax(self.scores_))])

    def __repr__(self):
        return f"ConstantModel(scores={self.scores_.tolist()}, n_samples={self.n_samples_})"


def _fit_one(template, X, y, classes, n_classes):
    present = np.unique(y) if y.shape[0] else y
    if present.shape[0] >= 2:
        return clone(template).fit(X, y)
    scores = np.zeros(n_classes)
    if present.shape[0] == 1:
        scores[int(np.searchsorted(classes, present[0]))] = 1.0
    return ConstantModel(scores, classes, y.shape[0])


class PartitionEnsembleClassifier(ClassifierMixin, BaseEstimator):
    """Certified partition ensemble (DPA / Finite Aggregation) of any scikit-learn classifier.

    Parameters
    ----------
    estimator : classifier, default None
        Base learner, cloned once per subset. It must have ``predict_proba`` (used when
        present) or ``decision_function``. None: ``DecisionTreeClassifier(random_state=0)``.
        Its parameters, ``random_state`` included, are used unchanged for every clone.
    k : int, default 10
        Number of partitions, at most the number of training rows (``fit`` raises
        :class:`~runoff.errors.InvalidParameterError` otherwise, as ``runoff train`` does).
        Larger ``k``: larger certificates, smaller subsets.
    d : int, default 1
        Models per bucket. ``d = 1`` is DPA (``k`` models, each row trains one of them);
        ``d > 1`` is Finite Aggregation (``k*d`` models, each row trains ``d`` of them).
    aggregation : {"roe", "plurality"}, default "roe"
        Run-Off Election (certified with ``dpa-roe`` / ``fa-roe``) or plurality vote
        (``dpa`` / ``fa``).
    hash : {"sha256"}, default "sha256"
        How a row's bucket is chosen: SHA-256 of the row's float64 bytes, its label and the
        number of features (:func:`row_hashes`), modulo ``k*d``. An attacker cannot steer a
        poisoned row to a chosen bucket without a preimage attack on SHA-256, so the models
        it reaches are a fresh random draw for every row. Certificates would hold for any
        bucket assignment, even one the attacker picks; the hash only takes the choice of
        *which* models away. The image pipeline's ``"pixelsum"`` hash (sum of uint8 pixel
        values) has no meaning for real-valued features and is not offered.
    spread : sequence of int, optional
        The ``d`` distinct shifts in ``[0, k*d)``: a row of bucket ``h`` trains models
        ``(h + s) mod (k*d)``. By default ``[0]`` for ``d = 1`` and the reference spread
        (:func:`runoff.plan.spread.reference_spread`) for ``d > 1``.
    classes : array-like, optional
        Every label of the task. Fixes ``classes_`` (``y`` must lie in it) so that the
        certificates also cover poisons that would add or remove a whole class (see the
        module documentation). Default: the classes found in ``y``.
    n_jobs : int, optional
        Workers, with scikit-learn's meaning: None is 1 unless in a
        ``joblib.parallel_config`` context, -1 is every core, -2 all but one, and so on.
        Base models are fitted in parallel by joblib, and predictions are certified by
        :func:`runoff.certify` with as many threads. The result does not depend on it.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels, sorted (:class:`~sklearn.preprocessing.LabelEncoder`).
    estimators_ : list of length k*d
        Base model ``j``: a fitted clone of ``estimator``, or a :class:`ConstantModel` when
        subset ``j`` is empty (votes ``classes_[0]``) or holds one class (votes that class).
        A fitted clone that saw only some classes gets, for each missing class, the minimum
        of its other scores minus 1, so the missing classes rank below every class it knows
        (in the order of ``classes_`` among themselves).
    buckets_ : ndarray of shape (n_samples,), int64
        Bucket of each training row, in the order of ``X`` given to ``fit``.
    subsets_ : list of length k*d of int64 ndarrays
        Rows of ``X`` (indices into ``fit``'s ``X``) that trained each base model, in content
        order (by :func:`row_hashes` digest). The same rows in any order give the same
        models.
    spread_ : list of int
        Shifts used.
    method_ : str
        The :func:`runoff.certify` method: ``dpa``, ``dpa-roe``, ``fa`` or ``fa-roe``.
    scores_method_ : str
        ``"predict_proba"`` or ``"decision_function"``: where base scores come from.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` had string column names.

    Notes
    -----
    ``predict_certified`` returns a certificate ``t`` per prediction: whatever training rows
    an attacker inserts or removes, ``t`` of them at most, the prediction stays the same
    (changing a row counts as removing one and inserting one). No ``decision_function`` is
    offered: the ensemble's output is a vote; its confidence is the vote shares
    (``predict_proba``) and, in poisons, the certificate.
    """

    def __init__(self, estimator=None, *, k=10, d=1, aggregation="roe", hash="sha256",
                 spread=None, classes=None, n_jobs=None):
        self.estimator = estimator
        self.k = k
        self.d = d
        self.aggregation = aggregation
        self.hash = hash
        self.spread = spread
        self.classes = classes
        self.n_jobs = n_jobs

    # ------------------------------------------------------------------ helpers

    def _template(self):
        return DecisionTreeClassifier(random_state=0) if self.estimator is None else self.estimator

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = get_tags(self._template()).input_tags.allow_nan
        return tags

    def _check_params(self):
        k, d = check_int(self.k, "k", low=1), check_int(self.d, "d", low=1)
        aggregation = check_choice(self.aggregation, "aggregation", AGGREGATIONS)
        check_choice(self.hash, "hash", ROW_HASHES)
        check_n_jobs(self.n_jobs)
        template = self._template()
        if not (hasattr(template, "predict_proba") or hasattr(template, "decision_function")):
            raise invalid("estimator", "a classifier with predict_proba or decision_function, to rank its votes",
                          got=f"{type(template).__name__}, which has neither")
        if self.spread is None:
            spread = [0] if d == 1 else reference_spread(k, d)
        else:
            spread = validate_spread(self.spread, n_models=k * d, d=d).tolist()
        plurality, roe = methods_for(d)
        return k, d, [int(s) for s in spread], roe if aggregation == "roe" else plurality, template

    def _classes(self, y):
        """Sorted classes: ``classes`` when given (``y`` must lie in it), else those of ``y``."""
        if self.classes is None:
            classes = LabelEncoder().fit(y).classes_
        else:
            classes = LabelEncoder().fit(np.asarray(self.classes)).classes_
            unknown = np.setdiff1d(np.unique(y), classes)
            if unknown.size:
                raise invalid("y", "labels from classes", got=f"labels not in classes: {shown(unknown[:5])}")
        if classes.shape[0] < 2:
            raise invalid("y", f"labels of at least 2 classes for {type(self).__name__} "
                          "(pass classes= to name the others)", got=f"labels of one class, {shown(classes[0])}")
        return classes

    # ------------------------------------------------------------------ fit

    def fit(self, X, y):
        """Partition the rows by content hash and fit one base model per subset.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), numeric (converted to float64)
        y : array-like of shape (n_samples,), labels of any type

        Returns
        -------
        self

        Raises
        ------
        InvalidParameterError
            A parameter out of range or unknown, ``k`` larger than ``n_samples``, labels of
            one class or outside ``classes``.
        """
        k, d, spread, method, template = self._check_params()
        allow_nan = get_tags(template).input_tags.allow_nan
        X, y = _validate_data(self, X, y, dtype=np.float64,
                              ensure_all_finite="allow-nan" if allow_nan else True)
        check_classification_targets(y)
        classes = self._classes(y)
        if k > X.shape[0]:  # most models would be empty: surely a mistake, refused as the image pipeline does
            raise invalid("k", f"an integer in [1, {X.shape[0]}] (the training set has {X.shape[0]} rows)", k)
        n_models = k * d
        digests = row_hashes(X, y)
        buckets = np.fromiter((int.from_bytes(g, "big") % n_models for g in digests),
                              dtype=np.int64, count=len(digests))
        # Each subset in content order (by digest), so the same rows in any order fit the same.
        order = np.argsort(np.array(digests, dtype="S32"), kind="stable").astype(np.int64)
        subsets = [order[rows] for rows in model_subsets(buckets[order], spread, n_models)]

        estimators = Parallel(n_jobs=self.n_jobs)(
            delayed(_fit_one)(template, X[idx], y[idx], classes, classes.shape[0]) for idx in subsets
        )
        empty = sum(1 for idx in subsets if idx.shape[0] == 0)
        if empty:
            warnings.warn(
                f"{empty} of {n_models} base models have no training rows (k*d = {n_models}, "
                f"{X.shape[0]} rows); each predicts constant scores and votes for {classes[0]!r}. "
                "Consider a smaller k.",
                UserWarning,
                stacklevel=2,
            )
        self.classes_ = classes
        self.estimators_ = list(estimators)
        self.buckets_ = buckets
        self.subsets_ = subsets
        self.spread_ = spread
        self.method_ = method
        self.scores_method_ = "predict_proba" if hasattr(template, "predict_proba") else "decision_function"
        return self

    # ------------------------------------------------------------------ scores and votes

    def _model_scores(self, est, X):
        n_classes = self.classes_.shape[0]
        if isinstance(est, ConstantModel):
            return est.decision_scores(X)
        raw = np.asarray(getattr(est, self.scores_method_)(X), dtype=np.float64)
        known = np.asarray(est.classes_)
        if raw.ndim == 1:  # binary decision_function: positive means known[1]
            raw = np.stack([-raw, raw], axis=1)
        if raw.shape != (X.shape[0], known.shape[0]):
            raise ValueError(
                f"base model {type(est).__name__}.{self.scores_method_} returned shape {raw.shape}; "
                f"expected ({X.shape[0]}, {known.shape[0]})"
            )
        if known.shape[0] == n_classes:
            return raw
        cols = np.searchsorted(self.classes_, known)
        out = np.repeat(raw.min(axis=1, keepdims=True) - 1.0, n_classes, axis=1)
        out[:, cols] = raw
        return out

    def _validate_X(self, X):
        check_is_fitted(self)
        allow_nan = get_tags(self._template()).input_tags.allow_nan
        return _validate_data(self, X, dtype=np.float64, reset=False,
                              ensure_all_finite="allow-nan" if allow_nan else True)

    def base_scores(self, X):
        """Scores of every base model: shape (n_samples, k*d, n_classes), float64.

        Column ``c`` refers to ``classes_[c]``. These are the scores that are aggregated and
        certified: ``runoff.certify(clf.base_scores(X), clf.method_, d=clf.d,
        spread=clf.spread_ if clf.d > 1 else None)`` gives ``predict_certified``'s answer.
        """
        X = self._validate_X(X)
        out = np.empty((X.shape[0], len(self.estimators_), self.classes_.shape[0]))
        for j, est in enumerate(self.estimators_):
            out[:, j, :] = self._model_scores(est, X)
        return out

    def _certify(self, X):
        scores = self.base_scores(X)
        return certify_ensemble(scores, self.method_, d=len(self.spread_), spread=self.spread_,
                                n_jobs=effective_n_jobs(self.n_jobs))

    def predict_certified(self, X):
        """Predictions and their certificates.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Predicted classes (values of ``classes_``).
        certificates : ndarray of shape (n_samples,), int64
            Training rows an attacker may insert or remove without changing each prediction.
        """
        res = self._certify(X)
        return self.classes_[res.predictions], res.certificates

    def predict(self, X):
        """Aggregated prediction (Run-Off Election or plurality) of every row of ``X``."""
        return self.predict_certified(X)[0]

    def predict_proba(self, X):
        """Round-1 vote shares: fraction of base models whose top class is each class.

        Rows sum to 1. With ``aggregation="plurality"`` the argmax (ties to the earlier
        class) is the prediction; with ``"roe"`` the prediction is the run-off winner, which
        can be the class with the second-largest share.
        """
        scores = self.base_scores(X)
        votes = np.argmax(scores, axis=2)
        n, m = votes.shape
        counts = np.zeros((n, self.classes_.shape[0]))
        np.add.at(counts, (np.repeat(np.arange(n), m), votes.ravel()), 1.0)
        return counts / m

    def certified_accuracy(self, X, y, budgets):
        """Fraction of rows predicted correctly with certificate >= B, for each budget B."""
        pred, cert = self.predict_certified(X)
        y = np.asarray(y)
        if y.shape != pred.shape:
            raise invalid("y", f"an array of shape {pred.shape}, one label per row of X", got=f"shape {y.shape}")
        correct = (pred == y).astype(np.int64)
        return _certified_accuracy(correct, cert, np.ones_like(correct), budgets)
