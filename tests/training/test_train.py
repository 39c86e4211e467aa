"""Batched ensemble trainer: poison isolation, equivalence with one-by-one training, resume."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from reference_training import _sequential_reference  # noqa: F401

from runoff.data.datasets import Dataset, load_dataset  # noqa: E402
from runoff.errors import CheckpointError, InvalidParameterError  # noqa: E402
from runoff.plan.hashing import hash_samples
from runoff.plan.partition import make_plan  # noqa: E402
from runoff.training.augment import augment_batch, draw_epoch  # noqa: E402
from runoff.training.batched_net import BatchedNet  # noqa: E402
from runoff.training.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from runoff.training.chunk import model_seed  # noqa: E402
from runoff.training.inference import collect_logits  # noqa: E402
from runoff.training.models import architecture  # noqa: E402
from runoff.training.recipe import Recipe  # noqa: E402
from runoff.training.trainer import train_ensemble  # noqa: E402

# One thread: tiny workloads run as fast, and timings do not collapse when other processes
# share the cores (OpenMP threads spin-wait under oversubscription).
torch.set_num_threads(1)

SRC = str(Path(__file__).resolve().parents[2] / "src")

# Tiny but complete: BatchNorm, crop + flip augmentation, shuffling, momentum, weight decay,
# an lr milestone, and a batch size that leaves short last batches.
TINY = Recipe(model="small", epochs=3, batch_size=8, lr=0.05, milestones=(2,), augment="crop-flip",
              crop_padding=1)


@pytest.fixture(scope="module")
def digits():
    train, test = load_dataset("digits")
    return train.subset(np.arange(240)), test.subset(np.arange(40))


def _train(plan, train, test, recipe=TINY, **kw):
    models = train_ensemble(plan, train, recipe=recipe, progress=False, **kw)
    scores, _ = collect_logits(models, plan, test)
    states = {}
    for ids, net in models:
        for e, j in enumerate(ids):
            states[j] = net.model_state(e)
    return states, scores


def _differing(a, b):
    sa, la = a
    sb, lb = b
    out = set()
    for j in sa:
        same = all(torch.equal(sa[j][key], sb[j][key]) for key in sa[j])
        same = same and np.array_equal(la[:, j], lb[:, j])
        if not same:
            out.add(j)
    return out


def _bucket(plan, image, label):
    return int(hash_samples(image[None], np.array([label]), n_buckets=plan.n_models, method=plan.hash)[0])


@pytest.mark.parametrize("k,d,hash_name", [(8, 1, "pixelsum"), (4, 2, "sha256")])
def test_poison_isolation(digits, k, d, hash_name):
    train, test = digits
    plan = make_plan(train, k=k, d=d, hash=hash_name)
    base = _train(plan, train, test)
    i = 17
    img, lab = train.images[i], int(train.labels[i])
    old_models = set(plan.models_of_bucket(_bucket(plan, img, lab)))

    # 1. one sample changed (a few pixels altered)
    changed = train.images.copy()
    changed[i, 2, 3, 0] = 255 - changed[i, 2, 3, 0]
    changed[i, 5, 5, 0] = (int(changed[i, 5, 5, 0]) + 77) % 256
    ds = Dataset(changed, train.labels, 10, train.name)
    p2 = make_plan(ds, k=k, d=d, hash=hash_name)
    new_models = set(p2.models_of_bucket(_bucket(p2, changed[i], lab)))
    assert _differing(base, _train(p2, ds, test)) == old_models | new_models

    # 2. one sample removed
    keep = np.array([j for j in range(len(train)) if j != i])
    ds = train.subset(keep)
    p3 = make_plan(ds, k=k, d=d, hash=hash_name)
    assert _differing(base, _train(p3, ds, test)) == old_models

    # 3. one sample inserted (a new image, from the test split)
    extra = test.images[5]
    ds = Dataset(np.concatenate([train.images, extra[None]]), np.append(train.labels, test.labels[5]),
                 10, train.name)
    p4 = make_plan(ds, k=k, d=d, hash=hash_name)
    ins_models = set(p4.models_of_bucket(_bucket(p4, extra, int(test.labels[5]))))
    assert _differing(base, _train(p4, ds, test)) == ins_models


def test_isolation_across_chunking_and_model_selection(digits):
    train, test = digits
    plan = make_plan(train, k=6)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # exact up to rounding: no chaotic amplification
    try:
        whole = train_ensemble(plan, train, recipe=TINY, progress=False)
        part = train_ensemble(plan, train, recipe=TINY, progress=False, model_ids=[4, 1], chunk_size=1)
    finally:
        torch.set_default_dtype(prev)
    # models 4 and 1 trained alone (one chunk each) equal the same models trained with all
    # others, up to rounding (shapes differ, so kernels may round differently)
    (ids_w, net_w), = whole
    for ids, net in part:
        j = ids[0]
        a, b = net.model_state(0), net_w.model_state(ids_w.index(j))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-11)


def test_layouts_agree_to_rounding_in_float64(digits):
    # Chunks of other sizes (and other thread counts) run kernels of other shapes, whose
    # rounding differs from one CPU to another: they are never compared bit for bit. In
    # float64 the difference stays at rounding level over a few epochs.
    train, test = digits
    plan = make_plan(train, k=8)
    prev, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    try:
        whole = collect_logits(train_ensemble(plan, train, recipe=TINY, progress=False), plan, test)[0]
        torch.set_num_threads(2 if threads == 1 else 1)
        for chunk_size in (4, 3, 1):
            models = train_ensemble(plan, train, recipe=TINY, progress=False, chunk_size=chunk_size)
            assert max(len(ids) for ids, _ in models) == chunk_size
            np.testing.assert_allclose(collect_logits(models, plan, test)[0], whole, rtol=1e-7, atol=1e-9)
    finally:
        torch.set_default_dtype(prev)
        torch.set_num_threads(threads)


def test_same_layout_gives_the_same_bits(digits):
    # the same computation twice (same chunks, same threads): identical, as a rerun must be
    train, test = digits
    plan = make_plan(train, k=8)
    a = collect_logits(train_ensemble(plan, train, recipe=TINY, progress=False, chunk_size=3), plan, test)[0]
    b = collect_logits(train_ensemble(plan, train, recipe=TINY, progress=False, chunk_size=3), plan, test)[0]
    np.testing.assert_array_equal(a, b)


def test_default_layout_depends_on_plan_recipe_and_device_type_only():
    from runoff.training.layout import (
        CPU_CHUNK_CAP,
        CUDA_CHUNK_CAP,
        default_chunk_size,
        run_chunks,
    )
    from runoff.training.recipe import recipe_for

    train, _ = load_dataset("digits")
    rec = recipe_for("digits")
    plan = make_plan(train, k=50, d=4)
    # no query of the machine (free memory, cores, GPU): the same everywhere
    assert default_chunk_size(plan, rec, "cpu") == default_chunk_size(plan, rec, torch.device("cpu")) == CPU_CHUNK_CAP
    assert default_chunk_size(plan, rec, "cuda") == default_chunk_size(plan, rec, "cuda:3") == CUDA_CHUNK_CAP
    chunks = run_chunks(plan, rec, device="cpu")
    assert [len(c) for c in chunks] == [25] * 8 and sum(chunks, []) == list(range(200))
    assert len(run_chunks(plan, rec, device="cuda")) == 25
    # NiN on a CPU: one model per chunk
    assert default_chunk_size(plan, recipe_for("cifar10"), "cpu") == 1
    with pytest.raises(InvalidParameterError, match="chunk_size must be an integer >= 1; got 0"):
        run_chunks(plan, rec, chunk_size=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-2)])
def test_batched_equals_sequential(digits, dtype, tol):
    # float64 shows that the batched computation is the same computation; in float32 the
    # tiny batches make training chaotic (a ReLU at a kink flips after a 1e-7 rounding
    # difference), so the float32 check is looser.
    train, _ = digits
    plan = make_plan(train, k=5, d=2)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        (ids, net), = train_ensemble(plan, train, recipe=TINY, progress=False)
        refs = {j: _sequential_reference(plan, train, TINY, j) for j in ids}
    finally:
        torch.set_default_dtype(prev)
    for j in ids:
        ref = refs[j]
        got = net.model_state(ids.index(j))
        for key, val in got.items():
            assert val.dtype == dtype
            scale = float(ref[key].abs().max()) + 1e-6
            err = float((val - ref[key]).abs().max())
            assert err <= tol * scale, f"model {j} {key}: max error {err:.3g} at scale {scale:.3g}"


def test_digits_recipe_is_runoffs_own_and_unchanged():
    # The demo's recipe is not the paper's: a small CNN from RotNet's initialisation, lower
    # rates from epochs 30 and 45; it stays as it was.
    from runoff.training.recipe import recipe_for

    assert recipe_for("digits").to_dict() == {
        "model": "small", "epochs": 60, "batch_size": 16, "lr": 0.1, "momentum": 0.9, "nesterov": True,
        "weight_decay": 5e-4, "milestones": [30, 45], "gamma": 0.2, "augment": "none", "crop_padding": 4,
        "init": "rotnet"}
    assert recipe_for("digits", epochs=6).milestones == (3, 4)


def test_recipe_init_rule_recorded_and_checked():
    rec = Recipe(model="small", epochs=2, batch_size=4, lr=0.1)
    assert rec.init == "pytorch" and Recipe.from_dict(rec.to_dict()) == rec
    old = {key: value for key, value in rec.to_dict().items() if key != "init"}
    assert Recipe.from_dict(old).init == "rotnet"  # recorded before the rule was: RotNet's was used
    with pytest.raises(InvalidParameterError, match="^unknown init 'zeros'; choose one of: pytorch, rotnet$"):
        Recipe(model="small", epochs=2, batch_size=4, lr=0.1, init="zeros")


@pytest.mark.parametrize("rule", ["pytorch", "rotnet"])
def test_trainer_starts_from_the_recipes_init_rule(digits, rule):
    # zero epochs of training are not allowed, so: one step at a tiny learning rate, whose
    # start is exactly BatchedNet.init_ with the recipe's rule and the model's seed
    train, _ = digits
    plan = make_plan(train, k=3)
    recipe = Recipe(model="small", epochs=1, batch_size=512, lr=1e-12, momentum=0.0, weight_decay=0.0, init=rule)
    (ids, net), = train_ensemble(plan, train, recipe=recipe, progress=False)
    spec = architecture("small", in_channels=1, n_classes=10)
    for e, j in enumerate(ids):
        start = BatchedNet(spec, 1).init_([torch.Generator().manual_seed(model_seed(j))], rule=rule).model_state(0)
        got = net.model_state(e)
        other = BatchedNet(spec, 1).init_([torch.Generator().manual_seed(model_seed(j))],
                                          rule="rotnet" if rule == "pytorch" else "pytorch").model_state(0)
        for key in start:
            if "running" not in key:
                torch.testing.assert_close(got[key], start[key], rtol=0, atol=1e-9)
        assert not torch.allclose(got["0.weight"], other["0.weight"], atol=1e-3)


def test_augment_batch_crop_and_flip():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    out = augment_batch(x, torch.tensor([[1, 1], [0, 2]]), torch.tensor([False, True]), 1)
    assert torch.equal(out[0], x[0])  # offset (1, 1) with padding 1 is the identity crop
    padded = F.pad(x[1], (1, 1, 1, 1))
    assert torch.equal(out[1], padded[:, 0:3, 2:5].flip(-1))


def test_checkpoint_corruption_detected(tmp_path, digits):
    train, test = digits
    plan = make_plan(train, k=4)
    train_ensemble(plan, train, recipe=TINY, progress=False, checkpoint_dir=tmp_path)
    (path,) = sorted(tmp_path.glob("*.pt"))
    assert load_checkpoint(path)["epoch"] == TINY.epochs
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=path.name):
        train_ensemble(plan, train, recipe=TINY, progress=False, checkpoint_dir=tmp_path)
    path.write_bytes(b"RUNOFF")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    # a valid checkpoint of another plan is refused too
    save_checkpoint(path, {"format": "runoff-checkpoint", "version": 1, "plan_key": "x" * 64,
                           "model_ids": [0, 1, 2, 3], "epoch": 1})
    with pytest.raises(CheckpointError, match="another plan"):
        train_ensemble(plan, train, recipe=TINY, progress=False, checkpoint_dir=tmp_path)


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(int(sys.argv[2]))
    import runoff.training.trainer as T
    from runoff.training.recipe import Recipe
    from runoff.training.train import train_run

    save = T.save_checkpoint

    def save_then_stall(path, obj):
        save(path, obj)
        if obj["epoch"] == 2:  # stall after the epoch-2 checkpoint, to be killed there
            print("CHECKPOINTED", flush=True)
            time.sleep(600)

    T.save_checkpoint = save_then_stall
    recipe = Recipe(model="small", epochs=int(sys.argv[3]), batch_size=16, lr=0.05, milestones=(3,),
                      augment="crop", crop_padding=1)
    train_run(sys.argv[1], dataset="digits", k=20, recipe=recipe, progress=False, checkpoint_min_interval=0)
    """
)


def test_resume_after_kill_is_bitwise_identical(tmp_path):
    from runoff.training.recipe import Recipe
    from runoff.training.train import train_run

    epochs = 5
    threads = torch.get_num_threads()
    run = tmp_path / "interrupted"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(run), str(threads), str(epochs)],
                            env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "CHECKPOINTED", line
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    ck = run / "checkpoints" / "models-00000-00019.pt"
    assert load_checkpoint(ck)["epoch"] == 2
    assert not (run / "logits.npz").exists()

    recipe = Recipe(model="small", epochs=epochs, batch_size=16, lr=0.05, milestones=(3,),
                    augment="crop", crop_padding=1)
    resumed = train_run(run, dataset="digits", k=20, recipe=recipe, progress=False)
    fresh = train_run(tmp_path / "fresh", dataset="digits", k=20, recipe=recipe, progress=False)
    a = load_checkpoint(ck)
    b = load_checkpoint(tmp_path / "fresh" / "checkpoints" / "models-00000-00019.pt")
    assert a["epoch"] == b["epoch"] == epochs
    for key in b["net"]:
        assert torch.equal(a["net"][key], b["net"][key]), key
    for x, y in zip(a["momentum"], b["momentum"]):
        assert torch.equal(x, y)
    for x, y in zip(a["generators"], b["generators"]):
        assert torch.equal(x, y)
    assert np.array_equal(resumed.scores, fresh.scores)


def test_removing_a_sample_of_the_longest_subset_changes_only_its_model(digits):
    """The longest subset of a chunk sets its steps; removing one of its samples must still
    leave every other model of the chunk identical (no kernel shape may follow the data)."""
    train, test = digits
    plan = make_plan(train, k=8)
    sizes = [len(s) for s in plan.subsets]
    longest = int(np.argmax(sizes))
    assert sizes[longest] % TINY.batch_size != 1  # removing one sample keeps the step count
    victim = next(i for i in range(len(train))
                  if longest in plan.models_of_bucket(_bucket(plan, train.images[i], int(train.labels[i]))))
    base = _train(plan, train, test)
    keep = np.array([i for i in range(len(train)) if i != victim])
    ds = train.subset(keep)
    p2 = make_plan(ds, k=8)
    assert [len(s) for s in p2.subsets][longest] == sizes[longest] - 1
    assert _differing(base, _train(p2, ds, test)) == {longest}


def test_poison_isolation_holds_for_the_mlp(digits):
    train, test = digits
    recipe = Recipe(model="mlp", epochs=2, batch_size=8, lr=0.05, augment="crop", init="pytorch")
    plan = make_plan(train, k=4)
    base = _train(plan, train, test, recipe=recipe)
    i = 31
    owners = set(plan.models_of_bucket(_bucket(plan, train.images[i], int(train.labels[i]))))
    ds = train.subset(np.array([j for j in range(len(train)) if j != i]))
    assert _differing(base, _train(make_plan(ds, k=4), ds, test, recipe=recipe)) == owners
