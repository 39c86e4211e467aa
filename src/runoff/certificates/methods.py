"""The aggregation methods: one registry of what each is and which kernel certifies it.

Every place that needs to know about a method asks :data:`REGISTRY`: validation (the names and
their spellings, which ensembles a method is sound for), dispatch (:func:`runoff.certify`
calls :attr:`Method.kernel`), and reporting (ROE beside its plurality method). A method string
is normalised once, by :func:`get_method`; code that already holds a :class:`Method` passes it
on as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..param_checks import check_choice, check_int, invalid
from .dpa import certify_dpa, certify_dpa_roe
from .fa import certify_fa, certify_fa_roe

__all__ = ["Method", "REGISTRY", "METHODS", "get_method", "check_method", "check_methods", "methods_for"]


@dataclass(frozen=True)
class Method:
    """One aggregation method and its certificate.

    Attributes
    ----------
    name : str
        Canonical name (``"dpa"``, ``"dpa-roe"``, ``"fa"``, ``"fa-roe"``).
    fa : bool
        Finite Aggregation: ``k*d`` models, each bucket spread to ``d`` of them; takes ``d`` and
        the spread. A DPA method (``fa=False``) assumes one model per poison, so it is sound
        for ``d = 1`` only.
    roe : bool
        Run-Off Election (two rounds) rather than a plurality vote.
    kernel : callable
        ``kernel(scores, spread, d) -> (predictions, certificates)`` on a chunk of validated
        logits (N, M, C); DPA kernels ignore ``spread`` and ``d``.
    """

    name: str
    fa: bool
    roe: bool
    kernel: Callable[[np.ndarray, np.ndarray | None, int], tuple[np.ndarray, np.ndarray]]

    @property
    def plurality(self) -> str:
        """The plurality method of the same ensemble (itself when it is one)."""
        return "fa" if self.fa else "dpa"

    def __str__(self) -> str:
        return self.name


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("dpa", fa=False, roe=False, kernel=lambda s, spread, d: certify_dpa(s)),
    Method("dpa-roe", fa=False, roe=True, kernel=lambda s, spread, d: certify_dpa_roe(s)),
    Method("fa", fa=True, roe=False, kernel=certify_fa),
    Method("fa-roe", fa=True, roe=True, kernel=certify_fa_roe),
)}
#: Method names of :func:`runoff.certify`: plurality or Run-Off Election over DPA or FA.
METHODS = tuple(REGISTRY)


def _method_key(name: str) -> str:
    return name.strip().lower().replace("+", "-").replace("_", "-")


def get_method(method, name: str = "method") -> Method:
    """The :class:`Method` of ``method``: a :class:`Method`, or a name in any of its spellings
    (``"DPA+ROE"``, ``"dpa_roe"``); ``name`` is the parameter for the message."""
    if isinstance(method, Method):
        return method
    return REGISTRY[check_choice(method, name, METHODS, normalize=_method_key)]


def check_method(method, name: str = "method") -> str:
    """The canonical name of ``method`` (:func:`get_method`)."""
    return get_method(method, name).name


def methods_for(d: int) -> tuple[str, str]:
    """The methods sound for an ensemble with ``d`` models per bucket: plurality, then ROE.

    ``("dpa", "dpa-roe")`` for ``d == 1`` (DPA, and DPA* on its summed logits);
    ``("fa", "fa-roe")`` for ``d > 1`` (Finite Aggregation).
    """
    fa = check_int(d, "d", low=1) > 1
    return tuple(m.name for m in REGISTRY.values() if m.fa == fa)


def check_methods(methods, d: int = 1, name: str = "methods") -> list[str]:
    """Canonical method names for an ensemble with ``d`` models per bucket, each once.

    ``methods`` is one name or a sequence of names. DPA methods are refused when ``d > 1``:
    they assume one model per poison and would overstate the certificates of an FA ensemble.
    """
    d = check_int(d, "d", low=1)
    given = [methods] if isinstance(methods, (str, Method)) or not hasattr(methods, "__iter__") else list(methods)
    if not given:
        raise invalid(name, f"one or more of {', '.join(METHODS)}", given)
    chosen = list(dict.fromkeys(get_method(m) for m in given))
    dpa = [m.name for m in chosen if not m.fa]
    if d > 1 and dpa:
        raise invalid(
            name,
            f"FA methods for d={d} models per bucket ({' or '.join(methods_for(d))}): "
            f"{', '.join(dpa)} assumes one model per poison and would overstate its certificates",
            given,
        )
    return [m.name for m in chosen]
