"""How the heads of a run on embeddings are trained: :class:`HeadRecipe`, recorded in its plan.

A run whose base models are small heads on frozen embeddings (``runoff train --features``, or
``npz:FILE`` of embeddings; :mod:`runoff.training.feature_runs`) records, instead of a
:class:`~runoff.training.recipe.Recipe`, the head's settings (``training["heads"]``) and the
backbone that computed the embeddings (``training["features"]``: its spec, weights digest and
embedding size; None for data that came as embeddings). Both are part of the plan, so a resume
or an update with other head settings or another backbone is another plan, and is refused.

Light (no PyTorch): the command line and ``train_run`` check the options before any import
of the trainer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..data.custom import NPZ_PREFIX
from ..data.features import npz_holds_embeddings, parse_features_spec
from ..errors import InvalidParameterError
from ..param_checks import check_choice, check_int, check_number

__all__ = ["HEADS", "HeadRecipe", "head_recipe", "heads_options", "is_embeddings", "is_heads_training"]

#: Head kinds (``--head``).
HEADS = ("linear", "mlp")
_MAX_ITER = {"linear": 500, "mlp": 300}


@dataclass(frozen=True)
class HeadRecipe:
    """A head's settings (:func:`runoff.training.heads.fit_heads`' keyword arguments).

    Attributes
    ----------
    kind : {"linear", "mlp"}
    l2 : float
        Penalty ``(l2 / 2) |theta|^2`` on each head's mean cross-entropy (scikit-learn's
        ``C = 1 / (l2 * n_m)`` for a subset of ``n_m`` samples).
    hidden : int
        Hidden units of ``"mlp"`` (recorded for ``"linear"`` too, unused).
    max_iter : int
        L-BFGS iterations at most (linear) or Adam steps (mlp).
    tol : float
        Linear: the gradient's largest entry at which a head stops.
    lr : float
        Adam's rate (mlp).
    dtype : {"float32", "float64"}
    """

    kind: str = "linear"
    l2: float = 1e-2
    hidden: int = 64
    max_iter: int = 500
    tol: float = 1e-6
    lr: float = 1e-2
    dtype: str = "float32"

    #: One "epoch": a head is fitted in one call, or not at all (what checkpoints and summaries count).
    epochs = 1

    @property
    def model(self) -> str:
        """What the progress display and summaries call the base model: ``"linear head"``."""
        return f"{self.kind} head"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj) -> "HeadRecipe":
        """Read :meth:`to_dict`'s output back (checked like :func:`head_recipe`)."""
        if not isinstance(obj, dict) or set(obj) - set(cls.__dataclass_fields__):
            raise InvalidParameterError(f"not a head recipe: {obj!r}")
        return head_recipe(**obj)


def head_recipe(kind="linear", *, l2=None, hidden=None, max_iter=None, tol=1e-6, lr=1e-2,
                dtype="float32", names=None) -> HeadRecipe:
    """A checked :class:`HeadRecipe`; ``None`` takes the default (``max_iter``: 500 linear, 300 mlp).

    ``names`` maps a parameter to the option the user typed (``{"kind": "--head"}``), for messages.
    """
    names = names or {}
    kind = check_choice(kind, names.get("kind", "head"), HEADS)
    return HeadRecipe(
        kind=kind,
        l2=float(check_number(1e-2 if l2 is None else l2, names.get("l2", "l2"), low=0)),
        hidden=int(check_int(64 if hidden is None else hidden, names.get("hidden", "hidden"), low=1)),
        max_iter=int(check_int(_MAX_ITER[kind] if max_iter is None else max_iter, "max_iter", low=1)),
        tol=float(check_number(tol, "tol", low=0)),
        lr=float(check_number(lr, "lr", low=0, strict=True)),
        dtype=check_choice(dtype, "dtype", ("float32", "float64")),
    )


def is_heads_training(training) -> bool:
    """Whether a plan's ``training`` record is that of heads on embeddings."""
    return isinstance(training, dict) and isinstance(training.get("heads"), dict)


def is_embeddings(dataset) -> bool:
    """Whether ``dataset`` names an ``npz:FILE`` of float embeddings ``(N, D)`` (its header read only)."""
    return isinstance(dataset, str) and dataset.startswith(NPZ_PREFIX) and npz_holds_embeddings(
        dataset[len(NPZ_PREFIX):])


def heads_options(dataset, *, features=None, head=None, l2=None, hidden=None, model=None, recipe=None, epochs=None,
                  names=None) -> HeadRecipe | None:
    """The :class:`HeadRecipe` of a training call, or None when it trains networks (the rule of
    ``train_run`` and ``runoff train``, checked before anything is read or written).

    Heads are trained with ``features`` (a ``--features`` spec) or on ``npz:`` embeddings;
    ``head``, ``l2`` and ``hidden`` need one of them, and the network options ``model``,
    ``recipe`` and ``epochs`` do not apply to heads. ``names`` maps a parameter to the option
    the user typed, for messages.

    Raises
    ------
    InvalidParameterError
        An option that does not apply, an unknown spec or head.
    """
    names = names or {}
    if features is None and not is_embeddings(dataset):
        given = [names.get(n, n) for n, v in (("head", head), ("l2", l2), ("hidden", hidden)) if v is not None]
        if given:
            raise InvalidParameterError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} the heads trained on "
                                        f"embeddings: give {names.get('features', 'features')} too (a backbone), or an "
                                        "npz: file of float embeddings")
        return None
    for name, value in (("model", model), ("recipe", recipe), ("epochs", epochs)):
        if value is not None:
            raise InvalidParameterError(f"{names.get(name, name)} does not apply to heads on embeddings (each base "
                                        f"model is a head fitted to convergence); set {names.get('head', 'head')}, "
                                        f"{names.get('l2', 'l2')}, {names.get('hidden', 'hidden')} instead")
    if isinstance(features, str):
        parse_features_spec(features)
    return head_recipe("linear" if head is None else head, l2=l2, hidden=hidden, names=names)
