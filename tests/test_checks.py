"""runoff.param_checks (one set of parameter checks, one message format), the spread's bucket-to-model
rule in runoff.plan.spread, the run-off gap helpers of the vote module, and n_jobs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import runoff
import runoff.data.configs
from runoff import param_checks as checks
from runoff.certificates import api, methods
from runoff.certificates.vote import margin, run_off_gaps
from runoff.errors import InvalidLabelsError, InvalidParameterError, RunoffError
from runoff.plan.spread import bucket_models, bucket_sums, buckets_of_models, model_subsets, models_of_buckets

# ----------------------------------------------------------------------------------------
# integers and numbers
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(2)])
def test_check_int_accepts_integers_and_returns_int(value):
    out = checks.check_int(value, "k", low=1)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (0, dict(low=1), "k must be an integer >= 1; got 0"),
        (np.int64(0), dict(low=1), "k must be an integer >= 1; got 0"),
        (2.0, dict(low=1), "k must be an integer >= 1; got 2.0"),
        ("3", dict(low=1), "k must be an integer >= 1; got '3'"),
        (True, dict(low=1), "k must be an integer >= 1; got True"),
        (np.bool_(True), dict(), "k must be an integer; got True"),
        (None, dict(), "k must be an integer; got None"),
        (11, dict(high=10), "k must be an integer <= 10; got 11"),
        (0, dict(low=1, high=10), "k must be an integer in [1, 10]; got 0"),
    ],
)
def test_check_int_refuses_with_one_message(value, kwargs, message):
    with pytest.raises(InvalidParameterError) as info:
        checks.check_int(value, "k", **kwargs)
    assert str(info.value) == message


def test_check_int_names_the_parameter_as_written():
    with pytest.raises(InvalidParameterError, match="^--chunk-size must be an integer >= 1; got -2$"):
        checks.check_int(-2, "--chunk-size", low=1)


def test_check_number():
    assert checks.check_number(0, "--gpus-per-task", low=0) == 0.0
    assert checks.check_number(np.float32(0.5), "x", low=0, strict=True) == 0.5
    for value, kwargs, message in [
        (0, dict(low=0, strict=True), "--cpus-per-task must be a number > 0; got 0"),
        (-1, dict(low=0, unit="seconds"), "--cpus-per-task must be a number of seconds >= 0; got -1"),
        (float("nan"), dict(), "--cpus-per-task must be a number; got nan"),
        (float("inf"), dict(low=0), "--cpus-per-task must be a number >= 0; got inf"),
        (False, dict(), "--cpus-per-task must be a number; got False"),
        ("1", dict(), "--cpus-per-task must be a number; got '1'"),
    ]:
        with pytest.raises(InvalidParameterError) as info:
            checks.check_number(value, "--cpus-per-task", **kwargs)
        assert str(info.value) == message
    with pytest.raises(InvalidParameterError, match=r"^big must be a number >= 0; got 1000.* \.\.\.$"):
        checks.check_number(10**400, "big", low=0)  # beyond float's range


def test_shown_values_are_short_and_plain():
    assert checks.shown(np.int64(3)) == "3"
    assert checks.shown(np.array([1, 2])) == "[1, 2]"
    long = checks.shown(list(range(1000)))
    assert len(long) <= 80 and long.endswith(" ...")
    err = checks.invalid("x", "small", got="shape (3, 4)")
    assert isinstance(err, InvalidParameterError) and str(err) == "x must be small; got shape (3, 4)"
    assert isinstance(checks.invalid("y", "z", 1, error=InvalidLabelsError), InvalidLabelsError)


# ----------------------------------------------------------------------------------------
# names: did you mean
# ----------------------------------------------------------------------------------------


def test_check_choice_suggests_close_names():
    assert checks.check_choice("ray", "backend", ("local", "ray")) == "ray"
    with pytest.raises(InvalidParameterError) as info:
        checks.check_choice("rayy", "backend", ("local", "ray"))
    assert str(info.value) == "unknown backend 'rayy'; did you mean ray? choose one of: local, ray"
    with pytest.raises(InvalidParameterError) as info:
        checks.check_choice("xyz", "backend", ("local", "ray"))
    assert str(info.value) == "unknown backend 'xyz'; choose one of: local, ray"
    with pytest.raises(InvalidParameterError) as info:
        checks.check_choice("cifar10-k5O", "configuration", runoff.data.configs.CONFIGS, listing="`runoff configs` lists them")
    assert str(info.value).startswith("unknown configuration 'cifar10-k5O'; did you mean cifar10-k50")
    assert str(info.value).endswith("? `runoff configs` lists them")
    with pytest.raises(InvalidParameterError, match=r"^backend must be a name \(choose one of: local, ray\); got 3$"):
        checks.check_choice(3, "backend", ("local", "ray"))


@pytest.mark.parametrize("spelling, name", [("DPA+ROE", "dpa-roe"), (" fa_roe ", "fa-roe"), ("Fa", "fa"), ("dpa", "dpa")])
def test_method_spellings(spelling, name):
    assert methods.check_method(spelling) == name


def test_unknown_method_did_you_mean():
    with pytest.raises(InvalidParameterError) as info:
        methods.check_method("dpa-reo")
    assert str(info.value) == "unknown method 'dpa-reo'; did you mean dpa-roe, fa-roe, dpa? choose one of: dpa, dpa-roe, fa, fa-roe"


def test_check_methods():
    assert methods.check_methods(["dpa", "DPA+ROE", "dpa"]) == ["dpa", "dpa-roe"]  # each once, in order
    assert methods.check_methods("fa-roe", d=4) == ["fa-roe"]  # one name
    with pytest.raises(InvalidParameterError, match=r"^methods must be one or more of dpa, dpa-roe, fa, fa-roe; got \[\]$"):
        methods.check_methods([])
    with pytest.raises(InvalidParameterError) as info:
        methods.check_methods(["fa", "dpa-roe"], d=2)
    assert str(info.value) == (
        "methods must be FA methods for d=2 models per bucket (fa or fa-roe): dpa-roe assumes one model "
        "per poison and would overstate its certificates; got ['fa', 'dpa-roe']"
    )
    with pytest.raises(InvalidParameterError, match="^d must be an integer >= 1; got 0$"):
        methods.check_methods(["fa"], d=0)
    with pytest.raises(InvalidParameterError, match=r"^method must be a name \(choose one of: .*\); got None$"):
        methods.check_methods(None)


def test_methods_for_is_the_one_rule():
    assert methods.methods_for(1) == ("dpa", "dpa-roe")
    assert methods.methods_for(2) == methods.methods_for(np.int64(32)) == ("fa", "fa-roe")
    with pytest.raises(InvalidParameterError, match="^d must be an integer >= 1; got 0$"):
        methods.methods_for(0)
    import runoff.reporting.evaluation

    assert runoff.reporting.evaluation.methods_for is methods.methods_for


# ----------------------------------------------------------------------------------------
# labels, budgets
# ----------------------------------------------------------------------------------------


def test_check_labels():
    out = checks.check_labels([0, 2.0, 1], 3, 3)
    assert out.dtype == np.int64 and out.tolist() == [0, 2, 1]
    for labels, message in [
        ([0, 1], "labels must be an array of shape (3,) to match the scores; got shape (2,)"),
        ([0, 1, 3], "labels must be class indices in [0, 3); got values from 0 to 3"),
        ([0, 1, 0.5], "labels must be integer class indices; got dtype float64"),
        ([True, False, True], "labels must be integer class indices; got dtype bool"),
    ]:
        with pytest.raises(InvalidLabelsError) as info:
            checks.check_labels(labels, 3, 3)
        assert str(info.value) == message


def test_check_budgets():
    assert checks.check_budgets(3).tolist() == [3]
    assert checks.check_budgets([0, 2.0]).dtype == np.int64
    for budgets, got in [([-1, 2], "[-1, 2]"), ([0.5], "[0.5]"), ([], "[]"), ("a", "['a']"), ([True], "[True]")]:
        with pytest.raises(InvalidParameterError) as info:
            checks.check_budgets(budgets)
        assert str(info.value) == f"budgets must be a non-empty list of integers >= 0; got {got}"


# ----------------------------------------------------------------------------------------
# n_jobs: scikit-learn's meaning, in runoff.certify too
# ----------------------------------------------------------------------------------------


def test_check_n_jobs_has_scikit_learns_meaning(monkeypatch):
    monkeypatch.setattr(checks, "cpu_count", lambda: 8)
    assert checks.check_n_jobs(None) == 1
    assert checks.check_n_jobs(3) == 3
    assert checks.check_n_jobs(-1) == 8
    assert checks.check_n_jobs(-2) == 7
    assert checks.check_n_jobs(-100) == 1
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(InvalidParameterError, match="^n_jobs must be None, an integer >= 1, or -1 for every core"):
            checks.check_n_jobs(bad)
    assert checks.cpu_count() >= 1


def test_certify_threads_follow_n_jobs(monkeypatch):
    started = []

    class Pool:
        def __init__(self, workers):
            started.append(workers)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, fn, items):
            return [fn(x) for x in items]

    monkeypatch.setattr(api, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(api, "_CHUNK_VALUES", 60)  # 10 values per point: 6 points per chunk
    monkeypatch.setattr(checks, "cpu_count", lambda: 4)
    scores = np.random.default_rng(0).normal(size=(40, 5, 2))
    ref = runoff.certify(scores, "dpa-roe", n_jobs=1)
    assert started == []
    for n_jobs, workers in [(None, None), (1, None), (3, 3), (-1, 4), (100, 7)]:
        started.clear()
        res = runoff.certify(scores, "dpa-roe", n_jobs=n_jobs)
        assert started == ([] if workers is None else [workers])  # None: one thread, no pool
        np.testing.assert_array_equal(res.certificates, ref.certificates)
        np.testing.assert_array_equal(res.predictions, ref.predictions)
    with pytest.raises(InvalidParameterError, match="^n_jobs must be None, an integer >= 1"):
        runoff.certify(scores, "dpa", n_jobs=0)


# ----------------------------------------------------------------------------------------
# the spread's rule, stated once
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, d, seed", [(1, 1, 0), (5, 1, 1), (3, 4, 2), (7, 3, 3)])
def test_bucket_and_model_maps_are_the_rule_and_inverse(k, d, seed):
    rng = np.random.default_rng(seed)
    m = k * d
    spread = rng.choice(m, d, replace=False).tolist()
    for b in range(m):
        expected = [(b + s) % m for s in spread]
        assert models_of_buckets(b, spread, m).tolist() == expected
        assert bucket_models(b, spread, m) == expected
        for j, s in zip(expected, spread):
            assert (j - s) % m == b
    all_models = models_of_buckets(np.arange(m), spread, m)
    assert all_models.shape == (m, d)
    back = buckets_of_models(np.arange(m), spread, m)
    for j in range(m):  # bucket b feeds model j exactly when j feeds back to b
        assert sorted(back[j].tolist()) == sorted(b for b in range(m) if j in all_models[b])
    x = rng.integers(0, 5, size=(4, m)).astype(np.int16)
    sums = bucket_sums(x, spread)
    assert sums.dtype == x.dtype
    for b in range(m):
        assert sums[:, b].tolist() == x[:, all_models[b]].sum(axis=1).tolist()
    buckets = rng.integers(0, m, size=30)
    subsets = model_subsets(buckets, spread, m)
    assert len(subsets) == m
    for j in range(m):
        assert subsets[j].dtype == np.int64
        assert subsets[j].tolist() == [i for i in range(30) if j in all_models[buckets[i]]]


def test_reference_spread_checks_k_and_d():
    with pytest.raises(InvalidParameterError, match="^k must be an integer >= 1; got 0$"):
        runoff.plan.spread.reference_spread(0, 2)
    with pytest.raises(InvalidParameterError, match="^d must be an integer >= 1; got 1.5$"):
        runoff.plan.spread.reference_spread(3, 1.5)


# ----------------------------------------------------------------------------------------
# the run-off gap, one helper
# ----------------------------------------------------------------------------------------


def test_run_off_gaps_agree_with_counting_votes():
    rng = np.random.default_rng(4)
    for _ in range(200):
        m = int(rng.integers(1, 8))
        ref, rival = rng.choice(4, 2, replace=False)
        wins = int(rng.integers(0, m + 1))  # models preferring rival
        ref_wins = (m - wins > wins) or (m - wins == wins and ref < rival)
        assert (run_off_gaps(wins, m, ref, rival) > 0) == ref_wins
        assert run_off_gaps(wins, m, ref, rival) == margin(m - wins, wins, ref, rival)
    counts = np.array([[3, 3, 1]])
    assert margin(counts[:, :1], counts, np.array([[0]]), np.arange(3)[None, :]).tolist() == [[0, 1, 3]]


# ----------------------------------------------------------------------------------------
# errors and imports
# ----------------------------------------------------------------------------------------


def test_errors_are_exported_and_checks_are_numpy_only():
    assert runoff.DataFileError is runoff.errors.DataFileError
    assert runoff.MissingDependencyError is runoff.errors.MissingDependencyError
    for name in ("DataFileError", "MissingDependencyError"):
        assert name in runoff.__all__ and name in runoff.errors.__all__
        assert issubclass(getattr(runoff, name), RunoffError)
    assert issubclass(runoff.MissingDependencyError, ImportError)
    code = ("import sys, runoff, runoff.param_checks, runoff.plan.spread, runoff.certificates; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'ray', 'sklearn', 'joblib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_reading_pth_without_torch_is_a_missing_dependency(tmp_path):
    path = tmp_path / "logits.pth"
    path.write_bytes(b"PK\x03\x04 not read")
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from runoff.errors import MissingDependencyError\n"
        "from runoff.run.logits import load_logits\n"
        "try:\n    load_logits(sys.argv[1])\n"
        "except MissingDependencyError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("reading logits.pth needs PyTorch, which is not installed; install it with: "
                           "pip install 'runoff[train]' (or convert the file to .npz)")


def test_one_method_registry_for_validation_dispatch_and_reporting():
    # every method is known by one entry: its kernel is what runoff.certify runs
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(20, 12, 4))
    for name, method in methods.REGISTRY.items():
        kwargs = {"d": 3} if method.fa else {}
        spread = [0, 4, 8] if method.fa else None
        direct = method.kernel(scores, None if spread is None else np.array(spread), kwargs.get("d", 1))
        via = runoff.certify(scores, name.upper().replace("-", "+"), spread=spread, **kwargs)
        assert via.method == name
        np.testing.assert_array_equal(via.predictions, direct[0])
        np.testing.assert_array_equal(via.certificates, direct[1])
        assert method.roe == name.endswith("-roe") and method.fa == name.startswith("fa")
        assert methods.REGISTRY[method.plurality].roe is False
    assert methods.get_method(methods.REGISTRY["fa"]) is methods.REGISTRY["fa"]  # normalised once
    assert runoff.certificates.METHODS == runoff.METHODS == tuple(methods.REGISTRY)
