"""Exact checks of the attack statistics (bounds, thresholds) and statistical checks of their coverage."""
import math

import numpy as np
import pytest

from dpact_tf import audit


def test_clopper_pearson_hand_values():
    # 0 of n: upper = 1 - alpha^(1/n); n of n: lower = alpha^(1/n) (the beta quantiles in closed form)
    lo, hi = audit.clopper_pearson(0, 100, confidence=0.975)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-9)
    lo, hi = audit.clopper_pearson(100, 100, confidence=0.975)
    assert lo == pytest.approx(0.025 ** (1 / 100), rel=1e-9) and hi == 1.0
    with pytest.raises(ValueError, match="successes"):
        audit.clopper_pearson(3, 2)


def test_clopper_pearson_covers_the_rate():
    # 2,000 experiments of 50 trials at p = 0.3: the 97.5 % lower bound exceeds p in at most ~2.5 % of them
    # (the exact bound is conservative); binomial sd of the miss count at 2.5 %: sqrt(2000 * 0.025 * 0.975) = 7
    rng = np.random.default_rng(0)
    misses = sum(audit.clopper_pearson(int(k), 50)[0] > 0.3 for k in rng.binomial(50, 0.3, 2000))
    assert misses <= 0.025 * 2000 + 3 * 7


def test_epsilon_lower_bound_hand_values():
    # TPR 0.9 at FPR 0.1: log(0.9 / 0.1) = log 9 both ways; nothing excluded at TPR = FPR
    assert audit.epsilon_lower_bound(0.9, 0.1, delta=0.0) == pytest.approx(math.log(9))
    assert audit.epsilon_lower_bound(0.5, 0.5, delta=0.0) == 0.0
    assert audit.epsilon_lower_bound(0.9, 0.1, delta=0.05) == pytest.approx(math.log(0.85 / 0.1))


def test_membership_audit_separated_and_blind_scores():
    rng = np.random.default_rng(1)
    sep = audit.membership_audit(rng.normal(10, 1, 200), rng.normal(0, 1, 200), delta=0.0)
    # perfect separation on 100 held-out per class: TPR >= 0.025^(1/100), FPR <= 1 - that
    bound = 0.025 ** (1 / 100)
    assert sep.tpr == 1.0 and sep.fpr == 0.0 and sep.heldout == 100 and sep.calibration == 100
    assert sep.tpr_lower == pytest.approx(bound) and sep.fpr_upper == pytest.approx(1 - bound)
    assert sep.epsilon_lower == pytest.approx(math.log(bound / (1 - bound))) and sep.auc == 1.0
    blind = audit.membership_audit(rng.normal(0, 1, 200), rng.normal(0, 1, 200))
    assert blind.advantage_lower < 0 and blind.epsilon_lower == 0.0


def test_membership_audit_bound_is_valid_when_nothing_leaks():
    # Identical score distributions: the 95 % bound on the advantage must be <= 0 in >= 95 % of the trials.
    # 400 trials: the count above 0 is binomial with p <= 0.05 (sd 4.4); allow 3 sd.
    rng = np.random.default_rng(2)
    above = sum(audit.membership_audit(rng.normal(0, 1, 60), rng.normal(0, 1, 60), seed=s).advantage_lower > 0
                for s in range(400))
    assert above <= 0.05 * 400 + 3 * 4.4


def test_bootstrap_interval_covers_the_mean():
    rng = np.random.default_rng(3)
    x = rng.normal(0.4, 0.1, 128)
    lo, hi = audit.bootstrap_interval(x)
    # ~ mean +- 1.96 sd / sqrt(n) = +- 0.0173
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * x.std() / math.sqrt(128), rel=0.15)
    assert audit.bootstrap_interval(x, seed=1) != audit.bootstrap_interval(x, seed=2)
    with pytest.raises(ValueError, match="2 values"):
        audit.bootstrap_interval([1.0])
