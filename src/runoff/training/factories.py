"""Your own architecture: a Python factory named in the recipe.

A recipe's ``model`` is either a registry architecture (``"nin"``, ``"small"``, ``"mlp"``,
``"resnet18"``: :mod:`runoff.training.models`, trained by ``BatchedNet``) or the name of a
*factory* ``factory(in_shape, n_classes) -> torch.nn.Module`` (``in_shape = (C, H, W)``),
trained by :class:`runoff.training.stacked.StackedModule`. A factory's name has a colon:
``"package.module:function"``, its import path. The recipe, and so ``plan.json``, records the
name, so a run trained from an importable factory can be resumed, updated and loaded for
prediction in any process, a Ray worker's included, by importing it again.

A factory that cannot be imported by name (defined in a script's ``__main__``, a closure, a
lambda) is registered in this process by :func:`factory_name` when it is passed to
``train_run(model=...)``; such a run can be resumed and loaded only in a process that
registers the same factory again (``register_factory``).
"""

from __future__ import annotations

import importlib

from ..errors import InvalidParameterError

__all__ = ["is_factory_name", "factory_name", "register_factory", "resolve_factory"]

_REGISTERED: dict = {}


def is_factory_name(model: str) -> bool:
    """Whether a recipe's ``model`` names a factory (``"module:function"``) rather than a
    registry architecture."""
    return isinstance(model, str) and ":" in model


def factory_name(factory) -> str:
    """The name a recipe records for ``factory``: ``"module:qualname"`` (registered in this
    process when importing it by that name would not give it back)."""
    if isinstance(factory, str):
        resolve_factory(factory)  # a name given as such must resolve now
        return factory
    if not callable(factory):
        raise InvalidParameterError(f"model must be an architecture name or a callable "
                                    f"factory(in_shape, n_classes) -> nn.Module; got {factory!r}")
    name = f"{getattr(factory, '__module__', None) or 'unknown'}:{getattr(factory, '__qualname__', repr(factory))}"
    if _import(name) is not factory:
        register_factory(factory, name)
    return name


def register_factory(factory, name: str | None = None) -> str:
    """Make ``factory`` resolvable by ``name`` (default ``"module:qualname"``) in this process."""
    if not callable(factory):
        raise InvalidParameterError(f"a factory must be callable; got {factory!r}")
    name = name or f"{factory.__module__}:{factory.__qualname__}"
    if not is_factory_name(name):
        raise InvalidParameterError(f"a factory's name has the form 'module:function'; got {name!r}")
    _REGISTERED[name] = factory
    return name


def resolve_factory(name: str, *, option: str = "model"):
    """The factory a recipe names: registered in this process, or imported by its path.

    ``option``: how the error names the setting (``"--model"`` on the command line).

    Raises
    ------
    InvalidParameterError
        When it is neither (the message says how to make it available).
    """
    factory = _REGISTERED.get(name) or _import(name)
    if factory is None:
        raise InvalidParameterError(
            f"{option} {name!r}: cannot import this factory (module:function); put it in an importable module, "
            "or call runoff.training.factories.register_factory(factory) in this process first")
    return factory


def _import(name: str):
    """``module:qualname`` imported, or None."""
    module, _, qualname = name.partition(":")
    if module in ("", "__main__") or not qualname or "<" in qualname:
        return None
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        return None
    return obj if callable(obj) else None
