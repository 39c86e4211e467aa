"""Build the pieces of one certify_collective call (instance, terms) for tests of its steps."""

from __future__ import annotations

import numpy as np

import runoff
import runoff.certificates.collective.api as api
from runoff.certificates.collective.terms import _candidate_terms
from runoff.certificates.methods import get_method
from runoff.plan.spread import reference_spread

# certify_collective keywords that leave only the chunk MILPs (no exact attempt before them)
MILP_ONLY = {"exhaustive_limit": 0, "branch_nodes": 0}


def build(scores, method, max_budget, *, d=1, spread=None, labels=None):
    """(inst, terms) as :func:`runoff.certificates.collective.api._compute` makes them; terms is
    None when no point is a candidate at ``max_budget``."""
    meth = get_method(method)
    shifts = None if spread is None else np.asarray(spread)
    if meth.fa and shifts is None:
        shifts = np.asarray(reference_spread(scores.shape[1] // d, d))
    cert = runoff.certify(scores, method, d=d, spread=None if shifts is None else shifts.tolist())
    counted = np.ones(scores.shape[0], bool) if labels is None else cert.predictions == labels
    inst = api._Instance(scores=scores, roe=meth.roe, fa=meth.fa, units=api._units(meth, scores.shape[1], d, shifts),
                         pred=cert.predictions, pw_cert=cert.certificates, counted=counted)
    pts = inst.candidates(max_budget)
    return inst, (_candidate_terms(inst, pts) if pts.size else None)
