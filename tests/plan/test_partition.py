"""Partition plans: reference hash and spread, determinism, plan.json validation."""

import json
import random

import numpy as np
import pytest

from runoff.data.datasets import Dataset, load_dataset
from runoff.errors import InvalidParameterError, RunDirectoryError, UnevenPlanWarning
from runoff.plan.hashing import content_order, hash_samples
from runoff.plan.partition import PartitionPlan, make_plan


def _tiny():
    # Six 1x2 grey images; pixel sums 3, 7, 4, 10, 0, 6.
    imgs = np.array([[1, 2], [3, 4], [4, 0], [5, 5], [0, 0], [2, 4]], dtype=np.uint8).reshape(6, 1, 2, 1)
    labels = np.array([1, 0, 1, 0, 2, 2])
    return Dataset(imgs, labels, 3, "tiny/train")


def test_pixelsum_and_spread_match_reference_by_hand():
    ds = _tiny()
    k, d = 2, 2
    plan = make_plan(ds, k=k, d=d)
    # Reference spread: Python's random with seed 999999999 + 208.
    shifts = random.Random(999999999 + 208).sample(range(k * d), d)
    assert list(plan.spread) == shifts
    # Canonical order by (label, pixels): label 0: [3,4], [5,5]; label 1: [1,2], [4,0];
    # label 2: [0,0], [2,4]. Pixel sums in that order: 7, 10, 3, 4, 0, 6 -> buckets mod 4.
    sums = [7, 10, 3, 4, 0, 6]
    assert plan.buckets.tolist() == [s % 4 for s in sums]
    expected = [[] for _ in range(4)]
    for i, s in enumerate(sums):
        for sh in shifts:
            expected[(s % 4 + sh) % 4].append(i)
    assert [sub.tolist() for sub in plan.subsets] == [sorted(e) for e in expected]


def test_dpa_subsets_by_hand():
    ds = _tiny()
    with pytest.warns(UnevenPlanWarning, match="1 of 3 base models get no training data"):
        plan = make_plan(ds, k=3)
    (shift,) = random.Random(999999999 + 208).sample(range(3), 1)
    assert plan.spread == (shift,)  # d = 1 still takes the reference's one shift
    # canonical sums 7, 10, 3, 4, 0, 6 mod 3 -> buckets 1, 1, 0, 1, 0, 0
    by_bucket = {0: [2, 4, 5], 1: [0, 1, 3], 2: []}
    assert [s.tolist() for s in plan.subsets] == [by_bucket[(j - shift) % 3] for j in range(3)]
    # per-subset statistics of pixel / 255 (one channel); empty subset -> mean 0, std 1
    vals = np.array([1, 2, 0, 0, 2, 4]) / 255.0
    j0 = (0 + shift) % 3
    assert plan.mean[j0, 0] == pytest.approx(vals.mean())
    # sample std (n - 1), as torch.std in the published partition script
    assert plan.std[j0, 0] == pytest.approx(vals.std(ddof=1), rel=1e-12)
    with pytest.warns(UnevenPlanWarning):
        population = make_plan(ds, k=3, std_rule="population")
    assert population.std[j0, 0] == pytest.approx(vals.std(), rel=1e-12)
    j2 = (2 + shift) % 3
    assert plan.mean[j2, 0] == 0 and plan.std[j2, 0] == 1


def test_sha256_hash_is_stable_and_label_dependent():
    ds = _tiny()
    h = hash_samples(ds.images, ds.labels, n_buckets=1000, method="sha256")
    again = hash_samples(ds.images.copy(), ds.labels.copy(), n_buckets=1000, method="sha256")
    assert np.array_equal(h, again)
    other = hash_samples(ds.images, (ds.labels + 1) % 3, n_buckets=2**62, method="sha256")
    assert not np.array_equal(other, hash_samples(ds.images, ds.labels, n_buckets=2**62, method="sha256"))
    with pytest.raises(InvalidParameterError, match="^unknown hash 'md5'; choose one of: pixelsum, sha256$"):
        hash_samples(ds.images, ds.labels, n_buckets=4, method="md5")


@pytest.mark.parametrize("hash_name", ["pixelsum", "sha256"])
def test_plan_independent_of_order(hash_name):
    train, _ = load_dataset("digits")
    plan = make_plan(train, k=20, d=3, hash=hash_name)
    rng = np.random.default_rng(1)
    for _ in range(2):
        perm = rng.permutation(len(train))
        shuffled = Dataset(train.images[perm].copy(), train.labels[perm].copy(), 10, "digits/train")
        assert make_plan(shuffled, k=20, d=3, hash=hash_name) == plan
    # every sample sits in exactly d subsets
    counts = np.bincount(np.concatenate(plan.subsets), minlength=len(train))
    assert np.all(counts == 3)


def test_content_order_sorts_by_label_then_bytes():
    imgs = np.array([[9], [1], [0], [1]], dtype=np.uint8).reshape(4, 1, 1, 1)
    labels = np.array([0, 1, 1, 0])
    assert content_order(imgs, labels).tolist() == [3, 0, 2, 1]


def test_plan_roundtrip_and_validation(tmp_path):
    train, _ = load_dataset("digits")
    plan = make_plan(train, k=7, d=2, training={"note": "x"})
    plan.save(tmp_path)
    loaded = PartitionPlan.load(tmp_path, train=train)
    assert loaded == plan
    assert np.array_equal(loaded.mean, plan.mean) and np.array_equal(loaded.std, plan.std)

    path = tmp_path / "plan.json"
    good = json.loads(path.read_text())
    for mutate, msg in [
        (lambda o: o.pop("buckets"), "missing field 'buckets'"),
        (lambda o: o.update(k=3), "inconsistent"),
        (lambda o: o.update(spread=[0, 0]), "distinct"),
        (lambda o: o.update(hash="md5"), "unknown hash"),
        (lambda o: o.update(format="other"), "not a runoff plan"),
        (lambda o: o["buckets"].__setitem__(0, 10**6), "buckets"),
        (lambda o: o.update(std=[[0.0]] * 14), "std"),
    ]:
        obj = json.loads(json.dumps(good))
        mutate(obj)
        path.write_text(json.dumps(obj))
        with pytest.raises(RunDirectoryError, match=msg):
            PartitionPlan.load(tmp_path)
    path.write_text("{not json")
    with pytest.raises(RunDirectoryError, match="JSON"):
        PartitionPlan.load(tmp_path)
    path.unlink()
    with pytest.raises(RunDirectoryError, match="no plan.json"):
        PartitionPlan.load(tmp_path)


def test_plan_rejects_other_training_set(tmp_path):
    train, _ = load_dataset("digits")
    make_plan(train, k=5).save(tmp_path)
    other = train.subset(np.arange(1, len(train)))
    with pytest.raises(RunDirectoryError, match="training set"):
        PartitionPlan.load(tmp_path, train=other)
    imgs = train.images.copy()
    imgs[0, 0, 0, 0] ^= 1
    with pytest.raises(RunDirectoryError, match="another training set"):
        PartitionPlan.load(tmp_path, train=Dataset(imgs, train.labels, 10, "digits/train"))


def test_bad_k_and_d():
    train, _ = load_dataset("digits")
    n = len(train)
    with pytest.raises(InvalidParameterError, match=rf"^k must be an integer in \[1, {n}\] \(the training set has {n} samples\); got {n + 1}$"):
        make_plan(train, k=n + 1)
    with pytest.raises(InvalidParameterError, match=r"^k must be an integer >= 1; got 0$"):
        make_plan(train, k=0)
    with pytest.raises(InvalidParameterError, match=r"^d must be an integer >= 1; got 0$"):
        make_plan(train, k=5, d=0)
    with pytest.raises(InvalidParameterError, match="unknown hash"):
        make_plan(train, k=5, hash="crc")
    with pytest.raises(InvalidParameterError, match="^unknown std_rule 'biased'; choose one of: sample, population$"):
        make_plan(train, k=5, std_rule="biased")


def _colour_set(n=60, seed=3):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, 5, 4, 3), dtype=np.uint8)
    imgs[:, :, :, 2] //= 7  # channels with different spreads
    return Dataset(imgs, rng.integers(0, 4, size=n), 4, "colour/train")


@pytest.mark.parametrize("std_rule,ddof", [("sample", 1), ("population", 0)])
def test_subset_stats_equal_a_plain_computation(std_rule, ddof):
    # the exact integer computation against numpy on every subset's pixel values (FA: d = 2,
    # so subsets overlap); the published script's torch.std is the ddof = 1 one
    ds = _colour_set()
    plan = make_plan(ds, k=4, d=2, std_rule=std_rule)
    canon = plan.canonical(ds)
    assert plan.std_rule == std_rule
    for j, sub in enumerate(plan.subsets):
        vals = canon.images[sub].reshape(-1, 3).astype(np.float64) / 255
        np.testing.assert_allclose(plan.mean[j], vals.mean(axis=0), rtol=1e-13)
        np.testing.assert_allclose(plan.std[j], vals.std(axis=0, ddof=ddof), rtol=1e-12)


def test_std_rule_is_recorded_and_old_plans_keep_their_json(tmp_path):
    ds = _colour_set()
    plan = make_plan(ds, k=4)
    plan.save(tmp_path)
    obj = json.loads((tmp_path / "plan.json").read_text())
    assert obj["std_rule"] == "sample"
    # A plan written before the rule was recorded has no std_rule and population stds: it
    # loads as such and writes the same JSON back (checkpoints are tied to that JSON).
    old = make_plan(ds, k=4, std_rule="population")
    old_obj = json.loads(json.dumps(old.to_dict()))
    assert "std_rule" not in old_obj and not np.array_equal(old.std, plan.std)
    loaded = PartitionPlan.from_dict(old_obj)
    assert loaded.std_rule == "population" and loaded.to_dict() == old_obj and loaded == old
    assert loaded != plan  # never mistaken for a plan of the sample rule
    with pytest.raises(RunDirectoryError, match="unknown std_rule 'n-2'"):
        PartitionPlan.from_dict({**obj, "std_rule": "n-2"})


def test_digits_loader_and_registry():
    train, test = load_dataset("digits")
    assert len(train) == 1437 and len(test) == 360
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (8, 8, 1)
    assert train.images.max() == 255 and train.images.min() == 0
    train2, test2 = load_dataset("digits")
    assert np.array_equal(test.images, test2.images) and np.array_equal(test.labels, test2.labels)
    with pytest.raises(InvalidParameterError, match="choose one of: digits"):
        load_dataset("imagenet")
