"""Between NumPy arrays and the protocol buffers of ``dpact_edge.proto``, with the checks the server applies.

The upload is :mod:`dpact_tf.encoding` applied to the release, so encoding is post-processing of the DP
release: a noisy release travels as its integer grid levels ("grid"), the no-noise baseline as float32,
float16 or uint8.  The server checks every upload against what the mechanism the client declared can
produce: a grid upload's step and levels (:func:`check_levels`), a no-noise upload's values, which the
clipped Eq. (1) activation keeps in [0, R] (``value_range`` of :func:`check_batch`; R is
:func:`dpact_tf.privacy.lrn_output_bound` of the LRN constants).  A value outside raises
:class:`MechanismError`.  Everything here is pure NumPy and protobuf: the TensorFlow-free phone process
imports it as well as the server.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Optional, Sequence, Tuple

import numpy as np

from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.encoding import ENCODINGS, GRID, WIRE_ENCODINGS, EncodedActivation, decode, decode_levels, encode
from dpact_tf.grid import GridSpec, certified_epsilons, check_release, noise_table

__all__ = ["to_proto", "from_proto", "check_batch", "check_levels", "check_handshake", "level_bounds",
           "request_digest", "token_metadata", "TOKEN_HEADER", "MechanismError", "HandshakeError",
           "FLOAT_RANGE_TOLERANCE", "DEFAULT_MAX_DELTA", "PLAUSIBILITY_ALPHA", "epsilon_floor", "PolicyError",
           "level_limits", "LevelLimits"]

TOKEN_HEADER = "authorization"  # gRPC metadata key of the client's token: "Bearer <token>"
# Relative slack above R for a no-noise upload: float16 rounds a value by at most 2**-11 of it, and uint8's
# offset + scale x q is computed in float32.
FLOAT_RANGE_TOLERANCE = 2.0 ** -10
# The largest delta a server accepts from a noisy client by default (serve --max-delta).
DEFAULT_MAX_DELTA = 1e-3
# The probability, at most, that the plausibility checks of :func:`check_levels` refuse an honest grid upload
# (a Chernoff bound, computed from the noise table for each batch size: :func:`level_limits`).
PLAUSIBILITY_ALPHA = 1e-12
# The plausibility checks count levels farther than j noise stds outside [0, D], for j = 1 .. this.
TAIL_STDS = 8


class MechanismError(ValueError):
    """An upload holds a value the mechanism declared at the handshake cannot produce."""


def to_proto(array: np.ndarray, encoding: str = "float32", *, step: Optional[float] = None) -> pb.Activation:
    """Encode a release for the wire: integer levels and their ``step`` for "grid", else a float activation;
    refuses NaN/inf and non-integer levels (``ValueError``)."""
    enc = encode(array, encoding, step=step)
    return pb.Activation(data=enc.data, encoding=enc.encoding, shape=list(enc.shape), scale=enc.scale,
                         offset=enc.offset)


def _encoded(message: pb.Activation) -> EncodedActivation:
    if message.encoding not in WIRE_ENCODINGS:
        raise ValueError(f"encoding must be one of {WIRE_ENCODINGS} (got {message.encoding!r})")
    if any(s < 0 for s in message.shape):
        raise ValueError(f"shape must not be negative (got {list(message.shape)})")
    return EncodedActivation(data=message.data, encoding=message.encoding, shape=tuple(message.shape),
                             scale=message.scale, offset=message.offset)


def from_proto(message: pb.Activation) -> np.ndarray:
    """The float32 array a message carries; ``ValueError`` on an unknown encoding, a payload that does not
    match its shape, or non-finite values."""
    out = decode(_encoded(message))
    if not np.all(np.isfinite(out)):
        raise ValueError("the activation contains NaN or inf")
    return out


def check_batch(message: pb.Activation, labels: Sequence[int], *, activation_shape: Sequence[int],
                encoding: str, num_classes: int, max_batch: int,
                value_range: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Decode and validate one uploaded batch against the session; returns (activations, labels).

    Raises ``ValueError`` naming what is wrong: encoding other than the handshake's, a shape other than
    [N, *activation_shape], an empty or too large batch, a label count or value out of range, NaN/inf; and
    :class:`MechanismError` for a float value outside [0, ``value_range``] (up to
    :data:`FLOAT_RANGE_TOLERANCE`), which no clipped Eq. (1) activation takes.  (Grid uploads are checked by
    :func:`check_levels`.)
    """
    if message.encoding != encoding:
        raise ValueError(f"this session uploads {encoding} (stated at the handshake); got {message.encoding!r}")
    shape = tuple(int(s) for s in message.shape)
    expected = tuple(int(s) for s in activation_shape)
    if len(shape) != 4 or shape[1:] != expected:
        raise ValueError(f"activation shape must be [N, {', '.join(map(str, expected))}] (got {list(shape)})")
    if not 1 <= shape[0] <= max_batch:
        raise ValueError(f"batch size must be in 1..{max_batch} (got {shape[0]})")
    y = np.asarray(list(labels), dtype=np.int64)
    if y.shape != (shape[0],):
        raise ValueError(f"got {y.size} labels for {shape[0]} activations")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}) (got {int(y.min())}..{int(y.max())})")
    values = from_proto(message)
    if value_range is not None and message.encoding != GRID and values.size:
        lo, hi = float(values.min()), float(values.max())
        if lo < 0.0 or hi > value_range * (1.0 + FLOAT_RANGE_TOLERANCE):
            raise MechanismError(f"a no-noise activation lies in [0, {value_range:.6g}] (the clipped Eq. (1) "
                                 f"activation's range); got values in [{lo:.6g}, {hi:.6g}]")
    return values, y.astype(np.int32)


def level_bounds(spec: GridSpec) -> Tuple[int, int]:
    """[-T, D + T]: every level the declared mechanism can release (T: its noise table's largest magnitude,
    D: its largest dithered level)."""
    t = noise_table(spec.steps_per_std).max_magnitude
    return -t, spec.max_level + t


@dataclasses.dataclass(frozen=True)
class LevelLimits:
    """What :func:`check_levels` lets through in a grid upload of ``n`` levels (K = ``steps_per_std``).

    ``tail_counts[j - 1]``: the most levels farther than j K steps outside [0, D]; ``sum_slack``: how far the sum
    of the levels may lie below 0 or above n D.  Each bound fails an honest upload with probability at most
    :data:`PLAUSIBILITY_ALPHA` / (``TAIL_STDS`` + 2), so all together at most :data:`PLAUSIBILITY_ALPHA`."""

    n: int
    steps_per_std: int
    tail_counts: Tuple[int, ...]
    sum_slack: float


def _kl(p: float, q: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(q)) for q < p <= 1."""
    out = p * math.log(p / q)
    if p < 1.0:
        out += (1.0 - p) * math.log((1.0 - p) / (1.0 - q))
    return out


def _binomial_limit(n: int, q: float, log_alpha: float) -> int:
    """The smallest c such that P(X > c) <= e^log_alpha for X ~ Binomial(n, q) (or any sum of n independent
    Bernoullis of probabilities <= q), by the Chernoff bound P(X >= m) <= exp(-n KL(m / n || q)), m / n > q."""
    if q <= 0.0:
        return 0
    lo, hi = max(1, math.floor(n * q) + 1), n + 1  # the smallest m with a small enough bound lies in [lo, hi]
    while lo < hi:
        m = (lo + hi) // 2
        if -n * _kl(m / n, q) <= log_alpha:
            hi = m
        else:
            lo = m + 1
    return lo - 1


@functools.lru_cache(maxsize=1024)
def level_limits(steps_per_std: int, n: int) -> LevelLimits:
    """The plausibility limits of a grid upload of ``n`` levels, computed from the noise table's exact pmf.

    A released level is k + Z with k in [0, D] and Z from the table, the coordinates independent.  So a level lies
    more than a steps outside [0, D] with probability at most q(a) = P(|Z| > a), and the count of such levels is
    bounded by a Chernoff bound on Binomial(n, q(a)); and the sum of the levels lies in [sum Z, n D + sum Z], with
    P(sum Z >= s) <= min_t exp(n log E[e^(tZ)] - t s) (the table's moment generating function, exactly)."""
    z, p = noise_table(steps_per_std).pmf()
    k = int(steps_per_std)
    log_alpha = math.log(PLAUSIBILITY_ALPHA / (TAIL_STDS + 2))
    tails = []
    for j in range(1, TAIL_STDS + 1):
        q = float(p[np.abs(z) > j * k].sum())
        tails.append(_binomial_limit(int(n), q, log_alpha))
    t = np.geomspace(1e-5, 20.0, 600) / k
    exponents = t[:, None] * z[None, :].astype(np.float64) + np.log(np.maximum(p, 1e-300))[None, :]
    top = exponents.max(axis=1)
    log_mgf = top + np.log(np.exp(exponents - top[:, None]).sum(axis=1))
    slack = float(np.min((int(n) * log_mgf - log_alpha) / t))
    return LevelLimits(n=int(n), steps_per_std=k, tail_counts=tuple(tails), sum_slack=slack)


def check_levels(message: pb.Activation, spec: GridSpec) -> None:
    """Refuse a grid upload the declared mechanism cannot have produced, or could only with a negligible chance
    (:class:`MechanismError` naming the check and the mechanism): a step other than its grid step, a level outside
    :func:`level_bounds`, too many levels far outside [0, D] for its noise, or a sum of levels below 0 or above n D
    by more than its noise allows (:func:`level_limits`: an honest upload is refused with probability at most
    :data:`PLAUSIBILITY_ALPHA`)."""
    if message.encoding != GRID:
        raise ValueError(f"a noisy release travels as 'grid' levels (got {message.encoding!r})")
    levels, step = decode_levels(_encoded(message))
    if not math.isclose(step, spec.step, rel_tol=1e-6):
        raise MechanismError(f"grid step {step!r} is not the step {spec.step!r} of the mechanism declared at the "
                         f"handshake (epsilon={spec.epsilon:g}, {spec.steps_per_std} steps per std)")
    lo, hi = level_bounds(spec)
    if not levels.size:
        return
    if int(levels.min()) < lo or int(levels.max()) > hi:
        raise MechanismError(f"grid levels must lie in [{lo}, {hi}] for the mechanism declared at the handshake "
                         f"(epsilon={spec.epsilon:g}: levels 0..{spec.max_level} plus noise of magnitude <= "
                         f"{-lo}); got {int(levels.min())}..{int(levels.max())}")
    limits = level_limits(spec.steps_per_std, int(levels.size))
    flat = levels.reshape(-1).astype(np.int64)
    outside = np.maximum(-flat, flat - spec.max_level)
    for j, most in enumerate(limits.tail_counts, start=1):
        count = int(np.count_nonzero(outside > j * spec.steps_per_std))
        if count > most:
            raise MechanismError(f"{count} of {levels.size} grid levels lie more than {j} noise std(s) outside "
                                 f"[0, {spec.max_level}]; the noise of the mechanism declared at the handshake "
                                 f"(epsilon={spec.epsilon:g}) puts more than {most} there with probability below "
                                 f"{PLAUSIBILITY_ALPHA:g}")
    total = int(flat.sum())
    if total < -limits.sum_slack or total > levels.size * spec.max_level + limits.sum_slack:
        raise MechanismError(f"the grid levels average {total / levels.size:.4g}; the mechanism declared at the "
                             f"handshake (epsilon={spec.epsilon:g}) averages within [0, {spec.max_level}] up to "
                             f"{limits.sum_slack / levels.size:.3g} but with probability below {PLAUSIBILITY_ALPHA:g}")


class HandshakeError(ValueError):
    """A handshake the server refuses; ``precondition`` is True when the client is fine but this server trains
    another network (FAILED_PRECONDITION), False for an invalid request (INVALID_ARGUMENT)."""

    def __init__(self, message: str, *, precondition: bool = False) -> None:
        super().__init__(message)
        self.precondition = precondition


def epsilon_floor(delta: float, min_epsilon: Optional[float] = None) -> float:
    """The smallest epsilon a server accepts from a client declaring ``delta``: ``min_epsilon`` if the operator set
    one, else the lower end of :func:`dpact_tf.grid.certified_epsilons` at ``delta`` (below it the noise is so
    large that one in-range upload moves the model by orders of magnitude more than an honest batch)."""
    if min_epsilon is not None:
        return float(min_epsilon)
    return _certified_floor(float(delta))


@functools.lru_cache(maxsize=64)
def _certified_floor(delta: float) -> float:
    try:
        return certified_epsilons(delta)[0]
    except ValueError:
        return math.inf  # no grid releases at this delta: every noisy handshake is refused


class PolicyError(HandshakeError):
    """A well-formed handshake whose (epsilon, delta) lies outside what this server's operator accepts."""


def check_handshake(request: pb.HandshakeRequest, *, cut: str, activation_shape: Sequence[int],
                    needs_epoch_size: bool = False, min_epsilon: Optional[float] = None,
                    max_delta: float = DEFAULT_MAX_DELTA) -> Optional[GridSpec]:
    """The release mechanism a client declares (None: no noise), or :class:`HandshakeError`: an epsilon that is
    not finite and > 0, a delta outside (0, 1), an encoding that does not match the noise (a noisy release
    travels as grid levels only), another cut or activation shape than the server's, no grid for (epsilon,
    delta), a missing or non-positive epoch size where the server's schedule counts epochs; and
    :class:`PolicyError` for a delta above ``max_delta`` or an epsilon below :func:`epsilon_floor`."""
    noisy = request.HasField("epsilon")
    if noisy and not (math.isfinite(request.epsilon) and request.epsilon > 0):
        raise HandshakeError(f"epsilon must be finite and > 0, or absent for no noise (got {request.epsilon})")
    if not 0 < request.delta < 1:
        raise HandshakeError(f"delta must be in (0, 1) (got {request.delta})")
    if noisy and request.delta > max_delta:
        raise PolicyError(f"this server accepts delta <= {max_delta:g} (serve --max-delta); the client states "
                          f"delta={request.delta:g}", precondition=True)
    if noisy:
        floor = epsilon_floor(request.delta, min_epsilon)
        if request.epsilon < floor:
            raise PolicyError(f"this server accepts epsilon >= {floor:.4g} at delta={request.delta:g} (serve "
                              f"--min-epsilon; by default the lower end of the grid's certified interval); the "
                              f"client states epsilon={request.epsilon:g}", precondition=True)
    if request.encoding not in WIRE_ENCODINGS:
        raise HandshakeError(f"encoding must be one of {WIRE_ENCODINGS} (got {request.encoding!r})")
    if noisy and request.encoding != GRID:
        raise HandshakeError(f"a noisy release (epsilon={request.epsilon:g}) must be uploaded as its integer grid "
                             f"levels (encoding {GRID!r}), not {request.encoding!r}: a float encoding of a noisy "
                             "release exposes its floating-point sample to exact tests")
    if not noisy and request.encoding == GRID:
        raise HandshakeError(f"the {GRID!r} encoding carries a noisy release: state its epsilon (or upload the "
                             f"no-noise baseline as one of {ENCODINGS})")
    if request.cut != cut or tuple(request.activation_shape) != tuple(activation_shape):
        raise HandshakeError(f"this server trains the network cut after {cut} with activations "
                             f"{list(activation_shape)}; the client states cut {request.cut!r} and "
                             f"{list(request.activation_shape)}", precondition=True)
    if request.HasField("epoch_images") and not 0 < request.epoch_images <= 10**12:
        raise HandshakeError(f"epoch_images must be in 1..10**12 (got {request.epoch_images})")
    if needs_epoch_size and not request.HasField("epoch_images"):
        raise HandshakeError("this server decays its learning rate per epoch of each client's data: state the "
                             "number of training images in one epoch (epoch_images)", precondition=True)
    if not noisy:
        return None
    try:
        return _mechanism(request.epsilon, request.delta)
    except ValueError as err:
        raise HandshakeError(f"no release mechanism for this client: {err}") from None


@functools.lru_cache(maxsize=64)
def _mechanism(epsilon: float, delta: float) -> GridSpec:
    """The release mechanism a client declares with (epsilon, delta): :func:`dpact_tf.grid.check_release`."""
    return check_release(epsilon, delta)


def request_digest(request: pb.TrainStepRequest) -> bytes:
    """SHA-256 of what a step computes on (step id, activation, labels): a retry must match it exactly."""
    body = pb.TrainStepRequest(step=request.step, activation=request.activation, labels=request.labels)
    return hashlib.sha256(body.SerializeToString(deterministic=True)).digest()


def token_metadata(token: str) -> Tuple[Tuple[str, str], ...]:
    """The call metadata that carries the client's token."""
    return ((TOKEN_HEADER, f"Bearer {token}"),)
