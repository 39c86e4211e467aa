"""Batched heads on embeddings (issue 25): the same heads as trained one by one, the optimum
scikit-learn finds, and poison isolation bit for bit.

The linear head minimises, per head, ``mean CE + (l2 / 2) |theta|^2`` on its standardised
subset, bias penalised; scikit-learn's ``LogisticRegression`` has the same optimum with
``C = 1 / (l2 * n_m)``, ``fit_intercept=False`` and a column of ones appended to the features.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runoff.errors import InvalidLabelsError, InvalidParameterError  # noqa: E402
from runoff.training.heads import Heads, fit_heads, padded_size, subset_stats  # noqa: E402
from runoff.training.lbfgs import minimize  # noqa: E402

N_CLASSES = 4
#: Relative difference of the objective allowed between our optimum and scikit-learn's (both
#: float64 and converged far tighter than this).
SKLEARN_LOSS_RTOL = 1e-7


def _data(n, d, *, seed=0):
    centers = np.random.default_rng(99).normal(size=(N_CLASSES, d))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    return (centers[y] + 1.5 * rng.normal(size=(n, d)) + 3.0).astype(np.float32), y


def _subsets(n, k, seed=3):
    buckets = np.random.default_rng(seed).integers(0, k, n)
    return [np.flatnonzero(buckets == m) for m in range(k)]


@pytest.fixture(scope="module")
def toy():
    x, y = _data(600, 6)
    test, _ = _data(50, 6, seed=1)
    return x, y, _subsets(600, 12), test


def _objective(x, y, sub, w, b, l2):
    """Our objective on one subset at (W, b), in float64."""
    mean, std = subset_stats(x, sub)
    z = (x[sub].astype(np.float64) - mean) / std
    logits = z @ w + b
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    ce = (lse - logits[np.arange(len(sub)), y[sub]]).mean()
    return ce + 0.5 * l2 * ((w ** 2).sum() + (b ** 2).sum())


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_batched_heads_equal_heads_trained_one_by_one(toy, head):
    x, y, subs, test = toy
    kw = {"n_classes": N_CLASSES, "head": head, "dtype": "float64", "tol": 1e-10,
          "max_iter": None if head == "linear" else 60}
    together = fit_heads(x, y, subs, **kw)
    for m in (0, 5, 11):
        alone = fit_heads(x, y, [subs[m]], model_ids=[m], **kw)
        np.testing.assert_allclose(together.logits(test)[:, m], alone.logits(test)[:, 0], rtol=0, atol=1e-6)
        assert together.loss[m] == pytest.approx(alone.loss[0], rel=1e-10)
    assert together.logits(test).shape == (50, 12, N_CLASSES) and together.logits(test).dtype == np.float32


def test_linear_heads_reach_scikit_learns_optimum(toy):
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y, subs, _ = toy
    l2 = 0.05
    heads = fit_heads(x, y, subs, n_classes=N_CLASSES, l2=l2, dtype="float64", tol=1e-10)
    assert heads.converged.all()
    for m in range(3):
        sub = subs[m]
        if len(np.unique(y[sub])) < N_CLASSES:  # scikit-learn would fit fewer classes
            continue
        mean, std = subset_stats(x, sub)
        z = np.hstack([(x[sub] - mean) / std, np.ones((len(sub), 1))])
        ref = sklearn.LogisticRegression(C=1 / (l2 * len(sub)), fit_intercept=False, tol=1e-12, max_iter=10_000)
        ref.fit(z, y[sub])
        theirs = _objective(x, y, sub, ref.coef_[:, :-1].T, ref.coef_[:, -1], l2)
        ours = _objective(x, y, sub, heads.params["W"][m], heads.params["b"][m], l2)
        assert ours == pytest.approx(heads.loss[m], rel=1e-10)
        assert ours <= theirs * (1 + SKLEARN_LOSS_RTOL) and theirs <= ours * (1 + SKLEARN_LOSS_RTOL)


@pytest.mark.parametrize("head", ["linear", "mlp"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_changed_subset_changes_only_its_head_bit_for_bit(head, dtype):
    x, y = _data(2400, 16)
    test, _ = _data(40, 16, seed=1)
    subs = _subsets(2400, 40)
    kw = {"n_classes": N_CLASSES, "head": head, "dtype": dtype, "max_iter": None if head == "linear" else 30}
    before = fit_heads(x, y, subs, **kw).logits(test)
    x2, y2, subs2 = x.copy(), y.copy(), list(subs)
    x2[subs[7][0]] += 0.5  # an edited sample
    y2[subs[6][1]] = (y2[subs[6][1]] + 1) % N_CLASSES  # a flipped label
    subs2[8] = np.append(subs[8], subs[3][:5])  # five samples added (another padded size)
    subs2[9] = subs[9][1:]  # one removed
    after = fit_heads(x2, y2, subs2, **kw).logits(test)
    changed = [m for m in range(40) if not np.array_equal(before[:, m], after[:, m])]
    assert changed == [6, 7, 8, 9]


def test_training_is_deterministic_and_round_trips(toy, tmp_path):
    x, y, subs, test = toy
    a = fit_heads(x, y, subs, n_classes=N_CLASSES, head="mlp", max_iter=20, seed=5)
    b = fit_heads(x, y, subs, n_classes=N_CLASSES, head="mlp", max_iter=20, seed=5)
    np.testing.assert_array_equal(a.logits(test), b.logits(test))
    c = fit_heads(x, y, subs, n_classes=N_CLASSES, head="mlp", max_iter=20, seed=6)
    assert not np.array_equal(a.logits(test), c.logits(test))
    np.savez(tmp_path / "heads.npz", **a.to_arrays())
    with np.load(tmp_path / "heads.npz") as f:
        back = Heads.from_arrays(dict(f))
    np.testing.assert_array_equal(back.logits(test), a.logits(test))
    assert back.kind == "mlp" and back.n_classes == N_CLASSES


def test_logits_apply_each_heads_own_standardisation(toy):
    x, y, subs, test = toy
    heads = fit_heads(x, y, subs, n_classes=N_CLASSES, dtype="float64")
    for m in (2, 9):
        mean, std = subset_stats(x, subs[m])
        assert np.allclose(mean, x[subs[m]].mean(0)) and np.allclose(std, x[subs[m]].std(0, ddof=1))
        explicit = ((test - mean) / std) @ heads.params["W"][m] + heads.params["b"][m]
        np.testing.assert_allclose(heads.logits(test)[:, m], explicit, rtol=1e-6, atol=1e-5)


def test_empty_subsets_absent_classes_and_tiny_subsets(toy):
    x, y, _, test = toy
    only_zeros = np.flatnonzero(y == 0)[:5]
    subs = [np.array([], dtype=np.int64), only_zeros, np.flatnonzero(y == 1)[:1], np.arange(40)]
    heads = fit_heads(x, y, subs, n_classes=N_CLASSES)
    logits = heads.logits(test)
    assert np.all(logits[:, 0] == 0) and np.isnan(heads.train_accuracy[0])
    assert np.isfinite(logits).all() and (logits[:, 1].argmax(1) == 0).all() and (logits[:, 2].argmax(1) == 1).all()
    assert heads.train_accuracy[1] == 1.0


def test_padded_sizes_depend_on_the_size_alone():
    assert [padded_size(n) for n in (0, 1, 8, 9, 15, 16, 17, 31, 33, 1000)] == [0, 1, 8, 9, 15, 16, 18, 32, 36, 1024]
    assert all(n <= padded_size(n) <= n * 1.125 + 1 for n in range(1, 5000))


def test_bad_input_is_one_line(toy):
    x, y, subs, _ = toy
    with pytest.raises(InvalidParameterError, match="unknown head 'linera'; did you mean linear"):
        fit_heads(x, y, subs, n_classes=N_CLASSES, head="linera")
    with pytest.raises(InvalidParameterError, match="features must be finite"):
        fit_heads(np.where(x > 5, np.nan, x), y, subs, n_classes=N_CLASSES)
    with pytest.raises(InvalidLabelsError):
        fit_heads(x, y, subs, n_classes=2)
    with pytest.raises(InvalidParameterError, match=r"subsets\[1\] must index the 600 samples"):
        fit_heads(x, y, [subs[0], np.array([600])], n_classes=N_CLASSES)
    with pytest.raises(InvalidParameterError, match="model_ids must give one id per subset"):
        fit_heads(x, y, subs, n_classes=N_CLASSES, model_ids=[0])
    with pytest.raises(InvalidParameterError, match=r"features must have shape \(N, 6\)"):
        fit_heads(x, y, subs[:2], n_classes=N_CLASSES).logits(np.zeros((3, 5)))


class _Quadratics:
    """``0.5 * a_i * |theta - c_i|^2`` per problem; counts evaluations by batch size."""

    def __init__(self, a, c, calls):
        self.a, self.c, self.calls = a, c, calls

    def select(self, rows):
        return _Quadratics(self.a[rows], self.c[rows], self.calls)

    def value_and_grad(self, theta):
        self.calls.append(theta.shape[0])
        diff = theta - self.c
        return 0.5 * self.a * (diff * diff).sum(1), self.a[:, None] * diff


def test_lbfgs_solves_each_problem_on_its_own():
    a = torch.tensor([1.0, 10.0, 100.0, 0.5], dtype=torch.float64)
    c = torch.arange(12, dtype=torch.float64).reshape(4, 3)
    calls = []
    sol = minimize(_Quadratics(a, c, calls), torch.zeros(4, 3, dtype=torch.float64), tol=1e-12)
    assert sol.converged.all()
    torch.testing.assert_close(sol.theta, c, rtol=0, atol=1e-10)
    alone = minimize(_Quadratics(a[2:3], c[2:3], []), torch.zeros(1, 3, dtype=torch.float64), tol=1e-12)
    assert torch.equal(alone.theta[0], sol.theta[2]) and alone.n_iter[0] == sol.n_iter[2]


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_a_head_retrained_in_any_chunk_is_the_same_bit_for_bit(head):
    # what `runoff update` and chunked or Ray training rest on: a head's numbers do not depend
    # on which other heads share its computation
    x, y = _data(2400, 16)
    test, _ = _data(40, 16, seed=1)
    subs = _subsets(2400, 40)
    kw = {"n_classes": N_CLASSES, "head": head, "max_iter": None if head == "linear" else 30}
    full = fit_heads(x, y, subs, **kw).logits(test)
    chunk = [3, 8, 21]
    part = fit_heads(x, y, [subs[m] for m in chunk], model_ids=chunk, **kw).logits(test)
    for i, m in enumerate(chunk):
        np.testing.assert_array_equal(part[:, i], full[:, m])
