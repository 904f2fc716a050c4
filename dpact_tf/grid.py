"""The release mechanism as it runs: a grid, dithered rounding, and discrete Gaussian noise from a 64-bit table.

Why: noise computed in floating point lives on a finite set of values that a server holding the model can test
exactly -- a release of Box-Muller float32 noise is consistent with the true clean activation and almost never
with a neighbour's (Mironov, CCS 2012; Jin et al., IEEE S&P 2022) -- so the Gaussian mechanism's guarantee holds
at no epsilon once it runs in float32.  Every path that sends an activation to a server therefore releases
*integers* (Canonne, Kamath & Steinke, NeurIPS 2020), computed as follows for one coordinate f in [0, R]
(R: the true range of the clipped Eq. (1) activation, :func:`dpact_tf.privacy.lrn_output_bound`):

1. the grid step is g = s / K, with s the Gaussian std the paper's calibration gives (S_f sigma(epsilon, delta))
   and K = ``steps_per_std`` grid steps per standard deviation (16 by default); every path multiplies by the
   float32 value 1/g (:func:`grid_scale`);
2. dithered rounding: k = clip(floor(f / g + u), 0, D) with u uniform on the 256 points (j + 1/2) / 256 and
   D = ceil(R / g) (:func:`max_shift`), so k is an integer in [0, D] and E[k g] = f up to 1/512 of a step;
3. noise: n = k + Z with Z drawn from :class:`NoiseTable`, the discrete Gaussian N_Z(0, K^2) rounded to 64-bit
   probabilities (sign from one bit, magnitude by comparing 55 uniform bits with integer thresholds);
4. the release is the integer n (the server reads n g).

Both dither and noise come from ONE uniform 64-bit word per coordinate (:func:`split_words`): its sign bit
gives Z's sign, bits 8..62 its magnitude and bits 0..7 the dither, so u and Z are independent.

Privacy, exactly as implemented: for two inputs the dithered levels k, k' lie in [0, D], so the release of one
coordinate is a mixture (over k) of the table distribution shifted by k; by joint convexity of the hockey-stick
divergence its delta at epsilon is at most ``max_{1 <= t <= D} sum_z max(0, P(z) - e^eps P(z - t))`` over the
table's exact probabilities P (integers over 2^56): :func:`implemented_delta`.  Nothing is approximated: the
table IS the noise distribution (no statistical distance to add), and float32 arithmetic before rounding cannot
break it, because the clamp to [0, D] holds whatever the float computation does.  The delta may exceed the
Gaussian's for a small K (the rounding of R / g up to D) or a large epsilon (the table's tail);
:func:`check_release` refuses such a configuration and :func:`certified_epsilons` gives the interval a head
with a run-time epsilon accepts.

Pure NumPy (the thresholds are computed once per K with ``mpmath`` at 50 digits, so every platform gets the
same integers); the TensorFlow and LiteRT samplers, the Kotlin one and :func:`sample` are tested equal on the
same words.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Tuple

import numpy as np

from dpact_tf import privacy

__all__ = ["STEPS_PER_STD", "MAGNITUDE_BITS", "DITHER_LEVELS", "NoiseTable", "noise_table", "split_words",
           "sample", "grid_scale", "max_shift", "shift_delta", "implemented_delta", "check_release",
           "choose_steps_per_std", "certified_epsilons", "release", "release_pmf", "GridSpec", "grid_spec",
           "implemented_table"]

# Grid steps per noise standard deviation (K): the quantization adds at most 1/(4 K^2) of the noise's variance.
STEPS_PER_STD = 16
# Uniform bits that decide the noise's magnitude (bits 8..62 of the word); with the sign bit every probability of
# the table is a multiple of 2^-56.
MAGNITUDE_BITS = 55
# The dither takes the word's low 8 bits: u = (j + 1/2) / 256.
DITHER_LEVELS = 256
_MAX_STEPS_PER_STD = 4096


@dataclasses.dataclass(frozen=True)
class NoiseTable:
    """The noise distribution as implemented: |Z| = #{m : thresholds[m] <= v} for v uniform on [0, 2^55).

    ``thresholds`` (int64, increasing, each < 2^55) are round(2^55 F(m)) for the CDF F of |Z| under the discrete
    Gaussian N_Z(0, K^2) (P(|Z| = 0) = p(0), P(|Z| = m) = 2 p(m)), cut where they reach 2^55: |Z| <= len(thresholds).
    """

    steps_per_std: int          # K: the discrete Gaussian's sigma, in grid steps
    thresholds: np.ndarray      # int64 [T]: the magnitude's CDF thresholds on 55 bits

    @property
    def max_magnitude(self) -> int:
        return int(len(self.thresholds))

    def magnitude_counts(self) -> np.ndarray:
        """How many of the 2^55 values of v give |Z| = m, for m = 0 .. T (exact integers, as float64-safe int64)."""
        edges = np.concatenate([[0], self.thresholds.astype(np.int64), [1 << MAGNITUDE_BITS]])
        return np.diff(edges)

    def pmf(self) -> Tuple[np.ndarray, np.ndarray]:
        """(z, P(Z = z)) for z = -T .. T: the exact probabilities, integers over 2^56 (float64 holds them to
        a relative 1e-16)."""
        counts = self.magnitude_counts().astype(np.float64)
        t = self.max_magnitude
        p = np.empty(2 * t + 1)
        p[t] = counts[0] / 2.0 ** MAGNITUDE_BITS
        p[t + 1:] = counts[1:] / 2.0 ** (MAGNITUDE_BITS + 1)
        p[:t] = p[t + 1:][::-1]
        return np.arange(-t, t + 1), p


def _check_steps(steps_per_std: int) -> int:
    if isinstance(steps_per_std, bool) or int(steps_per_std) != steps_per_std or not (
            2 <= steps_per_std <= _MAX_STEPS_PER_STD):
        raise ValueError(f"steps_per_std must be an integer in [2, {_MAX_STEPS_PER_STD}] (got {steps_per_std!r})")
    return int(steps_per_std)


@functools.lru_cache(maxsize=None)
def noise_table(steps_per_std: int = STEPS_PER_STD) -> NoiseTable:
    """The table of N_Z(0, K^2) on 55 bits (deterministic: mpmath at 50 significant digits)."""
    import mpmath

    k = _check_steps(steps_per_std)
    with mpmath.workdps(50):
        top = int(math.ceil(12 * k))  # p(12 K) ~ e^-72: far below 2^-55
        weights = [mpmath.exp(-mpmath.mpf(m) ** 2 / (2 * k * k)) for m in range(top + 1)]
        total = weights[0] + 2 * mpmath.fsum(weights[1:])
        scale = mpmath.mpf(2) ** MAGNITUDE_BITS
        thresholds, acc = [], mpmath.mpf(0)
        for m in range(top + 1):
            acc += (weights[m] if m == 0 else 2 * weights[m]) / total
            c = int(mpmath.nint(acc * scale))
            if c >= 1 << MAGNITUDE_BITS:
                break
            thresholds.append(c)
    return NoiseTable(steps_per_std=k, thresholds=np.asarray(thresholds, dtype=np.int64))


def split_words(words: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(negative, v >> 8, dither index j) of uniform int64 words: the sign bit, 55 magnitude bits, 8 dither bits.

    v = w for w >= 0 and -(w + 1) for w < 0 (a bijection of each half onto [0, 2^63)), so the three parts are
    independent and uniform."""
    words = np.asarray(words)
    if words.dtype != np.int64:
        raise ValueError(f"words must be int64 (got {words.dtype})")
    negative = words < 0
    v = np.where(negative, -(words + 1), words)
    return negative, v >> 8, (v & 0xFF).astype(np.int32)


def sample(words: np.ndarray, table: Optional[NoiseTable] = None) -> np.ndarray:
    """The noise Z (int32) that the words give: the reference every other sampler is tested against."""
    table = table or noise_table()
    negative, magnitude_bits, _ = split_words(words)
    magnitude = np.searchsorted(table.thresholds, magnitude_bits, side="right").astype(np.int32)
    return np.where(negative, -magnitude, magnitude)


def grid_scale(epsilon: float, delta: float, *, sensitivity: float = privacy.PAPER_SENSITIVITY,
               method: str = "classic", steps_per_std: int = STEPS_PER_STD) -> float:
    """1/g = K / (S_f sigma(epsilon, delta)) as a float32 value: grid steps per activation unit.

    For the classic calibration it is float32(epsilon) * float32(K / (S_f sqrt(2 ln(1.25/delta)))), computed in
    float32 exactly as a head with a run-time epsilon computes it, so every path quantizes identically."""
    k = _check_steps(steps_per_std)
    if method == "classic":
        per_epsilon = np.float32(k / privacy.noise_std(1.0, delta, sensitivity=sensitivity))
        return float(np.float32(np.float32(epsilon) * per_epsilon))
    return float(np.float32(k / privacy.noise_std(epsilon, delta, sensitivity=sensitivity, method=method)))


def max_shift(scale: float, true_range: float) -> int:
    """D = ceil(R / g), computed in float32 as the head computes it: two inputs' levels differ by at most D."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"the grid scale must be > 0 and finite (got {scale})")
    return max(1, int(np.ceil(np.float32(true_range) * np.float32(scale))))


def _shift_delta(p: np.ndarray, epsilon: float, shift: int) -> float:
    t = abs(int(shift))
    if t == 0:
        return 0.0
    padded = np.concatenate([p, np.zeros(t)])
    shifted = np.concatenate([np.zeros(t), p])
    if epsilon > 700:  # e^epsilon overflows: only where the shifted table is 0 counts
        return float(padded[shifted == 0].sum())
    return float(np.maximum(0.0, padded - math.exp(epsilon) * shifted).sum())


def shift_delta(epsilon: float, shift: int, table: Optional[NoiseTable] = None) -> float:
    """sum_z max(0, P(z) - e^eps P(z - shift)): the hockey-stick divergence of the table against itself shifted
    by ``shift`` steps (symmetric in the sign of the shift)."""
    return _shift_delta((table or noise_table()).pmf()[1], epsilon, shift)


def implemented_delta(epsilon: float, shift: int, table: Optional[NoiseTable] = None) -> float:
    """The delta at ``epsilon`` of one coordinate's release whose levels lie in [0, ``shift``]: the largest
    :func:`shift_delta` over shifts 1 .. shift (exact for the table; not assumed monotone)."""
    p = (table or noise_table()).pmf()[1]
    return max(_shift_delta(p, epsilon, t) for t in range(1, int(shift) + 1))


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """Everything a release path needs for one epsilon (None: the no-noise baseline, which is not quantized)."""

    epsilon: float
    scale: float            # 1/g, grid steps per activation unit (a float32 value: every path multiplies by it)
    max_level: int          # D: levels are clamped to [0, D]
    steps_per_std: int      # K
    delta: float            # the delta as implemented (<= the delta asked for)

    @property
    def step(self) -> float:
        """g: the activation value of one grid step (the server reads a level n as n * step)."""
        return 1.0 / self.scale


def choose_steps_per_std(epsilon: float, delta: float, *, sensitivity: float = privacy.PAPER_SENSITIVITY,
                         true_range: float = privacy.PAPER_ACTIVATION_RANGE, method: str = "classic") -> int:
    """The coarsest K in 16, 32, 64, ... whose release is (epsilon, delta)-DP as implemented (a fine grid is
    needed at small epsilon, where rounding R / g up to an integer dominates); ValueError if none is."""
    k = STEPS_PER_STD
    while k <= _MAX_STEPS_PER_STD:
        scale = grid_scale(epsilon, delta, sensitivity=sensitivity, method=method, steps_per_std=k)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"epsilon={epsilon:g} is too small: its grid step is not representable in float32")
        if implemented_delta(epsilon, max_shift(scale, true_range), noise_table(k)) <= delta:
            return k
        if true_range * scale > 64:  # a finer grid no longer changes the rounding: the table's tail is the limit
            break
        k *= 2
    raise ValueError(f"no grid releases epsilon={epsilon:g} with delta <= {delta:g} as implemented (the 64-bit "
                     "noise table's tail is too short for so small a noise); use a smaller epsilon")


def grid_spec(epsilon: float, delta: float, *, sensitivity: float = privacy.PAPER_SENSITIVITY,
              true_range: float = privacy.PAPER_ACTIVATION_RANGE, method: str = "classic",
              steps_per_std: Optional[int] = None) -> GridSpec:
    """The grid of a release at ``epsilon``, checked: its delta as implemented is at most ``delta``."""
    if steps_per_std is None:
        steps_per_std = choose_steps_per_std(epsilon, delta, sensitivity=sensitivity, true_range=true_range,
                                             method=method)
    scale = grid_scale(epsilon, delta, sensitivity=sensitivity, method=method, steps_per_std=steps_per_std)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"epsilon={epsilon:g} is too small: its grid step is not representable in float32")
    shift = max_shift(scale, true_range)
    achieved = implemented_delta(epsilon, shift, noise_table(steps_per_std))
    if achieved > delta:
        raise ValueError(f"epsilon={epsilon:g} with {steps_per_std} grid steps per std is ({epsilon:g}, "
                         f"{achieved:.3g})-DP as implemented, above delta={delta:g}; leave steps_per_std=None to "
                         "choose a grid that is")
    return GridSpec(epsilon=float(epsilon), scale=scale, max_level=shift, steps_per_std=int(steps_per_std),
                    delta=float(achieved))


def check_release(epsilon: Optional[float], delta: float, **kwargs) -> Optional[GridSpec]:
    """:func:`grid_spec` for a release path, ``None`` for the no-noise baseline (epsilon None or inf)."""
    epsilon = privacy.check_release_epsilon(epsilon)
    return None if epsilon is None else grid_spec(epsilon, delta, **kwargs)


def certified_epsilons(delta: float, *, steps_per_std: int = STEPS_PER_STD,
                       sensitivity: float = privacy.PAPER_SENSITIVITY,
                       true_range: float = privacy.PAPER_ACTIVATION_RANGE,
                       slack: float = 1e-5) -> Tuple[float, float]:
    """(lo, hi): every epsilon in [lo, hi] releases with delta <= ``delta`` as implemented, for a head whose
    epsilon is a run-time input and whose classic grid has K = ``steps_per_std``.

    The head computes D = ceil(R / g(epsilon)) in float32; a relative ``slack`` covers its rounding (D is taken
    as ceil(R / g (1 + slack))).  On each interval of epsilon where D is constant the delta decreases with
    epsilon, so it is checked at each interval's left end; lo is where the first whole run of valid intervals
    starts, hi where it ends.
    """
    table = noise_table(steps_per_std)
    c = privacy.noise_std(1.0, delta, sensitivity=sensitivity)  # std(epsilon) = c / epsilon (classic)
    per_level = c / (true_range * steps_per_std * (1.0 + slack))  # epsilon at which R / g (1 + slack) = 1
    lo = hi = None
    shift = 1
    while per_level * (shift - 1) < privacy.MAX_EPSILON:
        left, right = per_level * (shift - 1), per_level * shift  # on (left, right] the shift bound is `shift`
        if implemented_delta(max(left, 1e-12), shift, table) <= delta:
            lo = left if lo is None else lo
            hi = right
        elif lo is not None:
            break
        shift += 1
    if lo is None:
        raise ValueError(f"no epsilon releases with delta <= {delta:g} with {steps_per_std} steps per std")
    return float(lo), float(min(hi, privacy.MAX_EPSILON))


def release(clean: np.ndarray, words: np.ndarray, spec: GridSpec) -> np.ndarray:
    """The released levels n = clip(floor(max(f, 0) / g + u), 0, D) + Z (int32): the reference of every path."""
    clean = np.asarray(clean, dtype=np.float32)
    words = np.asarray(words)
    if words.shape != clean.shape:
        raise ValueError(f"words must have the activation's shape {clean.shape} (got {words.shape})")
    negative, magnitude_bits, dither = split_words(words)
    table = noise_table(spec.steps_per_std)
    magnitude = np.searchsorted(table.thresholds, magnitude_bits, side="right").astype(np.int32)
    noise = np.where(negative, -magnitude, magnitude)
    u = (dither.astype(np.float32) + np.float32(0.5)) * np.float32(1.0 / DITHER_LEVELS)  # exact: j + 1/2 < 2^9
    x = np.maximum(clean, np.float32(0.0)) * np.float32(spec.scale) + u
    with np.errstate(invalid="ignore"):  # an out-of-range or NaN activation casts to an arbitrary int32 ...
        floor = np.floor(x).astype(np.int32)
    return np.clip(floor, 0, spec.max_level) + noise  # ... and the clamp keeps every level in [0, D]


def release_pmf(clean: float, spec: GridSpec) -> Tuple[np.ndarray, np.ndarray]:
    """(n, P(release = n)) of one coordinate whose clean value is ``clean``: the exact likelihood a server holding
    the model computes -- the dither's two levels (the 256 dither values counted exactly) times the table."""
    scale, step = np.float32(spec.scale), np.float32(1.0 / DITHER_LEVELS)
    u = (np.arange(DITHER_LEVELS, dtype=np.float32) + np.float32(0.5)) * step
    x = np.maximum(np.float32(clean), np.float32(0.0)) * scale + u
    levels = np.minimum(np.floor(x).astype(np.int64), spec.max_level)
    values, counts = np.unique(levels, return_counts=True)
    z, p = noise_table(spec.steps_per_std).pmf()
    lo, hi = int(values.min()) + int(z[0]), int(values.max()) + int(z[-1])
    out = np.zeros(hi - lo + 1)
    for level, count in zip(values, counts):
        start = int(level) + int(z[0]) - lo
        out[start:start + len(p)] += p * (count / DITHER_LEVELS)
    return np.arange(lo, hi + 1), out


def implemented_table(epsilons, delta: float = 1e-5, *, sensitivity: float = privacy.PAPER_SENSITIVITY,
                      true_range: float = privacy.PAPER_ACTIVATION_RANGE):
    """One row per epsilon: the grid (K, step, D) and the delta as implemented beside the continuous Gaussian's
    (the classic calibration over the coordinate's true range)."""
    rows = []
    for eps in epsilons:
        spec = grid_spec(eps, delta, sensitivity=sensitivity, true_range=true_range)
        rows.append({"epsilon": float(eps), "steps_per_std": spec.steps_per_std, "step": spec.step,
                     "max_level": spec.max_level, "delta_implemented": spec.delta,
                     "delta_gaussian": privacy.classic_achieved_delta(eps, delta, sensitivity=sensitivity,
                                                                      true_range=true_range)})
    return rows
