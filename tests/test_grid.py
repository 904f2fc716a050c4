"""The release mechanism as implemented (dpact_tf.grid): its table, its sampler, its exact delta, its levels.

Exact tests where the mechanism is deterministic (the table's counts, the sampler at every threshold, the
TensorFlow/LiteRT samplers against the reference on the same words); statistical tests with the noise on
(10^6 draws against the table's exact pmf, OpenDP's discrete Gaussian sampler against the same pmf); and the
attacker's test: a server holding the model checks one release for exact consistency with a guessed clean
activation.
"""
import math

import mpmath
import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from dpact_tf import grid, grid_tf, privacy
from dpact_tf.layers import DPActivation

K = grid.STEPS_PER_STD
INT64 = np.iinfo(np.int64)


def _words(rng, shape):
    return rng.integers(INT64.min, INT64.max, shape, dtype=np.int64, endpoint=True)


def test_table_counts_are_a_distribution_with_the_discrete_gaussians_std():
    table = grid.noise_table()
    counts = [int(c) for c in table.magnitude_counts()]
    assert sum(counts) == 2 ** grid.MAGNITUDE_BITS and min(counts) >= 0
    assert np.all(np.diff(table.thresholds) >= 0) and table.thresholds[-1] < 2 ** grid.MAGNITUDE_BITS
    z, p = table.pmf()
    assert p.sum() == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_array_equal(p, p[::-1])
    # N_Z(0, sigma^2) has variance sigma^2 (1 - O(e^{-2 pi^2 sigma^2})): exactly K^2 to float precision here.
    assert math.sqrt((p * z * z).sum()) == pytest.approx(K, rel=1e-12)


def test_table_is_the_discrete_gaussian_to_its_resolution():
    # An independent computation of N_Z(0, K^2): every probability within one count (2^-56) of the table's.
    table = grid.noise_table()
    z, p = table.pmf()
    with mpmath.workdps(40):
        w = [mpmath.exp(-mpmath.mpf(int(v)) ** 2 / (2 * K * K)) for v in range(-40 * K, 40 * K + 1)]
        total = mpmath.fsum(w)
        ideal = np.array([float(w[int(v) + 40 * K] / total) for v in z])
        outside = float(1 - mpmath.fsum(w[int(z[0]) + 40 * K:int(z[-1]) + 40 * K + 1]) / total)
    assert np.max(np.abs(p - ideal)) <= 2.0 ** -55
    assert outside < 2.0 ** -54  # the table stops where the rest rounds to zero counts


def test_sampler_is_exact_at_every_threshold():
    # |Z| counts the thresholds <= v >> 8: v just below a threshold and at it, with any low 8 bits and either
    # sign bit; the expected count by a plain loop over the thresholds.
    table = grid.noise_table()
    c = [int(t) for t in table.thresholds]
    magnitude_bits = sorted({max(t - 1, 0) for t in c} | set(c) | {0, 2 ** grid.MAGNITUDE_BITS - 1})
    v = np.array([(m << 8) | low for m in magnitude_bits for low in (0, 0xFF)], np.int64)
    expected = np.array([sum(1 for t in c if t <= (int(x) >> 8)) for x in v])
    words = np.concatenate([v, -v - 1])  # the same magnitudes with the sign bit set
    got = grid.sample(words, table)
    np.testing.assert_array_equal(got[:len(v)], expected)
    np.testing.assert_array_equal(got[len(v):], -expected)
    extremes = np.array([INT64.min, -1, 0, INT64.max], np.int64)
    np.testing.assert_array_equal(grid.sample(extremes, table), [-len(c), 0, 0, len(c)])


@pytest.mark.parametrize("sampler", grid_tf.SAMPLERS)
def test_tensorflow_samplers_equal_the_reference_on_the_same_words(sampler):
    rng = np.random.default_rng(1)
    table = grid.noise_table()
    c = table.thresholds.astype(np.int64)
    edge = np.concatenate([(c - 1) << 8, c << 8, [INT64.min, -1, 0, INT64.max]])
    words = np.concatenate([_words(rng, 20000), edge, -edge - 1]).astype(np.int64)
    clean = rng.uniform(-0.1, 0.7, words.shape).astype(np.float32)
    for eps in (0.75, 1.0, 5.0, 20.0):
        spec = grid.grid_spec(eps, 1e-5, steps_per_std=K)
        got = grid_tf.release_levels(tf.constant(clean), tf.constant(words), tf.constant(spec.scale, tf.float32),
                                     tf.constant(spec.max_level), table, sampler=sampler).numpy()
        np.testing.assert_array_equal(got, grid.release(clean, words, spec))


def test_the_compiled_release_rounds_as_the_reference_on_millions_of_coordinates():
    # XLA fuses the release into one pass; a fused multiply-add in max(f, 0) * scale + u would move ~1 in 10^6
    # levels at this scale (an integer between the two roundings), so 4 million coordinates would show it.
    rng = np.random.default_rng(3)
    words = _words(rng, 1 << 22)
    clean = rng.uniform(0, 0.6, words.shape).astype(np.float32)
    spec = grid.grid_spec(20.0, 1e-5, steps_per_std=K)
    release = grid_tf.compiled_release_levels(grid.noise_table(K))
    got = release(tf.constant(clean), tf.constant(words), tf.constant(spec.scale, tf.float32),
                  tf.constant(spec.max_level)).numpy()
    np.testing.assert_array_equal(got, grid.release(clean, words, spec))


def _chi2_pvalue(observed: np.ndarray, expected: np.ndarray) -> float:
    # Pool the tails into bins with >= 5 expected counts.
    order = np.argsort(-expected)
    obs, exp = observed[order], expected[order]
    keep = exp >= 5
    obs_b = np.concatenate([obs[keep], [obs[~keep].sum()]])
    exp_b = np.concatenate([exp[keep], [exp[~keep].sum()]])
    if exp_b[-1] < 5:
        obs_b[-2] += obs_b[-1]
        exp_b[-2] += exp_b[-1]
        obs_b, exp_b = obs_b[:-1], exp_b[:-1]
    return float(stats.chisquare(obs_b, exp_b * obs_b.sum() / exp_b.sum()).pvalue)


def test_a_million_draws_match_the_tables_pmf():
    z, p = grid.noise_table().pmf()
    draws = grid.sample(_words(np.random.default_rng(2), 1_000_000))
    observed = np.bincount(draws - z[0], minlength=len(z)).astype(float)
    assert _chi2_pvalue(observed, p * len(draws)) > 1e-4


def test_opendp_discrete_gaussian_matches_the_tables_pmf():
    # OpenDP's exact discrete Gaussian sampler (Canonne, Kamath & Steinke) as the oracle for our distribution.
    dp = pytest.importorskip("opendp.prelude", reason="pip install opendp (in requirements.lock)")
    dp.enable_features("contrib")
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int)
    draws = np.asarray((space >> dp.m.then_gaussian(scale=float(K)))([0] * 200_000))
    z, p = grid.noise_table().pmf()
    assert draws.min() >= z[0] and draws.max() <= z[-1]
    observed = np.bincount(draws - z[0], minlength=len(z)).astype(float)
    assert _chi2_pvalue(observed, p * len(draws)) > 1e-4


def test_shift_delta_agrees_with_dp_accountings_pld_of_the_same_pmfs():
    from dp_accounting.pld import privacy_loss_distribution as pld

    table = grid.noise_table()
    z, p = table.pmf()
    for shift, eps in ((3, 1.0), (14, 5.0), (54, 20.0)):
        upper = {int(v): math.log(q) for v, q in zip(z, p) if q > 0}
        lower = {int(v) + shift: math.log(q) for v, q in zip(z, p) if q > 0}
        dist = pld.from_two_probability_mass_functions(lower, upper, value_discretization_interval=1e-4)
        exact = grid.shift_delta(eps, shift, table)
        # The PLD rounds privacy losses up (pessimistic): between the exact delta and the exact delta a hair
        # below epsilon.
        got = dist.get_delta_for_epsilon(eps)
        assert exact - 1e-15 <= got <= grid.shift_delta(eps - 1e-3, shift, table) + 1e-15


@pytest.mark.parametrize("eps", [1, 2, 3, 4, 5, 10, 20])
def test_the_papers_epsilons_release_with_their_delta_as_implemented(eps):
    spec = grid.grid_spec(eps, 1e-5)
    assert spec.steps_per_std == K and spec.delta <= 1e-5
    # The shift bound is the true range in grid steps, rounded up.
    assert spec.max_level == math.ceil(privacy.PAPER_ACTIVATION_RANGE * spec.scale - 1e-6)
    assert spec.delta == grid.implemented_delta(eps, spec.max_level)


def test_certified_interval_holds_everywhere_inside_and_the_grid_fails_outside():
    lo, hi = grid.certified_epsilons(1e-5)
    assert 0.5 < lo < 1.0 and 20.0 < hi < 21.0  # contains the paper's sweep 1 .. 20
    for eps in np.concatenate([np.linspace(lo, hi, 60), [lo * (1 + 1e-9), hi]]):
        assert grid.grid_spec(float(eps), 1e-5, steps_per_std=K).delta <= 1e-5
    with pytest.raises(ValueError, match="above delta"):  # just past hi the table's tail gives out
        grid.grid_spec(hi * 1.02, 1e-5, steps_per_std=K)
    with pytest.raises(ValueError, match="above delta"):  # at small epsilon the rounding up of R / g does
        grid.grid_spec(0.2, 1e-5, steps_per_std=K)
    assert grid.grid_spec(0.2, 1e-5).steps_per_std > K  # ... and a finer grid is chosen


def test_refusals_say_what_to_do():
    with pytest.raises(ValueError, match="too small"):
        grid.grid_spec(1e-300, 1e-5)
    with pytest.raises(ValueError, match="steps_per_std must be an integer"):
        grid.noise_table(1)
    with pytest.raises(ValueError, match="words must be int64"):
        grid.sample(np.zeros(3, np.uint64))
    assert grid.check_release(None, 1e-5) is None and grid.check_release(math.inf, 1e-5) is None


def test_levels_stay_in_the_grid_whatever_the_activation():
    spec = grid.grid_spec(5.0, 1e-5)
    rng = np.random.default_rng(3)
    clean = np.array([-1.0, 0.0, 0.1, privacy.PAPER_ACTIVATION_RANGE, 1.0, 1e30, np.inf], np.float32)
    words = _words(rng, (1000, clean.size))
    levels = grid.release(np.broadcast_to(clean, words.shape), words, spec)
    k = levels - grid.sample(words)
    assert k.min() == 0 and k.max() == spec.max_level  # out-of-range values (1e30, inf) land anywhere in [0, D]
    assert np.all(k[:, :2] == 0) and np.all(k[:, 4] == spec.max_level)
    top = privacy.PAPER_ACTIVATION_RANGE * spec.scale  # the range's top: its two dithered levels, the upper one D
    assert set(np.unique(k[:, 3])) == {math.floor(top), spec.max_level}


def test_dithered_rounding_is_unbiased():
    spec = grid.grid_spec(5.0, 1e-5)
    f = np.float32(0.1234)
    words = _words(np.random.default_rng(4), 200_000)
    k = grid.release(np.full(words.shape, f), words, spec) - grid.sample(words)
    assert set(np.unique(k)) <= {math.floor(f * spec.scale), math.floor(f * spec.scale) + 1}
    # E[k] = x up to the dither's 1/512; the std of the mean is <= 0.5 / sqrt(n).
    assert abs(k.mean() - float(f) * spec.scale) < 1 / 512 + 6 * 0.5 / math.sqrt(len(k))


def test_release_pmf_is_what_the_layer_releases():
    # 10^5 releases of one coordinate through the Keras layer against the exact likelihood the server computes.
    layer = DPActivation(epsilon=3.0)
    pre = tf.fill((1, 1000, 100, 1), 0.7)  # 10^5 coordinates with the same clean value (one channel: no window)
    clean = float(layer.normalize(pre).numpy().ravel()[0])
    levels = layer.release_levels(layer.normalize(pre)).numpy().ravel()
    n, p = grid.release_pmf(clean, layer.spec)
    assert levels.min() >= n[0] and levels.max() <= n[-1]
    observed = np.bincount(levels - n[0], minlength=len(n)).astype(float)
    assert _chi2_pvalue(observed, p * len(levels)) > 1e-4


@pytest.mark.parametrize("eps", [1.0, 5.0, 20.0])
def test_the_servers_exact_consistency_test_cannot_tell_neighbours_apart(eps):
    # The server holds the model: for one release it checks, coordinate by coordinate, whether the released
    # integer is a possible release of a guessed clean activation (the float32 Box-Muller release failed this:
    # the true activation was consistent everywhere, a neighbour's almost nowhere).  On the grid every integer in
    # the table's support is possible, so the true activation and a neighbour's are both consistent everywhere.
    layer = DPActivation(epsilon=eps)
    rng = np.random.default_rng(5)
    pre = tf.constant(rng.uniform(0, 1, (1, 32, 32, 16)).astype(np.float32))
    clean = layer.normalize(pre).numpy()
    moved = clean.copy()
    moved.flat[100] = min(float(moved.flat[100]) + 0.01, privacy.PAPER_ACTIVATION_RANGE)
    rates = {"true": [], "neighbour": []}
    for _ in range(20):
        levels = layer.release_levels(tf.constant(clean)).numpy()
        for name, guess in (("true", clean), ("neighbour", moved)):
            x = np.maximum(guess, 0) * np.float32(layer.spec.scale)
            lo = np.floor(x).astype(np.int64)
            hi = np.minimum(lo + 1, layer.spec.max_level)
            t = grid.noise_table(layer.spec.steps_per_std).max_magnitude
            consistent = (np.abs(levels - lo) <= t) | (np.abs(levels - hi) <= t)
            rates[name].append(consistent.mean())
    assert np.mean(rates["true"]) == 1.0 and np.mean(rates["neighbour"]) == 1.0
    # What does tell them apart is the likelihood ratio of the moved coordinate: bounded by e^eps except on a
    # set of releases of probability at most the delta as implemented.
    n1, p1 = grid.release_pmf(float(clean.flat[100]), layer.spec)
    n2, p2 = grid.release_pmf(float(moved.flat[100]), layer.spec)
    lo_n = min(n1[0], n2[0])
    a = np.zeros(max(n1[-1], n2[-1]) - lo_n + 1)
    b = a.copy()
    a[n1 - lo_n] = p1
    b[n2 - lo_n] = p2
    excess = max(np.maximum(0, a - math.exp(eps) * b).sum(), np.maximum(0, b - math.exp(eps) * a).sum())
    assert excess <= layer.spec.delta + 1e-15


def _implemented_markdown(rows):
    lines = ["| $\\epsilon$ | grid steps per std $K$ | grid step $g$ | largest level $D$ | $\\delta$ as implemented "
             "| $\\delta$ of the continuous Gaussian |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['epsilon']:g} | {r['steps_per_std']} | {r['step']:.4f} | {r['max_level']} "
                     f"| {r['delta_implemented']:.2e} | {r['delta_gaussian']:.2e} |")
    return "\n".join(lines)


def test_method_chapter_states_the_delta_as_implemented():
    import os

    chapter = open(os.path.join(os.path.dirname(__file__), "..", "book", "method.md")).read()
    table = _implemented_markdown(grid.implemented_table([1, 2, 3, 5, 10, 14, 20]))
    assert table in chapter, f"regenerate the grid table in book/method.md:\n{table}"
    lo, hi = grid.certified_epsilons(1e-5)
    assert f"{lo:.3f} \\le \\epsilon \\le {hi:.2f}" in chapter


def test_the_consistency_test_cannot_tell_an_image_from_one_with_a_sub_pixel_changed_by_one_grey_level():
    # The server holds the client's weights: it computes the clean activation of the true image and of the same
    # image with one sub-pixel one grey level brighter, and checks a release of the true image against both.
    from dpact_tf import build_split_vggface

    split = build_split_vggface((32, 32, 3), 3, width=1 / 4, fc_units=8, epsilon=5.0)
    layer = split.dp_layer
    clean_path = tf.keras.Model(split.client.input, layer.input)
    image = np.random.default_rng(6).integers(0, 255, (1, 32, 32, 3)).astype(np.float32)
    brighter = image.copy()
    brighter[0, 16, 16, 1] += 1
    clean, guess = (layer.normalize(clean_path(x / 255.0)).numpy() for x in (image, brighter))
    assert np.count_nonzero(clean != guess) > 0  # the grey level moves some coordinates
    t = grid.noise_table(layer.spec.steps_per_std).max_magnitude
    for _ in range(10):
        levels = layer.release_levels(tf.constant(clean)).numpy()
        for candidate in (clean, guess):
            lo = np.floor(np.maximum(candidate, 0) * np.float32(layer.spec.scale)).astype(np.int64)
            assert np.all((np.abs(levels - lo) <= t) | (np.abs(levels - lo - 1) <= t))
