"""Collective certificates: how many test points can one poisoning attack change at once?

A pointwise certificate (:func:`runoff.certify`) bounds what an attacker needs to change one
prediction; the attacker gets a separate budget for every point. In reality one poisoned
training set has to serve every test point together: the same ``B`` poisoned partitions (DPA)
or buckets (FA) are corrupted for all of them. :func:`certify_collective` bounds the number of
points one attack with ``B`` poisons can change, with a mixed-integer linear program (MILP)
solved by HiGHS through :func:`scipy.optimize.milp`.

Threat model (that of the pointwise certificates): a poison lands in one partition (DPA: one
model) or one bucket (FA: the ``d`` models ``(b + s) mod kd`` of :mod:`runoff.plan.spread`); a
corrupted model may output anything, on every test point independently.

The steps, one module each:

- :mod:`.api`: :func:`certify_collective`, its checks, and the steps below put together;
- :mod:`.terms`: per point, the linear conditions (terms) that changing its prediction needs
  (exact for plurality and for both rounds of ROE);
- :mod:`.cuts`: the MILP of one chunk of points (variables, rows, valid cuts);
- :mod:`.exact`: the exact attempt at a budget before its MILPs, by :mod:`.exhaustive`
  (every unit set scored) or :mod:`.branch` (branch and bound over unit sets);
- :mod:`.solve`: chunk planning, HiGHS, and reading a proven bound from its result;
- :mod:`.search`, :mod:`.dual`: the attack search and the whole-set bound;
- :mod:`.replay`: the attacks the solver found, replayed through runoff's own aggregation;
- :mod:`.results`: :class:`CollectiveCertification` and :class:`CollectiveAttack`.

Soundness: only the solver's proven dual bound is used, floored for the integer objective;
a point whose pointwise certificate is ``>= B`` gets no variables (``z_x = 0``); a term one
of whose rows the ``B`` strongest units cannot reach (greedy top-``B`` sum of unit powers, as
in Lemma E.3) is dropped; when the solver fails the chunk counts every candidate point (the
pointwise count); chunks are bounded separately and their bounds summed, which bounds the
whole set because each chunk's optimum bounds what any one attack does to that chunk. Every
attack reported is replayed through runoff's own aggregation, so ``lower`` is achieved.

SciPy is imported only when a certificate is computed: ``import runoff`` and ``runoff
certify`` stay numpy-only.
"""

from .api import DEFAULT_CHUNK, certify_collective
from .results import EXACT_METHODS, CollectiveAttack, CollectiveCertification

__all__ = ["CollectiveAttack", "CollectiveCertification", "certify_collective", "EXACT_METHODS", "DEFAULT_CHUNK"]
