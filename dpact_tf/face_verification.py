"""How well face descriptors separate identities: pair verification at a distance threshold, nearest class mean.

Verification follows dlib's use of its face descriptors: two images show the same person when their descriptors
are closer than a threshold (0.6 for dlib's face ResNet).  Pairs are every same-person pair of a labelled set and
as many different-person pairs drawn at random (seeded), so chance accuracy is 50 %.  Pure NumPy.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np

__all__ = ["VerificationResult", "verification_pairs", "verify_pairs", "nearest_mean_accuracy"]


@dataclasses.dataclass(frozen=True)
class VerificationResult:
    """Accuracy of same/different decisions ``distance < threshold`` on balanced pairs."""

    accuracy: float          # fraction of pairs decided correctly (chance: 0.5)
    true_accept: float       # fraction of same-person pairs closer than the threshold
    true_reject: float       # fraction of different-person pairs at or beyond the threshold
    pairs: int               # number of pairs (half same, half different)
    threshold: float         # the distance threshold used


def verification_pairs(labels: np.ndarray, *, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(same, different): index pairs ``[P, 2]``, every same-label pair and as many random different-label pairs."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) < 2:
        raise ValueError(f"labels must be a 1-d array of at least 2 labels (got shape {labels.shape})")
    i, j = np.triu_indices(len(labels), k=1)
    same_mask = labels[i] == labels[j]
    same = np.stack([i[same_mask], j[same_mask]], axis=1)
    if len(same) == 0 or same_mask.all():
        raise ValueError("labels need at least one repeated label and two distinct labels to form pairs")
    rng = np.random.default_rng(seed)
    diff = []
    need = len(same)
    while need > 0:
        a = rng.integers(0, len(labels), 2 * need)
        b = rng.integers(0, len(labels), 2 * need)
        keep = labels[a] != labels[b]
        pick = np.stack([a[keep], b[keep]], axis=1)[:need]
        diff.append(pick)
        need -= len(pick)
    return same, np.concatenate(diff)


def verify_pairs(features: np.ndarray, same: np.ndarray, different: np.ndarray, *,
                 threshold: float) -> VerificationResult:
    """Decide every pair by ``||f_a - f_b|| < threshold``."""
    features = np.asarray(features, np.float64)
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0 (got {threshold})")

    def dist(p):
        return np.linalg.norm(features[p[:, 0]] - features[p[:, 1]], axis=1)
    ta = float(np.mean(dist(same) < threshold))
    tr = float(np.mean(dist(different) >= threshold))
    n = len(same) + len(different)
    acc = (ta * len(same) + tr * len(different)) / n
    return VerificationResult(accuracy=acc, true_accept=ta, true_reject=tr, pairs=n, threshold=float(threshold))


def nearest_mean_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                          test_labels: np.ndarray) -> float:
    """Accuracy of assigning each test image the label of the nearest class mean (Euclidean) of the training set."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    classes = np.unique(train_labels)
    if not np.isin(test_labels, classes).all():
        raise ValueError("every test label must occur in the training set")
    means = np.stack([np.asarray(train_features, np.float64)[train_labels == c].mean(axis=0) for c in classes])
    d = ((np.asarray(test_features, np.float64)[:, None, :] - means[None]) ** 2).sum(-1)
    return float(np.mean(classes[d.argmin(axis=1)] == test_labels))
