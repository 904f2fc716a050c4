"""The phone head's release, tested the way the server attacks it: it holds the .tflite and one release.

The server can run the model's ``clean`` signature on any image, so it knows the clean activation of every
hypothesis it wants to test.  Float noise lives on a finite set of float32 values, so a server can test whether
a release is *exactly* consistent with a hypothesis and tell two neighbouring images apart at any epsilon.  The grid
release is integers n = min(floor(f * scale + (j + 1/2) / 256), D) + Z with Z from a table whose support is every
integer in [-T, T]: a release is consistent with every hypothesis whose dithered levels are within T of it, so the
true activation and a neighbour's are both consistent with probability 1, and what is left to the attacker is the
likelihood ratio, whose delta is computed exactly here and compared with :func:`dpact_tf.grid.implemented_delta`.
"""
import functools
import math
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import build_split_vggface, grid, grid_tf, privacy
from dpact_tf.deploy.convert import convert_client_head
from dpact_tf.deploy.runtime import HeadRunner

SHAPE = (32, 32, 3)
DELTA = 1e-5
LO, HI = grid.certified_epsilons(DELTA)
RANGE = float(np.float32(privacy.PAPER_ACTIVATION_RANGE))  # the largest clean value of a coordinate


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    tf.keras.utils.set_random_seed(0)  # the weights (the release's words are the tests' own)
    split = build_split_vggface(SHAPE, 3, width=1 / 8, fc_units=8, epsilon=5.0, noise_seed=0)
    path = str(tmp_path_factory.mktemp("exact") / "head.tflite")
    meta = convert_client_head(split.client, path)
    return split, path, meta


def _signatures(path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path)
    return it.get_signature_runner("clean"), it.get_signature_runner("release")


def _images(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE, dtype=np.uint8)


def _words(shape, seed):
    """Uniform int64 words with these scattered among them, for both signs: the words at every threshold of the table
    and next to it, 0, 255, 256 and 2^63 - 1 (-2^63 for the negative sign: all magnitude bits set, the largest |Z|)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(-2 ** 63, 2 ** 63 - 1, shape, dtype=np.int64, endpoint=True)
    t = grid.noise_table().thresholds.astype(np.int64) << 8
    edges = np.concatenate([t - 1, t, t + 255, t + 256, [0, 1, 255, 256, 2 ** 63 - 1]])
    edges = np.concatenate([edges, -edges - 1])  # the same magnitudes with a negative sign
    flat = words.reshape(-1)
    where = rng.permutation(flat.size)[:edges.size]
    flat[where] = edges[:where.size]
    return words


def _spec(epsilon):
    return grid.grid_spec(epsilon, DELTA, steps_per_std=grid.STEPS_PER_STD)


def _epsilons_of_the_head(meta):
    lo, hi = meta["release"]["certified_epsilons"]
    return [lo, 1.0, 5.0, 13.7, hi]


def test_certified_interval_is_the_float32_one_inside_grids(head):
    lo, hi = head[2]["release"]["certified_epsilons"]
    assert LO <= lo < LO * (1 + 1e-7) and HI * (1 - 1e-7) < hi <= HI
    assert np.float32(lo) == lo and np.float32(hi) == hi
    for eps in (lo, hi):  # both ends release within delta as implemented
        assert _spec(eps).delta <= DELTA


def _bucket_edges(steps_per_std):
    """The words at both ends of every bucket of the lookup sampler, and next to them (both signs)."""
    v_lo, v_hi = grid_tf._bucket_words(grid_tf.lookup_tables(grid.noise_table(steps_per_std)).shift)
    v = np.concatenate([v_lo, v_hi, np.maximum(v_lo - 1, 0), np.minimum(v_hi + 1, 2 ** 63 - 1)])
    return np.concatenate([v, -v - 1])


@pytest.mark.parametrize("steps_per_std", [grid.STEPS_PER_STD, 64])
def test_every_sampler_equals_the_reference_on_every_threshold(steps_per_std):
    # The TFLite samplers as TF ops, against grid.release: the words at each threshold of the table and next to it,
    # at both ends of every bucket of the lookup, 0, 2^63 - 1 and -2^63 (whose magnitude bits are all ones: the
    # largest |Z|, not the search tree's padding)
    words = np.concatenate([_words((4, 8, 16, 16), seed=1).ravel(), _bucket_edges(steps_per_std)])
    words = np.resize(words, (words.size // 64 + 1) * 64).reshape(-1, 8, 8)
    clean = np.random.default_rng(2).uniform(0, 0.6, words.shape).astype(np.float32)
    for eps in (LO * (1 + 1e-6), 5.0, HI * (1 - 1e-6)):
        spec = _spec(eps) if steps_per_std == grid.STEPS_PER_STD else grid.grid_spec(
            eps, DELTA, steps_per_std=steps_per_std)
        ref = grid.release(clean, words, spec)
        args = (tf.constant(clean), tf.constant(words), tf.constant(np.float32(spec.scale)),
                tf.constant(spec.max_level, tf.int32))
        for sampler in grid_tf.SAMPLERS:
            table = grid.noise_table(steps_per_std)
            for name, release in (("ops", functools.partial(grid_tf.release_levels, table=table, sampler=sampler)),
                                  ("XLA", grid_tf.compiled_release_levels(table, sampler=sampler))):
                out = release(*args).numpy()
                np.testing.assert_array_equal(out, ref, err_msg=f"{sampler} ({name}) at epsilon {eps}")
    top = grid.noise_table().max_magnitude
    assert grid.sample(np.array([2 ** 63 - 1, -2 ** 63], np.int64)).tolist() == [top, -top]


def _float32_neighbours(d):
    """The float32 values just below and above each integer d (equal when d is a float32): what a cast may round to."""
    nearest = d.astype(np.float32)
    exact = np.array([int(x) for x in nearest.astype(np.float64)], dtype=object)
    ints = np.array([int(x) for x in d], dtype=object)
    down = np.where(exact > ints, np.nextafter(nearest, np.float32(-1)), nearest)
    up = np.where(exact < ints, np.nextafter(nearest, np.float32(np.inf)), nearest)
    return down, up


def test_the_lookup_is_exact_whichever_way_the_cast_rounds():
    # The lookup's bucket comes from float32(2^63 - 1 - v); a runtime may round that cast down or up (or through
    # float64).  Its tables give the exact |Z| for both neighbours of every d, on every bucket's ends and thresholds.
    table = grid.noise_table()
    tables = grid_tf.lookup_tables(table)
    t = table.thresholds.astype(np.int64) << 8
    v = np.concatenate([_bucket_edges(grid.STEPS_PER_STD), t - 1, t, t + 255, [0, 2 ** 63 - 1]])
    v = v[v >= 0]
    exact = np.searchsorted(table.thresholds, v >> 8, side="right")
    for rounded in _float32_neighbours(np.iinfo(np.int64).max - v):
        bucket = rounded.view(np.int32) >> tables.shift
        got = tables.low[bucket] + (v > tables.split[bucket])
        np.testing.assert_array_equal(got, exact)


@pytest.mark.parametrize("k", range(5))
def test_tflite_release_equals_the_reference_on_the_same_words(head, k):
    # levels of the written model = grid.release(clean, words) exactly, for whole images and for strips, at the
    # ends of the certified interval and inside it; the clean activation is the model's own `clean` signature
    _, path, meta = head
    eps = _epsilons_of_the_head(meta)[k]
    clean_sig, release = _signatures(path)
    images = _images(seed=k)
    clean = clean_sig(image=images)["activation"]
    words = _words(clean.shape, seed=10 + k)
    spec = _spec(eps)
    ref = grid.release(clean, words, spec)
    padded = np.pad(images, [(0, 0), (1, 1), (0, 0), (0, 0)])  # a whole image: a zero row above and below
    out = release(image=padded, epsilon=np.float32(eps), entropy=words)
    assert int(out["valid"]) == 1 and float(out["scale"]) == spec.scale
    np.testing.assert_array_equal(out["levels"], ref)
    for rows in (1, 8):
        _, release = _signatures(path)  # a new interpreter: the first strip's words are the last call's (stale)
        for top in range(0, 32, rows):
            out = release(image=padded[:, top:top + rows + 2], epsilon=np.float32(eps),
                          entropy=words[:, top:top + rows].copy())
            assert int(out["valid"]) == 1
            np.testing.assert_array_equal(out["levels"], ref[:, top:top + rows])


def _dithered_range(clean, spec):
    """[k_min, k_max]: the levels the dither can give each coordinate (float32, as grid.release computes them)."""
    scaled = np.maximum(np.asarray(clean, np.float32), np.float32(0)) * np.float32(spec.scale)
    low = np.floor(scaled + np.float32(0.5 / grid.DITHER_LEVELS)).astype(np.int64)
    high = np.floor(scaled + np.float32(255.5 / grid.DITHER_LEVELS)).astype(np.int64)
    return np.minimum(low, spec.max_level), np.minimum(high, spec.max_level)


def _consistent(levels, clean, spec, top=None):
    """Per coordinate: is the release a value the mechanism can produce from this clean activation?  ``top``: the
    largest |noise| (the table's; 0 for a release without noise)."""
    low, high = _dithered_range(clean, spec)
    top = grid.noise_table(spec.steps_per_std).max_magnitude if top is None else top
    return (levels >= low - top) & (levels <= high + top)


def _release_pmf(f, spec):
    """(n, P(n)) of one coordinate's release from clean value f: the table's pmf shifted by each dithered level."""
    z, p = grid.noise_table(spec.steps_per_std).pmf()
    j = np.arange(grid.DITHER_LEVELS, dtype=np.float32)
    k = np.minimum(np.floor(np.float32(max(f, 0.0)) * np.float32(spec.scale) + (j + np.float32(0.5)) /
                            np.float32(grid.DITHER_LEVELS)).astype(np.int64), spec.max_level)
    n = np.arange(z[0], z[-1] + spec.max_level + 1)
    pmf = np.zeros(n.size)
    for level, count in zip(*np.unique(k, return_counts=True)):
        pmf[level:level + p.size] += p * count / grid.DITHER_LEVELS
    return n, pmf


def _likelihood_ratio_delta(f, g, epsilon, spec):
    """The delta of the best test of release(f) against release(g) at epsilon: sum_n max(0, P_f(n) - e^eps P_g(n))."""
    _, pf = _release_pmf(f, spec)
    _, pg = _release_pmf(g, spec)
    return float(np.maximum(0.0, pf - math.exp(epsilon) * pg).sum())


@pytest.mark.parametrize("epsilon", [LO * (1 + 1e-6), 5.0, HI * (1 - 1e-6)])
def test_the_server_cannot_rule_out_a_neighbour(head, epsilon):
    # One release of an image; the server tests, coordinate by coordinate, whether it is exactly consistent with
    # the true clean activation and with a neighbour's: one coordinate moved by 0.01, or the image with one
    # sub-pixel changed by one grey level.  Every coordinate is consistent with both (the noise's support is every
    # integer in [-T, T], T = 8.6 std), so the consistency test tells nothing; a release with the noise left out
    # is ruled out for a hypothesis its levels cannot reach (the test can fail).
    _, path, _ = head
    clean_sig, release = _signatures(path)
    images = _images(n=1, seed=7)
    neighbour = images.copy()
    neighbour[0, 16, 16, 1] = neighbour[0, 16, 16, 1] + (1 if neighbour[0, 16, 16, 1] < 255 else -1)
    clean, clean_n = clean_sig(image=images)["activation"], clean_sig(image=neighbour)["activation"]
    assert np.count_nonzero(clean != clean_n) > 0  # the sub-pixel moves the activation around it
    moved = clean.copy()
    moved[0, 16, 16, 3] += 0.01
    spec = _spec(epsilon)
    words = np.random.default_rng(8).integers(-2 ** 63, 2 ** 63 - 1, clean.shape, dtype=np.int64, endpoint=True)
    out = release(image=np.pad(images, [(0, 0), (1, 1), (0, 0), (0, 0)]), epsilon=np.float32(epsilon), entropy=words)
    assert int(out["valid"]) == 1
    levels = out["levels"]
    for hypothesis in (clean, moved, clean_n):
        assert np.all(_consistent(levels, hypothesis, spec))
    # the test's power: a release without noise (words with no magnitude bits: Z = 0) of a black activation is
    # consistent with it and with nothing at the far end of the range, whose levels start at ceil(R scale) - 1 >= 1
    dither = grid.split_words(words)[2].astype(np.int64)
    no_noise = grid.release(np.zeros_like(clean), dither, spec)
    assert np.all(_consistent(no_noise, np.zeros_like(clean), spec, top=0))
    assert not np.any(_consistent(no_noise, np.full_like(clean, RANGE), spec, top=0))
    # and the best test of any one coordinate (the likelihood ratio, computed exactly over the dither and the
    # table) is within the delta the head implements at this epsilon -- which is at most the delta asked for
    bound = grid.implemented_delta(epsilon, spec.max_level)
    assert bound <= DELTA
    changed = np.argwhere(clean != clean_n)[:3]
    pairs = [(float(clean[0, 16, 16, 3]), float(moved[0, 16, 16, 3]))] + [
        (float(clean[tuple(i)]), float(clean_n[tuple(i)])) for i in changed] + [(0.0, RANGE)]  # RANGE: the worst
    for f, g in pairs:
        for a, b in ((f, g), (g, f)):
            assert _likelihood_ratio_delta(a, b, epsilon, spec) <= bound * (1 + 1e-12)


_HEADRUNNER = ("import sys, numpy as np\n"
               "from dpact_tf.deploy.runtime import HeadRunner\n"
               "np.save(sys.argv[3], HeadRunner(sys.argv[1], workers=2).release(np.load(sys.argv[2]), 5.0).levels)\n")


def test_two_processes_release_different_noise(head, tmp_path):
    # What a phone runs -- HeadRunner, its AES-CTR words, two interpreters -- in two processes on the same image.
    # n = 2 * 32 * 32 * 8 = 16,384 levels each.  Each release minus scale * clean is noise of std sqrt(Var Z) (plus
    # the dither's rounding, variance < 1/4 step^2); independent noise: correlation ~ N(0, 1/n), |r| < 6 / sqrt(n).
    split, path, _ = head
    images = _images(n=2, seed=11)
    np.save(tmp_path / "img.npy", images)
    scaled = HeadRunner(path).clean(images).astype(np.float64) * _spec(5.0).scale
    noises = []
    for k in "ab":
        res = subprocess.run([sys.executable, "-c", _HEADRUNNER, path, str(tmp_path / "img.npy"),
                              str(tmp_path / f"{k}.npy")], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        noises.append((np.load(tmp_path / f"{k}.npy") - scaled).ravel())
    a, b = noises
    z, p = grid.noise_table().pmf()
    std = math.sqrt(float(np.sum(z.astype(np.float64) ** 2 * p)))
    n = a.size
    for x in (a, b):
        assert abs(x.std() - std) < 6 * std / math.sqrt(2 * n) + 0.01
    assert abs(np.corrcoef(a, b)[0, 1]) < 6 / math.sqrt(n)
    assert (a - b).std() > 1.3 * std  # one process's noise subtracted from the other's leaves ~sqrt(2) stds


def _refused(out):
    return int(out["valid"]) == 0 and float(out["scale"]) == 0.0 and not np.any(out["levels"])


@pytest.mark.parametrize("eps", ["below", "above", float("nan"), 0.0, -1.0, -math.inf, math.inf, 1e38, 1e-30])
def test_an_epsilon_the_head_does_not_certify_releases_zeros(head, eps):
    _, path, meta = head
    lo, hi = meta["release"]["certified_epsilons"]
    eps = {"below": np.nextafter(np.float32(lo), np.float32(0)),
           "above": np.nextafter(np.float32(hi), np.float32(np.inf))}.get(eps, eps)
    _, release = _signatures(path)
    image = np.pad(_images(n=1, seed=3), [(0, 0), (1, 1), (0, 0), (0, 0)])
    out = release(image=image, epsilon=np.float32(eps), entropy=_words((1, 32, 32, 8), 4))
    assert _refused(out)
    with pytest.raises(ValueError, match="epsilon"):
        HeadRunner(path).release(_images(n=1), eps)


def _bad_entropy(kind):
    rng = np.random.default_rng(5)
    good = rng.integers(-2 ** 63, 2 ** 63 - 1, (1, 32, 32, 8), dtype=np.int64, endpoint=True)
    if kind == "zeros":  # an unfilled buffer
        return np.zeros_like(good)
    if kind == "constant":
        return np.full_like(good, -0x123456789ABCDEF)
    if kind == "32-bit":  # 32-bit words sign-extended to 64 bits: their magnitude bits give no noise at all
        return rng.integers(-2 ** 31, 2 ** 31, good.shape, dtype=np.int64)
    if kind == "63-bit":  # non-negative words: no negative noise
        return rng.integers(0, 2 ** 63 - 1, good.shape, dtype=np.int64, endpoint=True)
    if kind == "half zero":  # half of the buffer left unfilled
        good.reshape(-1)[4096:] = 0
        return good
    if kind == "broadcast":  # LiteRT would broadcast it over the whole activation
        return good[:, :1, :1]
    if kind == "one row short":
        return good[:, :31]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["zeros", "constant", "32-bit", "63-bit", "half zero", "broadcast", "one row short"])
def test_implausible_entropy_releases_zeros(head, kind):
    _, path, meta = head
    _, release = _signatures(path)
    image = np.pad(_images(n=1, seed=3), [(0, 0), (1, 1), (0, 0), (0, 0)])
    try:
        out = release(image=image, epsilon=np.float32(5.0), entropy=_bad_entropy(kind))
    except (RuntimeError, ValueError):  # the interpreter cannot even broadcast it: nothing released either
        assert kind in ("one row short",)
        return
    assert _refused(out)


def test_stale_entropy_releases_zeros(head):
    # LiteRT keeps an input tensor between calls: an app that forgets to refill the entropy would release a second
    # image with the first one's noise (the difference of the two releases is the difference of the clean levels).
    # The head remembers the last accepted call's words at both ends of the buffer.
    _, path, _ = head
    _, release = _signatures(path)
    a, b = (np.pad(_images(n=1, seed=s), [(0, 0), (1, 1), (0, 0), (0, 0)]) for s in (1, 2))
    e1, e2 = (np.random.default_rng(s).integers(-2 ** 63, 2 ** 63 - 1, (1, 32, 32, 8), dtype=np.int64,
                                                endpoint=True) for s in (1, 2))

    def call(image, entropy):
        return release(image=image, epsilon=np.float32(5.0), entropy=entropy)

    assert int(call(a, e1)["valid"]) == 1
    for image in (b, a):  # the same words again, for another image or the same one
        assert _refused(call(image, e1.copy()))
    assert int(call(b, e2)["valid"]) == 1
    for refilled in (slice(0, 2048), slice(2048, None)):  # refilled at one end only: the other end is stale
        partly = e2.copy()
        partly.reshape(-1)[refilled] = e1.reshape(-1)[refilled]
        assert _refused(call(a, partly))
    assert int(call(a, e1)["valid"]) == 1  # the limit, as documented: one call is remembered


def test_a_stale_buffer_that_shrank_releases_zeros(head):
    # LiteRT keeps a tensor's contents when it is resized: a batch of 2, then a batch of 1 without refilling, would
    # release the second image with the first one's noise
    from ai_edge_litert.interpreter import Interpreter

    from dpact_tf.deploy.runtime import _InPlaceSignature

    _, path, _ = head
    call = _InPlaceSignature(Interpreter(model_path=path).get_signature_runner("release"))

    def release(images, entropy=None):
        call.resize({"image": (images.shape[0], 34, 32, 3), "entropy": images.shape[:3] + (8,)})
        call.set("image", np.pad(images, [(0, 0), (1, 1), (0, 0), (0, 0)]))
        call.set("epsilon", np.float32(5.0))
        if entropy is not None:
            call.set("entropy", entropy)
        call.invoke()
        return int(call.view("valid")), call.view("levels").copy()

    words = np.random.default_rng(3).integers(-2 ** 63, 2 ** 63 - 1, (2, 32, 32, 8), dtype=np.int64, endpoint=True)
    assert release(_images(n=2, seed=1), words)[0] == 1
    valid, levels = release(_images(n=1, seed=2))  # not refilled: the first image's words, cut to one image
    assert valid == 0 and not np.any(levels)
    assert release(_images(n=1, seed=2), words[1:] ^ 1)[0] == 1  # refilled: released
