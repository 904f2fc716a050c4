import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import build_split_vggface, privacy
from dpact_tf.export import ConversionError, _convert, convert_client_head
from dpact_tf.runtime import HeadRunner

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tf.keras.utils.set_random_seed(0)
    split = build_split_vggface(SHAPE, 3, width=1 / 8, fc_units=8, epsilon=5.0, noise_seed=0)
    out = str(tmp_path_factory.mktemp("head") / "head.tflite")
    meta = convert_client_head(split.client, out)
    return split, out, meta


def _images(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE, dtype=np.uint8)


def test_sidecar(exported):
    split, path, meta = exported
    assert meta["signatures"] == ["infer", "train"] and meta["cut"] == "conv1_1"
    assert meta["input"]["dtype"] == "uint8" and meta["output"]["shape"] == [None, 32, 32, 8]
    assert meta["noise_std_times_epsilon"] == pytest.approx(privacy.noise_std(1.0, 1e-5))
    assert meta["bytes"] == os.path.getsize(path) and len(meta["weights_sha256"]) == 64
    assert os.path.exists(os.path.splitext(path)[0] + ".json")


def test_parity_without_noise(exported):
    split, path, _ = exported
    runner = HeadRunner(path)
    images = _images()
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(runner.infer(images, math.inf), clean, atol=1e-5)
    np.testing.assert_allclose(runner.infer(images[:1], math.inf), clean[:1], atol=1e-5)  # another batch size


@pytest.mark.skipif(not os.environ.get("DPACT_LFW_DIR"), reason="DPACT_LFW_DIR not set")
def test_parity_on_real_faces(exported):
    from dpact_tf.data import load_lfw
    split, path, _ = exported
    faces = load_lfw(image_size=32, crop_fraction=0.6, progress=False).test_images[:8]
    clean = split.clean_client()(faces.astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(HeadRunner(path).infer(faces, math.inf), clean, atol=1e-5)


def test_noise_std_in_runtime(exported):
    split, path, _ = exported
    runner = HeadRunner(path)
    images = _images(n=8, seed=1)
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    a, b = runner.infer(images, 5.0), runner.infer(images, 5.0)
    noise = (a - clean).ravel()
    n = noise.size  # 8 * 32 * 32 * 8 = 65,536
    expected = privacy.noise_std(5.0, 1e-5)
    assert abs(noise.std() - expected) < 4 * expected / math.sqrt(2 * n)
    assert abs(noise.mean()) < 4 * expected / math.sqrt(n)
    assert not np.allclose(a, b), "two releases must differ"


def test_runs_without_tensorflow(exported):
    _, path, _ = exported
    code = ("import sys, math, numpy as np\n"
            "from dpact_tf.runtime import HeadRunner\n"
            f"r = HeadRunner({path!r})\n"
            "out = r.infer(np.zeros((2, 32, 32, 3), np.uint8), 3.0)\n"
            "assert out.shape == (2, 32, 32, 8), out.shape\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
            "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


@pytest.mark.parametrize("image,eps,match", [
    (np.zeros((1,) + SHAPE, np.float32), 1.0, "uint8"),
    (np.zeros((1, 16, 16, 3), np.uint8), 1.0, r"shape \[N, 32, 32, 3\]"),
    (np.zeros((1,) + SHAPE, np.uint8), 0.0, "epsilon must be > 0"),
    (np.zeros((1,) + SHAPE, np.uint8), -2.0, "epsilon must be > 0"),
    (np.zeros((1,) + SHAPE, np.uint8), float("nan"), "epsilon must be > 0"),
])
def test_bad_inputs(exported, image, eps, match):
    with pytest.raises(ValueError, match=match):
        HeadRunner(exported[1]).infer(image, eps)


def test_on_device_training_matches_keras(exported, tmp_path):
    split, _, _ = exported
    # export a fresh copy so this test's updates do not leak into others
    path = str(tmp_path / "train.tflite")
    convert_client_head(split.client, path)
    runner = HeadRunner(path)
    clean_model = split.clean_client()
    client_vars = [split.client.get_layer("conv1_1").kernel, split.client.get_layer("conv1_1").bias]
    saved = [v.numpy().copy() for v in client_vars]
    optimizer = tf.keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    rng = np.random.default_rng(3)
    try:
        for step in range(2):
            images = _images(n=4, seed=10 + step)
            grad = rng.normal(0, 1, (4, 32, 32, 8)).astype(np.float32)
            x = images.astype(np.float32) / 255.0
            with tf.GradientTape() as tape:
                act = split.client(x)
            grads = tape.gradient(act, client_vars, output_gradients=grad)
            optimizer.apply_gradients(zip(grads, client_vars))
            expected_norm = float(tf.sqrt(sum(tf.reduce_sum(g * g) for g in grads)))
            assert runner.train(images, grad, 0.05) == pytest.approx(expected_norm, rel=1e-4)
        probe = _images(n=2, seed=99)
        np.testing.assert_allclose(runner.infer(probe, math.inf), clean_model(probe.astype(np.float32) / 255.0).numpy(),
                                   atol=1e-5)
    finally:
        for v, s in zip(client_vars, saved):
            v.assign(s)


def test_float16_variant(exported, tmp_path):
    split, path32, meta32 = exported
    meta16 = convert_client_head(split.client, str(tmp_path / "head16.tflite"), precision="float16")
    assert meta16["signatures"] == ["infer"] and meta16["precision"] == "float16"
    images = _images()
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(HeadRunner(str(tmp_path / "head16.tflite")).infer(images, math.inf), clean, atol=2e-3)
    with pytest.raises(ValueError, match="no 'train' signature"):
        HeadRunner(str(tmp_path / "head16.tflite")).train(images, np.zeros((4, 32, 32, 8), np.float32), 0.1)


def test_other_cuts_export_inference_only(tmp_path):
    split = build_split_vggface(SHAPE, 3, width=1 / 16, fc_units=8, cut="pool1", epsilon=2.0)
    meta = convert_client_head(split.client, str(tmp_path / "pool1.tflite"))
    assert meta["signatures"] == ["infer"] and meta["layers"] == ["conv1_1", "conv1_2", "pool1"]
    images = _images()
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(HeadRunner(str(tmp_path / "pool1.tflite")).infer(images, math.inf), clean, atol=1e-5)


def test_flex_ops_fail_loudly():
    class NeedsFlex(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([4, 4], tf.float32)])
        def infer(self, x):
            return {"y": tf.linalg.svd(x, compute_uv=False)}

    with pytest.raises(ConversionError, match="outside the TFLite builtins"):
        _convert(NeedsFlex(), {"infer": NeedsFlex().infer}, "float32", False)


def test_analytic_method_rejected(tmp_path):
    split = build_split_vggface(SHAPE, 3, width=1 / 16, fc_units=8, epsilon=2.0, method="analytic")
    with pytest.raises(ValueError, match="classic"):
        convert_client_head(split.client, str(tmp_path / "x.tflite"))


def test_client_for_export_from_weights(tmp_path):
    from dpact_tf.export import client_for_export

    split = build_split_vggface(SHAPE, 3, width=1 / 8, fc_units=8, epsilon=2.0, noise_seed=0)
    split.client.save_weights(str(tmp_path / "client.h5"))
    split.client.save(str(tmp_path / "client.keras"))
    for path in ("client.h5", "client.keras"):
        client = client_for_export(image_size=32, width=1 / 8, weights=str(tmp_path / path))
        np.testing.assert_array_equal(client.get_layer("conv1_1").get_weights()[0],
                                      split.client.get_layer("conv1_1").get_weights()[0])
    with pytest.raises(FileNotFoundError):
        client_for_export(image_size=32, width=1 / 8, weights=str(tmp_path / "missing.h5"))


def test_convert_cli(tmp_path):
    out = tmp_path / "head.tflite"
    script = os.path.join(os.path.dirname(__file__), os.pardir, "tflite", "convert.py")
    res = subprocess.run([sys.executable, script, "--seed", "0", "--image-size", "32", "--width", "0.125",
                          "--precision", "both", "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.exists() and (tmp_path / "head_fp16.tflite").exists() and (tmp_path / "head.json").exists()
    assert "signatures ['infer', 'train']" in res.stdout
