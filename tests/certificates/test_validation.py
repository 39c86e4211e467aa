"""Bad input gets a clear RunoffError (also a ValueError) that names the problem."""

import re

import numpy as np
import pytest

import runoff
from runoff import (
    InvalidLabelsError,
    InvalidParameterError,
    InvalidScoresError,
    RunoffError,
)

RNG = np.random.default_rng(0)
GOOD = RNG.normal(size=(4, 6, 3))


@pytest.mark.parametrize(
    "scores, match",
    [
        (np.zeros((4, 6)), r"^scores must be an array of shape \(N, M, C\).*; got shape \(4, 6\)$"),
        (np.zeros((4, 6, 3, 1)), r"^scores must be an array of shape \(N, M, C\).*; got shape \(4, 6, 3, 1\)$"),
        (np.zeros((0, 6, 3)), r"^scores must be non-empty.*; got shape \(0, 6, 3\)$"),
        (np.zeros((4, 0, 3)), r"^scores must be non-empty.*; got shape \(4, 0, 3\)$"),
        (np.zeros((4, 6, 1)), r"^scores must be logits of at least 2 classes \(C >= 2\); got shape \(4, 6, 1\)$"),
        (np.zeros((4, 6, 3), dtype=bool), "^scores must be real numbers; got dtype bool$"),
        (np.array([[["a", "b"]]]), "^scores must be real numbers; got dtype <U1$"),
    ],
)
def test_bad_scores_shape_and_type(scores, match):
    with pytest.raises(InvalidScoresError, match=match):
        runoff.certify(scores, "dpa")


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_non_finite_logits_are_located(bad, word):
    s = GOOD.copy()
    s[2, 4, 1] = bad
    with pytest.raises(InvalidScoresError, match=rf"^scores must be finite; got 1 non-finite values; first: {word} at \(point 2, model 4, class 1\)$"):
        runoff.certify(s, "dpa-roe")


def test_unknown_method_lists_choices():
    with pytest.raises(InvalidParameterError, match="unknown method 'roe'.*dpa, dpa-roe, fa, fa-roe"):
        runoff.certify(GOOD, "roe")


def test_unknown_method_suggests_close_names():
    with pytest.raises(InvalidParameterError, match="^unknown method 'fa-reo'; did you mean fa-roe"):
        runoff.certify(GOOD, "fa-reo")
    with pytest.raises(InvalidParameterError, match=r"^method must be a name \(choose one of: dpa, dpa-roe, fa, fa-roe\); got 3$"):
        runoff.certify(GOOD, 3)


def test_method_spelling_variants_are_accepted():
    a = runoff.certify(GOOD, "DPA+ROE")
    b = runoff.certify(GOOD, "dpa-roe")
    assert a.method == "dpa-roe"
    np.testing.assert_array_equal(a.certificates, b.certificates)


def test_d_must_divide_the_number_of_models():
    with pytest.raises(InvalidParameterError, match=r"^d must be a divisor of the number of base models M=6 "
                       r"\(FA needs M = k\*d\); got 4, which does not divide 6$"):
        runoff.certify(GOOD, "fa", d=4)


@pytest.mark.parametrize("d", [0, -1, 1.5, "2", True])
def test_d_must_be_a_positive_integer(d):
    with pytest.raises(InvalidParameterError, match=f"^d must be an integer >= 1; got {d!r}$"):
        runoff.certify(GOOD, "fa", d=d)


def test_d_is_refused_for_dpa():
    with pytest.raises(InvalidParameterError, match=r"^d must be 1 for method 'dpa' \(d and spread apply to the FA methods only.*; got 2$"):
        runoff.certify(GOOD, "dpa", d=2)
    with pytest.raises(InvalidParameterError, match=r"^spread must be None for method 'dpa-roe' \(.*FA methods only.*; got \[0\]$"):
        runoff.certify(GOOD, "dpa-roe", spread=[0])


@pytest.mark.parametrize("spread", [[0], [0, 1, 2], [0, 6], [-1, 2], [3, 3], [0.5, 1], ["a", "b"], [[0, 1]]])
def test_bad_spread(spread):
    # One message names every rule (d shifts, distinct, integers, in [0, k*d)) and the value given.
    full = rf"^spread must be d=2 distinct integer shifts in \[0, k\*d\) = \[0, 6\); got {re.escape(repr(spread))}$"
    with pytest.raises(InvalidParameterError, match=full):
        runoff.certify(GOOD, "fa-roe", d=2, spread=spread)


def test_errors_are_value_errors():
    assert issubclass(RunoffError, ValueError)
    with pytest.raises(ValueError):
        runoff.certify(GOOD, "nope")


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    a = runoff.certify(torch.from_numpy(GOOD), "fa-roe", d=2)
    b = runoff.certify(GOOD, "fa-roe", d=2)
    np.testing.assert_array_equal(a.certificates, b.certificates)
    np.testing.assert_array_equal(a.predictions, b.predictions)


def test_default_spread_is_the_reference_one():
    from runoff.plan.spread import reference_spread

    a = runoff.certify(GOOD, "fa", d=3)
    assert a.spread == reference_spread(2, 3)
    b = runoff.certify(GOOD, "fa", d=3, spread=reference_spread(2, 3))
    np.testing.assert_array_equal(a.certificates, b.certificates)


def test_reference_spread_is_pythons_random_sample():
    import random

    assert runoff.plan.spread.reference_spread(50, 16) == random.Random(999999999 + 208).sample(range(800), 16)


def test_result_shapes_and_types():
    r = runoff.certify(GOOD, "dpa")
    assert r.predictions.shape == r.certificates.shape == (4,)
    assert r.predictions.dtype == r.certificates.dtype == np.int64
    assert (r.certificates >= 0).all()


class TestCertifiedAccuracy:
    def test_counts_correct_and_certified(self):
        acc = runoff.certified_accuracy([0, 1, 2, 1], [3, 0, 5, 2], [0, 1, 1, 1], [0, 1, 3, 6])
        np.testing.assert_allclose(acc, [0.75, 0.5, 0.25, 0.0])

    def test_scalar_budget(self):
        assert runoff.certified_accuracy([0], [2], [0], 2).tolist() == [1.0]

    def test_method_on_result(self):
        r = runoff.certify(GOOD, "dpa")
        labels = r.predictions.copy()
        assert r.certified_accuracy(labels, [0]).tolist() == [1.0]

    @pytest.mark.parametrize(
        "labels, match",
        [
            ([0, 1], r"^labels must be an array of shape \(4,\) to match the scores; got shape \(2,\)$"),
            ([0, 1, 2, -1], r"^labels must be class indices >= 0; got values from -1 to 2$"),
            ([0.5, 1, 1, 1], "^labels must be integer class indices; got dtype float64$"),
        ],
    )
    def test_bad_labels(self, labels, match):
        with pytest.raises(InvalidLabelsError, match=match):
            runoff.certified_accuracy([0, 1, 2, 1], [3, 0, 5, 2], labels, [0])

    @pytest.mark.parametrize(
        "budgets, match",
        [
            ([-1], r"^budgets must be a non-empty list of integers >= 0; got \[-1\]$"),
            ([1.5], r"^budgets must be a non-empty list of integers >= 0; got \[1.5\]$"),
            ([], r"^budgets must be a non-empty list of integers >= 0; got \[\]$"),
            ([[1, 2]], r"^budgets must be a non-empty list of integers >= 0; got shape \(1, 2\)$"),
        ],
    )
    def test_bad_budgets(self, budgets, match):
        with pytest.raises(InvalidParameterError, match=match):
            runoff.certified_accuracy([0], [1], [0], budgets)

    def test_mismatched_certificates(self):
        with pytest.raises(InvalidParameterError, match=r"^certificates must be an array of the shape of predictions \(2,\); got shape \(1,\)$"):
            runoff.certified_accuracy([0, 1], [1], [0, 1], [0])
        with pytest.raises(InvalidParameterError, match=r"^predictions must be a non-empty 1-D array; got shape \(0,\)$"):
            runoff.certified_accuracy([], [], [], [0])


def test_certify_ensemble_passes_d_and_spread_to_fa_methods_only():
    from runoff.certificates import certify_ensemble

    spread = [1, 4]
    fa = certify_ensemble(GOOD, "fa-roe", d=2, spread=spread)
    np.testing.assert_array_equal(fa.certificates, runoff.certify(GOOD, "fa-roe", d=2, spread=spread).certificates)
    dpa = certify_ensemble(GOOD, "dpa-roe", d=2, spread=spread)
    np.testing.assert_array_equal(dpa.certificates, runoff.certify(GOOD, "dpa-roe").certificates)
    with pytest.raises(InvalidParameterError, match="unknown method"):
        certify_ensemble(GOOD, "roe", d=2)
