"""Soundness (and tightness) of the certificates against an exhaustive adversary.

For random tiny ensembles the brute-force adversary (tests/adversary.py) tries *every*
poisoning with a given number of poisons (any strict ranking for every affected model) and
reports whether the prediction can change. A certificate t is sound iff no attack with t
poisons succeeds; it is tight iff an attack with t + 1 poisons succeeds.

A certifier that always answers 0 is sound, so soundness alone proves little: every check
also requires a floor on the share of certificates >= 1 and on tightness (see
``MIN_POSITIVE_SHARE`` and below), and ``test_check_rejects_weakened_certifiers`` shows that
the check rejects an always-0 and a certificate-minus-one certifier.

Run with ``-s`` to see the tightness rates.
"""

from __future__ import annotations

import numpy as np
import pytest
from adversary import (
    METHODS,
    TooExpensive,
    apply_attack,
    attack_succeeds,
    engine_certify_fn,
    find_attack,
    measure_tightness,
    plain_predict,
    poison_units,
    random_medium_case,
    random_tiny_case,
)
from reference_certs import bucket_members, cert_roe_point, predict, reference_point

N_CASES = 400  # tiny ensembles, per method and certifier
N_MEDIUM = 150  # medium ensembles (engine only), per method


def reference_certify_fn(logits, method, d, spread):
    return reference_point(logits, method, d=d, spread=spread)


def _format_failures(res, key):
    lines = []
    for f in res[key][:3]:
        if isinstance(f, dict):
            lines.append(
                f"logits={np.asarray(f['logits']).tolist()} d={f['d']} spread={f['spread']} "
                f"certificate={f['certificate']} attack={f['attack']}"
            )
        else:
            lines.append(repr(f))
    return "\n".join(lines)


def _report(name, method, res):
    print(
        f"\n[{name}] {method}: cases={res['cases']} checked={res['checked']} "
        f"skipped={res['skipped']} tight={res['tight']}/{res['tight_checked']} "
        f"({res['tightness']:.3f}); with certificate>=1: "
        f"{res['tight_pos']}/{res['tight_checked_pos']} ({res['tightness_pos']:.3f}); "
        f"mean certificate={np.mean(res['certificates']):.2f}"
    )


# Quality floors for a certifier on the random ensembles below (fixed seeds, so the checks
# are deterministic). Measured on the engine and the reference (400 tiny cases per method,
# seeds 100 and 200; 150 medium cases, seed 250): certificate >= 1 in 31-56% of tiny cases
# and 46-79% of medium ones; the adversary breaks certificate + 1 in 99.5-100% of the cases
# and in 100% of those with certificate >= 1. A certifier that always answers 0 has no
# certificate >= 1 and is tight in only 43-61% of the cases; one that answers certificate - 1
# (floored at 0) is tight in none of its cases with certificate >= 1.
MIN_POSITIVE_SHARE = 0.2  # share of cases with certificate >= 1
MIN_TIGHTNESS = 0.9  # share of cases where certificate + 1 poisons do change the prediction
MIN_TIGHTNESS_POS = 0.9  # the same among cases with certificate >= 1


def _quality_problems(res, *, min_positive=MIN_POSITIVE_SHARE, min_tight=MIN_TIGHTNESS,
                      min_tight_pos=MIN_TIGHTNESS_POS):
    """Why the certificates are too weak to be useful (empty list: they are not)."""
    problems = []
    certs = np.asarray(res["certificates"])
    positive = float(np.mean(certs >= 1)) if certs.size else 0.0
    if positive < min_positive:
        problems.append(f"share of certificates >= 1 is {positive:.3f} < {min_positive}")
    if res["tight_checked"] < 0.9 * res["checked"]:
        problems.append(f"tightness measured on only {res['tight_checked']} of {res['checked']} cases")
    tight = res["tight"] / res["tight_checked"] if res["tight_checked"] else 0.0
    if tight < min_tight:
        problems.append(f"tightness {res['tight']}/{res['tight_checked']} = {tight:.3f} < {min_tight}")
    tight_pos = res["tight_pos"] / res["tight_checked_pos"] if res["tight_checked_pos"] else 0.0
    if tight_pos < min_tight_pos:
        problems.append(f"tightness among certificates >= 1 {res['tight_pos']}/"
                        f"{res['tight_checked_pos']} = {tight_pos:.3f} < {min_tight_pos}")
    return problems


def _check(res, **floors):
    """Sound, non-negative, right predictions, and not uselessly small (see the floors above)."""
    assert not res["unsound"], "UNSOUND certificate (critical):\n" + _format_failures(res, "unsound")
    assert not res["negative"], "negative certificate:\n" + _format_failures(res, "negative")
    assert not res["wrong_prediction"], "wrong prediction:\n" + _format_failures(res, "wrong_prediction")
    assert res["checked"] >= 0.9 * res["cases"]
    problems = _quality_problems(res, **floors)
    assert not problems, f"{res['method']}: certificates too weak: " + "; ".join(problems)


# --------------------------------------------------------------------------------------
# The adversary itself
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_adversary_predicts_like_reference(method):
    rng = np.random.default_rng(7)
    for _ in range(300):
        logits, _, _ = random_tiny_case(rng, method)
        assert plain_predict(logits, method) == predict(logits, method)


@pytest.mark.parametrize("method", METHODS)
def test_adversary_attacks_are_real(method):
    """Every attack returned, materialised as logits, really changes the prediction."""
    rng = np.random.default_rng(8)
    n_found = 0
    for _ in range(80):
        logits, d, spread = random_tiny_case(rng, method)
        budget = int(rng.integers(1, 3))
        try:
            attack = find_attack(logits, method, budget, d=d, spread=spread)
        except TooExpensive:
            continue
        if attack is None:
            continue
        n_found += 1
        assert len(attack["units"]) <= budget
        # The affected models are exactly those the poisoned units reach.
        m = logits.shape[0]
        if method in ("fa", "fa-roe"):
            reach = {j for b in attack["units"] for j in bucket_members(b, spread, m)}
        else:
            reach = set(attack["units"])
        assert reach == set(attack["affected"])
        poisoned = apply_attack(logits, attack, method)
        # Only models reachable from the poisoned units changed.
        changed = set(np.nonzero(np.any(poisoned != logits, axis=1))[0].tolist())
        assert changed <= set(attack["affected"])
        assert predict(poisoned, method) != predict(logits, method)
    assert n_found > 20


def test_adversary_is_exact_for_dpa_plurality():
    """The DPA plurality certificate is exact, so the adversary must find every (cert+1) attack."""
    res = measure_tightness("dpa", reference_certify_fn, n_cases=150, seed=11)
    _check(res)
    assert res["tight"] == res["tight_checked"] == res["checked"]


@pytest.mark.parametrize("method", METHODS)
def test_adversary_monotone_and_complete(method):
    """More poisons never hurt the attacker, and poisoning every unit always succeeds.

    With every unit poisoned, every model can be given any ranking, so any class can be made
    to win: an adversary that misses behaviours or units would fail here.
    """
    rng = np.random.default_rng(9)
    n_mono = n_full = 0
    for _ in range(40):
        logits, d, spread = random_tiny_case(rng, method)
        n_units = len(poison_units(method, logits.shape[0], d, spread))
        try:
            ok = [attack_succeeds(logits, method, b, d=d, spread=spread) for b in (1, 2)]
        except TooExpensive:
            ok = None
        if ok is not None:
            n_mono += 1
            assert ok[0] <= ok[1]
        try:
            full = find_attack(logits, method, n_units, d=d, spread=spread, max_rows=500_000)
        except TooExpensive:
            continue
        n_full += 1
        assert full is not None
        assert sorted(full["affected"]) == list(range(logits.shape[0]))
    assert n_mono >= 30 and n_full >= 20


# --------------------------------------------------------------------------------------
# Soundness of the reference and of the engine
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_reference_certificates_sound(method):
    res = measure_tightness(method, reference_certify_fn, n_cases=N_CASES, seed=100)
    _report("reference", method, res)
    _check(res)


@pytest.mark.parametrize("method", METHODS)
def test_engine_certificates_sound(method):
    res = measure_tightness(method, engine_certify_fn, n_cases=N_CASES, seed=200)
    _report("engine", method, res)
    _check(res)


@pytest.mark.parametrize("method", METHODS)
def test_engine_certificates_sound_medium(method):
    res = measure_tightness(method, engine_certify_fn, n_cases=N_MEDIUM, seed=250,
                            generator=random_medium_case)
    _report("engine, medium", method, res)
    _check(res)


def _zero_certifier(logits, method, d, spread):
    """Sound and useless: the engine's prediction with certificate 0."""
    pred, _ = engine_certify_fn(logits, method, d, spread)
    return pred, 0


def _minus_one_certifier(logits, method, d, spread):
    """Sound and loose: the engine's certificate minus one (floored at 0)."""
    pred, cert = engine_certify_fn(logits, method, d, spread)
    return pred, max(cert - 1, 0)


@pytest.mark.parametrize("method", METHODS)
def test_check_rejects_weakened_certifiers(method):
    """The check that accepts the engine rejects a sound certifier that answers too little."""
    cases = {"n_cases": 150, "seed": 400}
    _check(measure_tightness(method, engine_certify_fn, **cases))

    zero = measure_tightness(method, _zero_certifier, **cases)
    assert not zero["unsound"] and not zero["negative"]  # passes every soundness test ...
    with pytest.raises(AssertionError, match="share of certificates >= 1") as info:
        _check(zero)  # ... but not the quality floors
    assert "tightness" in str(info.value)

    minus = measure_tightness(method, _minus_one_certifier, **cases)
    assert not minus["unsound"] and not minus["negative"]
    with pytest.raises(AssertionError, match="tightness among certificates >= 1"):
        _check(minus)


def test_poison_units_follow_the_spread():
    assert poison_units("fa", 6, 2, [0, 4]) == [(0, 4), (1, 5), (0, 2), (1, 3), (2, 4), (3, 5)]
    assert poison_units("dpa-roe", 3) == [(0,), (1,), (2,)]


@pytest.mark.parametrize("method", METHODS)
def test_engine_certificates_never_negative(method):
    rng = np.random.default_rng(300)
    for _ in range(200):
        logits, d, spread = random_tiny_case(rng, method)
        _, cert = engine_certify_fn(logits, method, d, spread)
        assert cert >= 0


# --------------------------------------------------------------------------------------
# FA+ROE 2v1: the paper's clipped combined gap over-claims
# --------------------------------------------------------------------------------------


def clipped_gap_counterexample():
    """An FA+ROE ensemble where gap+ = max(0, gap1) + max(0, gap2) (paper, Lemma 3.8) is unsound.

    k = 10, d = 3, spread {0, 10, 20}: bucket b feeds models b, b+10, b+20 (mod 30), so every
    bucket holds exactly one of the models 0..9. Classes 0 (pred), 1, 2, rankings:
    models 0..9 vote 0 (0 > 2 > 1), models 10..16 vote 2 (2 > 0 > 1), models 17..29 vote 1
    (1 > 2 > 0). Round 1: N = (10, 13, 7), finalists 1 and 0; round 2: 17 vs 13 -> 0 wins.
    For the pair (c1, c2) = (1, 2): gap(0, 1) = -2 and gap(0, 2) = 4. Each bucket's
    pw+ = 3 * (#votes for 0) = 3 < 4, so the clipped gap+ = 0 + 4 gives Certv2+ = 1, while
    the true gap1 + gap2 = 2 gives 0. Poisoning bucket 7 (models 7, 17, 27: one 0-voter and
    two 1-voters) and making all three vote 2 gives N = (9, 11, 10): classes 1 and 2 both beat
    0, which is eliminated in round 1 -- with a single poison.
    """
    m, n_classes = 30, 3
    rankings = {0: (0, 2, 1), 1: (1, 2, 0), 2: (2, 0, 1)}
    votes = [0] * 10 + [2] * 7 + [1] * 13
    logits = np.zeros((m, n_classes))
    for j, v in enumerate(votes):
        for pos, c in enumerate(rankings[v]):
            logits[j, c] = n_classes - pos
    return logits, 3, [0, 10, 20]


def test_clipped_combined_gap_is_unsound_unclipped_is_sound():
    logits, d, spread = clipped_gap_counterexample()
    pred_c, cert_clipped = reference_point(logits, "fa-roe", d=d, spread=spread,
                                           clip_combined_gap=True)
    pred_u, cert_unclipped = reference_point(logits, "fa-roe", d=d, spread=spread)
    assert pred_c == pred_u == 0
    assert cert_clipped == 1 and cert_unclipped == 0
    # Only the round-1 term differs: CertR2 = 1 either way.
    _, _, r1_c, r2_c = cert_roe_point(logits, "fa-roe", spread, True)
    _, _, r1_u, r2_u = cert_roe_point(logits, "fa-roe", spread, False)
    assert (r1_c, r2_c, r1_u, r2_u) == (1, 1, 0, 1)
    # The clipped certificate claims robustness to 1 poison; one poisoned bucket suffices.
    attack = find_attack(logits, "fa-roe", cert_clipped, d=d, spread=spread)
    assert attack is not None
    poisoned = apply_attack(logits, attack, "fa-roe")
    assert predict(poisoned, "fa-roe") != 0
    # The explicit attack from the docstring.
    poisoned = logits.copy()
    for j in (7, 17, 27):
        poisoned[j] = [2.0, 1.0, 3.0]  # ranking 2 > 0 > 1
    assert predict(poisoned, "fa-roe") != 0
    # The unclipped certificate (0) is sound, trivially, and tight.
    assert not attack_succeeds(logits, "fa-roe", cert_unclipped, d=d, spread=spread)


def test_engine_does_not_use_clipped_combined_gap():
    logits, d, spread = clipped_gap_counterexample()
    pred, cert = engine_certify_fn(logits, "fa-roe", d, spread)
    assert pred == 0
    assert cert == 0
    assert not attack_succeeds(logits, "fa-roe", cert, d=d, spread=spread)


def test_clipping_never_lowers_the_certificate():
    """Sanity of the keyword: clipping can only enlarge gap+ and hence the certificate."""
    rng = np.random.default_rng(12)
    for _ in range(300):
        logits, d, spread = random_tiny_case(rng, "fa-roe")
        _, a = reference_point(logits, "fa-roe", d=d, spread=spread, clip_combined_gap=True)
        _, b = reference_point(logits, "fa-roe", d=d, spread=spread)
        assert a >= b
