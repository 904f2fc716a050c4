import itertools
import math

import numpy as np
import pytest
from scipy import optimize

from dpact_tf import sensitivity


def test_normalize_matches_tensorflow_lrn():
    import tensorflow as tf

    from dpact_tf.layers import normalize_activations
    x = np.random.default_rng(0).uniform(-0.5, 1.5, size=(3, 2, 2, 7)).astype(np.float32)
    np.testing.assert_allclose(sensitivity.normalize(x), normalize_activations(tf.constant(x)).numpy(), atol=1e-6)


def test_hand_values():
    # C = 1: f(1) = 1/sqrt(2 + 1), f(0) = 0 -> 1/3.  C = 2: a = (1, 0), a' = (0, 1): two windows, each
    # f = 1/sqrt(3) -> 2/3; no pair does better (both bounds agree).
    one = sensitivity.pixel_sensitivity(1)
    assert one.lower_sq == pytest.approx(1 / 3) and one.upper_sq == pytest.approx(1 / 3, rel=1e-9)
    assert one.exact
    two = sensitivity.pixel_sensitivity(2)
    assert two.lower_sq == pytest.approx(2 / 3) and two.upper_sq == pytest.approx(2 / 3, rel=1e-9)


@pytest.mark.parametrize("channels", [3, 4, 5, 6])
def test_lower_bound_is_the_binary_brute_force_and_attained(channels):
    res = sensitivity.pixel_sensitivity(channels)
    patterns = np.array(list(itertools.product([0.0, 1.0], repeat=channels)))
    f = sensitivity.normalize(patterns)
    brute = np.max(np.sum((f[:, None, :] - f[None, :, :]) ** 2, axis=-1))
    assert res.lower_sq == pytest.approx(brute, rel=1e-12)
    a, b = (np.array(p) for p in res.pair)
    assert sensitivity.pair_distance_sq(a, b) == pytest.approx(res.lower_sq, rel=1e-12)
    assert res.lower_sq <= res.upper_sq <= res.lower_sq * 1.02  # the cells make the bound tight to 2 %


@pytest.mark.parametrize("channels", [3, 5, 6])
def test_upper_bound_holds_against_continuous_search(channels):
    # brute force over the continuous box: many random starts of a bounded local optimizer
    res = sensitivity.pixel_sensitivity(channels)
    rng = np.random.default_rng(channels)
    best = 0.0
    for _ in range(60):
        z0 = rng.uniform(size=2 * channels)
        out = optimize.minimize(lambda z: -sensitivity.pair_distance_sq(z[:channels], z[channels:]), z0,
                                bounds=[(0, 1)] * (2 * channels), method="L-BFGS-B")
        best = max(best, -out.fun)
    assert best <= res.upper_sq + 1e-12
    assert best == pytest.approx(res.lower_sq, rel=1e-6)  # the search finds nothing above the binary pair


def test_upper_bound_holds_on_a_grid():
    # C = 3, every a, a' on the grid {0, 0.1, ..., 1}^3 (11^6 pairs)
    grid = np.array(list(itertools.product(np.linspace(0, 1, 11), repeat=3)))
    f = sensitivity.normalize(grid)
    sq = np.sum(f ** 2, axis=1)
    best = np.max(sq[:, None] + sq[None, :] - 2 * f @ f.T)
    res = sensitivity.pixel_sensitivity(3)
    assert res.lower_sq - 1e-12 <= best <= res.upper_sq + 1e-12


def test_paper_size_bracket():
    res = sensitivity.pixel_sensitivity(64)
    # the binary pattern 0110 0110 ... against its complement
    assert res.lower_sq == pytest.approx(97 / 6, abs=1e-9)  # 16.1667
    assert res.upper_sq < 16.21 and res.paper_sq == 32  # the simple bound 2 max ||f||^2 = 18.61 is looser
    coarse = sensitivity.pixel_sensitivity(64, cuts=(0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0))
    assert res.upper_sq < coarse.upper_sq < 16.5  # coarser cells: a looser (still valid) bound
    assert not res.exact


@pytest.mark.parametrize("beta", [0.25, 0.5, 0.75, 1.0, 0.3, 1.5])
@pytest.mark.parametrize("r", [0, 1, 2])
def test_the_window_terms_are_numpys_power_to_the_bit(r, beta):
    """The in-place terms equal hi[centre] / denom ** (2 beta) as numpy's ``**`` computes it, bit for bit."""
    rng = np.random.default_rng(7 + r)
    lo, hi = rng.uniform(0, 1, 9), rng.uniform(0, 1, 9)
    colour = rng.integers(0, 2, 9)
    bias, alpha = 1.7, 0.9
    grids = np.meshgrid(*([np.arange(9)] * (2 * r + 1)), indexing="ij", sparse=True)
    denom = bias + alpha * hi[grids[r]]
    for k, g in enumerate(grids):
        if k != r:
            denom = denom + alpha * lo[g] * (colour[g] == colour[grids[r]])
    expected = hi[grids[r]] / denom ** (2 * beta)
    got = sensitivity._window_terms(lo, hi, colour, r, bias, alpha, beta)
    assert got.shape == (9,) * (2 * r + 1) and got.dtype == np.float64
    assert np.array_equal(got.view(np.int64), np.broadcast_to(expected, got.shape).view(np.int64))


@pytest.mark.parametrize("beta", [0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("r,channels", [(1, 1), (1, 4), (2, 1), (2, 3), (2, 9)])
def test_the_programme_without_argmax_is_the_one_with_it(r, channels, beta):
    """The upper bound's programme (max accumulated value by value, two small buffers) returns exactly the traced
    programme's maximum (one buffer over the whole window), for every exponent numpy's power special-cases."""
    rng = np.random.default_rng(r * 100 + channels)
    lo = np.sort(rng.uniform(0, 1, 6))
    lo[-1] = 0.0
    hi = np.minimum(lo + rng.uniform(0, 0.3, 6), 1.0)
    hi[-1] = 0.0
    colour = rng.integers(0, 2, 6)
    lrn = dict(bias=2.0, alpha=1.0, beta=beta)
    fast, _ = sensitivity._max_q(lo, hi, colour, 5, channels, r, **lrn)
    traced, seq = sensitivity._max_q(lo, hi, colour, 5, channels, r, trace=True, **lrn)
    assert fast == traced and len(seq) == channels
    if channels <= 4:  # and it is the maximum of its objective, by brute force over every value sequence
        def q(v):
            total = 0.0
            for i, vi in enumerate(v):
                window = sum(lo[v[j]] for j in range(max(0, i - r), min(channels, i + r + 1))
                             if j != i and colour[v[j]] == colour[vi])
                total += hi[vi] / (2.0 + hi[vi] + window) ** (2 * beta)
            return total
        best = max(q(v) for v in itertools.product(range(6), repeat=channels))
        assert fast == pytest.approx(best, rel=1e-12) and q(tuple(seq)) == pytest.approx(best, rel=1e-12)


def test_the_verified_table_is_what_the_dynamic_programme_computes():
    """The stored upper bounds are the programme's output to the bit, and are used only at the defaults."""
    assert sensitivity._VERIFIED_UPPER_SQ
    for channels, stored in sensitivity._VERIFIED_UPPER_SQ.items():
        computed = sensitivity._upper_bound_sq(channels, 2, sensitivity.UPPER_BOUND_CUTS, bias=2.0, alpha=1.0,
                                               beta=0.5)
        assert computed == stored, (channels, computed, stored)
        assert sensitivity.pixel_sensitivity(channels).upper_sq == stored


def test_the_table_is_read_only_at_the_defaults(monkeypatch):
    sensitivity.pixel_sensitivity.cache_clear()
    monkeypatch.setitem(sensitivity._VERIFIED_UPPER_SQ, 3, 7.0)  # a marker no programme returns
    try:
        assert sensitivity.pixel_sensitivity(3).upper_sq == 7.0
        for change in ({"bias": 2.5}, {"alpha": 0.5}, {"beta": 0.75}, {"depth_radius": 1},
                       {"cuts": (0.0, 0.5, 1.0)}):
            assert sensitivity.pixel_sensitivity(3, **change).upper_sq < 2, change
        assert sensitivity.pixel_sensitivity(4).upper_sq < 2
    finally:
        sensitivity.pixel_sensitivity.cache_clear()


def test_image_sensitivity_and_errors():
    assert sensitivity.image_sensitivity(2.0, 3, 4) == pytest.approx(math.sqrt(24))
    with pytest.raises(ValueError, match="channels"):
        sensitivity.pixel_sensitivity(0)
    with pytest.raises(ValueError, match="increasing"):
        sensitivity.pixel_sensitivity(4, beta=2.0, bias=0.5)
    with pytest.raises(ValueError, match="cuts"):
        sensitivity.pixel_sensitivity(4, cuts=(0.0, 0.5))
    with pytest.raises(ValueError, match="height"):
        sensitivity.image_sensitivity(1.0, 0, 4)
