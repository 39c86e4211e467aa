"""Exhaustive brute-force poisoning adversary for tiny ensembles.

Independent of every certificate formula: it only knows how the ensemble aggregates votes
(plurality, or Run-Off Election) and which base models a poison can reach.

Threat model
------------
* DPA (``"dpa"``, ``"dpa-roe"``): one poison = one partition = one base model, whose output
  the adversary can replace arbitrarily.
* FA (``"fa"``, ``"fa-roe"``): ``M = k*d`` models; bucket ``b`` feeds the models
  ``(b + s) mod kd`` for every shift ``s`` of the spread. One poison = one bucket: all ``d``
  models of that bucket may change arbitrarily.

An arbitrary change of a base model = any strict ranking of the C classes (its round-1 vote is
the top of the ranking, its pairwise round-2 preferences come from the ranking). An original
model with tied logits behaves exactly like the strict ranking "logit descending, index
ascending" (both the argmax and the round-2 comparisons break ties towards the smaller index),
so every ensemble is a multiset of rankings, and a poisoned ensemble is obtained by replacing
the rankings of the affected models by any rankings.

Enumeration
-----------
Poisoning more units never hurts the adversary (an affected model can be given back its own
ranking), so it suffices to look at exactly ``min(budget, n_units)`` poisoned units. The
outcome depends only on the multiset of rankings of the untouched models and the multiset of
rankings given to the affected models, so affected sets are grouped by the multiset of the
untouched models, and assignments are enumerated with ``combinations_with_replacement``; the
many candidate outcomes are evaluated at once with numpy. For plurality only the top class of
a ranking matters, so the behaviours of a poisoned model are just the C classes there.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations, combinations_with_replacement, permutations
from math import comb

import numpy as np

from runoff.plan.spread import reference_spread

METHODS = ("dpa", "dpa-roe", "fa", "fa-roe")
DEFAULT_MAX_ROWS = 2_000_000
CHUNK = 20_000


class TooExpensive(RuntimeError):
    """The exhaustive search would enumerate more candidate outcomes than allowed."""


# --------------------------------------------------------------------------------------
# Behaviours (rankings) and the vectorised elections
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def behaviours(n_classes: int, roe: bool):
    """``(TOP, PREF)`` for every behaviour a model can have.

    ROE: every strict ranking; ``TOP[r]`` one-hot (C,) of its top class and ``PREF[r, a, b]``
    = 1 iff a is ranked above b. Plurality: behaviours are the C top classes (PREF unused).
    """
    if not roe:
        return np.eye(n_classes, dtype=np.int64), None
    perms = list(permutations(range(n_classes)))
    top = np.zeros((len(perms), n_classes), dtype=np.int64)
    pref = np.zeros((len(perms), n_classes, n_classes), dtype=np.int64)
    for r, perm in enumerate(perms):
        top[r, perm[0]] = 1
        for i, a in enumerate(perm):
            for b in perm[i + 1 :]:
                pref[r, a, b] = 1
    return top, pref


def behaviour_ids(logits, roe: bool) -> np.ndarray:
    """Behaviour index of each model of an (M, C) logits array."""
    logits = np.asarray(logits, dtype=np.float64)
    n_classes = logits.shape[1]
    if not roe:
        return np.argmax(logits, axis=1).astype(np.int64)
    index = {p: r for r, p in enumerate(permutations(range(n_classes)))}
    out = []
    for row in logits:
        order = tuple(sorted(range(n_classes), key=lambda c: (-row[c], c)))
        out.append(index[order])
    return np.asarray(out, dtype=np.int64)


def elect(top_counts: np.ndarray, pref_counts: np.ndarray | None) -> np.ndarray:
    """Vectorised aggregation of K candidate ensembles.

    ``top_counts``: (K, C) round-1 vote counts. ``pref_counts``: (K, C, C) number of models
    preferring a over b (None -> plurality).
    """
    k = top_counts.shape[0]
    rows = np.arange(k)
    c1 = np.argmax(top_counts, axis=1)  # ties -> smaller index
    if pref_counts is None:
        return c1
    masked = top_counts.copy()
    masked[rows, c1] = -1
    c2 = np.argmax(masked, axis=1)
    n1 = pref_counts[rows, c1, c2]
    n2 = pref_counts[rows, c2, c1]
    return np.where((n1 > n2) | ((n1 == n2) & (c1 < c2)), c1, c2)


def plain_predict(logits, method: str) -> int:
    """Prediction of an (M, C) ensemble (plurality for dpa/fa, Run-Off for the -roe ones)."""
    roe = method.endswith("roe")
    ids = behaviour_ids(logits, roe)
    top, pref = behaviours(np.asarray(logits).shape[1], roe)
    tc = top[ids].sum(axis=0)[None]
    pc = None if pref is None else pref[ids].sum(axis=0)[None]
    return int(elect(tc, pc)[0])


@lru_cache(maxsize=32)
def _assignments(n_behaviours: int, m: int):
    """All multisets of size m over the behaviours, as an (K, m) index array."""
    if m == 0:
        return np.zeros((1, 0), dtype=np.int64)
    return np.asarray(list(combinations_with_replacement(range(n_behaviours), m)), dtype=np.int64)


# --------------------------------------------------------------------------------------
# Threat model
# --------------------------------------------------------------------------------------


def poison_units(method: str, n_models: int, d: int = 1, spread=None) -> list[tuple[int, ...]]:
    """Models affected by each unit of poison (a model for DPA, a bucket for FA)."""
    if method in ("dpa", "dpa-roe"):
        return [(j,) for j in range(n_models)]
    if n_models % d:
        raise ValueError("M must be a multiple of d")
    if spread is None:
        spread = reference_spread(n_models // d, d)
    return [tuple(sorted({(b + int(s)) % n_models for s in spread})) for b in range(n_models)]


def _attack_groups(ids: np.ndarray, units, t: int) -> dict:
    """Affected sets of every choice of t units, grouped by (size, untouched multiset)."""
    m_models = len(ids)
    groups: dict[tuple[int, tuple[int, ...]], tuple] = {}
    for chosen in combinations(range(len(units)), t):
        affected = sorted(set().union(*(units[u] for u in chosen)))
        hit = set(affected)
        untouched = [j for j in range(m_models) if j not in hit]
        key = (len(affected), tuple(sorted(ids[untouched].tolist())))
        if key not in groups:
            groups[key] = (chosen, affected, untouched)
    return groups


def search_size(logits, method: str, budget: int, *, d: int = 1, spread=None) -> int:
    """Number of candidate outcomes :func:`find_attack` evaluates for this budget."""
    logits = np.asarray(logits, dtype=np.float64)
    m_models, n_classes = logits.shape
    if budget <= 0:
        return 0
    roe = method.endswith("roe")
    units = poison_units(method, m_models, d, spread)
    t = min(budget, len(units))
    n_beh = behaviours(n_classes, roe)[0].shape[0]
    groups = _attack_groups(behaviour_ids(logits, roe), units, t)
    return sum(comb(n_beh + m - 1, m) for (m, _) in groups)


def find_attack(logits, method: str, budget: int, *, d: int = 1, spread=None,
                max_rows: int = DEFAULT_MAX_ROWS):
    """Search every attack with ``budget`` poisons; return one that changes the prediction.

    Returns ``None`` when no attack exists, else a dict with the poisoned units, the affected
    models, the behaviours given to them (rankings for ROE, top classes for plurality) and the
    new prediction. Raises :class:`TooExpensive` if the search would exceed ``max_rows``.
    """
    logits = np.asarray(logits, dtype=np.float64)
    m_models, n_classes = logits.shape
    roe = method.endswith("roe")
    pred = plain_predict(logits, method)
    if budget <= 0:
        return None
    units = poison_units(method, m_models, d, spread)
    t = min(budget, len(units))
    ids = behaviour_ids(logits, roe)
    top, pref = behaviours(n_classes, roe)
    groups = _attack_groups(ids, units, t)
    rows = sum(comb(top.shape[0] + m - 1, m) for (m, _) in groups)
    if rows > max_rows:
        raise TooExpensive(f"{method} M={m_models} C={n_classes} budget={budget}: {rows} rows")

    for (m, _), (chosen, affected, untouched) in groups.items():
        base_top = top[ids[untouched]].sum(axis=0)
        base_pref = pref[ids[untouched]].sum(axis=0) if roe else None
        all_assign = _assignments(top.shape[0], m)
        for start in range(0, all_assign.shape[0], CHUNK):
            assign = all_assign[start : start + CHUNK]
            tc = top[assign].sum(axis=1) + base_top
            pc = pref[assign].sum(axis=1) + base_pref if roe else None
            outcome = elect(tc, pc)
            hit = np.nonzero(outcome != pred)[0]
            if not hit.size:
                continue
            row = int(hit[0])
            return {
                "units": list(chosen),
                "affected": affected,
                "behaviours": [describe_behaviour(int(b), n_classes, roe) for b in assign[row]],
                "new_prediction": int(outcome[row]),
                "old_prediction": pred,
            }
    return None


def describe_behaviour(b: int, n_classes: int, roe: bool):
    if not roe:
        return b
    return list(permutations(range(n_classes)))[b]


def attack_succeeds(logits, method: str, budget: int, *, d: int = 1, spread=None,
                    max_rows: int = DEFAULT_MAX_ROWS) -> bool:
    """True iff some poisoning with ``budget`` units changes the prediction."""
    return find_attack(logits, method, budget, d=d, spread=spread, max_rows=max_rows) is not None


def apply_attack(logits, attack, method: str) -> np.ndarray:
    """Materialise an attack found by :func:`find_attack` as new logits (for re-checking)."""
    out = np.array(logits, dtype=np.float64, copy=True)
    n_classes = out.shape[1]
    for j, beh in zip(attack["affected"], attack["behaviours"]):
        if method.endswith("roe"):
            ranking = beh
        else:
            ranking = [beh] + [c for c in range(n_classes) if c != beh]
        row = np.empty(n_classes)
        for pos, c in enumerate(ranking):
            row[c] = n_classes - pos
        out[j] = row
    return out


# --------------------------------------------------------------------------------------
# Random tiny ensembles and the tightness measurement
# --------------------------------------------------------------------------------------

FA_SHAPES = ((2, 2), (3, 2), (4, 2), (6, 2), (8, 2), (2, 3), (3, 3), (4, 3), (5, 3),
             (2, 4), (4, 4))  # (k, d)


def random_tiny_case(rng: np.random.Generator, method: str):
    """A random tiny ensemble ``(logits (M, C), d, spread)`` suited to brute force.

    DPA: M <= 13 (plurality) / 11 (ROE, C = 3) / 8 (ROE, C = 4). FA: k*d <= 16, d in 2..4,
    C = 3 (plus C = 4 when k*d <= 6); spreads are random or the reference one.
    """
    roe = method.endswith("roe")
    if method in ("dpa", "dpa-roe"):
        d, spread = 1, None
        if roe:
            c = int(rng.choice([3, 3, 4]))
            m = int(rng.integers(1, 9 if c == 4 else 12))
        else:
            c = int(rng.integers(2, 5))
            m = int(rng.integers(1, 14))
    else:
        k, d = FA_SHAPES[int(rng.integers(len(FA_SHAPES)))]
        m = k * d
        c = int(rng.choice([3, 4])) if m <= 6 else 3
        if rng.random() < 0.3:
            spread = reference_spread(k, d)
        else:
            spread = [int(s) for s in rng.choice(m, size=d, replace=False)]
    if rng.random() < 0.6:
        logits = rng.integers(0, 4, size=(m, c)).astype(np.float64)
    else:
        logits = rng.normal(size=(m, c))
    # Push a random share of the models towards one class so that larger certificates
    # (and round-2 upsets for ROE) appear too.
    fav = int(rng.integers(c))
    share = rng.uniform(0.2, 1.0) if method in ("dpa", "dpa-roe") else rng.uniform(0.4, 1.0)
    boost = (rng.random(m) < share) * float(rng.choice([1.0, 2.0, 4.0]))
    logits[:, fav] += boost
    return logits, d, spread


def random_medium_case(rng: np.random.Generator, method: str):
    """A somewhat larger ensemble (C = 3) with certificates up to about 7.

    DPA: 8 <= M <= 15. FA: k*d in 12..20 with d in 2..4 and a random spread.
    """
    if method in ("dpa", "dpa-roe"):
        m, d, spread = int(rng.integers(8, 16)), 1, None
    else:
        k, d = ((6, 2), (8, 2), (10, 2), (5, 3), (6, 3), (4, 4), (5, 4))[int(rng.integers(7))]
        m = k * d
        spread = [int(s) for s in rng.choice(m, size=d, replace=False)]
    c = 3
    logits = rng.integers(0, 4, size=(m, c)).astype(np.float64)
    logits[:, int(rng.integers(c))] += 2.0 * (rng.random(m) < rng.uniform(0.3, 0.9))
    return logits, d, spread


def measure_tightness(method: str, certify_fn, *, n_cases: int = 60, seed: int = 0,
                      max_rows: int = DEFAULT_MAX_ROWS, generator=None) -> dict:
    """Check soundness and tightness of ``certify_fn`` on random tiny ensembles.

    ``certify_fn(logits (M, C), method, d, spread) -> (prediction, certificate)``;
    ``generator(rng, method)`` draws the ensembles (default :func:`random_tiny_case`).
    Returns a dict: ``checked`` (cases whose cert-budget search ran), ``unsound`` (list of
    counter-examples: an attack with <= certificate poisons changed the prediction),
    ``negative`` (cases with certificate < 0), ``tight_checked``, ``tight`` (an attack with
    certificate + 1 poisons exists) and ``tightness`` = tight / tight_checked; the same
    restricted to certificates >= 1 in ``tight_pos`` / ``tight_checked_pos`` = ``tightness_pos``.
    """
    rng = np.random.default_rng(seed)
    if generator is None:
        generator = random_tiny_case
    res = {"method": method, "cases": 0, "checked": 0, "unsound": [], "negative": [],
           "wrong_prediction": [], "tight_checked": 0, "tight": 0, "skipped": 0,
           "tight_checked_pos": 0, "tight_pos": 0,
           "certificates": []}
    for _ in range(n_cases):
        logits, d, spread = generator(rng, method)
        res["cases"] += 1
        pred, cert = certify_fn(logits, method, d, spread)
        pred, cert = int(pred), int(cert)
        res["certificates"].append(cert)
        if pred != plain_predict(logits, method):
            res["wrong_prediction"].append((logits, d, spread, pred))
        if cert < 0:
            res["negative"].append((logits, d, spread, cert))
            continue
        try:
            attack = find_attack(logits, method, cert, d=d, spread=spread, max_rows=max_rows)
        except TooExpensive:
            res["skipped"] += 1
            continue
        res["checked"] += 1
        if attack is not None:
            res["unsound"].append({"logits": logits, "d": d, "spread": spread,
                                   "certificate": cert, "attack": attack})
            continue
        try:
            tight = attack_succeeds(logits, method, cert + 1, d=d, spread=spread,
                                    max_rows=max_rows)
        except TooExpensive:
            continue
        res["tight_checked"] += 1
        res["tight"] += int(tight)
        if cert >= 1:
            res["tight_checked_pos"] += 1
            res["tight_pos"] += int(tight)
    res["tightness"] = res["tight"] / res["tight_checked"] if res["tight_checked"] else float("nan")
    res["tightness_pos"] = (res["tight_pos"] / res["tight_checked_pos"]
                            if res["tight_checked_pos"] else float("nan"))
    return res


def engine_certify_fn(logits, method, d, spread):
    """Adapter: ``runoff.certify`` on one (M, C) ensemble -> (prediction, certificate)."""
    import runoff

    kw = {"d": d, "spread": spread} if method in ("fa", "fa-roe") else {}
    res = runoff.certify(np.asarray(logits, dtype=np.float64)[None], method, **kw)
    return int(res.predictions[0]), int(res.certificates[0])


def tightness_report(certify_fn=None, *, n_cases: int = 150, seed: int = 0,
                     methods=METHODS, medium: bool = False) -> dict:
    """Soundness and tightness of a certifier on random tiny ensembles, per method.

    ``certify_fn`` defaults to the engine (``runoff.certify``). For benchmarks: returns
    ``{method: {"tightness": ..., "tight": ..., "tight_checked": ..., "unsound": n, ...}}``.
    ``medium=True`` uses :func:`random_medium_case` (larger ensembles, larger certificates).
    """
    generator = random_medium_case if medium else random_tiny_case
    if certify_fn is None:
        certify_fn = engine_certify_fn
    out = {}
    for i, method in enumerate(methods):
        r = measure_tightness(method, certify_fn, n_cases=n_cases, seed=seed + 1000 * i,
                              generator=generator)
        out[method] = {
            "cases": r["cases"], "checked": r["checked"], "skipped": r["skipped"],
            "unsound": len(r["unsound"]), "negative": len(r["negative"]),
            "wrong_prediction": len(r["wrong_prediction"]),
            "tight": r["tight"], "tight_checked": r["tight_checked"],
            "tightness": r["tightness"],
            "tight_pos": r["tight_pos"], "tight_checked_pos": r["tight_checked_pos"],
            "tightness_pos": r["tightness_pos"],
            "mean_certificate": float(np.mean(r["certificates"])) if r["certificates"] else float("nan"),
        }
    return out
