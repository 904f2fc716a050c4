"""What guarantee a user actually gets: per activation, per image, per training run.

The paper states (epsilon, delta)-DP **per activation coordinate** (Sec. IV) and an adaptive-composition
bound over the p x q positions of a kernel.  A released image, however, is a whole H x W x C volume of
coordinates, and it is released again every epoch with fresh noise.  This module turns the per-coordinate
noise into those guarantees:

* per image: each coordinate changes by at most S_f between two images, so the volume has L2 sensitivity
  S_f sqrt(d) (d = H W C) and the release is one Gaussian mechanism with noise multiplier
  z = (S_f sigma) / (S_f sqrt(d)) = sigma / sqrt(d);
* per training run: E releases of the same image compose; for Gaussians exactly to multiplier z / sqrt(E).

Epsilons are computed three ways: exactly (analytic Gaussian, Balle & Wang 2018, from
:mod:`dpact_tf.privacy`), and with dp-accounting's PLD and RDP accountants (the library TF Privacy uses),
which bound it from above.  Pure NumPy/SciPy + dp-accounting, no TensorFlow.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import dp_accounting
from dp_accounting import pld, rdp

from dpact_tf import privacy

__all__ = ["paper_composition_bound", "image_noise_multiplier", "image_epsilon", "accounting_table", "RDP_ORDERS",
           "PLD_MAX_EPSILON"]

# Above this epsilon the PLD accountant is not run (reported as NaN); exact and RDP still are.
PLD_MAX_EPSILON = 1e6

# Orders near 1 matter when the per-image noise multiplier is tiny (the optimal order tends to 1).
RDP_ORDERS: List[float] = [1 + x for x in (1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 0.5)] + \
    [2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512]


def paper_composition_bound(epsilon: float, delta: float, *, positions: int = 9,
                            delta_prime: float = 1e-5) -> Dict[str, float]:
    """The paper's adaptive-composition bound over ``positions`` = p q releases (Dwork & Roth, Thm 3.20):

    epsilon' = epsilon sqrt(2 pq ln(1/delta')) + pq epsilon (e^epsilon - 1),   delta'' = pq delta + delta'.
    """
    privacy._check_epsilon(epsilon)
    privacy._check_delta(delta)
    privacy._check_delta(delta_prime)
    if int(positions) != positions or positions < 1:
        raise ValueError(f"positions must be a positive integer (got {positions})")
    k = positions
    eps = epsilon * math.sqrt(2 * k * math.log(1 / delta_prime)) + k * epsilon * math.expm1(epsilon)
    return {"epsilon": eps, "delta": k * delta + delta_prime}


def image_noise_multiplier(epsilon: float, delta: float, activation_shape: Sequence[int], *,
                           method: str = "classic") -> float:
    """Noise multiplier z = sigma / sqrt(d) of one image's release (the per-coordinate S_f cancels)."""
    d = int(math.prod(activation_shape))
    if d < 1:
        raise ValueError(f"activation_shape must have positive size (got {activation_shape})")
    return privacy.gaussian_sigma(epsilon, delta, method=method) / math.sqrt(d)


def image_epsilon(noise_multiplier: float, delta: float, *, releases: int = 1, accountant: str = "exact") -> float:
    """epsilon at ``delta`` of ``releases`` Gaussian releases with ``noise_multiplier`` (sensitivity 1).

    ``accountant``: "exact" (analytic Gaussian of the composed multiplier z / sqrt(releases)), "pld" or "rdp"
    (dp-accounting; upper bounds: exact <= pld <= rdp up to PLD's discretization). PLD returns NaN above
    :data:`PLD_MAX_EPSILON`, where its discretization breaks down.
    """
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be > 0 (got {noise_multiplier})")
    if int(releases) != releases or releases < 1:
        raise ValueError(f"releases must be a positive integer (got {releases})")
    privacy._check_delta(delta)
    exact = privacy.epsilon_for_sigma(noise_multiplier / math.sqrt(releases), delta, method="analytic")
    if accountant == "exact":
        return exact
    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if accountant == "rdp":
        acc = rdp.RdpAccountant(orders=RDP_ORDERS)
    elif accountant == "pld":
        if exact > PLD_MAX_EPSILON:
            return math.nan  # a discretized PLD of such a loss needs an overflowing grid step or ~1e7 points
        # discretize relative to the size of the answer, so that huge epsilons stay cheap to compute
        acc = pld.PLDAccountant(value_discretization_interval=max(1e-4, exact / 2e4))
    else:
        raise ValueError(f"accountant must be 'exact', 'pld' or 'rdp' (got {accountant!r})")
    acc.compose(event, int(releases))
    return float(acc.get_epsilon(delta))


def accounting_table(epsilons: Sequence[float], *, delta: float = 1e-5, activation_shape: Sequence[int],
                     epochs: int, method: str = "classic", positions: int = 9,
                     delta_prime: float = 1e-5) -> List[Dict[str, Optional[float]]]:
    """One row per per-coordinate epsilon: the paper's numbers next to per-image and per-run guarantees."""
    rows = []
    for eps in epsilons:
        if eps is None:
            continue
        z = image_noise_multiplier(eps, delta, activation_shape, method=method)
        comp = paper_composition_bound(eps, delta, positions=positions, delta_prime=delta_prime)
        row = {"epsilon_per_coordinate": float(eps), "delta": delta,
               "noise_std": privacy.noise_std(eps, delta, method=method),
               "paper_composition_epsilon": comp["epsilon"], "paper_composition_delta": comp["delta"],
               "image_noise_multiplier": z, "activation_coordinates": int(math.prod(activation_shape)),
               "epochs": int(epochs)}
        for releases, tag in ((1, "image"), (int(epochs), "run")):
            for acc in ("exact", "pld", "rdp"):
                row[f"{tag}_epsilon_{acc}"] = image_epsilon(z, delta, releases=releases, accountant=acc)
        rows.append(row)
    return rows
