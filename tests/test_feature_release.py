"""The per-image feature release and randomized response with a prior."""
import math

import numpy as np
import pytest

from dpact_tf import privacy
from dpact_tf.baselines import feature_release as F


def test_clip_rows_is_exact():
    x = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])  # norms 5, 0.5, 0
    np.testing.assert_allclose(F.clip_rows(x, 1.0), [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])


def test_release_without_noise_is_centred_and_clipped():
    x = np.array([[4.0, 4.0], [1.0, 1.0]])
    got = F.release_features(x, epsilon=None, delta=1e-5, clip=1.0, center=np.array([1.0, 0.0]))
    # rows - centre = (3, 4) -> norm 5 -> (0.6, 0.8); (0, 1) stays
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 1.0]])


def test_std_is_the_analytic_gaussian_for_sensitivity_2c_and_round_trips():
    s = F.release_std(epsilon=2.0, delta=1e-5, clip=0.5)
    assert s == pytest.approx(privacy.gaussian_sigma(2.0, 1e-5, method="analytic") * 1.0)
    assert privacy.analytic_gaussian_delta(2.0, s, sensitivity=1.0) == pytest.approx(1e-5, rel=1e-6)
    assert F.release_epsilon(s, delta=1e-5, clip=0.5) == pytest.approx(2.0, rel=1e-8)


def test_release_noise_has_the_calibrated_std():
    n = 20_000
    r = F.release_features(np.zeros((n, 1)), epsilon=4.0, delta=1e-5, clip=1.0, seed=7)
    s = F.release_std(epsilon=4.0, delta=1e-5, clip=1.0)
    assert np.std(r) == pytest.approx(s, rel=4 / math.sqrt(2 * n))  # 4 standard errors of a sample std
    assert abs(np.mean(r)) < 4 * s / math.sqrt(n)
    again = F.release_features(np.zeros((n, 1)), epsilon=4.0, delta=1e-5, clip=1.0, seed=8)
    assert not np.array_equal(r, again)


def test_rr_keep_and_probabilities():
    assert F.rr_keep(np.full(10, 0.1), 1.0) == 10  # a uniform prior keeps every class: plain RR
    assert F.rr_keep(np.array([0.97, 0.01, 0.01, 0.01]), 1.0) == 1  # a confident prior keeps one
    eps, n, k = 1.0, 20_000, 4
    out = F.rr_with_prior(np.zeros(n, int), np.full((n, k), 1 / k), epsilon=eps, seed=3)
    keep = math.e / (math.e + k - 1)
    assert np.mean(out == 0) == pytest.approx(keep, abs=4 * math.sqrt(keep * (1 - keep) / n))
    # a label outside the kept classes becomes a uniform one of them
    prior = np.tile([0.9, 0.1, 0.0, 0.0], (n, 1))
    k2 = F.rr_keep(prior[0], 0.5)
    out = F.rr_with_prior(np.full(n, 3), prior, epsilon=0.5, seed=4)
    assert set(np.unique(out)) <= set(range(k2))


def test_rr_is_epsilon_dp_for_every_output():
    # Exact output distributions for each true label under one prior: the likelihood ratio is at most e^eps.
    prior = np.array([0.5, 0.3, 0.15, 0.05])
    eps = 0.7
    k = F.rr_keep(prior, eps)
    e = math.exp(eps)
    dist = np.zeros((4, 4))
    for y in range(4):
        top = list(np.argsort(-prior, kind="stable")[:k])
        for o in top:
            dist[y, o] = (e / (e + k - 1) if o == y else 1 / (e + k - 1)) if y in top else 1 / k
    ratios = dist[:, None, :][..., top] / dist[None, :, :][..., top]
    assert ratios.max() <= e * (1 + 1e-12)
    n = 20_000  # the implementation draws from these distributions (4 standard errors per frequency)
    for y in range(4):
        out = F.rr_with_prior(np.full(n, y), np.tile(prior, (n, 1)), epsilon=eps, seed=10 + y)
        freq = np.bincount(out, minlength=4) / n
        assert np.all(np.abs(freq - dist[y]) <= 4 * np.sqrt(dist[y] * (1 - dist[y]) / n) + 1e-12)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="clip"):
        F.clip_rows(np.ones((2, 2)), 0.0)
    with pytest.raises(ValueError, match="priors"):
        F.rr_with_prior(np.zeros(3, int), np.ones((2, 4)), epsilon=1.0)
    with pytest.raises(ValueError, match="features"):
        F.release_features(np.ones(3), epsilon=1.0, delta=1e-5, clip=1.0)
