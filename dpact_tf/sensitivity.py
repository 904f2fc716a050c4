"""The tight L2 sensitivity of one pixel's normalized channel vector (clip to [0, 1] + Eq. (1) LRN).

Mao et al. (2018) bound each normalized coordinate by S_f and, implicitly, a whole pixel of C channels by
S_f sqrt(C) (Delta_2^2 = C / 2 = 32 at C = 64).  The channels of one pixel are not independent, however: the
LRN of Eq. (1) divides every channel by its neighbours' energy,

    f_i(a) = a_i / (bias + alpha * sum_{|j - i| <= r} a_j^2)^beta,        a in [0, 1]^C,

so the worst-case change of the vector, ``max_{a, a'} ||f(a) - f(a')||_2^2``, is much smaller.  This module
computes it with a proof, not a guess:

**Lemma (disjoint supports).**  For any a, a', let S = {i : f_i(a) >= f_i(a')}.  Since f >= 0,
(f_i(a) - f_i(a'))^2 <= f_i(a)^2 on S and <= f_i(a')^2 off S.  Zeroing a outside S and a' on S only shrinks
the denominators (alpha, beta > 0), so the restricted pair b = a 1_S, b' = a' 1_{S^c} has disjoint supports,
f_i(b) >= f_i(a) on S, f_i(b') >= f_i(a') off S, and ||f(b) - f(b')||^2 >= ||f(a) - f(a')||^2.  Hence

    max ||f(a) - f(a')||^2 = max over x in [0, 1]^C, colours s in {0, 1}^C of
                             Q(x, s) = sum_i x_i / (bias + alpha * sum_{|j-i|<=r, s_j = s_i} x_j)^(2 beta)

(x = a^2; the colour says which of the two images owns the channel).  Each term depends on a window of
2r + 1 channels, so Q is maximized over any finite set of per-channel values exactly by dynamic programming
along the channels (state: the last 2r channels).  Two uses of that one routine:

* **lower bound** -- the maximum over x in {0, 1} (binary channel patterns): exact over that set, and
  attained by an explicit pair of images, so the true value is at least this;
* **upper bound** -- x_i ranges over cells of a partition of [0, 1]; a term is increasing in its own x_i and
  decreasing in its neighbours' (when bias + alpha (1 - 2 beta) > 0, checked), so ``x_i_hi / (bias + alpha
  (x_i_hi + sum of neighbours' x_lo))^(2 beta)`` bounds it over the cell; the dynamic programme over cells
  then bounds Q over all of [0, 1]^C.  Finer cells near 0 and 1 make it tighter.

The two are reported side by side; the value is called exact only when they coincide.  Pure NumPy.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Dict, Sequence, Tuple

import numpy as np

__all__ = ["PixelSensitivity", "pixel_sensitivity", "pair_distance_sq", "normalize", "UPPER_BOUND_CUTS",
           "image_sensitivity"]

# Cell boundaries of x = a^2 for the upper bound: dense near 0 and 1, where the worst pairs live.
UPPER_BOUND_CUTS: Tuple[float, ...] = (0.0, 0.002, 0.01, 0.03, 0.08, 0.2, 0.4, 0.6, 0.8, 0.92, 0.97, 0.99,
                                       0.998, 1.0)

# The upper bound at the defaults (Eq. (1)'s LRN: depth_radius 2, bias 2, alpha 1, beta 1/2; UPPER_BOUND_CUTS) for
# the paper's 64 channels, whose dynamic programme takes seconds in every process that asks (the accounting of
# 224x224x64 and 64x64x64 releases).  tests/test_sensitivity.py recomputes each entry and requires it to the bit.
_VERIFIED_UPPER_SQ: Dict[int, float] = {64: 16.199455574545393}

# Above this many window entries (values per channel ** (2 r + 1)) the search would need too much memory.
_MAX_WINDOW = 40_000_000


def normalize(a: np.ndarray, *, depth_radius: int = 2, bias: float = 2.0, alpha: float = 1.0,
              beta: float = 0.5) -> np.ndarray:
    """Eq. (1) on the last axis (channels) of ``a`` clipped to [0, 1]; NumPy twin of the layer's LRN."""
    a = np.clip(np.asarray(a, np.float64), 0.0, 1.0)
    c = a.shape[-1]
    window = np.zeros_like(a)
    for d in range(-depth_radius, depth_radius + 1):
        lo, hi = max(0, -d), min(c, c - d)
        if lo < hi:
            window[..., lo:hi] += a[..., lo + d:hi + d] ** 2
    return a / (bias + alpha * window) ** beta


def pair_distance_sq(a: np.ndarray, b: np.ndarray, **lrn: float) -> np.ndarray:
    """||f(a) - f(b)||^2 over the channel axis: the quantity whose maximum is the per-pixel sensitivity^2."""
    return np.sum((normalize(a, **lrn) - normalize(b, **lrn)) ** 2, axis=-1)


@dataclasses.dataclass(frozen=True)
class PixelSensitivity:
    """Worst-case squared L2 change of one pixel's normalized C-channel vector."""

    channels: int             # C, channels of the normalized layer (conv1_1's width)
    lower_sq: float           # max over binary channel patterns: attained by `pair` (a lower bound)
    upper_sq: float           # proven upper bound (dynamic programme over cells of [0, 1])
    pair: Tuple[Tuple[float, ...], Tuple[float, ...]]  # two channel vectors a, a' in [0, 1]^C attaining lower_sq
    paper_sq: float           # C * S_f^2 = C / 2: the paper's implicit per-pixel bound (S_f per coordinate)

    @property
    def exact(self) -> bool:
        """True when the bounds coincide (to float rounding): only then is the value exact."""
        return self.upper_sq - self.lower_sq <= 1e-9 * self.upper_sq

    def to_dict(self) -> Dict[str, object]:
        out = dataclasses.asdict(self)
        out["exact"] = self.exact
        return out


def _check(channels: int, depth_radius: int, bias: float, alpha: float, beta: float) -> None:
    if int(channels) != channels or channels < 1:
        raise ValueError(f"channels must be a positive integer (got {channels})")
    if int(depth_radius) != depth_radius or depth_radius < 0:
        raise ValueError(f"depth_radius must be a non-negative integer (got {depth_radius})")
    if not (bias > 0 and alpha > 0 and beta > 0):
        raise ValueError(f"bias, alpha and beta must be > 0 (got {bias}, {alpha}, {beta})")
    if bias + alpha * (1 - 2 * beta) <= 0:
        raise ValueError("the cell bound needs x / (bias + alpha x)^(2 beta) increasing on [0, 1], i.e. "
                         f"bias + alpha (1 - 2 beta) > 0 (got bias={bias}, alpha={alpha}, beta={beta})")


def _window_terms(lo: np.ndarray, hi: np.ndarray, colour: np.ndarray, r: int, bias: float, alpha: float,
                  beta: float) -> np.ndarray:
    """term[v_0, ..., v_{2r}] (float64): the bound on the centre channel's term given its window (centre at index r),
    hi[v_r] / (bias + alpha (hi[v_r] + sum_{k != r, same colour} lo[v_k]))^(2 beta), to the bit as numpy's ``**``
    computes it (its special cases of the exponent included), in one n^(2r+1)-float buffer: on a virtual machine,
    page-faulting a fresh array of that size costs more than the arithmetic on it."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    n, w = len(lo), 2 * r + 1
    grids = np.meshgrid(*([np.arange(n)] * w), indexing="ij", sparse=True)
    centre = grids[r]
    denom = bias + alpha * hi[centre]
    for k, g in enumerate(grids):
        if k != r:
            denom = denom + alpha * lo[g] * (colour[g] == colour[centre])
    exponent = 2 * beta
    if exponent == 0.5:
        np.sqrt(denom, out=denom)
    elif exponent == 2:
        np.square(denom, out=denom)
    elif exponent != 1:
        np.power(denom, exponent, out=denom)
    return np.divide(hi[centre], denom, out=denom)


def _max_q(lo: np.ndarray, hi: np.ndarray, colour: np.ndarray, zero: int, channels: int, r: int, bias: float,
           alpha: float, beta: float, trace: bool = False) -> Tuple[float, np.ndarray]:
    """max_v sum_i hi[v_i] / (bias + alpha (hi[v_i] + sum_{j != i, |j-i|<=r, same colour} lo[v_j]))^(2 beta).

    ``v_i`` ranges over the value indices 0..len(lo)-1; ``zero`` is the index of x = 0 that pads r channels
    beyond either edge (x = 0 adds nothing to a window, as a missing channel).  Returns the maximum and an
    argmax sequence of value indices (length ``channels``) when ``trace``.
    """
    n = len(lo)
    w = 2 * r + 1
    if n ** w > _MAX_WINDOW:
        raise ValueError(f"{n} values per channel and depth_radius={r} need {n ** w:,} window entries; "
                         "use fewer cells")
    term = _window_terms(lo, hi, colour, r, bias, alpha, beta)
    # Positions p = 0 .. channels + 2r - 1; channel i sits at p = i + r; the first and last r are padding.
    # value[s] is the best sum of completed terms for the state s = (v_{p-2r+1}, ..., v_p) (r = 0: no state).
    total = channels + 2 * r
    if r == 0:
        best = int(np.argmax(term))
        return float(term[best] * channels), np.full(channels, best)
    value = np.full((n,) * (2 * r), -np.inf)
    value[(zero,) * r] = 0.0  # positions 0..r-1 padding, r..2r-1 free (channels 0..r-1)
    if not trace:
        return _max_q_value(value, term, zero, channels, r), np.zeros(0, int)
    back = []
    cand = np.empty((n,) * (2 * r + 1))  # one buffer for every position (n^(2r+1) floats: fresh ones page-fault)
    for p in range(2 * r, total):
        if p < channels + r:  # v_p free
            np.add(value[..., None], term, out=cand)  # axes: v_{p-2r}, ..., v_{p-1}, v_p
        else:  # v_p is padding: only the zero value
            cand.fill(-np.inf)
            cand[..., zero] = value + term[..., zero]
        back.append(np.argmax(cand, axis=0))
        value = np.max(cand, axis=0)
    state = list(np.unravel_index(int(np.argmax(value)), value.shape))
    best = float(np.max(value))
    seq = state  # v_{total-2r} .. v_{total-1}
    for p in range(total - 1, 2 * r - 1, -1):
        tail = seq[:2 * r]  # v_{p-2r+1} .. v_p
        seq = [int(back[p - 2 * r][tuple(tail)])] + seq
    return best, np.asarray(seq[r:r + channels], int)


def _max_q_value(value: np.ndarray, term: np.ndarray, zero: int, channels: int, r: int) -> float:
    """:func:`_max_q`'s programme without the argmax: the maximum over v_{p-2r} accumulated one value at a time in
    two n^(2r)-float buffers, not in an n^(2r+1)-float one (max is exact in any order: the same result)."""
    n = term.shape[0]
    res, tmp = np.empty((n,) * (2 * r)), np.empty((n,) * (2 * r))
    for p in range(2 * r, channels + 2 * r):
        if p < channels + r:  # v_p free: res[v_{p-2r+1}, ..., v_p] = max_a value[a, ...] + term[a, ...]
            np.add(value[0][..., None], term[0], out=res)
            for a in range(1, n):
                np.add(value[a][..., None], term[a], out=tmp)
                np.maximum(res, tmp, out=res)
        else:  # v_p is padding: only the zero value
            res.fill(-np.inf)
            res[..., zero] = np.max(value + term[..., zero], axis=0)
        value, res = res, value
    return float(np.max(value))


@functools.lru_cache(maxsize=64)
def pixel_sensitivity(channels: int, *, depth_radius: int = 2, bias: float = 2.0, alpha: float = 1.0,
                      beta: float = 0.5, cuts: Sequence[float] = UPPER_BOUND_CUTS) -> PixelSensitivity:
    """Lower (attained) and upper (proven) bounds on max_{a, a' in [0,1]^C} ||f(a) - f(a')||_2^2."""
    _check(channels, depth_radius, bias, alpha, beta)
    cuts = tuple(float(c) for c in cuts)
    if cuts[0] != 0.0 or cuts[-1] != 1.0 or any(b <= a for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"cuts must increase strictly from 0 to 1 (got {cuts})")
    r = int(depth_radius)
    lrn = dict(bias=bias, alpha=alpha, beta=beta)
    # Lower bound: binary x; values (x, colour): 0 -> x=0; 1 -> x=1 of image a; 2 -> x=1 of image a'.
    pts = np.array([0.0, 1.0, 1.0])
    _, seq = _max_q(pts, pts, np.array([0, 0, 1]), 0, channels, r, trace=True, **lrn)
    a = tuple(float(v == 1) for v in seq)
    b = tuple(float(v == 2) for v in seq)
    attained = float(pair_distance_sq(np.array(a), np.array(b), depth_radius=r, **lrn))
    defaults = (r, float(bias), float(alpha), float(beta), cuts) == (2, 2.0, 1.0, 0.5, UPPER_BOUND_CUTS)
    if defaults and int(channels) in _VERIFIED_UPPER_SQ:
        upper = _VERIFIED_UPPER_SQ[int(channels)]
    else:
        upper = _upper_bound_sq(int(channels), r, cuts, **lrn)
    return PixelSensitivity(channels=int(channels), lower_sq=attained, upper_sq=max(upper, attained),
                            pair=(a, b), paper_sq=channels / 2.0)


def _upper_bound_sq(channels: int, r: int, cuts: Tuple[float, ...], **lrn: float) -> float:
    """The dynamic programme's bound over cells [cuts[k], cuts[k+1]] of x, in either colour, plus the padding
    value x = 0."""
    lo = np.array(cuts[:-1] * 2 + (0.0,))
    hi = np.array(cuts[1:] * 2 + (0.0,))
    colour = np.array([0] * (len(cuts) - 1) + [1] * (len(cuts) - 1) + [0])
    upper, _ = _max_q(lo, hi, colour, len(lo) - 1, channels, r, **lrn)
    return upper


def image_sensitivity(pixel_sq: float, height: int, width: int) -> float:
    """Per-image L2 sensitivity sqrt(H W pixel_sq): pixels are disjoint coordinates of the activation."""
    if not pixel_sq > 0 or int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"need pixel_sq > 0 and positive integer height, width (got {pixel_sq}, {height}, {width})")
    return math.sqrt(height * width * pixel_sq)
