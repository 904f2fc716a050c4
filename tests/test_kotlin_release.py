"""The app's sampler, tflite/android/DpactRelease.kt, compiled with kotlinc and run on the JVM: its noise and released
levels equal grid.sample / grid.release exactly on the same words, its entropy is uniform and fresh per process,
and it refuses what grid would refuse.  Skipped, with the packages to install, where kotlinc or java is missing."""
import hashlib
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dpact_tf import grid, privacy

SOURCE = Path(__file__).resolve().parents[1] / "tflite" / "android" / "DpactRelease.kt"
RANGE = np.float32(privacy.PAPER_ACTIVATION_RANGE)  # 1/sqrt(3): the largest clean activation of Eq. (1)


@pytest.fixture(scope="module")
def release_jar(pytestconfig, tmp_path_factory):
    """The compiled DpactRelease.kt (with the Kotlin runtime), cached by the source's sha256: one compile per change."""
    missing = [tool for tool in ("kotlinc", "java") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not on PATH, so the app's Kotlin sampler is NOT tested: install the "
                    "Debian packages `kotlin default-jdk-headless` (apt-get install -y kotlin default-jdk-headless; "
                    ".ci/run does this when it runs as root)")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    store = getattr(pytestconfig, "cache", None)  # absent under -p no:cacheprovider
    cache = store.mkdir("kotlin") if store else tmp_path_factory.mktemp("kotlin")
    jar = Path(cache) / f"DpactRelease-{digest}.jar"
    if not jar.exists():
        partial = jar.with_name(f"partial-{os.getpid()}-{jar.name}")  # kotlinc writes a jar only to a *.jar path
        res = subprocess.run(["kotlinc", "-Werror", str(SOURCE), "-include-runtime", "-d", str(partial)],
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0 or not partial.exists():
            pytest.fail(f"kotlinc failed on {SOURCE}:\n{res.stderr[-4000:]}")
        os.replace(partial, jar)  # atomic: a concurrent run sees the whole jar or none
        for stale in Path(cache).glob("DpactRelease-*.jar"):  # jars of other sources
            if stale != jar:
                stale.unlink(missing_ok=True)
    return jar


def _java(jar, *args):
    return subprocess.run(["java", "-jar", str(jar), *map(str, args)], capture_output=True, text=True, timeout=300)


def _release_input(thresholds, scale, max_level, clean, words) -> bytes:
    """DpactRelease.kt's `release` input: little-endian counts, thresholds, scale, maxLevel, activations, words."""
    def count(items):
        return np.int32(len(items)).astype("<i4").tobytes()

    return b"".join([count(thresholds), np.asarray(thresholds, "<i8").tobytes(),
                     np.float32(scale).astype("<f4").tobytes(), np.int32(max_level).astype("<i4").tobytes(),
                     count(clean), np.asarray(clean, "<f4").tobytes(),
                     count(words), np.asarray(words, "<i8").tobytes()])


def _kotlin_release(jar, tmp_path, payload: bytes):
    """(noise, levels) from the JVM, or the completed process where it refused the input."""
    inp, out = tmp_path / "release.in", tmp_path / "release.out"
    inp.write_bytes(payload)
    res = _java(jar, "release", inp, out)
    if res.returncode != 0:
        return res
    data = np.frombuffer(out.read_bytes(), "<i4")
    half = data.size // 2
    return data[:half], data[half:]


def _words(negative, magnitude_bits, dither):
    """The int64 word that split_words splits into (negative, magnitude_bits, dither): v = bits << 8 | j."""
    v = (np.asarray(magnitude_bits, np.int64) << 8) | np.asarray(dither, np.int64)
    return np.where(negative, -v - 1, v)


def _edge_words(thresholds, rng):
    """The extremes of int64, and for every threshold t words whose v >> 8 is t - 1, t and t + 1, with dithers 0,
    255 and a random one, of both signs: each threshold's comparison goes both ways."""
    extremes = np.array([-2 ** 63, -2 ** 63 + 1, -257, -256, -2, -1, 0, 1, 255, 256, 2 ** 63 - 2, 2 ** 63 - 1],
                        np.int64)
    top = (1 << grid.MAGNITUDE_BITS) - 1
    bits = np.unique(np.clip(np.concatenate([thresholds - 1, thresholds, thresholds + 1, [0, top]]), 0, top))
    dithers = np.array([0, 255, int(rng.integers(1, 255))])
    negative, magnitude_bits, dither = (a.ravel() for a in np.meshgrid([False, True], bits, dithers, indexing="ij"))
    built = _words(negative, magnitude_bits, dither)
    split = grid.split_words(built)
    assert (np.array_equal(split[0], negative) and np.array_equal(split[1], magnitude_bits)
            and np.array_equal(split[2], dither))  # the construction hits the intended bits
    return np.concatenate([extremes, built])


def _boundary_activations(scale, max_level, rng):
    """(clean, dither) with f s + u landing exactly on each level n = 1 .. D for a few dithers, and their
    float32 neighbours (a few ulps below and above): where floor() changes its answer."""
    scale = np.float32(scale)
    clean, dither = [], []
    for n in range(1, max_level + 1):
        for j in (0, 127, 255, int(rng.integers(256))):
            u = (np.float32(j) + np.float32(0.5)) / np.float32(grid.DITHER_LEVELS)
            # n - u is exact in float32; f s rounds to it or next to it
            f = np.float32(np.float64(np.float32(n) - u) / np.float64(scale))
            for ulps in range(-3, 4):
                nearby = f
                for _ in range(abs(ulps)):
                    nearby = np.nextafter(nearby, np.float32(np.sign(ulps) * np.inf), dtype=np.float32)
                clean.append(nearby)
                dither.append(j)
    return np.array(clean, np.float32), np.array(dither)


def _case(spec, seed=23):
    """(clean, words, huge): >= 10^5 random words over all of int64 with the edge words and the grid boundaries, and
    clean activations on [0, R] with 0, -0, R, negatives and values beyond R; `huge` marks activations above
    2^31 g, where numpy's float -> int32 cast is undefined (the Kotlin levels there are checked to be D)."""
    rng = np.random.default_rng(seed)
    thresholds = grid.noise_table(spec.steps_per_std).thresholds
    random_words = rng.integers(-2 ** 63, 2 ** 63 - 1, size=100_000, dtype=np.int64, endpoint=True)
    edge_words = _edge_words(thresholds, rng)
    boundary, boundary_dither = _boundary_activations(spec.scale, spec.max_level, rng)
    boundary_words = _words(rng.random(boundary.size) < 0.5, rng.integers(0, 1 << grid.MAGNITUDE_BITS, boundary.size),
                            boundary_dither)
    special = np.array([0.0, -0.0, RANGE, np.nextafter(RANGE, np.float32(0)), np.nextafter(RANGE, np.float32(1)),
                        1e-45, -1e-3, -RANGE, -3.4e38, 2 * RANGE, 1.0, 1e3], np.float32)
    huge = np.array([3.4028235e38, 1e30, 3e9 / spec.scale], np.float32)
    special_words = rng.integers(-2 ** 63, 2 ** 63 - 1, size=special.size + huge.size, dtype=np.int64)
    words = np.concatenate([random_words, edge_words, boundary_words, special_words])
    clean = np.concatenate([rng.uniform(0, RANGE, random_words.size + edge_words.size).astype(np.float32),
                            boundary, special, huge])
    marks = np.zeros(clean.size, bool)
    marks[-huge.size:] = True
    return clean, words, marks


@pytest.mark.parametrize("epsilon, steps_per_std", [(0.5, None), (5.0, None), (20.0, None), (5.0, 64)])
def test_kotlin_release_equals_grid_release_exactly(release_jar, tmp_path, epsilon, steps_per_std):
    spec = grid.grid_spec(epsilon, 1e-5, steps_per_std=steps_per_std)
    table = grid.noise_table(spec.steps_per_std)
    clean, words, huge = _case(spec)
    noise, levels = _kotlin_release(release_jar, tmp_path, _release_input(
        table.thresholds, spec.scale, spec.max_level, clean, words))

    expected_noise = grid.sample(words, table)
    np.testing.assert_array_equal(noise, expected_noise)
    expected = grid.release(clean[~huge], words[~huge], spec)
    bad = np.nonzero(levels[~huge] != expected)[0]
    assert bad.size == 0, (f"{bad.size} levels differ, e.g. clean={clean[~huge][bad[:5]]} words={words[~huge][bad[:5]]}"
                           f" kotlin={levels[~huge][bad[:5]]} grid={expected[bad[:5]]}")
    # above 2^31 g the level saturates at D (numpy's cast is undefined there, so grid.release is not the reference)
    np.testing.assert_array_equal(levels[huge], spec.max_level + expected_noise[huge])

    # the comparison covered what it claims: every magnitude the table can give (equal consecutive thresholds make
    # a magnitude impossible: 136 for K = 16), every level 0 .. D, every dither, and exact integer landings
    counts = table.magnitude_counts()
    assert set(np.unique(np.abs(expected_noise))) == set(np.nonzero(counts)[0])
    assert set(np.unique(expected - expected_noise[~huge])) == set(range(spec.max_level + 1))
    assert set(np.unique(grid.split_words(words)[2])) == set(range(grid.DITHER_LEVELS))
    u = (grid.split_words(words[~huge])[2].astype(np.float32) + np.float32(0.5)) / np.float32(grid.DITHER_LEVELS)
    x = np.maximum(clean[~huge], np.float32(0)) * np.float32(spec.scale) + u
    assert np.count_nonzero(x == np.floor(x)) >= spec.max_level * 4


def test_kotlin_entropy_is_uniform_and_fresh_per_process(release_jar, tmp_path):
    from scipy import stats

    n = 1 << 17
    runs = []
    for i in range(2):
        res = _java(release_jar, "entropy", n, tmp_path / f"entropy{i}.bin")
        assert res.returncode == 0, res.stderr
        runs.append(np.frombuffer((tmp_path / f"entropy{i}.bin").read_bytes(), "<i8"))
    first, second = runs
    assert first.size == second.size == n
    # two processes share no word (the chance that they would: n^2 / 2^64 ~ 1e-9)
    assert np.intersect1d(first, second).size == 0
    # each of the 64 bits (the sign bit included) is Bernoulli(1/2): its fraction has std 0.5 / sqrt(n) ~ 0.0014
    bits = np.unpackbits(first.view(np.uint8).reshape(n, 8), axis=1)
    assert np.all(np.abs(bits.mean(axis=0) - 0.5) < 5 * 0.5 / math.sqrt(n)), bits.mean(axis=0)
    # each byte position takes its 256 values equally often: chi-square with 255 degrees of freedom
    for position in range(8):
        counts = np.bincount(first.view(np.uint8).reshape(n, 8)[:, position], minlength=256)
        chi2 = float(((counts - n / 256) ** 2 / (n / 256)).sum())
        assert stats.chi2.sf(chi2, 255) > 1e-6, (position, chi2)
    # through the table, the words give noise of std K (std of a sample std ~ K / sqrt(2 n))
    k = grid.STEPS_PER_STD
    z = grid.sample(first)
    assert abs(z.mean()) < 5 * k / math.sqrt(n)
    assert abs(z.std() - k) < 5 * k / math.sqrt(2 * n)


def _valid():
    spec = grid.grid_spec(5.0, 1e-5)
    thresholds = grid.noise_table(spec.steps_per_std).thresholds
    return dict(thresholds=thresholds, scale=spec.scale, max_level=spec.max_level,
                clean=np.array([0.1, 0.2, 0.3], np.float32), words=np.array([-1, 0, 2 ** 40], np.int64))


_DECREASING = grid.noise_table().thresholds.copy()
_DECREASING[[3, 4]] = _DECREASING[[4, 3]]


@pytest.mark.parametrize("change, message", [
    (dict(words=np.array([1, 2], np.int64)), "one word per activation coordinate"),
    (dict(thresholds=_DECREASING), "must not decrease"),
    (dict(thresholds=np.array([], np.int64)), "must not be empty"),
    (dict(thresholds=np.array([5, 1 << grid.MAGNITUDE_BITS], np.int64)), "must lie in"),
    (dict(thresholds=np.array([-1, 5], np.int64)), "must lie in"),
    (dict(scale=0.0), "scale must be > 0 and finite"),
    (dict(scale=-0.1), "scale must be > 0 and finite"),
    (dict(scale=float("nan")), "scale must be > 0 and finite"),
    (dict(scale=float("inf")), "scale must be > 0 and finite"),
    (dict(max_level=0), "maxLevel must be in"),
    (dict(clean=np.array([0.1, np.nan, 0.3], np.float32)), "not finite; nothing was released"),
    (dict(clean=np.array([0.1, 0.2, -np.inf], np.float32)), "not finite; nothing was released"),
])
def test_kotlin_release_refuses_invalid_input(release_jar, tmp_path, change, message):
    res = _kotlin_release(release_jar, tmp_path, _release_input(**{**_valid(), **change}))
    assert isinstance(res, subprocess.CompletedProcess), "the invalid input was released"
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert not (tmp_path / "release.out").exists()


def test_kotlin_main_refuses_a_malformed_file_or_command(release_jar, tmp_path):
    valid = _valid()
    payload = _release_input(**valid)
    t = len(valid["thresholds"])
    for cut, message in ((payload[:4 + 8 * t + 2], "ends early"), (payload[:4], f"announces {t} thresholds"),
                         (payload[:-3], "announces 3 words"), (payload + b"\0", "1 bytes after the words")):
        res = _kotlin_release(release_jar, tmp_path, cut)
        assert isinstance(res, subprocess.CompletedProcess) and res.returncode == 2 and message in res.stderr, res
    for args, message in ((("entropy", -1, tmp_path / "e.bin"), "n must be in"),
                          (("entropy", "x", tmp_path / "e.bin"), "N must be an integer"),
                          (("sample",), "usage:")):
        res = _java(release_jar, *args)
        assert res.returncode == 2 and message in res.stderr, res.stderr
