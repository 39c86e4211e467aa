"""Named configurations for every setting of the paper's Tables 1-5, with its reported figures.

A configuration names a data set, k, d and the kind of ensemble, the budgets at which the paper
reports certified accuracy, and the paper's numbers at those budgets (certified fraction, %),
so that runs can be compared with them. Names:

- ``{dataset}-k{k}``: a DPA ensemble of k models (methods ``dpa``, ``dpa-roe``);
- ``{dataset}-k{k}-fa-d{d}``: an FA ensemble of k*d models (``fa``, ``fa-roe``);
- ``{dataset}-k{k}-dpastar-d{d}``: DPA*, d seed versions of the same k partitions whose logits
  are summed (``dpa``, ``dpa-roe`` on the merged logits).

Training follows the published training scripts of the data set (:data:`PAPER_RECIPES`, the
recipes :func:`runoff.training.recipe.recipe_for` gives; :func:`describe_recipe` says what they do).
This module does not import PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import InvalidParameterError
from ..param_checks import check_choice
from .download import DOWNLOADABLE

__all__ = ["Config", "CONFIGS", "PAPER_RECIPES", "INIT_DESCRIPTIONS", "describe_recipe", "get_config",
           "training_settings", "check_data_options"]

_CLASSES = {"mnist": 10, "cifar10": 10, "gtsrb": 43}
_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3), "gtsrb": (48, 48, 3)}

# The published training scripts (k1rezaei/Run-Off-Election, train/FiniteAggregation_train_
# {mnist,cifar,gtsrb}_nin_baseline.py) share everything but the augmentation: NetworkInNetwork
# built without calling its weight_initialization() (PyTorch's defaults), SGD lr 0.1, momentum
# 0.9, Nesterov, weight decay 5e-4, batch 128, 200 epochs, and `if epoch in [60,120,160]` after
# the epoch's steps: lr x0.2 from epochs 61, 121 and 161 on.
_NIN = {"model": "nin", "init": "pytorch", "epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
        "nesterov": True, "weight_decay": 5e-4, "milestones": (61, 121, 161), "gamma": 0.2, "crop_padding": 4}

#: The published training recipe of each data set, as the fields of a
#: :class:`runoff.training.recipe.Recipe`: MNIST ``RandomCrop(28, padding=4)``; CIFAR-10
#: ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()``; GTSRB (after the 48x48 resize,
#: which runoff's loader does) ``RandomCrop(48, padding=4)``; the rest as ``_NIN`` above.
PAPER_RECIPES: dict[str, dict] = {
    "mnist": {**_NIN, "augment": "crop"},
    "cifar10": {**_NIN, "augment": "crop-flip"},
    "gtsrb": {**_NIN, "augment": "crop"},
}

#: What each initialisation rule of :meth:`runoff.training.batched_net.BatchedNet.init_` draws.
INIT_DESCRIPTIONS = {
    "pytorch": "PyTorch's defaults, as the published scripts (their NiN never calls its weight_initialization()): "
               "convolution and linear weights kaiming_uniform_(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); "
               "linear bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)); convolutions without bias; BatchNorm weight 1, bias 0",
    "rotnet": "RotNet's weight_initialization(): convolution weights N(0, 2/(k*k*C_out)); linear weight "
              "U(-1/sqrt(fan_in), 1/sqrt(fan_in)), bias 0; BatchNorm weight 1, bias 0",
}

#: How every base model's inputs are normalised (:func:`runoff.plan.partition.make_plan`).
NORMALISATION = ("pixels / 255, minus the model's subset's per-channel mean, over its per-channel sample "
                 "std (n - 1, as torch.std in the published partition script)")

_AUGMENT = {
    "none": "none",
    "crop": "random {h}x{w} crop of the image zero-padded by {p} pixels (before normalisation); no flip",
    "crop-flip": "random {h}x{w} crop of the image zero-padded by {p} pixels (before normalisation), "
                 "then a horizontal flip with probability 1/2",
}


def _number(x: float) -> float:
    """A learning rate without the float noise of repeated products (0.1 * 0.2 ** 3)."""
    return float(f"{x:.12g}")


def describe_recipe(recipe: dict, image_shape=None) -> dict:
    """What a training recipe does, in words and numbers.

    Parameters
    ----------
    recipe : dict
        The fields of a :class:`runoff.training.recipe.Recipe` (``Recipe.to_dict()``, an entry of
        :data:`PAPER_RECIPES`, or ``plan.json``'s ``training.recipe``).
    image_shape : tuple (H, W, C), optional
        Gives the crop size in the augmentation's description.

    Returns
    -------
    dict
        ``model``, ``epochs``, ``batch_size``; ``optimizer`` (text); ``schedule`` (text) and
        ``lr_by_epoch`` (list of ``[first epoch, last epoch, lr]``, 0-based, inclusive);
        ``augmentation`` (text); ``init`` (the rule; ``"rotnet"`` for a recipe recorded before
        runoff named it) and ``init_rule`` (what it draws); ``recipe`` (the fields as given,
        milestones as a list).
    """
    r = dict(recipe)
    epochs, lr, gamma = int(r["epochs"]), float(r["lr"]), float(r.get("gamma", 0.2))
    milestones = [int(m) for m in r.get("milestones", ())]
    starts = [0] + [m for m in sorted(set(milestones)) if 0 < m < epochs]
    lr_by_epoch = []
    for i, first in enumerate(starts):
        last = starts[i + 1] - 1 if i + 1 < len(starts) else epochs - 1
        lr_by_epoch.append([first, last, _number(lr * gamma ** sum(first >= m for m in milestones))])
    if len(lr_by_epoch) > 1:
        shown = ", ".join(str(m) for m in milestones)
        after = ", ".join(str(m - 1) for m in milestones)
        schedule = (f"lr {_number(lr)}, x{_number(gamma)} from epochs {shown} on (0-based), {epochs} epochs; "
                    f"as the published loop writes it, x{_number(gamma)} after epochs {after} end")
    else:
        schedule = f"lr {_number(lr)} for all {epochs} epochs"
    h, w = (image_shape[0], image_shape[1]) if image_shape is not None else ("H", "W")
    augment = _AUGMENT[r.get("augment", "none")].format(h=h, w=w, p=r.get("crop_padding", 4))
    init = r.get("init", "rotnet")
    optimizer = (f"SGD, momentum {r.get('momentum', 0.9)}{', Nesterov' if r.get('nesterov', True) else ''}, "
                 f"weight decay {r.get('weight_decay', 5e-4)}; loss: mean cross-entropy of the batch")
    return {
        "model": r["model"],
        "epochs": epochs,
        "batch_size": int(r["batch_size"]),
        "optimizer": optimizer,
        "schedule": schedule,
        "lr_by_epoch": lr_by_epoch,
        "augmentation": augment,
        "init": init,
        "init_rule": INIT_DESCRIPTIONS.get(init, "unknown"),
        "recipe": {**r, "milestones": milestones},
    }


@dataclass(frozen=True)
class Config:
    """One setting of the paper.

    Attributes
    ----------
    name : str
    dataset : {"mnist", "cifar10", "gtsrb"}
    k : int
        Partitions.
    d : int
        FA: models per bucket; DPA*: seed versions per partition; 1 for DPA.
    kind : {"dpa", "fa", "dpa*"}
    budgets : tuple of int
        Budgets at which the paper reports certified accuracy.
    reference : dict
        Method -> the paper's certified fraction (%) at each budget, with the table it is from.
    """

    name: str
    dataset: str
    k: int
    d: int
    kind: str
    budgets: tuple
    reference: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return _CLASSES[self.dataset]

    @property
    def image_shape(self) -> tuple:
        """(H, W, C) of the data set's images as runoff loads them (GTSRB resized to 48x48)."""
        return _SHAPES[self.dataset]

    @property
    def recipe(self) -> dict:
        """The published training recipe of the data set (:data:`PAPER_RECIPES`)."""
        return dict(PAPER_RECIPES[self.dataset])

    @property
    def training(self) -> dict:
        """:func:`describe_recipe` of :attr:`recipe` (augmentation, schedule, initialisation), and
        the normalisation every run of the configuration gets."""
        return {**describe_recipe(self.recipe, self.image_shape), "normalisation": NORMALISATION}

    @property
    def n_models(self) -> int:
        """Base models to train: k for DPA, k*d for FA and DPA*."""
        return self.k if self.kind == "dpa" else self.k * self.d


_BUDGETS = {
    ("mnist", 1200): (100, 200, 300, 400, 500),
    ("cifar10", 50): (5, 10, 15, 18, 20),
    ("cifar10", 250): (10, 20, 40, 50, 60),
    ("gtsrb", 50): (5, 10, 15, 20, 22),
    ("gtsrb", 100): (5, 15, 20, 25, 30),
}

# (dataset, k) -> DPA and DPA+ROE, Table 3.
_DPA = {
    ("mnist", 1200): ((92.11, 86.45, 77.12, 61.78, 32.42), (92.38, 87.46, 79.43, 65.42, 37.15)),
    ("cifar10", 50): ((58.07, 46.44, 33.46, 24.87, 19.36), (59.80, 49.09, 36.04, 27.52, 21.30)),
    ("cifar10", 250): ((44.31, 34.01, 18.99, 13.55, 9.25), (46.14, 37.90, 23.16, 17.53, 12.39)),
    ("gtsrb", 50): ((82.32, 74.15, 64.14, 49.12, 37.73), (82.64, 74.88, 65.96, 51.34, 39.18)),
    ("gtsrb", 100): ((46.16, 30.19, 22.84, 17.16, 12.75), (46.09, 33.45, 26.86, 21.02, 15.93)),
}

# (dataset, k, d) -> FA (Tables 1 and 4) and FA+ROE (Table 1; None where the paper has none).
_FA = {
    ("mnist", 1200, 16): ((92.75, 87.89, 78.91, 62.42, 31.97), (92.80, 88.09, 80.26, 65.31, 36.76)),
    ("mnist", 1200, 32): ((92.97, 88.49, 80.17, 64.34, 31.09), None),
    ("cifar10", 50, 16): ((60.55, 48.85, 34.61, 25.46, 19.90), (61.71, 51.18, 37.12, 28.49, 22.08)),
    ("cifar10", 50, 32): ((61.31, 50.31, 36.03, 26.55, 19.93), (62.56, 52.55, 38.83, 29.05, 21.97)),
    ("cifar10", 250, 8): ((45.38, 36.05, 20.08, 14.39, 9.70), (46.80, 38.56, 23.61, 17.86, 13.06)),
    ("cifar10", 250, 16): ((46.52, 37.56, 21.99, 15.79, 11.09), (48.33, 40.71, 26.38, 20.52, 14.64)),
    ("gtsrb", 50, 16): ((82.71, 74.66, 63.77, 47.52, 35.54), (82.59, 75.55, 65.47, 50.33, 38.89)),
    ("gtsrb", 50, 32): ((83.52, 76.26, 66.32, 49.68, 38.31), (83.61, 77.07, 67.83, 51.81, 41.61)),
    ("gtsrb", 100, 16): ((48.19, 33.95, 25.96, 18.92, 13.82), (48.00, 35.76, 28.92, 22.30, 16.32)),
    ("gtsrb", 100, 32): ((48.39, 34.96, 27.05, 19.83, 14.47), (48.15, 36.81, 29.85, 23.37, 17.41)),
}

# (dataset, k, d) -> DPA* and DPA*+ROE, Tables 2 and 1.
_DPA_STAR = {
    ("mnist", 1200, 16): ((92.55, 87.99, 80.23, 67.25, 41.32), (92.70, 88.41, 81.75, 69.67, 44.81)),
    ("cifar10", 50, 16): ((61.00, 50.94, 39.29, 31.41, 25.97), (61.87, 52.71, 41.51, 33.42, 27.47)),
    ("cifar10", 50, 32): ((65.77, 60.89, 55.53, 51.05, 46.95), (65.99, 61.51, 56.13, 51.83, 47.61)),
    ("cifar10", 250, 8): ((45.36, 36.34, 21.71, 16.41, 11.60), (47.14, 39.32, 25.41, 19.68, 15.02)),
    ("cifar10", 250, 16): ((45.45, 36.41, 21.93, 16.55, 11.82), (46.88, 39.50, 25.49, 19.83, 15.04)),
    ("gtsrb", 50, 16): ((83.71, 77.22, 69.70, 56.71, 48.61), (83.67, 77.84, 70.63, 57.97, 49.33)),
    ("gtsrb", 50, 32): ((83.79, 77.21, 69.71, 57.41, 48.91), (83.67, 77.93, 70.67, 58.38, 49.61)),
    ("gtsrb", 100, 16): ((47.64, 34.73, 27.50, 21.20, 16.19), (47.50, 36.48, 30.60, 24.63, 19.26)),
    ("gtsrb", 100, 32): ((47.82, 34.81, 27.90, 21.51, 16.34), (47.66, 36.66, 30.70, 24.71, 19.33)),
}


def _build() -> dict[str, Config]:
    out = {}
    for (ds, k), (dpa, roe) in _DPA.items():
        name = f"{ds}-k{k}"
        out[name] = Config(name, ds, k, 1, "dpa", _BUDGETS[ds, k],
                           {"dpa": {"values": dpa, "table": 3}, "dpa-roe": {"values": roe, "table": 3}})
    for (ds, k, d), (fa, roe) in _FA.items():
        name = f"{ds}-k{k}-fa-d{d}"
        ref = {"fa": {"values": fa, "table": 1 if roe else 4}}
        if roe:
            ref["fa-roe"] = {"values": roe, "table": 1}
        out[name] = Config(name, ds, k, d, "fa", _BUDGETS[ds, k], ref)
    for (ds, k, d), (star, roe) in _DPA_STAR.items():
        name = f"{ds}-k{k}-dpastar-d{d}"
        out[name] = Config(name, ds, k, d, "dpa*", _BUDGETS[ds, k],
                           {"dpa": {"values": star, "table": 2}, "dpa-roe": {"values": roe, "table": 1}})
    return out


#: Every named configuration, by name.
CONFIGS: dict[str, Config] = _build()


def get_config(name: str) -> Config:
    """The configuration called ``name``; an unknown name gets the close ones ("did you mean")."""
    return CONFIGS[check_choice(name, "configuration", CONFIGS, listing="`runoff configs` lists them")]


#: How the settings are named in messages: the keywords of :func:`training_settings`.
_KEYWORDS = {"config": "config", "dataset": "dataset", "k": "k", "d": "d", "versions": "versions",
             "seed_version": "seed_version", "download": "download", "image_size": "image_size"}


def _given(name: str, value) -> str:
    """``--k 5`` for an option, ``k=5`` for a keyword."""
    return f"{name} {value}" if name.startswith("-") else f"{name}={value!r}"


def training_settings(config: str | None = None, *, dataset: str | None = None, k: int | None = None,
                      d: int | None = None, versions: int | None = None, seed_version: int = 1,
                      names: dict | None = None) -> dict:
    """What to train: ``dataset``, ``k``, ``d`` and ``versions`` (DPA*), from a named
    configuration of the paper and the explicit settings, which must agree with it.

    Parameters
    ----------
    config : str, optional
        A name of :data:`CONFIGS` (``"cifar10-k50-fa-d16"``); without it ``k`` is needed and
        ``dataset`` defaults to ``"digits"``.
    dataset, k, d, versions : optional
        Explicit settings (None: not given).
    seed_version : int, default 1
        One seed version; DPA* (``versions``) trains 1..V itself.
    names : dict, optional
        How to name each setting in messages (the command line passes its options:
        ``{"k": "--k", ...}``); default the keywords.

    Returns
    -------
    dict
        ``{"dataset": str, "k": int, "d": int, "versions": int or None}``.

    Raises
    ------
    InvalidParameterError
        A setting that contradicts the configuration, no k and no configuration, or DPA*
        combined with FA or with one seed version.
    """
    n = {**_KEYWORDS, **(names or {})}
    given = {"dataset": dataset, "k": k, "d": d, "versions": versions}
    if config:
        cfg = get_config(config)
        chosen = {"dataset": cfg.dataset, "k": cfg.k, "d": cfg.d if cfg.kind == "fa" else 1,
                  "versions": cfg.d if cfg.kind == "dpa*" else None}
        clash = [_given(n[key], v) for key, v in given.items() if v is not None and v != chosen[key]]
        if clash:
            raise InvalidParameterError(f"{' '.join(clash)} contradicts {_given(n['config'], cfg.name)} "
                                        f"(dataset {cfg.dataset}, k={cfg.k}, d={cfg.d}, {cfg.kind})")
    else:
        if k is None:
            raise InvalidParameterError(f"give {n['k']} (number of partitions) or {n['config']} NAME")
        chosen = {"dataset": dataset or "digits", "k": k, "d": 1 if d is None else d, "versions": versions}
    if chosen["versions"] is not None and chosen["d"] != 1:
        raise InvalidParameterError(f"{n['versions']} (DPA*) and {n['d']} (FA) cannot be combined")
    if chosen["versions"] is not None and seed_version != 1:
        raise InvalidParameterError(f"{n['seed_version']} picks one seed version; DPA* ({n['versions']}) trains 1..V")
    return chosen


def check_data_options(dataset: str, *, download: bool = False, image_size=None, names: dict | None = None) -> None:
    """``download`` and ``image_size`` fit ``dataset``: torchvision fetches only the paper's
    data sets, and only ``folder:`` data sets are resized.

    Raises
    ------
    InvalidParameterError
    """

    n = {**_KEYWORDS, **(names or {})}
    if download and dataset not in DOWNLOADABLE:
        raise InvalidParameterError(f"{n['download']} fetches {', '.join(DOWNLOADABLE)}; not {dataset}")
    if image_size is not None and not dataset.startswith("folder:"):
        raise InvalidParameterError(f"{n['image_size']} applies to folder: data sets, not to {dataset}")
