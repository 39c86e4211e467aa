"""--download: torchvision's data set classes fetch the files, runoff's loaders read them.

Nothing can be downloaded on the test machines, so torchvision is replaced by a fake whose
data set classes write tiny files in the layout the real ones write.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from cli_checks import one_error_line
from data_files import write_cifar, write_mnist

from runoff.data import load_dataset
from runoff.data.download import download
from runoff.errors import DataFileError, InvalidParameterError, MissingDependencyError


def _fake_torchvision(monkeypatch, calls, *, fail=False):
    def dataset_class(name, writer):
        def construct(root, *, download=False, **kwargs):
            calls.append((name, kwargs, download))
            if fail:
                raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")
            writer(__import__("pathlib").Path(root))
        return construct

    datasets = types.SimpleNamespace(
        MNIST=dataset_class("MNIST", lambda root: write_mnist(root)),
        FashionMNIST=dataset_class("FashionMNIST", lambda root: write_mnist(root, folder="FashionMNIST", seed=2)),
        CIFAR10=dataset_class("CIFAR10", lambda root: write_cifar(root)),
        GTSRB=dataset_class("GTSRB", lambda root: None),
    )
    module = types.ModuleType("torchvision")
    module.datasets = datasets
    monkeypatch.setitem(sys.modules, "torchvision", module)


@pytest.mark.parametrize("name, classes", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"), ("cifar10", "CIFAR10")])
def test_download_then_read_with_runoffs_loader(tmp_path, monkeypatch, name, classes):
    calls = []
    _fake_torchvision(monkeypatch, calls)
    with pytest.raises(DataFileError):
        load_dataset(name, root=tmp_path / "data")
    assert download(name, tmp_path / "data") == tmp_path / "data"
    assert [c[0] for c in calls] == [classes, classes] and all(c[2] for c in calls)  # both splits, download=True
    train, test = load_dataset(name, root=tmp_path / "data")
    assert len(train) > 0 and len(test) > 0 and train.images.dtype == np.uint8


def test_train_download_from_the_command_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from runoff.cli import main

    calls = []
    _fake_torchvision(monkeypatch, calls)
    data, out = tmp_path / "data", tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--download", "--data-root", str(data), "--k", "2", "--epochs", "1",
                 "--model", "small", "--no-progress", "--out", str(out)]) == 0
    assert [c[0] for c in calls] == ["MNIST", "MNIST"] and (out / "logits.npz").is_file()
    capsys.readouterr()
    assert main(["train", "--download", "--k", "2", "--out", str(tmp_path / "d")]) == 1  # digits: nothing to fetch
    assert one_error_line(capsys) == "runoff: error: --download fetches mnist, fashion-mnist, cifar10, gtsrb; not digits"


def test_without_torchvision_or_network_the_error_says_why(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(MissingDependencyError, match=r"^downloading mnist needs torchvision, which is not "
                                                     r"installed; install it with: pip install torchvision"):
        download("mnist", tmp_path)
    _fake_torchvision(monkeypatch, [], fail=True)
    with pytest.raises(DataFileError, match=r"downloading mnist into .* failed \(RuntimeError: Error downloading"):
        download("mnist", tmp_path)
    with pytest.raises(InvalidParameterError, match="digits is not downloaded: it ships with scikit-learn"):
        download("digits", tmp_path)
    with pytest.raises(InvalidParameterError, match="unknown downloadable data set 'mnsit'; did you mean mnist"):
        download("mnsit", tmp_path)


def test_a_torchvision_for_another_torch_is_named(tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(MissingDependencyError, match="installed but does not load beside this torch .*nms"):
        download("cifar10", tmp_path)
