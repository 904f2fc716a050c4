"""Confidence statements about an attack's measured success: what a referee needs before a verdict.

* :func:`bootstrap_interval` -- a percentile bootstrap interval of a mean over faces (reconstruction quality),
  and of a paired difference (an attack against a baseline on the same faces);
* :func:`clopper_pearson` -- exact binomial bounds on a rate measured on held-out trials;
* :func:`membership_audit` -- a membership test's threshold chosen on a calibration part of the candidates and
  its true- and false-positive rates bounded on the held-out part (Clopper--Pearson), giving a valid lower bound on
  the attacker's advantage and on the epsilon of any (epsilon, delta)-DP mechanism that allows it
  (TPR <= e^eps FPR + delta and TNR <= e^eps FNR + delta; Kairouz et al. 2015, Jagielski et al. 2020).  Choosing
  the threshold on data the bounds do not use is what makes the bound valid: maximizing over thresholds on the
  same trials would overstate it.

Pure NumPy/SciPy.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import numpy as np

__all__ = ["bootstrap_interval", "clopper_pearson", "MembershipAudit", "membership_audit", "epsilon_lower_bound",
           "largest_epsilon_lower", "roc_auc"]


def bootstrap_interval(values, *, confidence: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per face; seeded)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 values (got {x.size})")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1) (got {confidence})")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(int(resamples), x.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def clopper_pearson(successes: int, trials: int, *, confidence: float = 0.975) -> Tuple[float, float]:
    """One-sided exact bounds (lower, upper) on a binomial rate, each holding with probability ``confidence``."""
    from scipy.stats import beta

    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1 (got {successes} of {trials})")
    alpha = 1 - confidence
    lo = 0.0 if successes == 0 else float(beta.ppf(alpha, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - alpha, successes + 1, trials - successes))
    return lo, hi


def epsilon_lower_bound(tpr_lo: float, fpr_hi: float, *, delta: float) -> float:
    """The smallest epsilon of an (epsilon, delta)-DP mechanism under which a test can have TPR >= ``tpr_lo`` at
    FPR <= ``fpr_hi`` (both directions of the hypothesis test; 0 when nothing is excluded)."""
    bounds = [0.0]
    if tpr_lo - delta > 0 and fpr_hi > 0:
        bounds.append(math.log((tpr_lo - delta) / fpr_hi))
    if 1 - fpr_hi - delta > 0 and 1 - tpr_lo > 0:
        bounds.append(math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    return max(bounds)


def largest_epsilon_lower(heldout: int, *, confidence: float = 0.95, delta: float = 1e-5) -> float:
    """The largest epsilon lower bound :func:`membership_audit` can give with ``heldout`` candidates per class
    (a test that is right on every one of them): the bound's own ceiling, set by the sample size."""
    tpr_lo, _ = clopper_pearson(heldout, heldout, confidence=(1 + confidence) / 2)
    return epsilon_lower_bound(tpr_lo, 1 - tpr_lo, delta=delta)


def roc_auc(members, nonmembers) -> float:
    """P(score of a member > score of a non-member) + half the ties (the ROC curve's area)."""
    m, n = np.asarray(members, np.float64), np.asarray(nonmembers, np.float64)
    greater = (m[:, None] > n[None, :]).mean()
    ties = (m[:, None] == n[None, :]).mean()
    return float(greater + 0.5 * ties)


@dataclasses.dataclass(frozen=True)
class MembershipAudit:
    """A membership test calibrated on one part of the candidates and measured on the other."""

    threshold: float          # "member" when the score >= threshold (chosen on the calibration part)
    calibration: int          # candidates per class used to choose the threshold
    heldout: int              # candidates per class the rates below are measured on
    tpr: float                # held-out true-positive rate (members called members)
    fpr: float                # held-out false-positive rate (non-members called members)
    tpr_lower: float          # Clopper-Pearson lower bound on the TPR
    fpr_upper: float          # Clopper-Pearson upper bound on the FPR
    advantage_lower: float    # tpr_lower - fpr_upper: a lower bound on the attacker's advantage (may be < 0)
    epsilon_lower: float      # the epsilon any (epsilon, delta)-DP mechanism must have to allow the bounds above
    auc: float                # held-out ROC AUC (descriptive; no threshold chosen)
    confidence: float         # the joint confidence of the two bounds (each holds with (1 + confidence) / 2)
    delta: float              # the delta of the epsilon lower bound

    def to_dict(self):
        return dataclasses.asdict(self)


def membership_audit(member_scores, nonmember_scores, *, delta: float = 1e-5, confidence: float = 0.95,
                     calibration_fraction: float = 0.5, seed: int = 0) -> MembershipAudit:
    """Split each class at random into calibration and held-out parts; on the calibration part choose the threshold
    of largest TPR - FPR (higher score = member); on the held-out part bound TPR from below and FPR from above,
    each at (1 + confidence) / 2, so both hold together with probability >= ``confidence``."""
    m, n = np.asarray(member_scores, np.float64), np.asarray(nonmember_scores, np.float64)
    if not 0 < calibration_fraction < 1:
        raise ValueError(f"calibration_fraction must be in (0, 1) (got {calibration_fraction})")
    if min(m.size, n.size) < 4:
        raise ValueError(f"need at least 4 candidates per class (got {m.size} members, {n.size} non-members)")
    if np.isnan(m).any() or np.isnan(n).any():
        raise ValueError("scores must not be NaN (use -inf for an impossible release)")
    rng = np.random.default_rng(seed)
    m, n = m[rng.permutation(m.size)], n[rng.permutation(n.size)]
    k_m, k_n = max(1, int(m.size * calibration_fraction)), max(1, int(n.size * calibration_fraction))
    cal_m, held_m, cal_n, held_n = m[:k_m], m[k_m:], n[:k_n], n[k_n:]
    candidates = np.unique(np.concatenate([cal_m, cal_n, [np.inf]]))
    gains = np.array([(cal_m >= t).mean() - (cal_n >= t).mean() for t in candidates])
    best = np.flatnonzero(gains == gains.max())
    # every threshold in (candidates[first - 1], candidates[last]] is as good on the calibration part: take the middle
    lower = candidates[best[0] - 1] if best[0] > 0 else -np.inf
    upper = candidates[best[-1]]
    threshold = float((lower + upper) / 2 if np.isfinite(lower) and np.isfinite(upper) else
                      (upper if np.isfinite(upper) else candidates[best[0]]))
    tp, fp = int((held_m >= threshold).sum()), int((held_n >= threshold).sum())
    one_sided = (1 + confidence) / 2
    tpr_lo, _ = clopper_pearson(tp, held_m.size, confidence=one_sided)
    _, fpr_hi = clopper_pearson(fp, held_n.size, confidence=one_sided)
    return MembershipAudit(threshold=threshold, calibration=int(min(k_m, k_n)), heldout=int(min(held_m.size, held_n.size)),
                           tpr=tp / held_m.size, fpr=fp / held_n.size, tpr_lower=tpr_lo, fpr_upper=fpr_hi,
                           advantage_lower=tpr_lo - fpr_hi,
                           epsilon_lower=epsilon_lower_bound(tpr_lo, fpr_hi, delta=delta),
                           auc=roc_auc(held_m, held_n), confidence=float(confidence), delta=float(delta))
