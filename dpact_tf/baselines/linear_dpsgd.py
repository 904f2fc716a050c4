"""DP-SGD on the last layer: a softmax classifier over a public model's features (Tramer & Boneh, ICLR 2021).

The setting of the paper's Fig. 4 (a public model, only the output layer trained on the private faces), but
private the way DP-SGD is: the data holder clips every example's gradient and adds Gaussian noise to their sum.
For a linear softmax layer, logits = x W + b, the gradient of one example's cross-entropy is the outer product

    g_i = [x_i, 1]^T (p_i - e_{y_i}),   ||g_i||_F = ||[x_i, 1]||_2 ||p_i - e_{y_i}||_2,

so every example's gradient norm -- and the clipped sum -- is exact and costs one matrix product
(:func:`clipped_gradient_sum`); no per-example Jacobian is formed.  Pure NumPy plus dp-accounting.

Sampling is **Poisson, as accounted**: each step includes every example independently with probability q, and
the noisy sum is divided by the expected batch size q n (Abadi et al. 2016).  The accountant
(:func:`epsilon`) composes ``steps`` Poisson-subsampled Gaussian mechanisms with dp-accounting's RDP or PLD
accountant: add-or-remove-one adjacency, the labels covered (they enter the gradient), every iterate released.

:func:`train_softmax` with ``noise_multiplier=None`` and ``clip=None`` is plain minibatch training (shuffled
batches): the non-private reference and the server's training on released features (post-processing).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
from typing import Optional, Sequence, Tuple

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

__all__ = ["SoftmaxModel", "clipped_gradient_sum", "train_softmax", "epsilon", "calibrate_noise_multiplier",
           "composed_epsilon", "steps_for", "RDP_ORDERS"]

RDP_ORDERS = sorted(set(rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS) | {1.25, 1.5, 1.75})


@dataclasses.dataclass(frozen=True)
class SoftmaxModel:
    """A linear softmax classifier: logits = features @ weights + bias."""

    weights: np.ndarray  # [d, k]
    bias: np.ndarray     # [k]

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, np.float64) @ self.weights + self.bias

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(np.argmax(self.logits(features), -1) == np.asarray(labels)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def clipped_gradient_sum(model: SoftmaxModel, features: np.ndarray, labels: np.ndarray,
                         clip: Optional[float]) -> tuple:
    """(sum_i clip(g_i) for the weights, ... for the bias, the per-example norms ||g_i||) of the cross-entropy.

    clip(g) = g min(1, C / ||g||) over the whole per-example gradient (weights and bias together); ``clip=None``
    sums the unclipped gradients.
    """
    x = np.asarray(features, model.weights.dtype)
    y = np.asarray(labels)
    err = _softmax(x @ model.weights + model.bias)
    err[np.arange(len(y)), y] -= 1.0
    norms = np.sqrt((np.sum(x * x, axis=1) + 1.0) * np.sum(err * err, axis=1))
    if clip is not None:
        err = err * np.minimum(1.0, clip / np.maximum(norms, 1e-12))[:, None]
    return x.T @ err, err.sum(axis=0), norms


def _check(noise_multiplier: Optional[float], clip: Optional[float], n: int, batch_size: int, epochs: int) -> None:
    if n < 1:
        raise ValueError("train_softmax needs at least one training example")
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1 (got {batch_size}, {epochs})")
    if noise_multiplier is not None and (clip is None or not noise_multiplier >= 0):
        raise ValueError(f"DP-SGD needs clip > 0 and noise_multiplier >= 0 (got clip={clip}, "
                         f"noise_multiplier={noise_multiplier}); pass noise_multiplier=None for plain training")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 (got {clip}); use clip=None for no clipping")


def steps_for(n: int, batch_size: int, epochs: int) -> int:
    """Steps of a run: ``epochs`` passes of ceil(n / batch_size) (expected) batches."""
    return int(epochs) * math.ceil(n / batch_size)


def train_softmax(features: np.ndarray, labels: np.ndarray, *, num_classes: int, epochs: int, batch_size: int,
                  learning_rate: float, clip: Optional[float] = None, noise_multiplier: Optional[float] = None,
                  momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0) -> SoftmaxModel:
    """Train a softmax layer by minibatch SGD with momentum, from zero weights.

    With ``noise_multiplier`` (DP-SGD): each of :func:`steps_for` steps Poisson-samples the examples with rate
    q = batch_size / n, clips each gradient to ``clip``, adds N(0, (z C)^2) to every coordinate of the sum and
    divides by q n.  Without: shuffled batches of ``batch_size``, each gradient clipped to ``clip`` if given.
    ``weight_decay`` adds lambda W to the gradient (data-independent: no privacy cost).
    """
    x = np.asarray(features, np.float32)  # float32 arithmetic: the noise dwarfs its rounding
    y = np.asarray(labels).astype(np.int64)
    n, d = x.shape
    _check(noise_multiplier, clip, n, batch_size, epochs)
    rng = np.random.default_rng(seed)
    model = SoftmaxModel(np.zeros((d, num_classes), np.float32), np.zeros(num_classes, np.float32))
    vel_w, vel_b = np.zeros_like(model.weights), np.zeros_like(model.bias)
    q = min(1.0, batch_size / n)
    for epoch in range(int(epochs)):
        if noise_multiplier is None:
            order = rng.permutation(n)
            batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
        else:
            batches = [np.flatnonzero(rng.random(n) < q) for _ in range(math.ceil(n / batch_size))]
        for idx in batches:
            gw, gb, _ = clipped_gradient_sum(model, x[idx], y[idx], clip)
            if noise_multiplier is None:
                scale = max(len(idx), 1)
            else:
                std = noise_multiplier * clip
                gw = gw + rng.normal(0.0, std, gw.shape).astype(np.float32)
                gb = gb + rng.normal(0.0, std, gb.shape).astype(np.float32)
                scale = q * n
            gw = gw / scale + weight_decay * model.weights
            gb = gb / scale
            vel_w = momentum * vel_w - learning_rate * gw
            vel_b = momentum * vel_b - learning_rate * gb
            model = SoftmaxModel(model.weights + vel_w, model.bias + vel_b)
    return model


def _event(noise_multiplier: float, sampling_rate: float, steps: int) -> dp_accounting.DpEvent:
    step = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, int(steps))


def _accountant(name: str):
    if name == "rdp":
        return rdp.RdpAccountant(RDP_ORDERS)
    if name == "pld":
        return pld.PLDAccountant(value_discretization_interval=1e-3)
    raise ValueError(f"accountant must be 'rdp' or 'pld' (got {name!r})")


@functools.lru_cache(maxsize=1024)  # pure; a search asks the same question once per seed and candidate
def epsilon(noise_multiplier: float, *, sampling_rate: float, steps: int, delta: float,
            accountant: str = "rdp", runs: int = 1) -> float:
    """Per-example epsilon at ``delta`` of ``runs`` DP-SGD runs of ``steps`` Poisson-sampled Gaussian steps
    (add-or-remove-one adjacency).  ``runs`` > 1 composes several runs on the same examples: the cost of a
    hyper-parameter search that trains each candidate on them (Papernot & Steinke 2022 count it the same way
    before their tighter random-stopping bounds)."""
    if not noise_multiplier > 0:
        raise ValueError(f"noise_multiplier must be > 0 (got {noise_multiplier})")
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"sampling_rate must be in (0, 1] (got {sampling_rate})")
    if int(steps) < 1 or int(runs) < 1:
        raise ValueError(f"steps and runs must be >= 1 (got {steps}, {runs})")
    event = dp_accounting.SelfComposedDpEvent(_event(noise_multiplier, sampling_rate, steps), int(runs))
    return float(_accountant(accountant).compose(event).get_epsilon(delta))


def composed_epsilon(runs: Sequence[Tuple[float, float, int]], *, delta: float, accountant: str = "rdp") -> float:
    """Per-example epsilon at ``delta`` of several DP-SGD runs on the same examples, each given as
    (noise multiplier, sampling rate, steps): what a hyper-parameter search that trains every candidate on the
    private data costs, composed (Papernot & Steinke 2022 give tighter bounds for a randomized number of runs)."""
    if not runs:
        raise ValueError("composed_epsilon needs at least one run")
    # identical runs (the candidates of one schedule share a noise multiplier) compose as one self-composed event:
    # the same RDP sum, each run's RDP computed once
    counts = collections.Counter((float(z), float(q), int(steps)) for z, q, steps in runs)
    events = [dp_accounting.SelfComposedDpEvent(_event(z, q, steps), n) for (z, q, steps), n in counts.items()]
    return float(_accountant(accountant).compose(dp_accounting.ComposedDpEvent(events)).get_epsilon(delta))


@functools.lru_cache(maxsize=256)  # pure; every seed and candidate of a search calibrates the same run
def calibrate_noise_multiplier(target_epsilon: float, *, sampling_rate: float, steps: int, delta: float,
                               accountant: str = "rdp") -> float:
    """The smallest noise multiplier whose :func:`epsilon` is at most ``target_epsilon`` (dp-accounting's
    ``calibrate_dp_mechanism``); ValueError for a target no multiplier in [0.05, 500] meets."""
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0 (got {target_epsilon})")
    lo, hi = 0.05, 500.0
    if epsilon(lo, sampling_rate=sampling_rate, steps=steps, delta=delta, accountant=accountant) <= target_epsilon:
        return lo
    if epsilon(hi, sampling_rate=sampling_rate, steps=steps, delta=delta, accountant=accountant) > target_epsilon:
        raise ValueError(f"target_epsilon={target_epsilon:g} needs a noise multiplier above {hi:g}; take fewer steps")
    z = dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant(accountant), lambda z: _event(z, sampling_rate, steps), target_epsilon, delta,
        dp_accounting.ExplicitBracketInterval(lo, hi), tol=1e-4)
    return float(z)
