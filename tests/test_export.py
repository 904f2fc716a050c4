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


def _uniforms(shape, seed=0):
    """What `release` takes: (k + 1) / 2^24 for k uniform 24-bit, in (0, 1] (test draws, not an app's secret)."""
    return ((np.random.default_rng(seed).integers(0, 2 ** 24, shape) + 1) * 2.0 ** -24).astype(np.float32)


def test_sidecar(exported):
    split, path, meta = exported
    assert meta["signatures"] == ["apply_gradient", "gradient", "infer", "release", "train"] and meta["cut"] == "conv1_1"
    assert meta["noise"] == "fresh per interpreter"
    # the classic calibration is (eps, delta)-DP only up to ~21.9 for S_f = 1/sqrt(2) over the true range 1/sqrt(3)
    limit = privacy.classic_valid_max_epsilon(1e-5, sensitivity=privacy.PAPER_SENSITIVITY, true_range=3 ** -0.5)
    assert limit - 0.02 < meta["max_epsilon"] <= limit < privacy.MAX_EPSILON
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
    (np.zeros((1,) + SHAPE, np.uint8), -math.inf, "epsilon must be > 0"),
    (np.zeros((1,) + SHAPE, np.uint8), 1e38, "epsilon must be <= 21.9"),
    (np.zeros((1,) + SHAPE, np.uint8), privacy.MAX_EPSILON, "epsilon must be <= 21.9"),
    (np.zeros((1,) + SHAPE, np.uint8), 25.0, "classic calibration is no longer"),
    (np.zeros((1,) + SHAPE, np.uint8), 1e-30, "too small"),
])
def test_bad_inputs(exported, image, eps, match):
    with pytest.raises(ValueError, match=match):
        HeadRunner(exported[1]).infer(image, eps)


def test_on_device_training_matches_keras(exported, tmp_path):
    split, path, _ = exported
    runner = HeadRunner(path)  # a fresh interpreter starts from the file's weights
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
            result = runner.train(images, grad, 0.05)
            assert result == pytest.approx(expected_norm, rel=1e-4) and result.applied
        probe = _images(n=2, seed=99)
        np.testing.assert_allclose(runner.infer(probe, math.inf), clean_model(probe.astype(np.float32) / 255.0).numpy(),
                                   atol=1e-5)
    finally:
        for v, s in zip(client_vars, saved):
            v.assign(s)


def test_float16_variant(exported, tmp_path):
    split, path32, meta32 = exported
    meta16 = convert_client_head(split.client, str(tmp_path / "head16.tflite"), precision="float16")
    assert meta16["signatures"] == ["infer", "release"] and meta16["precision"] == "float16"
    images = _images()
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(HeadRunner(str(tmp_path / "head16.tflite")).infer(images, math.inf), clean, atol=2e-3)
    with pytest.raises(ValueError, match="no 'train' signature"):
        HeadRunner(str(tmp_path / "head16.tflite")).train(images, np.zeros((4, 32, 32, 8), np.float32), 0.1)
    # the float16 head's constants are float16: its epsilon limits must still hold exactly
    from ai_edge_litert.interpreter import Interpreter

    raw = Interpreter(model_path=str(tmp_path / "head16.tflite")).get_signature_runner("infer")
    for eps, valid in ((meta16["max_epsilon"], 1), (meta16["max_epsilon"] * 1.001, 0), (math.inf, 1), (-math.inf, 0)):
        assert int(raw(image=images[:1], epsilon=np.float32(eps))["valid"]) == valid, eps


def test_other_cuts_export_inference_only(tmp_path):
    split = build_split_vggface(SHAPE, 3, width=1 / 16, fc_units=8, cut="pool1", epsilon=2.0)
    meta = convert_client_head(split.client, str(tmp_path / "pool1.tflite"))
    assert meta["signatures"] == ["infer", "release"] and meta["layers"] == ["conv1_1", "conv1_2", "pool1"]
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
    assert "signatures ['apply_gradient', 'gradient', 'infer', 'release', 'train']" in res.stdout
    assert "fresh per interpreter" in res.stdout


# --- issue 9: the released noise is fresh per process; invalid epsilon / gradients never pass -------------------
_RELEASE = ("import sys, numpy as np\n"
            "from ai_edge_litert.interpreter import Interpreter\n"
            "it = Interpreter(model_path=sys.argv[1])\n"
            "out = it.get_signature_runner('infer')(image=np.load(sys.argv[2]), epsilon=np.float32(1.0))\n"
            "np.save(sys.argv[3], out['activation'])\n")


def _release_in_new_process(path, images_path, out_path):
    # the raw LiteRT signature, as the Kotlin app calls it: nothing of dpact is imported
    res = subprocess.run([sys.executable, "-c", _RELEASE, path, images_path, out_path], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return np.load(out_path)


def _noise_of_two_processes(split, path, tmp_path):
    images = _images(n=2, seed=5)
    np.save(tmp_path / "images.npy", images)
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    a, b = (_release_in_new_process(path, str(tmp_path / "images.npy"), str(tmp_path / f"{k}.npy")) - clean
            for k in "ab")
    return a.ravel(), b.ravel()


def test_two_processes_draw_different_noise(exported, tmp_path):
    # Regression (issue 9): a global seed set before export leaked seed=0, seed2=2**31-1 into the random op and
    # every interpreter replayed the same noise (correlation 1).  n = 2 * 32 * 32 * 8 = 16,384 noise values:
    # the correlation of independent noise is ~N(0, 1/n), so |r| < 5/sqrt(n) = 0.04.
    split, path, _ = exported  # the fixture calls tf.keras.utils.set_random_seed(0) before exporting
    a, b = _noise_of_two_processes(split, path, tmp_path)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(a.size)
    assert a.std() == pytest.approx(privacy.noise_std(1.0, 1e-5), rel=5 / math.sqrt(2 * a.size))


def test_written_model_has_unseeded_random_ops(exported):
    from dpact_tf.tflite_inspect import random_ops

    ops = random_ops(exported[1])
    assert ops and all(op.seed == 0 and op.seed2 == 0 for op in ops), ops


def test_replayable_noise_only_behind_the_test_option(exported, tmp_path):
    split, _, _ = exported
    path = str(tmp_path / "replay.tflite")
    meta = convert_client_head(split.client, path, with_train=False, replayable_noise_for_tests=True)
    assert meta["noise"] == "replayable (TEST ONLY)"
    assert all(op["seed"] or op["seed2"] for op in meta["random_ops"])
    a, b = _noise_of_two_processes(split, path, tmp_path)
    np.testing.assert_array_equal(a, b)  # the very reason a deployable model must never be seeded


def test_converter_refuses_a_fixed_seed(exported, tmp_path, monkeypatch):
    from dpact_tf import export

    split, _, _ = exported
    # a head whose random op was traced with fixed seeds, as a leaked global seed does
    init = export.ClientHead.__init__

    def leaky_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.seeds = (0, 2**31 - 1)

    monkeypatch.setattr(export.ClientHead, "__init__", leaky_init)
    with pytest.raises(ConversionError, match="fixed seeds"):
        convert_client_head(split.client, str(tmp_path / "seeded.tflite"), with_train=False)
    assert not (tmp_path / "seeded.tflite").exists()


@pytest.mark.parametrize("noise", ["box_muller", "standard_normal"])
def test_noise_distribution_of_each_sampler(exported, tmp_path, noise):
    # Every sampler must give exact N(0, std^2) noise: n = 4 * 32 * 32 * 8 = 32,768 values; a sample std has
    # std ~ std / sqrt(2n), a mean std / sqrt(n); the KS statistic of a true normal is < 1.95 / sqrt(n) with
    # probability 0.999.  The halves of Box-Muller (cos, sin) must be independent too.
    from scipy import stats

    split, _, _ = exported
    path = str(tmp_path / f"{noise}.tflite")
    convert_client_head(split.client, path, with_train=False, noise=noise)
    images = _images(n=4, seed=2)
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    std = privacy.noise_std(2.0, 1e-5)
    noise_values = (HeadRunner(path, allow_runtime_noise_only=True).infer(images, 2.0) - clean)
    z = noise_values.ravel() / std
    n = z.size
    assert abs(z.std() - 1) < 4 / math.sqrt(2 * n) and abs(z.mean()) < 4 / math.sqrt(n)
    assert stats.kstest(z, "norm").statistic < 1.95 / math.sqrt(n)
    halves = noise_values.reshape(-1, 2, 4)  # channels 0..3 (cos) vs 4..7 (sin) of one pixel
    assert abs(np.corrcoef(halves[:, 0].ravel(), halves[:, 1].ravel())[0, 1]) < 5 / math.sqrt(n / 2)


def test_builtin_lrn_matches_the_lrn_kernel(exported, tmp_path):
    split, path, _ = exported
    images = _images()
    other = str(tmp_path / "lrn_kernel.tflite")
    convert_client_head(split.client, other, with_train=False, lrn="lrn_kernel", noise="standard_normal")
    np.testing.assert_allclose(HeadRunner(path).infer(images, math.inf), HeadRunner(other, allow_runtime_noise_only=True).infer(images, math.inf),
                               atol=1e-6)


@pytest.mark.parametrize("eps", [float("nan"), 0.0, -1.0, -math.inf, 1e38, 3.4e38, privacy.MAX_EPSILON * 2, 1e-40,
                                 privacy.MAX_EPSILON, 25.0])
def test_raw_signature_invalid_epsilon_releases_nothing(exported, eps):
    # Regression (issue 9): the raw signature released the clean activation for -inf and 3.4e38 and used the
    # noise of |epsilon| for epsilon < 0, and its classic sigma under-noised above epsilon ~21.9.  Now: valid = 0
    # and an all-zero activation, whatever the image.
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=exported[1]).get_signature_runner("infer")
    out = runner(image=_images(n=2, seed=7), epsilon=np.float32(eps))
    assert int(out["valid"]) == 0
    np.testing.assert_array_equal(out["activation"], 0.0)


@pytest.mark.parametrize("eps", [1e-3, 1.0, "max_epsilon", math.inf])
def test_raw_signature_valid_epsilon(exported, eps):
    from ai_edge_litert.interpreter import Interpreter

    eps = exported[2]["max_epsilon"] if eps == "max_epsilon" else eps

    runner = Interpreter(model_path=exported[1]).get_signature_runner("infer")
    out = runner(image=_images(n=1, seed=7), epsilon=np.float32(eps))
    assert int(out["valid"]) == 1 and np.all(np.isfinite(out["activation"])) and np.any(out["activation"] != 0)


def _weights_after(runner_call, path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    before = interp.get_signature_runner("infer")(image=_images(n=1, seed=9), epsilon=np.float32(math.inf))
    out = runner_call(interp)
    after = interp.get_signature_runner("infer")(image=_images(n=1, seed=9), epsilon=np.float32(math.inf))
    return out, before["activation"], after["activation"]


@pytest.mark.parametrize("bad", ["nan_grad", "inf_grad", "nan_lr", "inf_lr", "zero_lr", "negative_lr", "huge_lr"])
def test_raw_train_refuses_poison(exported, bad):
    # Regression (issue 9): a NaN/inf gradient or learning rate from the server wrote NaN into conv1_1 for good.
    # (Each Interpreter starts from the weights in the file: updates never leak between tests.)
    path = exported[1]
    grad = np.full((2, 32, 32, 8), 1e-3, np.float32)
    lr = 0.01
    if bad == "nan_grad":
        grad[0, 3, 4, 5] = np.nan
    elif bad == "inf_grad":
        grad[1, 0, 0, 0] = np.inf
    else:
        lr = {"nan_lr": np.nan, "inf_lr": np.inf, "zero_lr": 0.0, "negative_lr": -0.1, "huge_lr": 3e38}[bad]
    grad = grad * (1e6 if bad == "huge_lr" else 1.0)
    for signature in ("train", "apply_gradient"):
        def call(interp):
            if signature == "train":
                return interp.get_signature_runner("train")(image=_images(n=2), grad_activation=grad,
                                                            learning_rate=np.float32(lr))
            g = interp.get_signature_runner("gradient")(image=_images(n=2), grad_activation=grad)
            return interp.get_signature_runner("apply_gradient")(learning_rate=np.float32(lr), **g)
        out, before, after = _weights_after(call, path)
        assert int(out["applied"]) == 0, signature
        np.testing.assert_array_equal(before, after)
    # a good step is applied and changes the weights
    out, before, after = _weights_after(lambda interp: interp.get_signature_runner("train")(
        image=_images(n=2), grad_activation=np.full((2, 32, 32, 8), 1e-1, np.float32), learning_rate=np.float32(0.5)),
        path)
    assert int(out["applied"]) == 1 and not np.array_equal(before, after)


@pytest.mark.parametrize("grad,lr,match", [
    (np.full((2, 32, 32, 8), np.nan, np.float32), 0.1, "NaN or inf"),
    (np.full((2, 32, 32, 8), np.inf, np.float32), 0.1, "NaN or inf"),
    (np.zeros((2, 32, 32, 8), np.float32), float("nan"), "learning_rate must be finite and > 0"),
    (np.zeros((2, 32, 32, 8), np.float32), float("inf"), "learning_rate must be finite and > 0"),
    (np.zeros((2, 32, 32, 8), np.float32), 0.0, "learning_rate must be finite and > 0"),
    (np.zeros((2, 16, 16, 8), np.float32), 0.1, r"grad_activation must have shape \[2, 32, 32, 8\]"),
    (np.zeros((2, 32, 32, 4), np.float32), 0.1, r"grad_activation must have shape \[2, 32, 32, 8\]"),
    (np.zeros((3, 32, 32, 8), np.float32), 0.1, r"grad_activation must have shape \[2, 32, 32, 8\]"),
])
def test_head_runner_refuses_bad_training_input(exported, grad, lr, match):
    runner = HeadRunner(exported[1])
    before = runner.infer(_images(n=1, seed=9), math.inf)
    with pytest.raises(ValueError, match=match):
        runner.train(_images(n=2), grad, lr)
    np.testing.assert_array_equal(runner.infer(_images(n=1, seed=9), math.inf), before)


def test_streamed_batches_match_one_call(exported):
    _, path, _ = exported
    images = _images(n=5)
    whole = HeadRunner(path, max_batch=8).infer(images, math.inf)
    np.testing.assert_allclose(HeadRunner(path, max_batch=2).infer(images, math.inf), whole, atol=1e-6)
    with pytest.raises(ValueError, match="max_batch"):
        HeadRunner(path, max_batch=0)


def test_convert_cli_replayable_only_on_request(tmp_path):
    script = os.path.join(os.path.dirname(__file__), os.pardir, "tflite", "convert.py")
    res = subprocess.run([sys.executable, script, "--seed", "3", "--image-size", "32", "--width", "0.0625", "--no-train",
                          "--replayable-noise-for-tests", "--out", str(tmp_path / "r.tflite")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "noise replayable (TEST ONLY)" in res.stdout


def _kotlin_calls(path):
    """(signature, names used as inputs/outputs) of every runSignature call in the ```kotlin blocks of a doc."""
    import re

    text = open(path).read()
    calls = []
    for block in re.findall(r"```kotlin\n(.*?)```", text, re.S):
        for call in re.findall(r"runSignature\((.*?)\"(\w+)\"\)", block, re.S):
            calls.append((call[1], set(re.findall(r"\"(\w+)\" to", call[0]))))
    assert calls, f"no runSignature call in {path}"
    return calls


@pytest.mark.parametrize("doc", ["tflite/README.md", "book/deploy.md"])
def test_kotlin_snippet_uses_the_real_names(exported, doc):
    from ai_edge_litert.interpreter import Interpreter

    signatures = Interpreter(model_path=exported[1]).get_signature_list()
    for name, used in _kotlin_calls(os.path.join(os.path.dirname(__file__), os.pardir, doc)):
        assert name in signatures, name
        assert used == set(signatures[name]["inputs"]) | set(signatures[name]["outputs"]), (name, used)


def test_model_analyzer_builtin_ops_only(exported):
    # LiteRT's model analyzer (what tf.lite.experimental.Analyzer prints), TensorFlow-free: every signature is
    # a subgraph of builtin ops; nothing needs the Flex delegate.
    from dpact_tf.tflite_inspect import analyzer_report, check_builtin_only, operator_names

    report = analyzer_report(exported[1])
    for name in ("infer", "release", "train", "gradient", "apply_gradient"):
        assert f"{name}(" in report
    assert "Flex" not in report and "CUSTOM" not in report
    check_builtin_only(exported[1])
    ops = operator_names(exported[1])["infer"]
    assert "LOCAL_RESPONSE_NORMALIZATION" not in ops and "RANDOM_STANDARD_NORMAL" not in ops
    assert {"CONV_2D", "RSQRT", "RANDOM_UNIFORM"} <= set(ops)
    # release: no random op at all (its noise is the app's uniforms), Box-Muller from builtin ops
    release = set(operator_names(exported[1])["release"])
    assert not release & {"RANDOM_UNIFORM", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL"}
    assert {"CONV_2D", "RSQRT", "LOG", "SQRT", "COS", "SIN", "SELECT_V2"} <= release


def test_one_call_train_equals_the_streamed_update(exported):
    # HeadRunner streams `gradient` per image and applies the sum once; the Kotlin app may call `train` on the
    # whole batch: the two must give the same weights (checked through the noise-free activation).
    from ai_edge_litert.interpreter import Interpreter

    path = exported[1]
    images = _images(n=3, seed=4)
    grad = np.random.default_rng(4).normal(0, 1, (3, 32, 32, 8)).astype(np.float32)
    streamed = HeadRunner(path, max_batch=1)
    result = streamed.train(images, grad, 0.05)
    raw = Interpreter(model_path=path)
    out = raw.get_signature_runner("train")(image=images, grad_activation=grad, learning_rate=np.float32(0.05))
    assert int(out["applied"]) == 1 and float(out["grad_norm"]) == pytest.approx(result, rel=1e-5)
    probe = _images(n=2, seed=8)
    np.testing.assert_allclose(streamed.infer(probe, math.inf),
                               raw.get_signature_runner("infer")(image=probe, epsilon=np.float32(math.inf))["activation"],
                               atol=1e-5)


# --- the adversarial review: LiteRT seeds the unseeded random op from 32 bits per process, so the noise of
# `infer` is recoverable by a 2^32 search; `release` mixes the app's entropy into every uniform -----------------
@pytest.fixture(scope="module")
def replayable(exported, tmp_path_factory):
    split, _, _ = exported
    path = str(tmp_path_factory.mktemp("replay") / "replay.tflite")
    convert_client_head(split.client, path, with_train=False, replayable_noise_for_tests=True)
    return split, path


def _release(path, image, eps, entropy):
    from ai_edge_litert.interpreter import Interpreter

    out = Interpreter(model_path=path).get_signature_runner("release")(image=image, epsilon=np.float32(eps),
                                                                       entropy=entropy)
    return out["activation"], int(out["valid"])


def test_release_noise_depends_on_the_apps_entropy_even_if_the_runtime_generator_is_known(replayable):
    split, path = replayable  # the head's own generator replays: the attacker knows it exactly
    image = _images(n=1, seed=5)
    clean = split.clean_client()(image.astype(np.float32) / 255.0).numpy()
    shape = (1, 32, 32, 8)
    e1, e2 = (_uniforms(shape, s) for s in (1, 2))
    a1, v1 = _release(path, image, 5.0, e1)
    a1_again, _ = _release(path, image, 5.0, e1)
    a2, _ = _release(path, image, 5.0, e2)
    assert v1 == 1
    np.testing.assert_array_equal(a1, a1_again)  # the same entropy: the same noise
    n1, n2 = (a1 - clean).ravel(), (a2 - clean).ravel()
    assert abs(np.corrcoef(n1, n2)[0, 1]) < 6 / math.sqrt(n1.size)  # another entropy: unrelated noise
    # knowing the runtime's generator (infer replays it) does not give the released noise
    from ai_edge_litert.interpreter import Interpreter
    known = Interpreter(model_path=path).get_signature_runner("infer")(image=image, epsilon=np.float32(5.0))
    residual = (a1 - (known["activation"] - clean)) - clean
    assert residual.std() > 1.2 * privacy.noise_std(5.0, 1e-5)  # ~sqrt(2) noise stds left, not ~0


def test_release_noise_is_box_muller_of_the_apps_entropy_alone(exported):
    # a deployable head (its random op unseeded): two interpreters given the same entropy release the same noise,
    # and it is Box-Muller of that entropy -- channel c < C/2: r cos(2 pi u2), c >= C/2: r sin(2 pi u2), with
    # r = std sqrt(-2 ln u1), u1 = entropy[..., c], u2 = entropy[..., C/2 + c] -- so nothing else enters it
    split, path, _ = exported
    image = _images(n=2, seed=4)
    clean = split.clean_client()(image.astype(np.float32) / 255.0).numpy()
    e = _uniforms((2, 32, 32, 8), 6)
    e[0, 0, 0, 0], e[0, 0, 0, 4] = 2.0 ** -24, 1.0  # the grid's ends: the largest radius, the angle 2 pi
    a, valid = _release(path, image, 3.0, e)
    b, _ = _release(path, image, 3.0, e)
    assert valid == 1
    np.testing.assert_array_equal(a, b)
    u1, u2 = e[..., :4].astype(np.float64), e[..., 4:].astype(np.float64)
    r = privacy.noise_std(3.0, 1e-5) * np.sqrt(-2.0 * np.log(u1))
    expected = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)], axis=-1)
    np.testing.assert_allclose(a - clean, expected, atol=2e-5 * r.max())  # float32 rounding only
    assert r.max() == pytest.approx(privacy.noise_std(3.0, 1e-5) * math.sqrt(48 * math.log(2)))  # 5.77 std


def test_release_noise_is_exact_gaussian(exported):
    from scipy import stats

    split, path, _ = exported
    runner = HeadRunner(path, max_batch=8)
    images = _images(n=8, seed=7)
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    noise = (runner.infer(images, 3.0) - clean).ravel()  # HeadRunner uses `release` with its Philox entropy
    std = privacy.noise_std(3.0, 1e-5)
    n = noise.size  # 65,536
    assert abs(noise.std() - std) < 4 * std / math.sqrt(2 * n)
    assert abs(noise.mean()) < 4 * std / math.sqrt(n)
    assert stats.kstest(noise / std, "norm").pvalue > 1e-3


@pytest.mark.parametrize("bad", [np.nan, 0.0, 2.0 ** -25, -0.25, np.nextafter(np.float32(1), np.float32(2)), np.inf])
def test_release_refuses_entropy_outside_the_24_bit_grid(replayable, bad):
    # a zero is an unfilled element (an app's buffer starts at 0): refused even when it is the only one
    _, path = replayable
    entropy = _uniforms((1, 32, 32, 8))
    entropy[0, 3, 4, 5] = bad
    act, valid = _release(path, _images(n=1), 5.0, entropy)
    assert valid == 0 and not np.any(act)
    entropy[0, 3, 4, 5], entropy[0, 3, 4, 6] = 2.0 ** -24, 1.0  # the grid's ends are uniforms like any other
    assert _release(path, _images(n=1), 5.0, entropy)[1] == 1


def test_headrunner_refuses_a_replayable_model_and_tiny_epsilon(replayable, exported):
    _, path = replayable
    with pytest.raises(ValueError, match="fixed seeds"):
        HeadRunner(path)
    HeadRunner(path, allow_replayable_noise_for_tests=True)
    runner = HeadRunner(exported[1])
    with pytest.raises(ValueError, match="too small"):
        runner.infer(_images(n=1), 2e-19)  # the review: std^2 finite, but Box-Muller's -2 std^2 ln(1-u) is not
    act, valid = _release(exported[1], _images(n=1), 2e-19, _uniforms((1, 32, 32, 8)))
    assert valid == 0 and not np.any(act)


# --- the re-review: runtime-only heads, float16 constants, broadcast or unfilled entropy, forked processes ---------
def test_headrunner_refuses_a_head_without_release(exported, tmp_path):
    split, _, _ = exported
    path = str(tmp_path / "sn.tflite")
    convert_client_head(split.client, path, with_train=False, noise="standard_normal")
    with pytest.raises(ValueError, match="no 'release' signature"):
        HeadRunner(path)
    HeadRunner(path, allow_runtime_noise_only=True).infer(_images(n=1), 3.0)  # benchmarks of old heads only


@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (1, 32, 1, 8)])
def test_release_refuses_broadcast_entropy(replayable, shape):
    _, path = replayable
    act, valid = _release(path, _images(n=1), 5.0, _uniforms(shape))
    assert valid == 0 and not np.any(act)


@pytest.mark.parametrize("fill", [0.0, 0.5, 0.999])
def test_release_refuses_an_unfilled_entropy_buffer(replayable, fill):
    _, path = replayable
    act, valid = _release(path, _images(n=1), 5.0, np.full((1, 32, 32, 8), fill, np.float32))
    assert valid == 0 and not np.any(act)


def test_float16_head_draws_every_angle(exported, tmp_path):
    # 2 pi stored as float16 (6.28125) left a wedge of 0.002 rad that no noise pair ever hit: delta > 1e-5
    split, _, _ = exported
    path = str(tmp_path / "h16.tflite")
    convert_client_head(split.client, path, precision="float16", replayable_noise_for_tests=True)
    from ai_edge_litert.interpreter import Interpreter

    run = Interpreter(model_path=path).get_signature_runner("release")
    image = np.zeros((1, 32, 32, 3), np.uint8)  # clean activation 0: the release is the noise itself
    # angle uniforms u2 close to 1: angles close to 2 pi
    e = _uniforms((1, 32, 32, 8), 3)
    out = run(image=image, epsilon=np.float32(1.0), entropy=e)
    noise = out["activation"][0]
    z_cos, z_sin = noise[..., :4].ravel(), noise[..., 4:].ravel()
    angle = np.mod(np.arctan2(z_sin, z_cos), 2 * np.pi)
    # every angle is reachable: the largest angle drawn exceeds 6.28125 (2 pi in float16) at this sample size
    assert angle.max() > 6.28125 and int(out["valid"]) == 1
    # the grid's smallest uniform 2^-24 (a float16 subnormal) is accepted and half of it refused, as in float32
    # (fresh buffers: one that keeps the last accepted call's uniforms at an end is refused as stale)
    e = _uniforms((1, 32, 32, 8), 4)
    e[0, 0, 0, 0] = 2.0 ** -24
    assert int(run(image=image, epsilon=np.float32(1.0), entropy=e)["valid"]) == 1
    e = _uniforms((1, 32, 32, 8), 5)
    e[0, 0, 0, 0] = 2.0 ** -25
    assert int(run(image=image, epsilon=np.float32(1.0), entropy=e)["valid"]) == 0


def test_forked_processes_release_independent_noise(exported):
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    split, path, _ = exported
    runner = HeadRunner(path)
    image = _images(n=1, seed=9)
    clean = split.clean_client()(image.astype(np.float32) / 255.0).numpy()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child releases and sends its noise back
        os.close(r)
        os.write(w, (runner.infer(image, 5.0) - clean).astype(np.float32).tobytes())
        os._exit(0)
    os.close(w)
    mine = (runner.infer(image, 5.0) - clean).ravel()
    data = b""
    while len(data) < mine.nbytes:
        chunk = os.read(r, mine.nbytes - len(data))
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    theirs = np.frombuffer(data, np.float32)
    assert abs(np.corrcoef(mine, theirs)[0, 1]) < 6 / math.sqrt(mine.size)


_HEADRUNNER = ("import sys, numpy as np\n"
               "from dpact_tf.runtime import HeadRunner\n"
               "np.save(sys.argv[3], HeadRunner(sys.argv[1]).infer(np.load(sys.argv[2]), 5.0))\n")


def test_deployable_path_draws_different_noise_in_two_processes(exported, tmp_path):
    # what a phone runs: HeadRunner -> the `release` signature with the app's entropy, each in its own process
    split, path, _ = exported
    images = _images(n=2, seed=11)
    np.save(tmp_path / "img.npy", images)
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    noises = []
    for k in "ab":
        res = subprocess.run([sys.executable, "-c", _HEADRUNNER, path, str(tmp_path / "img.npy"),
                              str(tmp_path / f"hr_{k}.npy")], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        noises.append((np.load(tmp_path / f"hr_{k}.npy") - clean).ravel())
    a, b = noises
    std = privacy.noise_std(5.0, 1e-5)
    assert abs(a.std() - std) < 5 * std / math.sqrt(2 * a.size)
    assert abs(np.corrcoef(a, b)[0, 1]) < 6 / math.sqrt(a.size)
    assert (a - b).std() > 1.3 * std  # subtracting one process's noise from the other's leaves ~sqrt(2) stds


@pytest.mark.parametrize("bits", [8, 16, 23])
def test_release_refuses_coarse_uniforms(replayable, bits):
    # the re-review: 8-bit uniforms pass the moment checks but leave ~0.4 % of coordinates without noise (u1 = 1)
    # and cut the tail at 3.3 std; every uniform coarser than the 24-bit grid has an even k + 1
    _, path = replayable
    rng = np.random.default_rng(bits)
    coarse = ((rng.integers(0, 2 ** bits, (1, 32, 32, 8)) + 1) / 2.0 ** bits).astype(np.float32)
    assert abs(coarse.mean() - 0.5) < 0.01 and abs(coarse.var() - 1 / 12) < 0.01  # the moments look right
    act, valid = _release(path, _images(n=1), 5.0, coarse)
    assert valid == 0 and not np.any(act)
    fine = _uniforms((1, 32, 32, 8), bits)
    assert _release(path, _images(n=1), 5.0, fine)[1] == 1


def test_release_refuses_uniforms_off_the_24_bit_grid(replayable):
    _, path = replayable
    entropy = _uniforms((1, 32, 32, 8), 11)
    entropy[0, 0, 0, 0] = 1.5 * 2.0 ** -24  # in range, but not (k + 1) / 2^24
    assert _release(path, _images(n=1), 5.0, entropy)[1] == 0


def test_release_refuses_a_stale_entropy_buffer(replayable):
    # LiteRT keeps an input tensor between calls: an app that forgets to refill `entropy` would release a second
    # image with the first one's noise (the difference of the releases = the difference of the clean activations)
    from ai_edge_litert.interpreter import Interpreter

    _, path = replayable
    run = Interpreter(model_path=path).get_signature_runner("release")
    a, b = _images(n=1, seed=1), _images(n=1, seed=2)
    e1, e2 = _uniforms((1, 32, 32, 8), 1), _uniforms((1, 32, 32, 8), 2)

    def release(image, entropy):
        out = run(image=image, epsilon=np.float32(5.0), entropy=entropy)
        return out["activation"], int(out["valid"])

    assert release(a, e1)[1] == 1
    for image in (b, a):  # the same entropy again, for another image or the same one: refused, nothing released
        act, valid = release(image, e1.copy())
        assert valid == 0 and not np.any(act)
    assert release(b, e2)[1] == 1  # fresh uniforms: released
    # the fingerprint is the buffer's two ends: a buffer that keeps the last accepted call's uniforms at either end
    # is refused -- stale in the middle, or refilled at one end only (the review: a first version refusing only
    # when both ends matched released such a buffer, and the server recovered the clean difference on the rest)
    middle = e2.copy()
    middle[0, 16, 16, 3] = e1[0, 16, 16, 3]
    assert middle[0, 16, 16, 3] != e2[0, 16, 16, 3] and release(a, middle)[1] == 0
    for refilled in (slice(0, 2048), slice(2048, None)):  # the first quarter refilled, or all but it
        partly = e2.copy()
        partly.reshape(-1)[refilled] = _uniforms((8192,), 9).reshape(-1)[refilled]
        act, valid = release(a, partly)
        assert valid == 0 and not np.any(act)
    # the limit, as documented: one call is remembered, per interpreter -- e1 after e2 passes, and so does e1 in a
    # new interpreter
    assert release(a, e1)[1] == 1
    assert _release(path, a, 5.0, e1)[1] == 1


def test_release_refuses_a_stale_buffer_that_shrank(tmp_path):
    # LiteRT keeps a tensor's contents when it is resized: a batch of 2, then a batch of 1 without refilling,
    # would release the second image with the first one's noise (the review's case 1)
    from ai_edge_litert.interpreter import Interpreter

    from dpact_tf.runtime import _InPlaceSignature

    tf.keras.utils.set_random_seed(0)
    split = build_split_vggface(SHAPE, 3, width=1 / 8, fc_units=8, epsilon=5.0)
    path = str(tmp_path / "head.tflite")
    convert_client_head(split.client, path, with_train=False)
    call = _InPlaceSignature(Interpreter(model_path=path).get_signature_runner("release"))

    def release(images, entropy=None):
        call.resize({"image": images.shape, "entropy": images.shape[:3] + (8,)})
        call.set("image", images)
        call.set("epsilon", np.float32(5.0))
        if entropy is not None:
            call.set("entropy", entropy)
        call.invoke()
        return int(call.view("valid")), call.view("activation").copy()

    assert release(_images(n=2, seed=1), _uniforms((2, 32, 32, 8), 3))[0] == 1
    valid, act = release(_images(n=1, seed=2))  # not refilled: the first image's uniforms, cut to one image
    assert valid == 0 and not np.any(act)
    assert release(_images(n=1, seed=2), _uniforms((1, 32, 32, 8), 4))[0] == 1  # refilled: released
