"""The TF-free runtime of the phone head: the app's words (AES-CTR keystream as int64), HeadRunner's streaming of
`release` in chunks of images and strips of rows on parallel interpreters, and the weights the user trusts."""
import itertools
import json
import math
import shutil
import threading

import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import build_split_vggface, grid
from dpact_tf.deploy.convert import convert_client_head, weights_hash
from dpact_tf.deploy.runtime import EntropyStream, HeadRunner, strip_rows


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """A conv1_1 head (64 rows of 32x8: its release takes strips) and a pool1 head (whole images only)."""
    out = tmp_path_factory.mktemp("heads")
    split = build_split_vggface((64, 32, 3), 3, width=1 / 8, fc_units=8, epsilon=5.0, noise_seed=0)
    pooled = build_split_vggface((32, 32, 3), 3, width=1 / 8, fc_units=8, epsilon=5.0, cut="pool1", noise_seed=0)
    conv1 = str(out / "conv1.tflite")
    pool1 = str(out / "pool1.tflite")
    convert_client_head(split.client, conv1)
    convert_client_head(pooled.client, pool1, with_train=False)
    return split, conv1, pooled, pool1


def _images(shape, n=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def test_entropy_stream_is_the_aes_ctr_keystream_as_little_endian_int64(monkeypatch):
    # with a known key, the words are AES-128-CTR(key, counter 0) of zeros, eight bytes per word, little-endian --
    # written straight into the array but for its last block (and for arrays shorter than a block)
    import secrets

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = bytes(range(16))
    monkeypatch.setattr(secrets, "token_bytes", lambda n: key[:n])
    stream = EntropyStream()
    parts = [stream.fill(np.empty(shape, np.int64)) for shape in ((2, 3, 5), (1,), (984,), (2,))]
    expected = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(8 * (30 + 1 + 984 + 2)))
    got = np.concatenate([p.ravel() for p in parts])
    np.testing.assert_array_equal(got, np.frombuffer(expected, "<i8"))
    with pytest.raises(ValueError, match="int64"):
        stream.fill(np.empty(4, np.float32))


def test_entropy_stream_fills_fresh_uniform_words():
    out = np.empty((4, 64, 64, 8), np.int64)
    a = EntropyStream().fill(out).copy()
    n = a.size  # 131,072 words: each bit below is a fair coin, its count within 6 standard errors (sqrt(n) / 2)
    v = np.where(a < 0, -(a + 1), a)
    for bits in (a < 0, v >= 2 ** 62, (v & 0xFF) >= 128, (v & 1) == 1):
        assert abs(int(bits.sum()) - n / 2) < 6 * math.sqrt(n) / 2
    stream = EntropyStream()
    b, c = stream.fill(out).copy(), stream.fill(out).copy()  # the stream goes on; a new stream has a new key
    for x, y in ((a, b), (b, c)):
        assert abs(np.corrcoef((x >> 32).ravel(), (y >> 32).ravel())[0, 1]) < 6 / math.sqrt(n)


class _KnownWords:
    """A stand-in for EntropyStream that records the words it writes (a test can then compute the release)."""

    written = []
    seeds = itertools.count(100)  # next() is atomic: the workers' streams never share a seed

    def __init__(self):
        self.rng = np.random.default_rng(next(self.seeds))

    def fill(self, out):
        out[...] = self.rng.integers(-2 ** 63, 2 ** 63 - 1, out.shape, dtype=np.int64, endpoint=True)
        self.written.append(out.copy())
        return out


def _check_strips(release, clean, epsilon, batch, rows):
    """Every (chunk of images, strip of rows) of the release is grid.release of the clean activation with exactly
    one of the word arrays HeadRunner wrote, and every word array is used once."""
    spec = grid.grid_spec(epsilon, 1e-5, steps_per_std=grid.STEPS_PER_STD)
    assert release.scale == spec.scale
    used = []
    for start in range(0, clean.shape[0], batch):
        for top in range(0, clean.shape[1], rows):
            region = (slice(start, start + batch), slice(top, top + rows))
            hits = [i for i, w in enumerate(_KnownWords.written) if w.shape == release.levels[region].shape
                    and np.array_equal(grid.release(clean[region], w, spec), release.levels[region])]
            assert len(hits) == 1, (start, top, hits)
            used += hits
    assert sorted(used) == list(range(len(_KnownWords.written)))


@pytest.mark.parametrize("workers,batch,rows", [(1, 1, 64), (2, 2, 8), (2, 3, 1), (2, 1, 16)])
def test_parallel_strips_release_the_reference_also_after_training(heads, monkeypatch, workers, batch, rows):
    # HeadRunner streams chunks of images and strips of rows over `workers` interpreters; `train` updates every
    # interpreter, so the strips of both still release the updated head's activation
    from dpact_tf.deploy import runtime

    _, path, _, _ = heads
    monkeypatch.setattr(runtime, "EntropyStream", _KnownWords)
    monkeypatch.setattr(_KnownWords, "written", [])
    runner = HeadRunner(path, workers=workers, max_batch=batch, rows_per_call=rows)
    images = _images((64, 32, 3), n=3)
    _check_strips(runner.release(images, 3.0), runner.clean(images), 3.0, batch, rows)
    grad = np.random.default_rng(1).normal(0, 1, (3, 64, 32, 8)).astype(np.float32)
    runner.train(images, grad, 0.5)
    after = runner.clean(images)
    assert np.abs(after - HeadRunner(path).clean(images)).max() > 1e-3  # the update changed the head
    _KnownWords.written.clear()
    _check_strips(runner.release(images, 3.0), after, 3.0, batch, rows)


def test_strip_rows_are_checked(heads):
    _, path, _, pool1 = heads
    for rows in (0, 5, 1.5, 128):
        with pytest.raises(ValueError, match="divisor of the image height 64"):
            HeadRunner(path, rows_per_call=rows)
    # rows_per_call=None: the most rows whose entropy fits 128 KiB -- all 64 rows of 32 x 8 words (2 KiB a row) here
    assert HeadRunner(path).rows_per_call == 64
    # a pool1 head's release takes whole images only (its strips would need more than one row of halo)
    assert HeadRunner(pool1).rows_per_call == 32
    with pytest.raises(ValueError, match="whole images only"):
        HeadRunner(pool1, rows_per_call=16)


@pytest.mark.parametrize("height, row_bytes, rows", [
    (64, 8 * 64 * 8, 32),       # small's 64x64x8: 4 KiB a row, 32 rows fill 128 KiB
    (32, 8 * 32 * 8, 32),       # tiny's 32x32x8: 2 KiB a row, the whole image fits
    (224, 8 * 224 * 64, 4),     # the paper's 224x224x64: 112 KiB a row, 1 row fits but 4 is the fewest
    (224, 8 * 224 * 8, 8),      # 14 KiB a row: 9 rows fit 128 KiB, 8 is the largest divisor of 224 up to 9
    (7, 1 << 20, 7),            # a prime height, rows too large: no divisor in [4, 7) but 7
    (3, 8, 3),                  # fewer rows than the minimum: the whole image
])
def test_strip_rows_by_size(height, row_bytes, rows):
    assert strip_rows(height, row_bytes) == rows


def test_pooled_head_releases_whole_images(heads, monkeypatch):
    from dpact_tf.deploy import runtime

    _, _, pooled, pool1 = heads
    monkeypatch.setattr(runtime, "EntropyStream", _KnownWords)
    monkeypatch.setattr(_KnownWords, "written", [])
    images = _images((32, 32, 3), n=2, seed=3)
    runner = HeadRunner(pool1, workers=2)
    clean = runner.clean(images)
    np.testing.assert_allclose(clean, pooled.clean_client()(images.astype(np.float32) / 255.0).numpy(), atol=1e-5)
    release = runner.release(images, 5.0)
    assert release.levels.shape == clean.shape == (2, 16, 16, 8)
    _check_strips(release, clean, 5.0, 1, 16)


def _old_release_head(tmp_path):
    """A head whose release takes float32 uniforms and releases float32 Box-Muller noise (before the grid)."""
    class OldHead(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.uint8, name="image")])
        def clean(self, image):
            return {"activation": tf.cast(image, tf.float32)}

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.uint8, name="image"),
                                      tf.TensorSpec([], tf.float32, name="epsilon"),
                                      tf.TensorSpec([None, 8, 8, 3], tf.float32, name="entropy")])
        def release(self, image, epsilon, entropy):
            noise = tf.sqrt(-2.0 * tf.math.log(entropy)) / epsilon
            return {"activation": tf.cast(image, tf.float32) + noise, "valid": tf.constant(1)}

    head = OldHead()
    saved = str(tmp_path / "saved")
    tf.saved_model.save(head, saved, signatures={"clean": head.clean.get_concrete_function(),
                                                 "release": head.release.get_concrete_function()})
    path = tmp_path / "old.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["clean", "release"]).convert())
    return path


def test_headrunner_refuses_a_head_whose_release_is_not_the_grid(heads, tmp_path):
    _, path, _, _ = heads
    old = _old_release_head(tmp_path)
    with pytest.raises(FileNotFoundError, match="sidecar"):
        HeadRunner(str(old))
    shutil.copy(path.replace(".tflite", ".json"), tmp_path / "old.json")
    with pytest.raises(ValueError, match="not the grid release.*export it again"):
        HeadRunner(str(old))


def _with_weights_changed(path, out):
    """A copy of the head in which one conv1_1 weight is doubled in the flatbuffer's bytes, and its sidecar."""
    from dpact_tf.deploy.tflite_inspect import stored_conv_weights

    data = bytearray(open(path, "rb").read())
    kernel, _ = stored_conv_weights(bytes(data))[0]
    for layout in (kernel, np.transpose(kernel, (3, 0, 1, 2))):  # a variable's initial value [kh, kw, in, out] or a
        at = data.find(np.ascontiguousarray(layout, "<f4").tobytes())  # constant kernel [out, kh, kw, in]
        if at >= 0:
            data[at:at + 4] = np.float32(2 * layout.ravel()[0] + 0.5).tobytes()
            break
    assert at >= 0
    out.write_bytes(bytes(data))
    shutil.copy(path.replace(".tflite", ".json"), str(out).replace(".tflite", ".json"))
    return str(out)


@pytest.mark.parametrize("with_train", [True, False])
def test_weights_the_user_trusts(heads, tmp_path, with_train):
    # the hash of the Keras client's conv weights is the hash of the weights stored in the file; a head whose weights
    # were changed after export, or another head beside the first one's sidecar, is refused before anything runs
    split, _, _, _ = heads
    path = str(tmp_path / "head.tflite")
    meta = convert_client_head(split.client, path, with_train=with_train)
    trusted = weights_hash(split.client)
    assert meta["weights_sha256"] == trusted == HeadRunner(path).weights_sha256
    HeadRunner(path, trusted_weights_sha256=trusted)
    changed = _with_weights_changed(path, tmp_path / "changed.tflite")
    images = _images((64, 32, 3), n=1)
    assert np.abs(HeadRunner(changed).clean(images) - HeadRunner(path).clean(images)).max() > 0  # it runs changed
    with pytest.raises(ValueError, match="not the trusted"):
        HeadRunner(changed, trusted_weights_sha256=trusted)
    other = build_split_vggface((64, 32, 3), 3, width=1 / 8, fc_units=8, epsilon=5.0, noise_seed=0)
    convert_client_head(other.client, str(tmp_path / "other.tflite"), with_train=with_train)
    shutil.copy(path.replace(".tflite", ".json"), str(tmp_path / "other.json"))  # the first head's sidecar
    assert json.load(open(tmp_path / "other.json"))["weights_sha256"] == trusted
    with pytest.raises(ValueError, match="not the trusted"):
        HeadRunner(str(tmp_path / "other.tflite"), trusted_weights_sha256=trusted)


def test_the_whole_head_the_user_trusts(heads, tmp_path):
    # a graph written by someone else can release anything while storing the trusted weights, so the deployable
    # check is the whole file's hash: the approved bytes run, one byte changed anywhere is refused
    import hashlib

    split, _, _, _ = heads
    path = str(tmp_path / "head.tflite")
    convert_client_head(split.client, path, with_train=False)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    runner = HeadRunner(path, trusted_sha256=digest.upper())
    assert runner.sha256 == digest
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 1
    tampered = tmp_path / "tampered.tflite"
    tampered.write_bytes(bytes(data))
    shutil.copy(path.replace(".tflite", ".json"), str(tampered).replace(".tflite", ".json"))
    with pytest.raises(ValueError, match="not the trusted"):
        HeadRunner(str(tampered), trusted_sha256=digest)


def test_head_runner_serializes_threads(heads):
    # two threads sharing one runner (and its two interpreters): calls are serialized, so no release has rows
    # without noise or noise shared with another release
    split, path, _, _ = heads
    runner = HeadRunner(path, rows_per_call=1, workers=2)
    images = [_images((64, 32, 3), n=1, seed=k) for k in (0, 1)]
    scale = grid.grid_scale(5.0, 1e-5)
    scaled = [runner.clean(im).astype(np.float64) * scale for im in images]
    out, errors = {0: [], 1: []}, []

    def work(k):
        try:
            for _ in range(10):
                out[k].append(runner.release(images[k], 5.0).levels)
        except Exception as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = []
    for k in (0, 1):
        for levels in out[k]:
            noise = levels - scaled[k]
            # the dithered rounding alone is within one step; noise of 16 steps std leaves no row within it
            assert not np.any(np.all(np.abs(noise) < 1.0, axis=(2, 3))), "a released row carries no noise"
            rows.append(noise.reshape(64, -1))
    rows = np.stack(rows)
    for i in range(len(rows)):  # no row of any release shares its noise with a row of another release
        same = np.all(np.abs(rows[i + 1:, :, None, :] - rows[i][None, None, :, :]) < 1.0, axis=-1)
        assert not np.any(same)
