"""Bad input gets a clear RunoffError (also a ValueError) that names the problem."""

import numpy as np
import pytest

import runoff
from runoff import InvalidLabelsError, InvalidParameterError, InvalidScoresError, RunoffError

RNG = np.random.default_rng(0)
GOOD = RNG.normal(size=(4, 6, 3))


@pytest.mark.parametrize(
    "scores, match",
    [
        (np.zeros((4, 6)), r"shape \(N, M, C\).*\(4, 6\)"),
        (np.zeros((4, 6, 3, 1)), r"shape \(N, M, C\)"),
        (np.zeros((0, 6, 3)), "empty"),
        (np.zeros((4, 0, 3)), "empty"),
        (np.zeros((4, 6, 1)), "at least 2 classes"),
        (np.zeros((4, 6, 3), dtype=bool), "real numbers"),
        (np.array([[["a", "b"]]]), "real numbers"),
    ],
)
def test_bad_scores_shape_and_type(scores, match):
    with pytest.raises(InvalidScoresError, match=match):
        runoff.certify(scores, "dpa")


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_non_finite_logits_are_located(bad, word):
    s = GOOD.copy()
    s[2, 4, 1] = bad
    with pytest.raises(InvalidScoresError, match=rf"{word} at \(point 2, model 4, class 1\)"):
        runoff.certify(s, "dpa-roe")


def test_unknown_method_lists_choices():
    with pytest.raises(InvalidParameterError, match="unknown method 'roe'.*dpa, dpa-roe, fa, fa-roe"):
        runoff.certify(GOOD, "roe")


def test_method_spelling_variants_are_accepted():
    a = runoff.certify(GOOD, "DPA+ROE")
    b = runoff.certify(GOOD, "dpa-roe")
    assert a.method == "dpa-roe"
    np.testing.assert_array_equal(a.certificates, b.certificates)


def test_d_must_divide_the_number_of_models():
    with pytest.raises(InvalidParameterError, match="d=4 does not divide the number of base models M=6"):
        runoff.certify(GOOD, "fa", d=4)


@pytest.mark.parametrize("d", [0, -1, 1.5, "2", True])
def test_d_must_be_a_positive_integer(d):
    with pytest.raises(InvalidParameterError, match="d must be"):
        runoff.certify(GOOD, "fa", d=d)


def test_d_is_refused_for_dpa():
    with pytest.raises(InvalidParameterError, match="FA methods only"):
        runoff.certify(GOOD, "dpa", d=2)


@pytest.mark.parametrize(
    "spread, match",
    [([0], "d=2 shifts"), ([0, 1, 2], "d=2 shifts"), ([0, 6], r"\[0, 6\)"), ([-1, 2], r"\[0, 6\)"), ([3, 3], "distinct"), ([0.5, 1], "integers")],
)
def test_bad_spread(spread, match):
    with pytest.raises(InvalidParameterError, match=match):
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
    from runoff.spread import reference_spread

    a = runoff.certify(GOOD, "fa", d=3)
    assert a.spread == reference_spread(2, 3)
    b = runoff.certify(GOOD, "fa", d=3, spread=reference_spread(2, 3))
    np.testing.assert_array_equal(a.certificates, b.certificates)


def test_reference_spread_is_pythons_random_sample():
    import random

    assert runoff.spread.reference_spread(50, 16) == random.Random(999999999 + 208).sample(range(800), 16)


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
        "labels, match", [([0, 1], r"shape \(4,\)"), ([0, 1, 2, -1], r"\[0,"), ([0.5, 1, 1, 1], "integer")]
    )
    def test_bad_labels(self, labels, match):
        with pytest.raises(InvalidLabelsError, match=match):
            runoff.certified_accuracy([0, 1, 2, 1], [3, 0, 5, 2], labels, [0])

    @pytest.mark.parametrize("budgets, match", [([-1], ">= 0"), ([1.5], "integers"), ([], "non-empty")])
    def test_bad_budgets(self, budgets, match):
        with pytest.raises(InvalidParameterError, match=match):
            runoff.certified_accuracy([0], [1], [0], budgets)

    def test_mismatched_certificates(self):
        with pytest.raises(InvalidParameterError, match="shape of predictions"):
            runoff.certified_accuracy([0, 1], [1], [0, 1], [0])


def test_certify_ensemble_passes_d_and_spread_to_fa_methods_only():
    from runoff.certificates import certify_ensemble

    spread = [1, 4]
    fa = certify_ensemble(GOOD, "fa-roe", d=2, spread=spread)
    np.testing.assert_array_equal(fa.certificates, runoff.certify(GOOD, "fa-roe", d=2, spread=spread).certificates)
    dpa = certify_ensemble(GOOD, "dpa-roe", d=2, spread=spread)
    np.testing.assert_array_equal(dpa.certificates, runoff.certify(GOOD, "dpa-roe").certificates)
    with pytest.raises(InvalidParameterError, match="unknown method"):
        certify_ensemble(GOOD, "roe", d=2)
