"""runoff's trainer trains what the published training scripts train.

The paper's base models come from ``train/FiniteAggregation_train_{mnist,cifar,gtsrb}_nin_baseline.py``
(k1rezaei/Run-Off-Election). Each trains one model alone: it seeds torch with ``(j+1)*v*v``,
builds RotNet's ``NetworkInNetwork`` (whose ``weight_initialization()`` it never calls, so the
layers keep PyTorch's default initialisation), and for every epoch iterates a ``DataLoader``
over the model's subset with ``RandomCrop(size, padding=4)`` (and ``RandomHorizontalFlip`` for
CIFAR-10), ``ToTensor`` and ``Normalize`` by the subset's mean and (sample) std, stepping
``torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)`` on the batch's mean
cross-entropy; after the steps of 0-based epochs 60, 120 and 160 it multiplies the rate by 0.2.

``_published_loop`` below is that loop, written plainly with ``torch.nn``, ``DataLoader`` and
``torch.optim.SGD``, in float64, on tiny MNIST-, CIFAR-10- and GTSRB-shaped sets, for a few
epochs across two rate drops. Randomness is fixed for both sides: the reference builds its
network right after ``torch.manual_seed(seed)`` (as the scripts do) and then takes each epoch's
visiting order, crop offsets and flips from runoff's :func:`runoff.training.augment.draw_epoch` on the
stream that construction leaves, which is where runoff's own generator stands after it drew
the initial weights. The scripts' 200-epoch schedule itself is checked in ``test_configs.py``.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from dataclasses import replace  # noqa: E402

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

from runoff.data.datasets import Dataset, load_dataset  # noqa: E402
from runoff.errors import RunDirectoryError  # noqa: E402
from runoff.plan.partition import make_plan  # noqa: E402
from runoff.training.augment import draw_epoch  # noqa: E402
from runoff.training.chunk import model_seed  # noqa: E402
from runoff.training.recipe import Recipe, recipe_for  # noqa: E402
from runoff.training.trainer import train_ensemble  # noqa: E402

torch.set_num_threads(1)

# (image shape, classes, flip) of each data set's published script: RandomCrop(H, padding=4),
# plus RandomHorizontalFlip for CIFAR-10 only.
SHAPES = {"mnist": ((28, 28, 1), 10, False), "cifar10": ((32, 32, 3), 10, True), "gtsrb": ((48, 48, 3), 43, False)}
PADDING = 4
EPOCHS = 4
BATCH = 8
DROPS_AFTER = (1, 2)  # the published `if epoch in [...]` after the steps, scaled to 4 epochs
MILESTONES = (2, 3)  # the same schedule in runoff's terms: lower rates from these epochs on


class _GlobalAveragePooling(nn.Module):
    def forward(self, x):
        return nn.functional.avg_pool2d(x, (x.shape[2], x.shape[3])).view(x.shape[0], x.shape[1])


def _block(cin, cout, k):
    return [nn.Conv2d(cin, cout, k, stride=1, padding=(k - 1) // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def _published_nin(in_channels, n_classes):
    """RotNet's NetworkInNetwork with 3 stages, as the published scripts build it."""
    return nn.Sequential(
        *_block(in_channels, 192, 5), *_block(192, 160, 1), *_block(160, 96, 1),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        *_block(96, 192, 5), *_block(192, 192, 1), *_block(192, 192, 1),
        nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
        *_block(192, 192, 3), *_block(192, 192, 1), *_block(192, 192, 1),
        _GlobalAveragePooling(), nn.Linear(192, n_classes),
    )


class _CropFlipToTensorNormalize:
    """RandomCrop(padding=4) [+ RandomHorizontalFlip], ToTensor, Normalize, one image at a time.

    The random choices are the ones handed over for the epoch, taken in the order in which the
    loader asks for images, as the scripts' transforms draw them in that order.
    """

    def __init__(self, mean, std, flip):
        self.mean, self.std, self.flip = mean, std, flip
        self.draws = iter(())

    def set_epoch(self, offsets, flips):
        self.draws = iter(zip(offsets.tolist(), flips.tolist()))

    def __call__(self, image):  # image: uint8 (H, W, C) as loaded
        (top, left), flip = next(self.draws)
        h, w, c = image.shape
        padded = np.zeros((h + 2 * PADDING, w + 2 * PADDING, c), dtype=np.uint8)  # fill 0 on the image
        padded[PADDING:PADDING + h, PADDING:PADDING + w] = image
        crop = padded[top:top + h, left:left + w]
        if self.flip and flip:
            crop = crop[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).to(torch.get_default_dtype()) / 255
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


class _ImageSet(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def _published_loop(images, labels, subset, n_classes, seed, flip, recipe):
    """One base model trained as the published script trains it (images: the whole training set)."""
    dtype = torch.get_default_dtype()
    # the partition script's statistics: torch mean and std (n - 1) over the subset's pixels / 255
    pixels = torch.from_numpy(images[subset]).to(dtype).div(255).permute(3, 0, 1, 2).reshape(images.shape[3], -1)
    mean, std = pixels.mean(dim=1), pixels.std(dim=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _published_nin(images.shape[3], n_classes)
        stream = torch.Generator()
        stream.set_state(torch.get_rng_state())  # where the construction left torch's generator
        transform = _CropFlipToTensorNormalize(mean, std, flip)
        trainset = _ImageSet(images, labels, transform)
        curr_lr = 0.1
        criterion = nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(net.parameters(), lr=curr_lr, momentum=0.9, weight_decay=0.0005, nesterov=True)
        net.train()
        for epoch in range(EPOCHS):
            order, offsets, flips = draw_epoch(stream, len(subset), recipe)
            transform.set_epoch(offsets, flips)
            loader = DataLoader(Subset(trainset, subset.tolist()), batch_size=BATCH, sampler=order.tolist())
            for inputs, targets in loader:
                optimizer.zero_grad()
                loss = criterion(net(inputs), targets)
                loss.backward()
                optimizer.step()
            if epoch in DROPS_AFTER:
                curr_lr = curr_lr * 0.2
                for group in optimizer.param_groups:
                    group["lr"] = curr_lr
    return net, mean, std


def _tiny_set(shape, n_classes, n=36, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    images[: n // 2] //= 3  # some contrast between images
    return Dataset(images, rng.integers(0, n_classes, size=n), n_classes, "tiny/train")


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "gtsrb"])
def test_trainer_equals_the_published_loop(dataset):
    shape, n_classes, flip = SHAPES[dataset]
    train = _tiny_set(shape, n_classes)
    plan = make_plan(train, k=2)
    # a model whose subset leaves a short last batch (seed (j+1)*v*v)
    j = next(j for j in range(plan.n_models) if len(plan.subsets[j]) % BATCH)
    recipe = replace(recipe_for(dataset), epochs=EPOCHS, batch_size=BATCH, milestones=MILESTONES)
    assert [recipe.lr_at(e) for e in range(EPOCHS)] == pytest.approx([0.1, 0.1, 0.02, 0.004])
    subset = plan.subsets[j]
    canon = plan.canonical(train)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref, mean, std = _published_loop(canon.images, canon.labels, subset, n_classes, model_seed(j), flip, recipe)
        (ids, net), = train_ensemble(plan, train, recipe=recipe, model_ids=[j], progress=False)
        ours = net.extract(0)  # model 0 of the chunk as plain torch.nn layers
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model_seed(j))
            start = _published_nin(shape[2], n_classes)
    finally:
        torch.set_default_dtype(prev)
    assert ids == [j]
    # the plan's normalisation is the published one (sample std)
    np.testing.assert_allclose(plan.mean[j], mean.numpy(), rtol=1e-13)
    np.testing.assert_allclose(plan.std[j], std.numpy(), rtol=1e-12)
    pairs = list(zip(ref.parameters(), ours.parameters()))
    pairs += [(a, b) for (na, a), (nb, b) in zip(ref.named_buffers(), ours.named_buffers())
              if "running" in na and na.split(".")[-1] == nb.split(".")[-1]]
    assert len(pairs) == 9 + 9 * 2 + 2 + 9 * 2  # convolutions, BatchNorm, classifier; running statistics
    worst = 0.0
    for a, b in ((a.detach(), b.detach()) for a, b in pairs):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float64
        scale = float(a.abs().max())
        worst = max(worst, float((a - b).abs().max()) / scale)
    assert worst <= 1e-10, f"largest relative difference {worst:.3g}"  # measured: 1e-12 to 3e-12
    # ... and training moved them well away from their common start
    moved = [float((a - s).abs().max() / s.abs().max())
             for a, s in zip(ref.state_dict().values(), start.state_dict().values())
             if a.is_floating_point() and s.abs().max() > 0]
    assert min(moved) > 1e-3 and worst < 1e-6 * min(moved)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "gtsrb"])
def test_epoch_draws_are_randomcrop_and_flip(dataset):
    # RandomCrop(size, padding=4) picks the top-left corner uniformly in [0, 8] x [0, 8];
    # RandomHorizontalFlip flips with probability 1/2 (CIFAR-10 only)
    recipe = recipe_for(dataset)
    g = torch.Generator().manual_seed(0)
    offsets, flips = zip(*(draw_epoch(g, 500, recipe)[1:] for _ in range(4)))
    offsets, flips = torch.cat(offsets), torch.cat(flips)
    counts = torch.bincount(offsets.flatten(), minlength=9)
    assert counts.numel() == 9 and int(counts.min()) > 0.8 * 4000 / 9
    assert bool(flips.any()) == SHAPES[dataset][2] and (not SHAPES[dataset][2] or abs(float(flips.double().mean()) - 0.5) < 0.05)


def _old_recipe(recipe, **old):
    """A recipe as runoff recorded it before it followed the published scripts: no init field."""
    d = {key: value for key, value in recipe.to_dict().items() if key != "init"}
    return {**d, **old}


@pytest.mark.parametrize("name,old,changes", [
    ("mnist", {"milestones": [60, 120, 160], "augment": "none"},
     ["std_rule: None -> 'sample'", "training.recipe.init: None -> 'pytorch'",
      "training.recipe.milestones: [60, 120, 160] -> [61, 121, 161]", "training.recipe.augment: 'none' -> 'crop'"]),
    ("cifar10", {"milestones": [60, 120, 160]},
     ["std_rule: None -> 'sample'", "training.recipe.init: None -> 'pytorch'",
      "training.recipe.milestones: [60, 120, 160] -> [61, 121, 161]"]),
    ("digits", {}, ["std_rule: None -> 'sample'", "training.recipe.init: None -> 'rotnet'"]),
])
def test_a_run_made_before_is_refused_naming_what_changed(tmp_path, name, old, changes):
    # A run folder written before runoff followed the published scripts (population std, no
    # init rule, lower rates from epochs 60/120/160, MNIST and GTSRB without crops) is never
    # resumed by the new rules: the refusal names every change.
    from runoff.training.train import train_run

    train, _ = load_dataset("digits")
    recipe = recipe_for(name)
    training = {"recipe": _old_recipe(recipe, **old), "seed_version": 1, "seed_rule": "(j+1)*v*v"}
    assert Recipe.from_dict(training["recipe"]).init == "rotnet"  # what those runs were initialised with
    run = tmp_path / "old"
    make_plan(train, k=4, std_rule="population", training=training).save(run)
    before = (run / "plan.json").read_bytes()
    with pytest.raises(RunDirectoryError, match="holds a run of another plan") as info:
        train_run(run, dataset="digits", k=4, recipe=recipe, progress=False)
    message = str(info.value)
    for change in changes:
        assert change in message
    assert message.count(" -> ") == len(changes)  # nothing else differs
    assert (run / "plan.json").read_bytes() == before and sorted(p.name for p in run.iterdir()) == ["plan.json"]


def test_a_finished_run_made_before_still_loads_and_predicts(tmp_path):
    # Its plan.json has no std_rule and its recipe no init; the checkpoints are tied to that
    # JSON, which loading must reproduce: the run predicts exactly as it was trained.
    from runoff.training.ensemble import Ensemble
    from runoff.training.inference import collect_logits

    train, test = load_dataset("digits")
    old = _old_recipe(Recipe(model="small", epochs=2, batch_size=32, lr=0.1, milestones=(1,), init="rotnet"))
    plan = make_plan(train, k=3, std_rule="population",
                     training={"recipe": old, "seed_version": 1, "seed_rule": "(j+1)*v*v"})
    run = tmp_path / "old"
    plan.save(run)
    assert "std_rule" not in (run / "plan.json").read_text()
    models = train_ensemble(plan, train, recipe=Recipe.from_dict(old), checkpoint_dir=run / "checkpoints",
                            progress=False, checkpoint_min_interval=0)
    scores, _ = collect_logits(models, plan, test)
    loaded = Ensemble.load(run)
    np.testing.assert_array_equal(loaded.scores(test.images[:50]), scores[:50])
