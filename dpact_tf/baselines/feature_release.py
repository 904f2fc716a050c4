"""A feature vector released once per image under a per-image guarantee, and labels by randomized response.

**Feature release** (:func:`release_features`).  The client computes a feature vector f(x) with a public
model, subtracts a public centre, clips its L2 norm to C and adds Gaussian noise once:

    r = clip_C(f(x) - m) + N(0, s^2 I),   s = 2 C sigma(epsilon, delta)   (analytic Gaussian, Balle & Wang 2018).

Replacing the image by any other moves the clipped vector by at most 2C in L2 (both lie in the ball of radius
C), so one release is (epsilon, delta)-DP per image under **replace-one** adjacency; the server may train on
the releases as long as it likes (post-processing) and the image's epsilon stays that of its one release.
What is idealized: the noise is float64 Gaussian (NumPy), not an exact sampler on a grid (:mod:`dpact_tf.grid`
does that for the per-coordinate release); the labels are not covered by epsilon.

**Labels** (:func:`rr_with_prior`): randomized response with a prior (Ghazi et al., NeurIPS 2021).  For each
example, with prior p over the classes, keep the k most likely classes, k maximizing
(e^eps / (e^eps + k - 1)) * p(top k); output the true label with probability e^eps / (e^eps + k - 1) if it is
among them, else a uniformly random one of them.  Every output has probability between 1 / (e^eps + k - 1)
and e^eps / (e^eps + k - 1) whatever the true label, so each example's label is eps-DP (pure, replace-one);
the prior must not depend on that example's label.
Pure NumPy.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from dpact_tf import privacy

__all__ = ["clip_rows", "release_std", "release_epsilon", "release_features", "rr_correct_probability", "rr_keep",
           "rr_with_prior"]


def clip_rows(features: np.ndarray, clip: float) -> np.ndarray:
    """Each row scaled to L2 norm at most ``clip`` (rows already inside the ball are unchanged)."""
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0 (got {clip})")
    x = np.asarray(features, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, clip / np.maximum(norms, 1e-300))


def release_std(*, epsilon: float, delta: float, clip: float) -> float:
    """Noise std s of a release that is (epsilon, delta)-DP per image: analytic Gaussian for sensitivity 2C."""
    if not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0 (got {clip})")
    return privacy.noise_std(epsilon, delta, sensitivity=2.0 * clip, method="analytic")


def release_epsilon(std: float, *, delta: float, clip: float) -> float:
    """The inverse of :func:`release_std`: the per-image epsilon of one release with noise std ``std``."""
    return privacy.epsilon_for_sigma(std, delta, sensitivity=2.0 * clip, method="analytic")


def release_features(features: np.ndarray, *, epsilon: Optional[float], delta: float, clip: float,
                     center: Optional[np.ndarray] = None, seed: int = 0) -> np.ndarray:
    """One release per row: clip_C(features - center) plus Gaussian noise for (``epsilon``, ``delta``) per image.

    ``epsilon=None`` returns the clipped, centred features without noise (the non-private reference).  ``center``
    must come from public data (default: no centring)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [images, dimensions] (got shape {x.shape})")
    if center is not None:
        x = x - np.asarray(center, np.float64)
    clipped = clip_rows(x, clip)
    if epsilon is None:
        return clipped
    std = release_std(epsilon=epsilon, delta=delta, clip=clip)
    return clipped + np.random.default_rng(seed).normal(0.0, std, clipped.shape)


def rr_correct_probability(epsilon: float, k):
    """Randomized response over ``k`` classes: the probability that the true label comes out, e^eps / (e^eps + k - 1)
    (with k the number of classes, what plain randomized response keeps correct)."""
    return math.exp(epsilon) / (math.exp(epsilon) + np.asarray(k) - 1)


def rr_keep(prior: np.ndarray, epsilon: float) -> int:
    """k of RR-with-prior: the number of most likely classes kept, maximizing e^eps / (e^eps + k - 1) * p(top k)."""
    p = np.sort(np.asarray(prior, np.float64))[::-1]
    k = np.arange(1, len(p) + 1)
    score = rr_correct_probability(epsilon, k) * np.cumsum(p)
    return int(k[np.argmax(score)])


def rr_with_prior(labels: np.ndarray, priors: np.ndarray, *, epsilon: float, seed: int = 0) -> np.ndarray:
    """Randomized response with a prior: one eps-label-DP output per example (``priors``: [n, classes])."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0 (got {epsilon})")
    y = np.asarray(labels).astype(np.int64)
    priors = np.asarray(priors, np.float64)
    if priors.ndim != 2 or len(priors) != len(y):
        raise ValueError(f"priors must be [len(labels), classes] (got {priors.shape} for {len(y)} labels)")
    rng = np.random.default_rng(seed)
    out = np.empty_like(y)
    for i, (label, prior) in enumerate(zip(y, priors)):
        k = rr_keep(prior, epsilon)
        top = np.argsort(-prior, kind="stable")[:k]
        if label in top and rng.random() < rr_correct_probability(epsilon, k):
            out[i] = label
        elif label in top:
            others = top[top != label]
            out[i] = others[rng.integers(len(others))]
        else:
            out[i] = top[rng.integers(k)]
    return out
