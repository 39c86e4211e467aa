"""Fetch a named data set with torchvision, into the layout runoff's loaders read.

runoff's loaders never download; ``--download`` (``download=True``) asks torchvision's data
set classes to fetch the files into the data folder first, then reads them with runoff's own
loaders, exactly as files put there by hand. torchvision is optional: without it, a clear
error says what to install.
"""

from __future__ import annotations

from pathlib import Path

from ..param_checks import check_choice
from ..errors import (
    DataFileError,
    InvalidParameterError,
    MissingDependencyError,
    require,
)

__all__ = ["DOWNLOADABLE", "download"]

#: Data sets torchvision can fetch, and the torchvision calls that write runoff's layout.
DOWNLOADABLE = {
    "mnist": (("MNIST", {"train": True}), ("MNIST", {"train": False})),
    "fashion-mnist": (("FashionMNIST", {"train": True}), ("FashionMNIST", {"train": False})),
    "cifar10": (("CIFAR10", {"train": True}), ("CIFAR10", {"train": False})),
    "gtsrb": (("GTSRB", {"split": "train"}), ("GTSRB", {"split": "test"})),
}

_HINT = ("pip install torchvision (a build matching your torch: e.g. torch==2.14.1 with torchvision==0.29.1), "
         "or put the files in the data folder yourself")


def download(name: str, root) -> Path:
    """Have torchvision fetch data set ``name`` into ``root`` (files already there are kept).

    Parameters
    ----------
    name : str
        One of :data:`DOWNLOADABLE` (``mnist``, ``fashion-mnist``, ``cifar10``, ``gtsrb``).
    root : path-like
        The data folder; created if needed.

    Returns
    -------
    pathlib.Path
        ``root``.

    Raises
    ------
    InvalidParameterError
        ``name`` cannot be downloaded (digits ships with scikit-learn; one's own data is local).
    MissingDependencyError
        torchvision is not installed.
    DataFileError
        The download failed (no network, a server error): the message says why.
    """
    if name == "digits" or name.startswith(("folder:", "npz:")):
        raise InvalidParameterError(f"{name} is not downloaded: "
                                    + ("it ships with scikit-learn" if name == "digits" else "it is your own data"))
    check_choice(name, "downloadable data set", DOWNLOADABLE)
    datasets = _torchvision_datasets(name)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for cls_name, kwargs in DOWNLOADABLE[name]:
        try:
            getattr(datasets, cls_name)(str(root), download=True, **kwargs)
        except Exception as exc:  # noqa: BLE001 - network and server errors of every kind
            raise DataFileError(f"downloading {name} into {root} failed ({type(exc).__name__}: {exc})") from None
    return root


def _torchvision_datasets(name: str):
    try:
        return require("torchvision", f"downloading {name}", hint=_HINT).datasets
    except MissingDependencyError:
        raise
    except Exception as exc:  # noqa: BLE001 - a torchvision built for another torch fails at import
        raise MissingDependencyError(
            f"downloading {name} needs torchvision, which is installed but does not load beside this torch "
            f"({type(exc).__name__}: {exc}); install a matching pair, e.g. pip install torch==2.14.1 "
            "torchvision==0.29.1") from None
