"""What guarantee a user actually gets: per activation, per image, per training run.

The paper states (epsilon, delta)-DP **per activation coordinate** (Sec. IV) and an adaptive-composition
bound over the p x q positions of a kernel.  A released image, however, is a whole H x W x C volume of
coordinates, and it is released again with fresh noise.  This module turns the per-coordinate noise into those
guarantees:

* **per image**: the L2 sensitivity of the volume is Delta_2 = sqrt(H W Delta_pixel^2), with Delta_pixel^2 the
  worst-case change of one pixel's normalized channel vector (:mod:`dpact_tf.sensitivity`: proven upper bound,
  and the lower bound an explicit pair of images attains); pixels are disjoint coordinates.  The paper's
  implicit bound S_f sqrt(H W C) is reported beside it.  With per-coordinate noise std s the release is one
  Gaussian mechanism with noise multiplier z = s / Delta_2;
* **composition** (:func:`release_count`): with a frozen, public conv1 (fine-tuning), the releases that
  depend on an image are its own -- one per epoch for a training image, one per evaluation for a test image.
  When conv1 is trained on the raw images (training from scratch), the client's weights after an image's first
  step depend on that image, so every later release *of every image* depends on it too (each still with
  sensitivity Delta_2: the bound holds whatever the weights): the guarantee composes over all of them.
  Gaussians compose exactly, to multiplier z / sqrt(k) for k releases.

The labels travel in the clear with every training release (:class:`dpact_tf.split.ActivationMessage`): no
epsilon here covers them.

Epsilons are computed three ways: exactly (analytic Gaussian, Balle & Wang 2018, from
:mod:`dpact_tf.privacy`), and with dp-accounting's PLD and RDP accountants (the library TF Privacy uses),
which bound it from above.  PLD is not run above :data:`PLD_MAX_EPSILON` (``None``, with the reason in
:data:`PLD_SKIPPED`).  Pure NumPy/SciPy + dp-accounting, no TensorFlow.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import dp_accounting
from dp_accounting import pld, rdp

from dpact_tf import grid, privacy, sensitivity

__all__ = ["paper_composition_bound", "composition_readings", "image_sensitivities", "image_noise_multiplier", "image_epsilon",
           "release_count", "accounting_table", "RDP_ORDERS", "PLD_MAX_EPSILON", "PLD_SKIPPED", "BOUNDS"]

# Above this epsilon the PLD accountant is not run (reported as None); exact and RDP still are.
PLD_MAX_EPSILON = 1e6
PLD_SKIPPED = (f"not computed: the exact epsilon exceeds {PLD_MAX_EPSILON:.0e}, where a discretized PLD "
               "needs an overflowing grid step or ~1e7 points")

# Which per-image sensitivity: the proven upper bound (the guarantee), the attained lower bound (no analysis
# of this mechanism can give less), or the paper's implicit S_f sqrt(d).
BOUNDS = ("upper", "lower", "paper")

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


def composition_readings(activation_shape: Sequence[int], *, kernel: int = 3) -> Dict[str, int]:
    """The number of releases p q that the paper's composition bound composes over, under three readings.

    The paper names p, q "the dimensions of the activations each kernel produces" and uses l for the kernel
    size, so its text supports ``"map"``: the H x W positions of the activation map.  ``"kernel"`` is the 3 x 3
    positions one kernel of the next layer sees, and ``"kernel_inputs"`` the 3 x 3 x C coordinates it reads.
    """
    h, w, c = (int(n) for n in activation_shape)
    return {"map": h * w, "kernel": kernel * kernel, "kernel_inputs": kernel * kernel * c}


def image_sensitivities(activation_shape: Sequence[int]) -> Dict[str, float]:
    """Per-image L2 sensitivity of an H x W x C activation: ``{"upper", "lower", "paper"}`` (paper LRN constants)."""
    if len(activation_shape) != 3 or any(int(n) != n or n < 1 for n in activation_shape):
        raise ValueError(f"activation_shape must be (height, width, channels) of positive integers "
                         f"(got {activation_shape})")
    h, w, c = (int(n) for n in activation_shape)
    pix = sensitivity.pixel_sensitivity(c)
    return {"upper": sensitivity.image_sensitivity(pix.upper_sq, h, w),
            "lower": sensitivity.image_sensitivity(pix.lower_sq, h, w),
            "paper": privacy.PAPER_SENSITIVITY * math.sqrt(h * w * c)}


def image_noise_multiplier(epsilon: float, delta: float, activation_shape: Sequence[int], *,
                           method: str = "classic", bound: str = "upper", grid_rounding: bool = False) -> float:
    """Noise multiplier z = (S_f sigma) / Delta_2 of one image's release with per-coordinate (epsilon, delta).

    ``bound`` picks Delta_2 (see :data:`BOUNDS`); ``"paper"`` gives the old sigma / sqrt(H W C).
    ``grid_rounding=True`` adds the grid release's worst case to Delta_2: its dithered rounding (coupled across
    the two images) moves each of the H W C coordinates by at most one more grid step g, so
    Delta_2 + g sqrt(H W C) (:mod:`dpact_tf.grid`; what a budget that must hold for the release as it runs uses).
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS} (got {bound!r})")
    std = privacy.noise_std(epsilon, delta, method=method)
    sens = image_sensitivities(activation_shape)[bound]
    if grid_rounding:
        sens += grid.grid_spec(epsilon, delta, method=method).step * math.sqrt(math.prod(activation_shape))
    return std / sens


def release_count(*, train_conv1: bool, n_train: int, n_test: int, epochs: int, evaluations_per_epoch: int = 1,
                  batch_size: int = 1) -> Dict[str, int]:
    """How many releases one image's guarantee composes over, in the worst case, for a run of the protocol.

    A run makes ``epochs`` passes over the ``n_train`` training images (one release each, in batches of
    ``batch_size``) and ``epochs * evaluations_per_epoch`` evaluations, each releasing the ``n_test`` test
    images once.  Returns ``train_image`` / ``test_image``: the releases the guarantee of one training / test
    image composes over, ``per_image`` their maximum, and ``total`` all releases of the run.

    * ``train_conv1=False`` (fine-tuning, conv1 frozen and public): an image's releases are its own only:
      ``epochs`` for a training image, ``epochs * evaluations_per_epoch`` for a test image.
    * ``train_conv1=True`` (from scratch): the client's weights after a training image's first step depend on
      it, so the worst-case training image (in the first batch) composes over its own first release and every
      release after that first step: ``total - batch_size + 1``.  A test image never updates the weights: its
      count is its own evaluations.
    """
    for name, v in (("n_train", n_train), ("n_test", n_test), ("epochs", epochs),
                    ("evaluations_per_epoch", evaluations_per_epoch), ("batch_size", batch_size)):
        if int(v) != v or v < (1 if name in ("n_train", "epochs", "batch_size") else 0):
            raise ValueError(f"{name} must be a {'positive' if name in ('n_train', 'epochs', 'batch_size') else 'non-negative'} "
                             f"integer (got {v})")
    evaluations = int(epochs) * int(evaluations_per_epoch)
    total = int(epochs) * int(n_train) + evaluations * int(n_test)
    test_image = evaluations if n_test else 0
    train_image = total - min(int(batch_size), int(n_train)) + 1 if train_conv1 else int(epochs)
    return {"train_image": train_image, "test_image": test_image, "per_image": max(train_image, test_image),
            "total": total, "evaluations": evaluations}


def image_epsilon(noise_multiplier: float, delta: float, *, releases: int = 1,
                  accountant: str = "exact") -> Optional[float]:
    """epsilon at ``delta`` of ``releases`` Gaussian releases with ``noise_multiplier`` (sensitivity 1).

    ``accountant``: "exact" (analytic Gaussian of the composed multiplier z / sqrt(releases)), "pld" or "rdp"
    (dp-accounting; upper bounds: exact <= pld <= rdp up to PLD's discretization). PLD returns ``None`` (not
    computed, :data:`PLD_SKIPPED`) above :data:`PLD_MAX_EPSILON`, where its discretization breaks down.
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
            return None  # PLD_SKIPPED
        # discretize relative to the size of the answer, so that huge epsilons stay cheap to compute
        acc = pld.PLDAccountant(value_discretization_interval=max(1e-4, exact / 2e4))
    else:
        raise ValueError(f"accountant must be 'exact', 'pld' or 'rdp' (got {accountant!r})")
    acc.compose(event, int(releases))
    return float(acc.get_epsilon(delta))


def accounting_table(epsilons: Sequence[Optional[float]], *, delta: float = 1e-5, activation_shape: Sequence[int],
                     epochs: int, n_train: int, n_test: int, batch_size: int, finetune_epochs: Optional[int] = None,
                     evaluations_per_epoch: int = 1, method: str = "classic", positions: int = 9,
                     delta_prime: float = 1e-5) -> List[Dict[str, object]]:
    """One row per per-coordinate epsilon: the paper's numbers next to per-image and per-run guarantees.

    Per image: ``image_epsilon_{exact,pld,rdp}`` with the proven upper-bound sensitivity (the Gaussian model),
    ``image_epsilon_grid`` with that sensitivity plus one grid step per coordinate (``image_sensitivity_grid``:
    the grid's dithered rounding, coupled across the two images, moves each coordinate by at most one more step),
    ``image_epsilon_lower`` with the attained lower bound (the true epsilon is at least this) and
    ``image_epsilon_paper_bound`` with S_f sqrt(d).  Per run: ``frozen_*`` (conv1 frozen, fine-tuning) and
    ``trained_*`` (conv1 trained, from scratch, ``epochs``), each over :func:`release_count`'s ``per_image``
    releases; the frozen case runs ``finetune_epochs`` (default ``epochs``).
    A PLD value that was not computed is ``None`` and ``pld_note`` says why.
    """
    sens = image_sensitivities(activation_shape)
    pix = sensitivity.pixel_sensitivity(int(activation_shape[2]))
    frozen_epochs = int(epochs if finetune_epochs is None else finetune_epochs)
    counts = {tag: release_count(train_conv1=tag == "trained", n_train=n_train, n_test=n_test, epochs=e,
                                 evaluations_per_epoch=evaluations_per_epoch, batch_size=batch_size)
              for tag, e in (("frozen", frozen_epochs), ("trained", int(epochs)))}
    rows = []
    for eps in epsilons:
        if eps is None:
            continue
        std = privacy.noise_std(eps, delta, method=method)
        z = {b: std / sens[b] for b in BOUNDS}
        comp = paper_composition_bound(eps, delta, positions=positions, delta_prime=delta_prime)
        readings = {name: paper_composition_bound(eps, delta, positions=k, delta_prime=delta_prime)["epsilon"]
                    for name, k in composition_readings(activation_shape).items()}
        row: Dict[str, object] = {
            "epsilon_per_coordinate": float(eps), "delta": delta, "noise_std": std,
            "paper_composition_epsilon": comp["epsilon"], "paper_composition_delta": comp["delta"],
            "paper_composition_epsilon_map": readings["map"],
            "paper_composition_epsilon_kernel_inputs": readings["kernel_inputs"],
            "activation_coordinates": int(math.prod(activation_shape)),
            "pixel_sensitivity_sq_upper": pix.upper_sq, "pixel_sensitivity_sq_lower": pix.lower_sq,
            "pixel_sensitivity_sq_paper": pix.paper_sq, "pixel_sensitivity_exact": pix.exact,
            "image_sensitivity_upper": sens["upper"], "image_sensitivity_lower": sens["lower"],
            "image_sensitivity_paper": sens["paper"], "image_noise_multiplier": z["upper"],
            "image_epsilon_lower": image_epsilon(z["lower"], delta),
            "image_epsilon_paper_bound": image_epsilon(z["paper"], delta),
            "epochs": int(epochs), "finetune_epochs": frozen_epochs, "n_train": int(n_train),
            "n_test": int(n_test), "trained_total_releases": counts["trained"]["total"]}
        step = grid.grid_spec(eps, delta, method=method).step
        row["grid_step"] = step
        row["image_sensitivity_grid"] = std / image_noise_multiplier(eps, delta, activation_shape, method=method,
                                                                     grid_rounding=True)
        row["image_epsilon_grid"] = image_epsilon(std / row["image_sensitivity_grid"], delta)
        row["trained_epsilon_grid"] = image_epsilon(std / row["image_sensitivity_grid"], delta,
                                                    releases=counts["trained"]["per_image"])
        for acc in ("exact", "pld", "rdp"):
            row[f"image_epsilon_{acc}"] = image_epsilon(z["upper"], delta, accountant=acc)
        for tag, count in counts.items():
            row[f"{tag}_releases"] = count["per_image"]
            for acc in ("exact", "pld", "rdp"):
                row[f"{tag}_epsilon_{acc}"] = image_epsilon(z["upper"], delta, releases=count["per_image"],
                                                            accountant=acc)
        row["pld_note"] = PLD_SKIPPED if any(v is None for k, v in row.items() if "pld" in k) else ""
        rows.append(row)
    return rows
