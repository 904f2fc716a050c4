"""The TF-free runtime of the phone head: the app's uniforms (AES-CTR keystream -> 24-bit uniforms in (0, 1]) and
HeadRunner's streaming of `release` in chunks of images and strips of rows."""
import math

import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import build_split_vggface, privacy
from dpact_tf.export import convert_client_head
from dpact_tf.runtime import EntropyStream, HeadRunner, uniforms_from_words


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


def test_uniforms_from_words_are_the_24_bit_grid_of_the_unit_interval():
    # ((w >> 8) + 1) / 2^24: the low byte is dropped, 0 -> 2^-24 (never 0: a zero is an unfilled buffer), the
    # largest word -> exactly 1; each of the 2^24 values is hit by 256 words
    words = np.array([0, 0xFF, 0x100, 0x80000000, 0xFFFFFFFF], np.uint32)
    u = uniforms_from_words(words.copy())
    assert u.dtype == np.float32
    np.testing.assert_array_equal(u, np.array([1, 1, 2, 2 ** 23 + 1, 2 ** 24], np.float64) / 2 ** 24)
    with pytest.raises(ValueError, match="uint32"):
        uniforms_from_words(np.zeros(3, np.int64))


def test_entropy_stream_fills_fresh_uniforms():
    out = np.empty((4, 64, 64, 8), np.float32)
    a = EntropyStream().fill(out).copy()
    assert a.min() >= 2.0 ** -24 and a.max() <= 1.0
    np.testing.assert_array_equal(a * 2 ** 24, np.round(a * 2 ** 24))  # on the grid
    n = a.size  # 131,072: mean 1/2 and variance 1/12 within 5 standard errors
    assert abs(a.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n) and abs(a.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)
    stream = EntropyStream()
    b, c = stream.fill(out).copy(), stream.fill(out).copy()  # the stream goes on; a new stream has a new key
    for x, y in ((a, b), (b, c)):
        assert abs(np.corrcoef(x.ravel(), y.ravel())[0, 1]) < 6 / math.sqrt(n)


def test_strips_release_the_same_activation_as_whole_images(heads):
    split, path, _, _ = heads
    images = _images((64, 32, 3), n=3)
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    whole = HeadRunner(path, rows_per_call=64)
    assert whole.rows_per_call == 64 and HeadRunner(path).rows_per_call == 64  # 64 x 32 x 8 fits in 1 MiB
    # exactness of the strips, through the signature itself with the same uniforms: one row of the neighbours above
    # and below (zero rows at the border) releases exactly what the whole image releases
    release = whole._release
    c2 = int(release.get_input_details()["entropy"]["shape_signature"][-1])
    uni = np.random.default_rng(5).integers(1, 2 ** 24 + 1, (3, 66, 32, c2)).astype(np.float32) / np.float32(2 ** 24)
    eps = np.float32(3.0)
    ref = release(image=images, epsilon=eps, entropy=uni[:, 1:65])
    assert int(ref["valid"]) == 1
    padded = np.pad(images, [(0, 0), (1, 1), (0, 0), (0, 0)])
    for rows in (1, 8, 16):
        for top in range(0, 64, rows):
            out = release(image=padded[:, top:top + rows + 2], epsilon=eps, entropy=uni[:, top:top + rows + 2])
            assert int(out["valid"]) == 1
            np.testing.assert_allclose(out["activation"][:, 1:1 + rows], ref["activation"][:, top:top + rows],
                                       atol=1e-6)
    for rows, max_batch in ((1, 1), (8, 2), (16, 3), (32, 1)):
        strips = HeadRunner(path, rows_per_call=rows, max_batch=max_batch)
        noise = (strips.infer(images, 3.0) - clean).ravel()
        std = privacy.noise_std(3.0, 1e-5)
        n = noise.size  # 49,152
        assert abs(noise.std() - std) < 5 * std / math.sqrt(2 * n) and abs(noise.mean()) < 5 * std / math.sqrt(n)
    np.testing.assert_allclose(whole.infer(images, math.inf), clean, atol=1e-5)


def test_strip_rows_are_checked(heads):
    _, path, _, pool1 = heads
    for rows in (0, 5, 1.5, 128):
        with pytest.raises(ValueError, match="divisor of the image height 64"):
            HeadRunner(path, rows_per_call=rows)
    # a pool1 head's release takes whole images only (its strips would need more than one row of halo)
    assert HeadRunner(pool1).rows_per_call == 32
    with pytest.raises(ValueError, match="does not take strips"):
        HeadRunner(pool1, rows_per_call=16)


def test_pooled_head_releases_whole_images(heads):
    _, _, pooled, pool1 = heads
    images = _images((32, 32, 3), n=2, seed=3)
    clean = pooled.clean_client()(images.astype(np.float32) / 255.0).numpy()
    runner = HeadRunner(pool1)
    np.testing.assert_allclose(runner.infer(images, math.inf), clean, atol=1e-5)
    assert runner.infer(images, 5.0).shape == clean.shape == (2, 16, 16, 8)


def test_headrunner_refuses_a_release_that_shifts_the_runtimes_uniforms(tmp_path):
    # heads exported before this version: their release took uniforms in [0, 1) and added them to the runtime's
    # RANDOM_UNIFORM; HeadRunner now draws (0, 1], which such a head would refuse at random (1.0 is out of range)
    class OldHead(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.uint8, name="image"),
                                      tf.TensorSpec([], tf.float32, name="epsilon")])
        def infer(self, image, epsilon):
            return {"activation": tf.cast(image, tf.float32) * epsilon, "valid": tf.constant(1)}

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.uint8, name="image"),
                                      tf.TensorSpec([], tf.float32, name="epsilon"),
                                      tf.TensorSpec([None, 8, 8, 4], tf.float32, name="entropy")])
        def release(self, image, epsilon, entropy):
            u = tf.raw_ops.RandomUniform(shape=tf.shape(entropy), dtype=tf.float32, seed=0, seed2=0)
            return {"activation": tf.cast(image[..., :1], tf.float32) + u + entropy, "valid": tf.constant(1)}

    head = OldHead()
    saved = str(tmp_path / "saved")
    tf.saved_model.save(head, saved, signatures={"infer": head.infer.get_concrete_function(),
                                                 "release": head.release.get_concrete_function()})
    path = str(tmp_path / "old.tflite")
    with open(path, "wb") as fh:
        fh.write(tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["infer", "release"]).convert())
    with pytest.raises(ValueError, match="export it again"):
        HeadRunner(path)


def test_release_refuses_no_noise_and_infer_keeps_the_baseline(heads):
    # review finding: release returned clean activations with valid=1 at epsilon=+inf (an app bug like budget/0)
    split, path, _, _ = heads
    runner = HeadRunner(path)
    image = _images((64, 32, 3), n=1)
    c2 = int(runner._release.get_input_details()["entropy"]["shape_signature"][-1])
    entropy = np.random.default_rng(1).integers(1, 2 ** 24 + 1, (1, 64, 32, c2)).astype(np.float32) / np.float32(2 ** 24)
    out = runner._release(image=image, epsilon=np.float32(math.inf), entropy=entropy)
    assert int(out["valid"]) == 0 and not np.any(out["activation"])
    out = runner._release(image=image, epsilon=np.float32(5.0), entropy=entropy)
    assert int(out["valid"]) == 1 and np.any(out["activation"])
    clean = split.clean_client()(image.astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(runner.infer(image, math.inf), clean, atol=1e-5)  # the baseline, via infer


def test_head_runner_serializes_threads(heads):
    # review finding: two threads sharing one runner got noise-free rows and shared noise; calls are now serialized
    import threading

    split, path, _, _ = heads
    runner = HeadRunner(path, rows_per_call=1)
    images = [_images((64, 32, 3), n=1, seed=k) for k in (0, 1)]
    clean = [split.clean_client()(im.astype(np.float32) / 255.0).numpy() for im in images]
    out, errors = {0: [], 1: []}, []

    def work(k):
        try:
            for _ in range(15):
                out[k].append(runner.infer(images[k], 5.0))
        except Exception as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    noises = []
    for k in (0, 1):
        for act in out[k]:
            noise = act - clean[k]
            row_is_clean = np.all(np.abs(noise) < 1e-5, axis=(2, 3))
            assert not np.any(row_is_clean), "a released row carries no noise"
            noises.append(noise.ravel())
    flat = np.stack(noises)
    rows = flat.reshape(len(flat), 64, -1)
    for i in range(len(rows)):  # no row of any release shares its noise with a row of another release
        same = np.all(np.abs(rows[i + 1:, :, None, :] - rows[i][None, None, :, :]) < 1e-6, axis=-1)
        assert not np.any(same)
