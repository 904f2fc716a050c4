"""Membership inference against the server: was this face among the training releases it received?

The property the paper claims is about the server, so the test is the server's own: it knows the released layer
(conv1 public -- the public model's, frozen while the server fine-tunes) and keeps every release.  With conv1
frozen a training face is released E times (once per epoch); the full-strength server links a face's copies (its
label and the copies' nearness make that easy) and holds the sum S of their integer levels.  For a candidate face x
it computes the clean activation f(x), takes the received face whose mean release is nearest to f(x) (L2), and
scores x by the exact log-likelihood of that face's summed levels given f(x) (:func:`summed_release_logpmf`): the
grid release's pmf (:func:`dpact_tf.grid.release_pmf`: the dither's levels counted exactly, the 64-bit noise
table) convolved over the E copies.  A member's nearest received face is itself and its levels are likely under
f(x); a non-member's nearest match is someone else's face.  The statistic is the likelihood of the hypothesis
"this release is x" (a likelihood-ratio test against an alternative whose density is taken as the same for every
candidate); :func:`dpact_tf.audit.membership_audit` chooses its threshold on calibration candidates and bounds
its rates on held-out ones.

Without noise (epsilon None) the release is the clean activation and the score is minus the nearest distance.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np

from dpact_tf import grid

__all__ = ["summed_release_logpmf", "release_sums", "server_membership_scores"]


@functools.lru_cache(maxsize=16)
def _summed_noise(steps_per_std: int, releases: int) -> Tuple[int, np.ndarray]:
    """(offset, pmf) of the sum of ``releases`` independent draws of the noise table: pmf[i] = P(sum = offset + i)."""
    z, p = grid.noise_table(steps_per_std).pmf()
    total = p
    for _ in range(releases - 1):
        total = np.convolve(total, p)
    return int(z[0]) * releases, total


@functools.lru_cache(maxsize=16)
def _summed_release_table(steps_per_std: int, releases: int) -> Tuple[int, np.ndarray]:
    """(offset, log table) with table[up, j] = log P(B + Z_1 + ... + Z_E = offset + j), B ~ Binomial(E, up / 256)
    the copies that round up (up = 0 .. 256 of the dither's values) and Z the noise table's draws."""
    from scipy.stats import binom

    offset, noise = _summed_noise(steps_per_std, releases)
    levels = grid.DITHER_LEVELS
    binomial = binom.pmf(np.arange(releases + 1)[None, :], releases, (np.arange(levels + 1) / levels)[:, None])
    table = np.zeros((levels + 1, len(noise) + releases))
    for k in range(releases + 1):
        table[:, k:k + len(noise)] += binomial[:, k:k + 1] * noise[None, :]
    with np.errstate(divide="ignore"):
        return offset, np.log(table)


def summed_release_logpmf(level_sums: np.ndarray, clean: np.ndarray, spec: grid.GridSpec, releases: int) -> np.ndarray:
    """log P(S = ``level_sums`` | clean activation ``clean``), summed over each row's coordinates ([N, ...] -> [N]).

    One copy's level is clip(floor(f g^-1 + u), 0, D) + Z: with m = floor(f / g) it is m or m + 1 (the share of the
    256 dither values that round up, a) plus Z, and D with certainty once m >= D.  The sum of E copies is
    E m + B + (Z_1 + ... + Z_E) with B ~ Binomial(E, a) independent of the noise: exact for the table (and
    :func:`dpact_tf.grid.release_pmf` for E = 1).  An impossible sum gives -inf.  The pmf of B + Z_1 + ... + Z_E
    is tabulated once per (grid, E) for each of the 257 values of a, so a coordinate costs one look-up.
    """
    if int(releases) != releases or releases < 1:
        raise ValueError(f"releases must be a positive integer (got {releases})")
    sums = np.asarray(level_sums, dtype=np.int64)
    clean = np.asarray(clean, dtype=np.float32)
    if sums.shape != clean.shape:
        raise ValueError(f"level_sums {sums.shape} and clean {clean.shape} must have the same shape")
    releases = int(releases)
    offset, table = _summed_release_table(spec.steps_per_std, releases)
    levels = grid.DITHER_LEVELS
    out = np.empty(len(sums))
    for i, (s_row, f_row) in enumerate(zip(sums.reshape(len(sums), -1), clean.reshape(len(clean), -1))):
        x = (np.maximum(f_row, np.float32(0)) * np.float32(spec.scale)).astype(np.float64)
        m = np.floor(x)
        # dither values j with x + (j + 1/2) / 256 >= m + 1: j >= 256 (1 - frac) - 1/2
        up = (levels - np.clip(np.ceil(levels * (1.0 - (x - m)) - 0.5), 0, levels)).astype(np.int64)
        top = m >= spec.max_level
        m = np.where(top, spec.max_level, m).astype(np.int64)
        up = np.where(top, 0, up)
        j = s_row - releases * m - offset
        ok = (j >= 0) & (j < table.shape[1])
        out[i] = np.where(ok, table[up, np.clip(j, 0, table.shape[1] - 1)], -np.inf).sum()
    return out


def release_sums(layer, clean: np.ndarray, releases: int) -> np.ndarray:
    """The sum of ``releases`` independent releases' integer levels of the clean activations ``clean`` by the
    :class:`~dpact_tf.layers.DPActivation` ``layer`` (fresh noise each; int32)."""
    import tensorflow as tf

    total = None
    x = tf.convert_to_tensor(clean, tf.float32)
    for _ in range(int(releases)):  # summed in TensorFlow: one copy out at the end
        levels = layer.release_levels(x)
        total = levels if total is None else total + levels
    return total.numpy()


def server_membership_scores(clean_client, layer, received_images: np.ndarray, candidates: np.ndarray, *,
                             releases: int, batch_size: int = 256) -> np.ndarray:
    """The server's membership score of each candidate (higher = more likely a member; see the module docstring).

    ``clean_client``: images -> the noise-free released activation (the public conv1); ``layer``: the
    :class:`~dpact_tf.layers.DPActivation` that released ``received_images`` ``releases`` times each (``None`` or a
    no-noise layer: the clean activation was released)."""
    noisy = layer is not None and layer.adds_noise
    cand = clean_client.predict(candidates, batch_size=batch_size, verbose=0).reshape(len(candidates), -1)
    cand_sq = (cand.astype(np.float64) ** 2).sum(axis=1)
    best = np.full(len(cand), np.inf)
    best_sums: Optional[np.ndarray] = None
    for start in range(0, len(received_images), batch_size):
        clean = clean_client.predict(received_images[start:start + batch_size], batch_size=batch_size, verbose=0)
        if noisy:
            sums = release_sums(layer, clean, releases).reshape(len(clean), -1)
            seen = sums.astype(np.float32) / np.float32(layer.spec.scale * releases)
        else:
            sums = seen = clean.reshape(len(clean), -1)
        d2 = cand_sq[:, None] - 2.0 * (cand @ seen.T).astype(np.float64) + (seen.astype(np.float64) ** 2).sum(1)[None]
        nearest = d2.argmin(axis=1)
        closer = d2[np.arange(len(cand)), nearest] < best
        if best_sums is None:
            best_sums = np.zeros((len(cand), sums.shape[1]), sums.dtype)
        best[closer] = d2[np.arange(len(cand)), nearest][closer]
        best_sums[closer] = sums[nearest[closer]]
    if not noisy:
        return -np.sqrt(np.maximum(best, 0.0))
    return summed_release_logpmf(best_sums, cand.reshape(best_sums.shape), layer.spec, releases)
