"""Poisson-sampled batches: the sampling the RDP accountant of DP-SGD assumes (Abadi et al. 2016; Mironov et al. 2019).

Each step includes every training example independently with probability q = ``expected_batch_size`` / n, so a
batch's size varies around q n and may be empty.  An epoch is ceil(n / ``expected_batch_size``) such steps, the
count :func:`dpact_tf.baselines.dpsgd.dpsgd_epsilon` composes.  Shuffling the data into fixed-size batches is
what most training loops do, but the Poisson analysis is not a proof for it; sampling as accounted is.

Pair it with ``DPSGDTrainer(..., expected_batch_size=...)``, which divides the noisy gradient sum by the fixed
expected batch size (a released quantity must not depend on how many examples the batch happened to hold).
Pure NumPy; the batches are NumPy arrays the trainer converts.
"""
from __future__ import annotations

import math
from typing import Iterator, Tuple

import numpy as np

__all__ = ["PoissonBatches"]


class PoissonBatches:
    """One epoch of Poisson-sampled batches per iteration, fresh draws every epoch (like a reshuffled
    ``tf.data`` pipeline), as ``(float32 images in [0, 1], int32 labels)``.

    Args:
      images: uint8 [n, H, W, C] (scaled to [0, 1] batch by batch) or float images already in [0, 1].
      labels: integer [n].
      expected_batch_size: B; the sampling rate is q = B / n.
      seed: seeds the sampler (the same seed gives the same sequence of batches).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, expected_batch_size: int, seed: int = 0) -> None:
        n = len(labels)
        if len(images) != n or n < 1:
            raise ValueError(f"need as many images as labels, at least one (got {len(images)} images, {n} labels)")
        if int(expected_batch_size) != expected_batch_size or not 1 <= expected_batch_size <= n:
            raise ValueError(f"expected_batch_size must be an integer in [1, n={n}] (got {expected_batch_size})")
        self.images, self.labels = images, np.asarray(labels).astype(np.int32)
        self.expected_batch_size = int(expected_batch_size)
        self.sampling_rate = self.expected_batch_size / n
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        """Steps per epoch: ceil(n / B)."""
        return math.ceil(len(self.labels) / self.expected_batch_size)

    def __iter__(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        for _ in range(len(self)):
            idx = np.flatnonzero(self._rng.random(len(self.labels)) < self.sampling_rate)
            x = self.images[idx]
            x = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)
            yield x, self.labels[idx]
