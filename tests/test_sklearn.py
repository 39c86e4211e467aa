"""runoff.sklearn.PartitionEnsembleClassifier: scikit-learn conventions, poison isolation,
certificates (against runoff.certify and the exhaustive adversary), edge cases."""

from __future__ import annotations

import hashlib
import struct
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from adversary import find_attack, plain_predict  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.linear_model import LogisticRegression, RidgeClassifier  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import runoff  # noqa: E402
from runoff.errors import InvalidParameterError  # noqa: E402
from runoff.sklearn import ConstantModel, PartitionEnsembleClassifier, row_hashes  # noqa: E402

# ----------------------------------------------------------------------------------------
# scikit-learn's estimator checks
# ----------------------------------------------------------------------------------------

CHECKED = [
    PartitionEnsembleClassifier(DecisionTreeClassifier(random_state=0), k=3),
    PartitionEnsembleClassifier(LogisticRegression(), k=3, aggregation="plurality"),
    PartitionEnsembleClassifier(DecisionTreeClassifier(random_state=0), k=3, d=2, aggregation="plurality"),
    PartitionEnsembleClassifier(DecisionTreeClassifier(random_state=0), k=3, d=2),
]


def _expected_failed_checks(est):
    if est.aggregation == "roe" and est.d > 1:
        return {
            # check_classifiers_train asserts predict == argmax(predict_proba). predict_proba
            # is the round-1 vote share; Run-Off Election may elect the class with the
            # second-largest share (the run-off between the two leaders is decided by the
            # models' pairwise preferences), which happens on 1% of this check's data. The
            # same check passes for plurality aggregation (configurations above), where the
            # argmax of the shares is the prediction by construction.
            "check_classifiers_train": "ROE may elect the runner-up of the round-1 vote shares",
        }
    return {}


@parametrize_with_checks(CHECKED, expected_failed_checks=_expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # empty subsets on the checks' tiny sets
        check(estimator)


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------


def _blobs(n=90, n_classes=3, seed=0, n_features=3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(n_classes, n_features))
    y = rng.integers(0, n_classes, size=n)
    X = centers[y] + rng.normal(scale=1.5, size=(n, n_features))
    return X, y


def _fa_args(clf):
    return {} if clf.d == 1 else {"d": clf.d, "spread": clf.spread_}


CONFIGS = [
    dict(estimator=DecisionTreeClassifier(random_state=0), k=5),
    dict(estimator=LogisticRegression(), k=5, aggregation="plurality"),
    dict(estimator=DecisionTreeClassifier(random_state=0), k=4, d=3),
    dict(estimator=RidgeClassifier(), k=3, d=2, aggregation="plurality"),
]


def _fit(X, y, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return PartitionEnsembleClassifier(**params).fit(X, y)


# ----------------------------------------------------------------------------------------
# Poison isolation and order independence
# ----------------------------------------------------------------------------------------


def _affected(clf, buckets):
    m = clf.k * clf.d
    return {(int(b) + s) % m for b in buckets for s in clf.spread_}


@pytest.mark.parametrize("params", CONFIGS, ids=lambda p: f"{type(p['estimator']).__name__}-d{p.get('d', 1)}")
def test_changing_one_row_refits_only_its_models(params):
    X, y = _blobs()
    X_test, _ = _blobs(n=40, seed=1)
    clf = _fit(X, y, **params)
    X2, y2 = X.copy(), y.copy()
    X2[7] += np.array([0.5, -2.0, 1.0])
    y2[7] = (y[7] + 1) % 3
    clf2 = _fit(X2, y2, **params)
    changed = _affected(clf, [clf.buckets_[7], clf2.buckets_[7]])
    assert 1 <= len(changed) <= 2 * clf.d
    s1, s2 = clf.base_scores(X_test), clf2.base_scores(X_test)
    for j in range(clf.k * clf.d):
        if j in changed:
            continue
        assert np.array_equal(clf.subsets_[j], clf2.subsets_[j])
        assert np.array_equal(s1[:, j], s2[:, j])  # bitwise identical
        e1, e2 = clf.estimators_[j], clf2.estimators_[j]
        assert type(e1) is type(e2)
        for attr in ("coef_", "intercept_"):
            if hasattr(e1, attr):
                assert np.array_equal(getattr(e1, attr), getattr(e2, attr))
        if hasattr(e1, "tree_"):
            assert np.array_equal(e1.tree_.value, e2.tree_.value)
            assert np.array_equal(e1.tree_.threshold, e2.tree_.threshold)
    # the row really left the subsets of its old bucket
    for j in _affected(clf, [clf.buckets_[7]]) - _affected(clf2, [clf2.buckets_[7]]):
        assert 7 in clf.subsets_[j] and 7 not in clf2.subsets_[j]


def test_inserting_a_row_changes_at_most_d_models():
    X, y = _blobs()
    X_test, _ = _blobs(n=30, seed=2)
    clf = _fit(X, y, estimator=DecisionTreeClassifier(random_state=0), k=4, d=3)
    Xp = np.vstack([X, X_test[:1]])
    yp = np.append(y, 2)
    clf2 = _fit(Xp, yp, estimator=DecisionTreeClassifier(random_state=0), k=4, d=3)
    changed = _affected(clf2, [clf2.buckets_[-1]])
    assert len(changed) == 3
    s1, s2 = clf.base_scores(X_test), clf2.base_scores(X_test)
    same = [j for j in range(12) if np.array_equal(s1[:, j], s2[:, j])]
    assert set(range(12)) - changed <= set(same)


def test_row_order_does_not_matter():
    X, y = _blobs(seed=3)
    X_test, _ = _blobs(n=40, seed=4)
    perm = np.random.default_rng(0).permutation(len(y))
    for params in CONFIGS:
        a = _fit(X, y, **params)
        b = _fit(X[perm], y[perm], **params)
        assert np.array_equal(a.buckets_[perm], b.buckets_)
        for sa, sb in zip(a.subsets_, b.subsets_):
            assert np.array_equal(X[sa], X[perm][sb])  # same rows, same order
        assert np.array_equal(a.base_scores(X_test), b.base_scores(X_test))
        pa, ca = a.predict_certified(X_test)
        pb, cb = b.predict_certified(X_test)
        assert np.array_equal(pa, pb) and np.array_equal(ca, cb)


def test_parallel_fit_gives_the_same_models():
    X, y = _blobs()
    X_test, _ = _blobs(n=20, seed=5)
    a = _fit(X, y, estimator=LogisticRegression(), k=4)
    b = _fit(X, y, estimator=LogisticRegression(), k=4, n_jobs=2)
    assert np.array_equal(a.base_scores(X_test), b.base_scores(X_test))
    c = _fit(X, y, estimator=LogisticRegression(), k=4, n_jobs=-1)
    for other in (b, c):
        pa, ca = a.predict_certified(X_test)
        pb, cb = other.predict_certified(X_test)
        assert np.array_equal(pa, pb) and np.array_equal(ca, cb)


def test_n_jobs_has_scikit_learns_meaning_in_fit_and_certify(monkeypatch):
    """None is one worker (unless a joblib context says otherwise) for fitting and certifying alike."""
    import joblib

    import runoff.sklearn as rsk

    seen = []
    real = rsk.certify_ensemble

    def spy(*args, n_jobs=None, **kwargs):
        seen.append(n_jobs)
        return real(*args, n_jobs=n_jobs, **kwargs)

    monkeypatch.setattr(rsk, "certify_ensemble", spy)
    X, y = _blobs(n=40)
    _fit(X, y, k=3).predict(X)
    _fit(X, y, k=3, n_jobs=2).predict(X)
    with joblib.parallel_config(n_jobs=3):
        _fit(X, y, k=3).predict(X)
    _fit(X, y, k=3, n_jobs=-1).predict(X)
    assert seen == [1, 2, 3, joblib.cpu_count()]


def test_subsets_follow_the_spread_rule():
    # Row i trains model j exactly when j = (bucket_i + s) mod k*d for a shift s, in content order.
    X, y = _blobs()
    clf = _fit(X, y, estimator=DecisionTreeClassifier(random_state=0), k=4, d=3)
    m = 12
    digests = row_hashes(X, y)
    for j, rows in enumerate(clf.subsets_):
        expected = [i for i in range(len(y)) if any((int(clf.buckets_[i]) + s) % m == j for s in clf.spread_)]
        assert sorted(rows.tolist()) == expected
        assert [digests[i] for i in rows] == sorted(digests[i] for i in rows)


def test_row_hashes_are_named_apart_from_image_hashes():
    import runoff.sklearn as rsk

    assert rsk.ROW_HASHES == ("sha256",) and not hasattr(rsk, "HASHES")


def test_missing_scikit_learn_is_a_missing_dependency_error():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "from runoff.errors import MissingDependencyError\n"
        "try:\n    import runoff.sklearn\n"
        "except MissingDependencyError as exc:\n"
        "    assert isinstance(exc, ImportError) and isinstance(exc, ValueError)\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("runoff.sklearn needs scikit-learn, which is not installed; "
                           "install it with: pip install 'runoff[sklearn]'")


# ----------------------------------------------------------------------------------------
# Certificates
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", CONFIGS, ids=lambda p: f"{type(p['estimator']).__name__}-d{p.get('d', 1)}")
def test_certificates_agree_with_certify(params):
    X, y = _blobs(seed=6)
    X_test, y_test = _blobs(n=50, seed=7)
    clf = _fit(X, y, **params)
    scores = clf.base_scores(X_test)
    assert scores.shape == (50, clf.k * clf.d, 3) and scores.dtype == np.float64
    ref = runoff.certify(scores, clf.method_, **_fa_args(clf))
    pred, cert = clf.predict_certified(X_test)
    assert cert.dtype == np.int64
    assert np.array_equal(pred, clf.classes_[ref.predictions])
    assert np.array_equal(cert, ref.certificates)
    assert np.array_equal(clf.predict(X_test), pred)
    proba = clf.predict_proba(X_test)
    assert np.allclose(proba.sum(axis=1), 1.0)
    if clf.aggregation == "plurality":
        assert np.array_equal(clf.classes_[np.argmax(proba, axis=1)], pred)
    acc = clf.certified_accuracy(X_test, y_test, [0, 1, 2])
    assert np.allclose(acc, [np.mean((pred == y_test) & (cert >= b)) for b in (0, 1, 2)])
    assert acc[0] == pytest.approx(clf.score(X_test, y_test))


@pytest.mark.parametrize(
    "params",
    [
        dict(estimator=DecisionTreeClassifier(random_state=0), k=7),
        dict(estimator=LogisticRegression(), k=7, aggregation="plurality"),
        dict(estimator=DecisionTreeClassifier(random_state=0, max_depth=2), k=3, d=2),
        dict(estimator=LogisticRegression(), k=4, d=2, aggregation="plurality"),
    ],
    ids=["dpa-roe", "dpa", "fa-roe", "fa"],
)
def test_certificates_sound_against_exhaustive_adversary(params):
    X, y = _blobs(n=60, seed=8)
    X_test, _ = _blobs(n=12, seed=9)
    clf = _fit(X, y, **params)
    scores = clf.base_scores(X_test)
    pred, cert = clf.predict_certified(X_test)
    assert cert.max() >= 1  # the search is not vacuous
    kw = {"d": clf.d, "spread": clf.spread_} if clf.d > 1 else {}
    for i in range(len(X_test)):
        assert clf.classes_[plain_predict(scores[i], clf.method_)] == pred[i]
        assert find_attack(scores[i], clf.method_, int(cert[i]), **kw) is None


def test_inserting_certificate_many_rows_never_flips_a_prediction():
    """End to end: real poisoned rows (copies of the test point with another label)."""
    X, y = _blobs(n=80, seed=10)
    X_test, _ = _blobs(n=6, seed=11)
    params = dict(estimator=DecisionTreeClassifier(random_state=0), k=9)
    clf = _fit(X, y, **params)
    pred, cert = clf.predict_certified(X_test)
    rng = np.random.default_rng(0)
    for i in range(len(X_test)):
        t = int(cert[i])
        if t == 0:
            continue
        target = (pred[i] + 1) % 3
        poison = X_test[i] + rng.normal(scale=1e-3, size=(t, X.shape[1]))
        clf2 = _fit(np.vstack([X, poison]), np.append(y, [target] * t), **params)
        assert clf2.predict(X_test[i : i + 1])[0] == pred[i]


# ----------------------------------------------------------------------------------------
# Empty subsets, missing classes, labels
# ----------------------------------------------------------------------------------------


def test_empty_subsets_give_constant_models_and_a_warning():
    X, y = _blobs(n=8, seed=12)
    with pytest.warns(UserWarning, match="no training rows"):  # k = n rows: some buckets get none
        clf = PartitionEnsembleClassifier(LogisticRegression(), k=8).fit(X, y)
    empty = [j for j, s in enumerate(clf.subsets_) if s.size == 0]
    assert empty
    scores = clf.base_scores(X)
    for j in empty:
        assert isinstance(clf.estimators_[j], ConstantModel)
        assert np.all(scores[:, j] == 0.0)  # uniform: votes classes_[0]
    pred, cert = clf.predict_certified(X)
    ref = runoff.certify(scores, "dpa-roe")
    assert np.array_equal(cert, ref.certificates)
    assert set(pred) <= set(clf.classes_)


def test_single_class_and_missing_class_subsets():
    X, y = _blobs(n=30, seed=13)
    clf = _fit(X, y, estimator=LogisticRegression(), k=8)
    X_test, _ = _blobs(n=10, seed=14)
    scores = clf.base_scores(X_test)
    seen_missing = seen_single = False
    for j, (est, idx) in enumerate(zip(clf.estimators_, clf.subsets_)):
        present = np.unique(y[idx])
        if present.size == 1:
            seen_single = True
            assert isinstance(est, ConstantModel)
            expected = np.zeros(3)
            expected[present[0]] = 1.0
            assert np.all(scores[:, j] == expected)
        elif 1 < present.size < 3:
            seen_missing = True
            proba = est.predict_proba(X_test)
            missing = np.setdiff1d(np.arange(3), present)
            assert np.array_equal(scores[:, j][:, present], proba)
            assert np.all(scores[:, j][:, missing] == proba.min(axis=1, keepdims=True) - 1)
            assert set(np.argmax(scores[:, j], axis=1)) <= set(present)
    assert seen_missing and seen_single


def test_binary_decision_function_in_a_multiclass_ensemble():
    X, y = _blobs(n=24, seed=15)
    clf = _fit(X, y, estimator=RidgeClassifier(), k=6)
    assert clf.scores_method_ == "decision_function"
    scores = clf.base_scores(X)
    for j, est in enumerate(clf.estimators_):
        if isinstance(est, ConstantModel) or len(est.classes_) != 2:
            continue
        f = est.decision_function(X)
        a, b = np.searchsorted(clf.classes_, est.classes_)
        assert np.array_equal(scores[:, j, a], -f) and np.array_equal(scores[:, j, b], f)
        break
    else:
        pytest.fail("no two-class subset in this data")


def test_any_label_type_and_fixed_classes():
    X, y = _blobs(n=60, seed=16)
    names = np.array(["cat", "dog", "emu"])[y]
    clf = _fit(X, names, estimator=DecisionTreeClassifier(random_state=0), k=4)
    assert clf.classes_.tolist() == ["cat", "dog", "emu"]
    assert set(clf.predict(X)) <= {"cat", "dog", "emu"}
    # the label is part of the hash; equal labels (1 == 1.0) hash alike
    assert row_hashes(X[:3], [1, 2, 0]) == row_hashes(X[:3], [1.0, 2.0, 0.0])
    assert row_hashes(X[:3], [1, 2, 0]) != row_hashes(X[:3], [1, 2, 1])
    # a fixed label space may hold classes y lacks; they get no training rows
    fixed = _fit(X, names, estimator=DecisionTreeClassifier(random_state=0), k=4,
                 classes=["ant", "cat", "dog", "emu"])
    assert fixed.classes_.tolist() == ["ant", "cat", "dog", "emu"]
    assert fixed.base_scores(X).shape[2] == 4
    assert fixed.predict_proba(X)[:, 0].max() == 0.0
    with pytest.raises(InvalidParameterError, match=r"^y must be labels from classes; got labels not in classes: \['emu'\]$"):
        _fit(X, names, estimator=DecisionTreeClassifier(), k=4, classes=["cat", "dog"])


def test_row_hash_matches_its_specification():
    X = np.array([[1.5, -0.0, 3.0]])
    (digest,) = row_hashes(X, ["spam"])
    h = hashlib.sha256(b"runoff-sklearn-sha256-v1" + struct.pack("<q", 3))
    h.update(struct.pack("<q", 5) + b"sspam")
    h.update(struct.pack("<3d", 1.5, 0.0, 3.0))
    assert digest == h.digest()
    clf = _fit(np.vstack([X + i for i in range(7)]), ["spam"] + ["ham"] * 6, k=7)  # k <= 7 rows
    assert clf.buckets_[0] == int.from_bytes(digest, "big") % 7


def test_clone_and_params():
    clf = PartitionEnsembleClassifier(LogisticRegression(C=2.0), k=4, d=2, aggregation="plurality")
    c = clone(clf)
    assert c.get_params()["k"] == 4 and c.get_params()["estimator__C"] == 2.0
    c.set_params(k=6, estimator__C=0.5)
    assert c.k == 6 and c.estimator.C == 0.5 and clf.estimator.C == 2.0
    assert not hasattr(c, "estimators_")


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------


class _NoScores:
    def fit(self, X, y):
        return self

    def predict(self, X):
        return np.zeros(len(X))

    def get_params(self, deep=True):
        return {}


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(k=0), "^k must be an integer >= 1; got 0$"),
        (dict(k=2.5), "^k must be an integer >= 1; got 2.5$"),
        (dict(k=True), "^k must be an integer >= 1; got True$"),
        (dict(d=0), "^d must be an integer >= 1; got 0$"),
        (dict(aggregation="borda"), "^unknown aggregation 'borda'; choose one of: roe, plurality$"),
        (dict(aggregation="plurallity"), "^unknown aggregation 'plurallity'; did you mean plurality\\? choose one of"),
        (dict(hash="pixelsum"), "^unknown hash 'pixelsum'; choose one of: sha256$"),
        (dict(n_jobs=0), "^n_jobs must be None, an integer >= 1, or -1 for every core .*; got 0$"),
        (dict(n_jobs=1.5), "^n_jobs must be None, .*; got 1.5$"),
        (dict(k=3, d=2, spread=[0, 0]), r"^spread must be d=2 distinct integer shifts in \[0, k\*d\) = \[0, 6\); got \[0, 0\]$"),
        (dict(k=3, d=2, spread=[1]), r"^spread must be d=2 distinct integer shifts in \[0, k\*d\) = \[0, 6\); got \[1\]$"),
        (dict(estimator=_NoScores()), "^estimator must be a classifier with predict_proba or decision_function, "
                                      "to rank its votes; got _NoScores, which has neither$"),
    ],
)
def test_bad_parameters(params, match):
    X, y = _blobs(n=20)
    with pytest.raises(InvalidParameterError, match=match):
        PartitionEnsembleClassifier(**params).fit(X, y)


def test_bad_data():
    X, y = _blobs(n=20)
    with pytest.raises(InvalidParameterError, match="^y must be labels of at least 2 classes .*; got labels of one class, 0$"):
        PartitionEnsembleClassifier(k=2).fit(X, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="Unknown label type"):
        PartitionEnsembleClassifier(k=2).fit(X, np.linspace(0, 1, 20))
    with pytest.raises(ValueError):
        PartitionEnsembleClassifier(k=2).fit(X, y[:-1])
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        PartitionEnsembleClassifier(LogisticRegression(), k=2).fit(X_nan, y)
    clf = _fit(X, y, k=2)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :2])


def test_k_larger_than_the_training_set_is_refused():
    X, y = _blobs(n=30, seed=14)
    with pytest.raises(InvalidParameterError, match=r"^k must be an integer in \[1, 30\] \(the training set has "
                                                     r"30 rows\); got 1000$") as info:
        PartitionEnsembleClassifier(k=1000).fit(X, y)
    assert isinstance(info.value, ValueError)
    with pytest.warns(UserWarning, match="no training rows"):  # k = n rows is fitted, as before
        clf = PartitionEnsembleClassifier(k=30).fit(X, y)
    assert len(clf.estimators_) == 30
