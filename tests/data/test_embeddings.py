"""Embeddings of a frozen backbone (issue 25): specs, extractors, the batch check, the cache.

An embedding must depend on its own image only (poison isolation rests on it), the cache must
never hand back embeddings of other images, another backbone or a damaged file, and every bad
input is one line naming the problem. No network and no downloaded weights: torchvision's
presets are checked through a stand-in ``torchvision`` module and a weights file written here.
"""

from __future__ import annotations

import sys
import types
import urllib.error

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from runoff.data.dataset import Dataset  # noqa: E402
from runoff.data.features import (  # noqa: E402
    Backbone, EmbeddedDataset, check_backbone_record, check_batch_invariance, compute_embeddings, embed_dataset,
    load_backbone, load_extractor, load_npz_features, parse_features_spec, weights_digest)
from runoff.data.features.cache import backbone_key, cached_embeddings, data_digest, image_digests  # noqa: E402
from runoff.data.features.transform import ImageNetInput  # noqa: E402
from runoff.errors import (CheckpointError, DataFileError, ExtractorError, InvalidParameterError,  # noqa: E402
                           MissingDependencyError)


# ---------------------------------------------------------------------------- factories the specs name
def bn_cnn():
    """A small CNN with BatchNorm (running statistics made non-trivial), random weights."""
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                        nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12))
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net


def flat_linear():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))


class _Mixing(nn.Module):
    """Eval mode, yet every row depends on the batch: batch statistics outside BatchNorm."""

    def forward(self, x):
        flat = x.flatten(1)
        return flat - flat.mean(0, keepdim=True)


def mixing():
    return _Mixing()


class _Bad(nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out(x)


def wrong_shape():
    return _Bad(lambda x: x.flatten(1)[:, :, None])


def wrong_rows():
    return _Bad(lambda x: x.flatten(1)[:1])


def nan_output():
    return _Bad(lambda x: torch.where(x.flatten(1)[:, :1] > 0.5, float("nan"), 1.0).expand(-1, 3))


def not_a_module():
    return "resnet"


def failing():
    raise RuntimeError("no weights here")


NOT_CALLABLE = 3


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(10, 8, 8, 1), dtype=np.uint8)


def _spec(name: str) -> str:
    return f"{__name__}:{name}"


# ---------------------------------------------------------------------------- specs
def test_specs_parse_and_unknown_presets_get_did_you_mean():
    spec = parse_features_spec("torchvision:resnet18")
    assert (spec.kind, spec.name, spec.text) == ("preset", "resnet18", "torchvision:resnet18")
    assert parse_features_spec(" pkg.mod:make ").kind == "factory"
    for typo, close in (("torchvision:resnet19", "torchvision:resnet18"), ("resnet50", "torchvision:resnet50"),
                        ("torchvision:vit_b16", "torchvision:vit_b_16")):
        with pytest.raises(InvalidParameterError, match=f"unknown features preset .*did you mean {close}"):
            parse_features_spec(typo)
    with pytest.raises(InvalidParameterError, match="features must be a name"):
        parse_features_spec(None)


@pytest.mark.parametrize("name, message", [
    ("nowhere_module_xyz:make", "cannot import module nowhere_module_xyz"),
    (f"{__name__}:no_such_factory", "has no no_such_factory"),
    (f"{__name__}:NOT_CALLABLE", "is not callable"),
    (f"{__name__}:failing", r"the factory failed \(RuntimeError: no weights here\)"),
    (f"{__name__}:not_a_module", "must return a torch.nn.Module; got str"),
])
def test_bad_factories_are_one_line_errors(name, message):
    with pytest.raises(ExtractorError, match=message) as info:
        load_extractor(name)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_load_extractor_freezes_and_seeds_the_factory():
    a, b = load_extractor(_spec("bn_cnn")), load_extractor(_spec("bn_cnn"))
    assert not any(m.training for m in a.modules())
    assert not any(p.requires_grad for p in a.parameters())
    assert weights_digest(a) == weights_digest(b)  # random layers: seeded, the same in every process
    state = torch.get_rng_state()
    load_extractor(_spec("bn_cnn"))
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left as it was


def test_weights_digest_sees_every_weight_and_buffer():
    net = load_extractor(_spec("bn_cnn"))
    before = weights_digest(net)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-6
    assert weights_digest(net) != before
    net = load_extractor(_spec("bn_cnn"))
    net[1].running_var[0] += 1e-3  # a buffer, not a parameter
    assert weights_digest(net) != before


# ---------------------------------------------------------------------------- computing, and the batch check
def test_an_embedding_is_the_same_alone_and_in_any_batch(images):
    net = load_extractor(_spec("bn_cnn"))
    full = compute_embeddings(net, images)
    assert full.dtype == np.float32 and full.shape == (10, 12)
    for batch_size in (1, 3, 7):
        np.testing.assert_allclose(compute_embeddings(net, images, batch_size=batch_size), full, rtol=0, atol=1e-6)
    shuffled = compute_embeddings(net, images[::-1].copy())[::-1]
    np.testing.assert_allclose(shuffled, full, rtol=0, atol=1e-6)
    assert check_batch_invariance(net, images) < 1e-5


def test_training_mode_and_batch_mixing_are_refused(images):
    net = load_extractor(_spec("bn_cnn")).train()
    with pytest.raises(ExtractorError, match="training mode .*call .eval()"):
        compute_embeddings(net, images)
    with pytest.raises(ExtractorError, match="changes with the rest of its batch"):
        check_batch_invariance(load_extractor(_spec("mixing")), images)


@pytest.mark.parametrize("name, message", [
    ("wrong_shape", r"to embeddings \(10, D\); got \(10, 64, 1\)"),
    ("wrong_rows", r"to embeddings \(10, D\); got \(1, 64\)"),
    ("nan_output", r"non-finite embeddings \(NaN or inf\) for \d+ of 10 images, the first image \d"),
])
def test_bad_outputs_are_one_line_errors(images, name, message):
    with pytest.raises(ExtractorError, match=message) as info:
        compute_embeddings(load_extractor(_spec(name)), images)
    assert "\n" not in str(info.value)


def test_progress_and_input_checks(images):
    seen = []
    compute_embeddings(load_extractor(_spec("flat_linear")), images, batch_size=4,
                       progress=lambda done, total: seen.append((done, total)))
    assert seen == [(4, 10), (8, 10), (10, 10)]
    with pytest.raises(InvalidParameterError, match="uint8 of shape"):
        compute_embeddings(load_extractor(_spec("flat_linear")), images.astype(np.float32))
    with pytest.raises(ExtractorError, match="must be a torch.nn.Module"):
        compute_embeddings(lambda x: x, images)


# ---------------------------------------------------------------------------- the cache
class _Counting:
    """``compute`` for the cache: a fixed random projection, counting the images it embeds."""

    def __init__(self, width=6):
        self.width, self.seen = width, 0

    def __call__(self, images):
        self.seen += len(images)
        flat = images.reshape(len(images), -1).astype(np.float64)
        proj = np.random.default_rng(1).normal(size=(flat.shape[1], self.width))
        return (flat @ proj / 255).astype(np.float32)


def _cached(images, compute, root, **kw):
    kw = {"spec": "s:f", "weights_digest": "w" * 64, **kw}
    return cached_embeddings(images, compute, cache_dir=root, **kw)


def test_cache_keys_follow_the_backbone_the_image_size_and_the_images(images):
    key = backbone_key("s:f", "a" * 64, (8, 8, 1))
    assert key != backbone_key("s:g", "a" * 64, (8, 8, 1))
    assert key != backbone_key("s:f", "b" * 64, (8, 8, 1))
    assert key != backbone_key("s:f", "a" * 64, (16, 16, 1))
    digests = image_digests(images)
    assert data_digest(digests) == data_digest(digests[::-1])  # the same images in any order
    changed = images.copy()
    changed[3, 0, 0, 0] ^= 1
    assert data_digest(image_digests(changed)) != data_digest(digests)
    same_bytes = images.reshape(10, 4, 16, 1)  # the same pixel bytes as another image size
    assert not (image_digests(same_bytes) == digests).all(axis=1).any()


def test_each_distinct_image_is_embedded_once(tmp_path, images):
    compute = _Counting()
    first = _cached(images, compute, tmp_path)
    np.testing.assert_array_equal(first, compute(images))
    compute.seen = 0
    np.testing.assert_array_equal(_cached(images[::-1].copy(), compute, tmp_path), first[::-1])
    assert compute.seen == 0  # same images, other order: one file
    more = np.concatenate([images, images[:2], 255 - images[:1]])  # two duplicates and one new image
    out = _cached(more, compute, tmp_path)
    assert compute.seen == 1  # the rest is read from the first file, bit for bit
    np.testing.assert_array_equal(out[:10], first)
    np.testing.assert_array_equal(out[10:12], first[:2])


def test_another_size_or_backbone_is_another_folder(tmp_path, images):
    compute = _Counting()
    _cached(images, compute, tmp_path)
    _cached(images, compute, tmp_path, weights_digest="v" * 64)
    _cached(np.repeat(np.repeat(images, 2, axis=1), 2, axis=2), compute, tmp_path)
    assert compute.seen == 30 and len(list(tmp_path.iterdir())) == 3


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_damaged_cache_file_is_recomputed_not_trusted(tmp_path, images, damage):
    compute = _Counting()
    good = _cached(images, compute, tmp_path)
    [path] = list(tmp_path.glob("*/*.npz"))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # a byte of the embeddings: the checksum (or the zip's CRC) sees it
        at = data.index(b"embeddings.npy") + 200
        path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    else:
        path.write_bytes(b"not an npz")
    compute.seen = 0
    np.testing.assert_array_equal(_cached(images, compute, tmp_path), good)
    assert compute.seen == 10
    compute.seen = 0
    _cached(images, compute, tmp_path)
    assert compute.seen == 0  # rewritten whole (atomically: no temporary file left)
    assert sorted(p.name for p in path.parent.iterdir()) == ["backbone.json", path.name]


def test_a_failed_verification_empties_the_folder(tmp_path, images):
    compute = _Counting()
    _cached(images, compute, tmp_path)
    compute.seen = 0
    _cached(images, compute, tmp_path, verify=lambda imgs, rows: False)  # the extractor's code changed
    assert compute.seen == 10


def test_without_a_writable_cache_the_embeddings_are_computed(tmp_path, images):
    compute = _Counting()
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    out = _cached(images, compute, blocker)
    np.testing.assert_array_equal(out, compute(images))
    compute.seen = 0
    cached_embeddings(images, compute, spec="s:f", weights_digest="w", cache_dir=tmp_path, enabled=False)
    assert compute.seen == 10 and not list(tmp_path.glob("*/*.npz"))


# ---------------------------------------------------------------------------- data sets of embeddings
def test_embed_dataset_keeps_order_and_labels_and_records_the_backbone(tmp_path, images):
    data = Dataset(images, np.arange(10) % 3, 3, "toy/train", class_names=("a", "b", "c"))
    backbone = load_backbone(_spec("bn_cnn"))
    emb = embed_dataset(data, backbone, cache_dir=tmp_path, batch_size=4)
    assert isinstance(emb, EmbeddedDataset) and emb.dim == 12 and len(emb) == 10
    np.testing.assert_array_equal(emb.labels, data.labels)
    assert emb.class_names == ("a", "b", "c") and emb.name == "toy/train"
    assert emb.backbone == {"spec": _spec("bn_cnn"), "weights_digest": backbone.weights_digest, "embedding_size": 12}
    np.testing.assert_allclose(emb.features, compute_embeddings(backbone.module, images), atol=1e-6, rtol=0)
    again = embed_dataset(data, backbone, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.features, emb.features)  # from the cache, bit for bit
    assert len(list(tmp_path.glob("*/*.npz"))) == 1
    check_backbone_record(emb.backbone, backbone)
    other = load_backbone(_spec("bn_cnn"))
    with torch.no_grad():
        other.module[0].bias[0] += 1
    with pytest.raises(CheckpointError, match="weights of digest .* now have digest"):
        check_backbone_record(emb.backbone, Backbone(other.spec, other.module, weights_digest(other.module)))
    with pytest.raises(CheckpointError, match="features of 'x:y'"):
        check_backbone_record({**emb.backbone, "spec": "x:y"}, backbone)


def test_embedded_dataset_checks_and_hash_view():
    x = np.array([[0.0, -0.0], [1.5, 2.0]], dtype=np.float32)
    emb = EmbeddedDataset(x, [0, 1], 2, "e/train")
    view = emb.hash_view()
    assert view.dtype == np.uint8 and view.shape == (2, 1, 8, 1)
    assert not view[0].any()  # -0.0 hashed as 0.0
    assert emb.subset([1]).features.tolist() == [[1.5, 2.0]]
    with pytest.raises(InvalidParameterError, match="finite"):
        EmbeddedDataset(np.array([[np.nan]]), [0], 1, "e")
    with pytest.raises(InvalidParameterError, match=r"labels must lie in \[0, 2\)"):
        EmbeddedDataset(x, [0, 2], 2, "e")


def test_npz_of_embeddings(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "emb.npz"
    np.savez(path, x_train=rng.normal(size=(6, 4)), y_train=np.arange(6) % 3, x_test=rng.normal(size=(2, 4)),
             y_test=np.array([0, 1]))
    train, test = load_npz_features(path)
    assert train.features.dtype == np.float32 and train.features.shape == (6, 4) and test.n_classes == 3
    assert train.backbone is None and train.name.endswith("emb.npz/train")
    bad = {"x_train": rng.normal(size=(6, 4)), "y_train": np.arange(6) % 3, "x_test": rng.normal(size=(2, 4)),
           "y_test": np.array([0, 1])}
    for change, message in (({"x_train": np.ones((6, 4), dtype=np.uint8)}, "x_train must be float embeddings"),
                            ({"x_test": rng.normal(size=(2, 5))}, "x_train has 4 features per sample but x_test 5"),
                            ({"x_train": np.where(np.eye(6, 4) > 0, np.nan, 1.0)},
                             "NaN or inf in 4 rows, the first row 0"),
                            ({"y_train": np.arange(5)}, "y_train must be 6 integer labels")):
        np.savez(path, **{**bad, **change})
        with pytest.raises(DataFileError, match=message):
            load_npz_features(path)
    with pytest.raises(DataFileError, match="no such file"):
        load_npz_features(tmp_path / "missing.npz")


# ---------------------------------------------------------------------------- torchvision presets
def test_the_imagenet_input_sees_each_image_alone(images):
    prep = ImageNetInput(resize=40, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    out = prep(x)
    assert out.shape == (10, 3, 32, 32)
    alone = torch.cat([prep(x[i:i + 1]) for i in range(10)])
    assert torch.allclose(alone, out, atol=1e-6, rtol=0)
    assert prep(x[:, :, :, :4]).shape == (10, 3, 32, 32)  # 8x4: the shorter side to 40, then the centre crop
    with pytest.raises(ExtractorError, match="grey or RGB"):
        prep(torch.zeros(1, 2, 8, 8))


class _FakeWeights:
    """torchvision's weights API as far as runoff uses it: url, transforms(), get_state_dict()."""

    url = "https://download.example/models/tinynet-0123abcd.pth"

    def __str__(self):
        return "TinyNet_Weights.IMAGENET1K_V1"

    def transforms(self):
        return types.SimpleNamespace(resize_size=[20], crop_size=[16], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])

    def get_state_dict(self, progress=True):
        from runoff.data.features.spec import hub_weights_path

        path = hub_weights_path(self.url)
        if not path.is_file():
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return torch.load(path, weights_only=True)


def _tiny_net():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.fc = nn.Linear(4, 1000)  # the classifier the preset removes
    net.forward = lambda x: net.fc(nn.Sequential.forward(net, x))
    return net


@pytest.fixture
def fake_torchvision(monkeypatch, tmp_path):
    """A stand-in ``torchvision`` whose ``resnet18`` is a tiny net; torch's hub cache in tmp_path."""
    models = types.ModuleType("torchvision.models")
    models.get_model_weights = lambda name: types.SimpleNamespace(DEFAULT=_FakeWeights())
    models.get_model = lambda name, weights=None: _tiny_net()
    package = types.ModuleType("torchvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints" / "tinynet-0123abcd.pth"


def test_a_preset_builds_with_random_weights_offline(fake_torchvision, images):
    net = load_extractor("torchvision:resnet18", weights=False)
    emb = compute_embeddings(net, images)
    assert emb.shape == (10, 4)  # the classifier removed: the embedding, not 1000 logits
    assert check_batch_invariance(net, images) < 1e-5
    assert isinstance(net[0], ImageNetInput) and (net[0].resize, net[0].crop) == (20, 16)


def test_missing_pretrained_weights_name_the_file_torchvision_looks_for(fake_torchvision):
    with pytest.raises(DataFileError) as info:
        load_extractor("torchvision:resnet18")
    message = str(info.value)
    assert str(fake_torchvision) in message and "is missing" in message and "\n" not in message
    assert "https://download.example/models/tinynet-0123abcd.pth" in message


def test_pretrained_weights_from_the_hub_cache(fake_torchvision, images):
    source = _tiny_net()
    with torch.no_grad():
        source[0].weight.normal_()
    fake_torchvision.parent.mkdir(parents=True)
    torch.save(source.state_dict(), fake_torchvision)
    net = load_extractor("torchvision:resnet18")
    assert torch.equal(net[1][0].weight, source[0].weight)
    assert weights_digest(net) != weights_digest(load_extractor("torchvision:resnet18", weights=False))


def test_without_torchvision_a_preset_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(MissingDependencyError, match="needs torchvision, which is not installed") as info:
        load_extractor("torchvision:resnet18", weights=False)
    assert "\n" not in str(info.value)


def _real_torchvision():
    try:
        import torchvision.models  # noqa: F401
    except Exception as exc:  # absent, or built for another torch
        pytest.skip(f"torchvision cannot be imported here ({type(exc).__name__})")


@pytest.mark.parametrize("name, width", [("resnet18", 512), ("resnet50", 2048), ("vit_b_16", 768)])
def test_real_presets_with_random_weights(images, name, width):
    _real_torchvision()
    net = load_extractor(f"torchvision:{name}", weights=False)
    assert compute_embeddings(net, images[:2]).shape == (2, width)
    check_batch_invariance(net, images, n_images=2)
