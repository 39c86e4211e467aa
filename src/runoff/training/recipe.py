"""The training recipe of a run: what every base model is trained with, and where it came from.

A :class:`Recipe` (architecture, epochs, batch, SGD settings, augmentation, initialisation,
precision, compile) is recorded in the run's plan; :func:`recipe_for` gives the data set's
(the published scripts' for the paper's data sets), :func:`load_recipe_file` reads one from
TOML, :func:`recipe_origin` says where it came from for the progress display.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..param_checks import check_choice, check_int, check_number
from ..data.configs import PAPER_RECIPES
from ..errors import InvalidParameterError
from .factories import is_factory_name, resolve_factory
from .models import ARCHITECTURES, INIT_RULES

__all__ = ["Recipe", "RECIPES", "AUGMENTATIONS", "PRECISIONS", "RECIPE_FIELDS", "recipe_for", "recipe_origin",
           "with_epochs", "load_recipe_file"]

#: Augmentations of :attr:`Recipe.augment` (``--augment``).
AUGMENTATIONS = ("none", "crop", "crop-flip")
#: Training precisions (:attr:`Recipe.precision`, ``--precision``).
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Recipe:
    """How every base model is trained.

    Parameters
    ----------
    model : str
        Architecture name (:func:`runoff.training.models.architecture`), or a factory's
        ``"module:function"`` (:mod:`runoff.training.factories`).
    epochs : int
        Passes over each model's own subset.
    batch_size : int
        Samples per step and model (the last batch of an epoch may be shorter).
    lr : float
        Initial learning rate.
    momentum : float
    nesterov : bool
    weight_decay : float
        L2 penalty added to the gradient of every parameter (as ``torch.optim.SGD``).
    milestones : tuple of int
        The learning rate is multiplied by ``gamma`` from each of these (0-based) epochs on
        (:meth:`lr_at`). The published loop writes the same schedule as "multiply after epoch
        ``m - 1`` ends": its ``if epoch in [60, 120, 160]`` after the epoch's steps is
        milestones ``(61, 121, 161)`` here.
    gamma : float
    augment : {"none", "crop", "crop-flip"}
        Random crop of the image padded with zeros by ``crop_padding`` pixels (torchvision's
        ``RandomCrop(size, padding=crop_padding)``, padding before normalisation), and (for
        ``"crop-flip"``) a horizontal flip with probability 1/2.
    crop_padding : int
    init : {"pytorch", "rotnet"}, default "pytorch"
        Initialisation rule (:meth:`runoff.training.batched_net.BatchedNet.init_`): PyTorch's defaults,
        which the published scripts train from, or RotNet's rule (the ``digits`` recipe's).
    precision : {"fp32", "bf16"}, default "fp32"
        ``"bf16"``: forward passes under ``torch.autocast`` to bfloat16 (convolutions and
        matrix products); weights, momentum, BatchNorm statistics and the loss stay float32.
        Test logits are computed in the same precision.
    compile : bool, default False
        Run the training forward pass (and the backward derived from it), the SGD step and
        the test logits through ``torch.compile`` (:mod:`runoff.training.compiling`): one
        static graph per batch shape, eager where torch cannot compile. Once compiled, NiN
        trains 1.1-1.4x and computes test logits 1.4-2.0x faster on a CPU; compiling takes
        15-80 s per distinct shape and process (less from torch's on-disk cache). The kernels
        round differently from eager ones, so the run records the choice.
    """

    model: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: tuple = ()
    gamma: float = 0.2
    augment: str = "none"
    crop_padding: int = 4
    init: str = "pytorch"
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        if not is_factory_name(self.model):  # else a factory's "module:function" (runoff.training.factories)
            check_choice(self.model, "model", ARCHITECTURES)
        check_int(self.epochs, "epochs", low=1)
        check_int(self.batch_size, "batch_size", low=1)
        check_number(self.lr, "lr", low=0, strict=True)
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise InvalidParameterError("momentum must lie in [0, 1) and weight_decay be >= 0")
        check_choice(self.augment, "augment", AUGMENTATIONS)
        check_int(self.crop_padding, "crop_padding", low=0)
        check_choice(self.init, "init", INIT_RULES)
        check_choice(self.precision, "precision", PRECISIONS)
        if not isinstance(self.compile, bool):
            raise InvalidParameterError(f"compile must be true or false; got {self.compile!r}")

    def lr_at(self, epoch: int) -> float:
        """Learning rate during (0-based) ``epoch``: ``lr * gamma ** (milestones <= epoch)``."""
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)

    def to_dict(self) -> dict:
        """JSON-ready fields; ``precision`` only when not ``"fp32"`` and ``compile`` only when
        true, so that the recipes (and plans, and checkpoint keys) of runs made before runoff
        had these fields stay the same."""
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        if d["precision"] == "fp32":
            del d["precision"]
        if not d["compile"]:
            del d["compile"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        """The recipe of :meth:`to_dict` (as recorded in a run's ``plan.json``).

        A recipe recorded before runoff named its initialisation rule has no ``init``: its
        models were initialised by the ``"rotnet"`` rule, which is what it gets.
        """
        return cls(**{"init": "rotnet", **d})


#: The paper's optimiser, schedule and initialisation, without augmentation: the recipe of a
#: data set that has none of its own.
_PAPER = Recipe(**{**PAPER_RECIPES["cifar10"], "augment": "none"})

#: Default recipe of each data set. ``mnist``, ``cifar10`` and ``gtsrb`` are the published
#: training scripts' (:data:`runoff.data.configs.PAPER_RECIPES`: NiN from PyTorch's default
#: initialisation; SGD lr 0.1, momentum 0.9 Nesterov, weight decay 5e-4, batch 128, 200 epochs,
#: lr x0.2 from epochs 61, 121 and 161; random crop with 4 pixels of zero padding, and a flip for
#: CIFAR-10 only). ``digits`` is runoff's own fast recipe for the embedded data set (small
#: network, RotNet initialisation, 60 epochs, batch 16, lr 0.1 x0.2 from epochs 30 and 45).
RECIPES: dict[str, Recipe] = {
    "paper": _PAPER,
    **{name: Recipe(**fields) for name, fields in PAPER_RECIPES.items()},
    "digits": Recipe(model="small", epochs=60, batch_size=16, lr=0.1, momentum=0.9, nesterov=True,
                     weight_decay=5e-4, milestones=(30, 45), gamma=0.2, init="rotnet"),
    # not in the paper: the published MNIST recipe, for the same kind of images
    "fashion-mnist": Recipe(**PAPER_RECIPES["mnist"]),
}


def recipe_for(dataset: str, *, epochs: int | None = None) -> Recipe:
    """Default :class:`Recipe` of a data set, optionally with another number of epochs.

    When ``epochs`` is given, the learning-rate milestones are scaled in proportion (rounded,
    at least 1), so every rate keeps about its share of the run: the paper's (61, 121, 161)
    of 200 epochs become (6, 12, 16) for 20 epochs and (1, 2, 3) for 4.
    """
    base = RECIPES.get(dataset, _PAPER)
    return base if epochs is None else with_epochs(base, epochs)


def recipe_origin(dataset: str, *, changed=(), hint: str | None = None) -> str:
    """Where the recipe of a run on ``dataset`` comes from, for people (the progress display's
    first line): :func:`recipe_for`'s recipe, and what ``changed`` it (option names, a recipe
    file, "epochs=20"), or ``hint`` on how to change it when nothing did.

    >>> recipe_origin("folder:photos", hint="--model, --epochs to change")
    'the default recipe for folder: data; --model, --epochs to change'
    """
    if dataset == "digits":
        base = "runoff's recipe for digits"
    elif dataset == "fashion-mnist":
        base = "the published MNIST recipe"
    elif dataset in PAPER_RECIPES:
        base = f"the published recipe for {dataset}"
    else:  # one's own data (folder:, npz:): the paper's optimiser without augmentation
        base = f"the default recipe for {dataset.split(':', 1)[0]}: data" if ":" in dataset else "the default recipe"
    changed = list(changed)
    if changed:
        return f"{base}, with {', '.join(changed)}"
    return f"{base}; {hint}" if hint else base


def with_epochs(recipe: Recipe, epochs: int) -> Recipe:
    """``recipe`` over ``epochs`` epochs, its milestones scaled in proportion (see :func:`recipe_for`)."""
    epochs = check_int(epochs, "epochs", low=1)
    scale = epochs / recipe.epochs
    ms = tuple(sorted({max(1, round(m * scale)) for m in recipe.milestones if m * scale < epochs}))
    return replace(recipe, epochs=epochs, milestones=ms)


#: Recipe fields a user may set (``--recipe FILE.toml``, command-line options); ``init`` too.
RECIPE_FIELDS = ("model", "epochs", "batch_size", "lr", "momentum", "nesterov", "weight_decay", "milestones",
                 "gamma", "augment", "crop_padding", "init", "precision", "compile")


def load_recipe_file(path, base: Recipe) -> Recipe:
    """``base`` with the fields of a TOML file (``lr = 0.05``, ``augment = "crop"``, ...).

    Raises
    ------
    InvalidParameterError
        The file is missing or not TOML, names an unknown field, or a value is out of range
        (the message names the file).
    """
    import tomllib

    try:
        with open(path, "rb") as fh:
            fields = tomllib.load(fh)
    except OSError as exc:
        raise InvalidParameterError(f"{path}: cannot read the recipe file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidParameterError(f"{path}: not a TOML file ({exc})") from None
    unknown = sorted(set(fields) - set(RECIPE_FIELDS))
    if unknown:
        raise InvalidParameterError(f"{path}: unknown recipe field(s) {', '.join(unknown)}; "
                                    f"known: {', '.join(RECIPE_FIELDS)}")
    try:
        return replace(base, **fields)
    except (InvalidParameterError, TypeError, ValueError) as exc:
        raise InvalidParameterError(f"{path}: {exc}") from None


def check_model(model: str, *, name: str = "model") -> None:
    """A model a recipe may name: an architecture of :data:`~runoff.training.models.ARCHITECTURES`,
    or a factory's ``"module:function"`` that imports (:func:`~runoff.training.factories.resolve_factory`).

    Raises
    ------
    InvalidParameterError
        Neither; the message names ``name`` (``"--model"`` on the command line).
    """
    if is_factory_name(model):
        resolve_factory(model, option=name)
        return
    check_choice(model, name, ARCHITECTURES)


def recipe_with(base, *, recipe_file=None, names=None, **fields) -> Recipe | None:
    """A recipe changed by a recipe file and single fields, the rule of ``runoff train`` and
    ``runoff update``'s recipe options: the file's fields over ``base``, then ``fields`` over both.

    Parameters
    ----------
    base : Recipe or callable returning a Recipe
        What is changed (a data set's :func:`recipe_for`, a run's own recipe); a callable is
        called only when something changes it.
    recipe_file : path-like, optional
        A TOML file of recipe fields (:func:`load_recipe_file`).
    names : dict, optional
        The name of each field for messages (``{"model": "--model"}`` on the command line).
    **fields
        Recipe fields (:data:`RECIPE_FIELDS`); None means not given.

    Returns
    -------
    Recipe or None
        None when neither a file nor a field is given.
    """
    names = names or {}
    given = {key: value for key, value in fields.items() if value is not None}
    unknown = sorted(set(given) - set(RECIPE_FIELDS))
    if unknown:
        raise InvalidParameterError(f"unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(RECIPE_FIELDS)}")
    if not given and recipe_file is None:
        return None
    if "model" in given:
        check_model(given["model"], name=names.get("model", "model"))
    recipe = base() if callable(base) else base
    if recipe_file is not None:
        recipe = load_recipe_file(recipe_file, recipe)
    return replace(recipe, **given)
