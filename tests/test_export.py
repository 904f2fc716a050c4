"""The exported head: its sidecar, the clean activation against Keras, the on-device update, what the converter
checks in the written bytes (builtin ops, no random op, the grid release) and the docs' Kotlin names.  The release's
exactness and what an attacker can do with it: tests/test_release_exact.py."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import dpact_tf
from dpact_tf import build_split_vggface, grid, privacy
from dpact_tf.deploy.convert import ConversionError, _convert, convert_client_head
from dpact_tf.deploy.runtime import HeadRunner

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


def _clean(split, images):
    return split.clean_client()(images.astype(np.float32) / 255.0).numpy()


def test_sidecar(exported):
    split, path, meta = exported
    assert meta["signatures"] == ["apply_gradient", "clean", "gradient", "release", "train"]
    assert meta["cut"] == "conv1_1"
    assert meta["noise_source"].startswith("the app's entropy only") and meta["activation_shape"] == [None, 32, 32, 8]
    rel = meta["release"]
    assert rel["steps_per_std"] == grid.STEPS_PER_STD and rel["halo_rows"] == 1
    lo, hi = grid.certified_epsilons(1e-5)
    assert lo <= rel["certified_epsilons"][0] < rel["certified_epsilons"][1] <= hi  # float32 values inside grid's
    assert rel["scale_per_epsilon"] == grid.grid_scale(1.0, 1e-5) and rel["true_range"] == pytest.approx(3 ** -0.5)
    assert meta["input"]["dtype"] == "uint8" and meta["delta"] == 1e-5
    assert meta["bytes"] == os.path.getsize(path) and len(meta["weights_sha256"]) == 64
    assert os.path.exists(os.path.splitext(path)[0] + ".json")


def test_clean_activation_equals_keras(exported):
    split, path, _ = exported
    runner = HeadRunner(path)
    images = _images()
    np.testing.assert_allclose(runner.clean(images), _clean(split, images), atol=1e-5)
    np.testing.assert_allclose(runner.clean(images[:1]), _clean(split, images[:1]), atol=1e-5)  # another batch size


@pytest.mark.skipif(not os.environ.get("DPACT_LFW_DIR"), reason="DPACT_LFW_DIR not set")
def test_clean_activation_on_real_faces(exported):
    from dpact_tf.data import load_lfw
    split, path, _ = exported
    faces = load_lfw(image_size=32, crop_fraction=0.6, progress=False).test_images[:8]
    np.testing.assert_allclose(HeadRunner(path).clean(faces), _clean(split, faces), atol=1e-5)


def test_release_noise_in_runtime(exported):
    # HeadRunner's release minus scale * clean is the table's noise plus the dither's rounding (variance < 1/4 step^2):
    # n = 8 * 32 * 32 * 8 = 65,536 values; a sample std has std ~ std / sqrt(2n), a mean std / sqrt(n)
    split, path, _ = exported
    runner = HeadRunner(path)
    images = _images(n=8, seed=1)
    spec = grid.grid_spec(5.0, 1e-5, steps_per_std=grid.STEPS_PER_STD)
    first, second = runner.release(images, 5.0), runner.release(images, 5.0)
    assert first.scale == spec.scale and first.levels.dtype == np.int32
    noise = (first.levels - _clean(split, images).astype(np.float64) * spec.scale).ravel()
    z, p = grid.noise_table().pmf()
    std = math.sqrt(float(np.sum(z.astype(np.float64) ** 2 * p)))
    n = noise.size
    assert abs(noise.std() - std) < 5 * std / math.sqrt(2 * n) + 0.01 and abs(noise.mean()) < 5 * std / math.sqrt(n)
    assert np.all(first.levels >= -grid.noise_table().max_magnitude)
    assert not np.array_equal(first.levels, second.levels), "two releases must differ"


def test_runs_without_tensorflow(exported):
    _, path, _ = exported
    code = ("import sys, numpy as np\n"
            "from dpact_tf.deploy.runtime import HeadRunner\n"
            f"r = HeadRunner({path!r}, workers=2)\n"
            "out = r.release(np.zeros((2, 32, 32, 3), np.uint8), 3.0)\n"
            "assert out.levels.shape == (2, 32, 32, 8) and r.clean(np.zeros((1, 32, 32, 3), np.uint8)).shape[-1] == 8\n"
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
    (np.zeros((1,) + SHAPE, np.uint8), math.inf, r"no-noise baseline, which clean\(\) computes"),
    (np.zeros((1,) + SHAPE, np.uint8), 25.0, r"outside \[0.7417, 20.3967\]"),
    (np.zeros((1,) + SHAPE, np.uint8), 0.5, "more steps_per_std"),
])
def test_bad_inputs(exported, image, eps, match):
    with pytest.raises(ValueError, match=match):
        HeadRunner(exported[1]).release(image, eps)


def test_on_device_training_matches_keras(exported):
    split, path, _ = exported
    runner = HeadRunner(path, workers=2)  # fresh interpreters start from the file's weights
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
        np.testing.assert_allclose(runner.clean(probe), clean_model(probe.astype(np.float32) / 255.0).numpy(),
                                   atol=1e-5)
    finally:
        for v, s in zip(client_vars, saved):
            v.assign(s)


def test_other_cuts_export_inference_only(tmp_path):
    split = build_split_vggface(SHAPE, 3, width=1 / 16, fc_units=8, cut="pool1", epsilon=2.0)
    meta = convert_client_head(split.client, str(tmp_path / "pool1.tflite"))
    assert meta["signatures"] == ["clean", "release"] and meta["layers"] == ["conv1_1", "conv1_2", "pool1"]
    assert meta["release"]["halo_rows"] == 0
    images = _images()
    runner = HeadRunner(str(tmp_path / "pool1.tflite"))
    clean = runner.clean(images)
    np.testing.assert_allclose(clean, _clean(split, images), atol=1e-5)
    assert runner.release(images, 2.0).levels.shape == clean.shape == (4, 16, 16, 4)


def test_flex_ops_fail_loudly():
    class NeedsFlex(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([4, 4], tf.float32)])
        def clean(self, x):
            return {"y": tf.linalg.svd(x, compute_uv=False)}

    with pytest.raises(ConversionError, match="outside the TFLite builtins"):
        _convert(NeedsFlex(), {"clean": NeedsFlex().clean})


@pytest.mark.parametrize("change", ["random op", "float release"])
def test_converter_refuses_a_release_off_the_grid(exported, tmp_path, monkeypatch, change):
    # The converter checks the written bytes: a random op anywhere (noise the app does not control) or a release
    # whose output is not the grid's integers is refused, and nothing is written
    from dpact_tf.deploy import convert as export

    split, _, _ = exported
    release = export.ClientHead._release

    def changed(self, image, epsilon, entropy):
        out = release(self, image, epsilon, entropy)
        if change == "random op":
            u = tf.raw_ops.RandomUniform(shape=tf.shape(out["levels"]), dtype=tf.float32, seed=0, seed2=0)
            return {**out, "levels": out["levels"] + tf.cast(u, tf.int32)}
        return {**out, "levels": tf.cast(out["levels"], tf.float32)}

    monkeypatch.setattr(export.ClientHead, "_release", changed)
    with pytest.raises(ConversionError, match="random ops" if change == "random op" else "not the grid release"):
        convert_client_head(split.client, str(tmp_path / "bad.tflite"), with_train=False)
    assert not (tmp_path / "bad.tflite").exists()


def test_the_written_head_has_no_random_op(exported):
    from dpact_tf.deploy.tflite_inspect import check_grid_release, random_ops

    assert random_ops(exported[1]) == []
    check_grid_release(exported[1])


def test_analytic_method_rejected(tmp_path):
    split = build_split_vggface(SHAPE, 3, width=1 / 16, fc_units=8, epsilon=2.0, method="analytic")
    with pytest.raises(ValueError, match="classic"):
        convert_client_head(split.client, str(tmp_path / "x.tflite"))


def test_client_for_export_from_weights(tmp_path):
    from dpact_tf.deploy.convert import client_for_export

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
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(dpact_tf.__file__)))  # this dpact_tf, not another
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, script, "--seed", "0", "--image-size", "32", "--width", "0.125",
                          "--out", str(out)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.exists() and (tmp_path / "head.json").exists()
    assert "signatures ['apply_gradient', 'clean', 'gradient', 'release', 'train']" in res.stdout
    assert "certified epsilons [0.7417, 20.3967]" in res.stdout and "16 grid steps per std" in res.stdout


def test_builtin_lrn_matches_the_lrn_kernel(exported, tmp_path):
    split, path, _ = exported
    images = _images()
    other = str(tmp_path / "lrn_kernel.tflite")
    convert_client_head(split.client, other, with_train=False, lrn="lrn_kernel")
    np.testing.assert_allclose(HeadRunner(path).clean(images), HeadRunner(other).clean(images), atol=1e-6)


def _weights_after(runner_call, path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    before = interp.get_signature_runner("clean")(image=_images(n=1, seed=9))
    out = runner_call(interp)
    after = interp.get_signature_runner("clean")(image=_images(n=1, seed=9))
    return out, before["activation"], after["activation"]


@pytest.mark.parametrize("bad", ["nan_grad", "inf_grad", "nan_lr", "inf_lr", "zero_lr", "negative_lr", "huge_lr"])
def test_raw_train_refuses_poison(exported, bad):
    # A NaN/inf gradient or learning rate from the server would write NaN into conv1_1 for good: refused.
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
    before = runner.clean(_images(n=1, seed=9))
    with pytest.raises(ValueError, match=match):
        runner.train(_images(n=2), grad, lr)
    np.testing.assert_array_equal(runner.clean(_images(n=1, seed=9)), before)


def test_streamed_batches_match_one_call(exported):
    _, path, _ = exported
    images = _images(n=5)
    whole = HeadRunner(path, max_batch=8).clean(images)
    np.testing.assert_allclose(HeadRunner(path, max_batch=2).clean(images), whole, atol=1e-6)
    assert HeadRunner(path, max_batch=2).release(images, 5.0).levels.shape == whole.shape
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="max_batch"):
            HeadRunner(path, max_batch=bad)
    with pytest.raises(ValueError, match="workers"):
        HeadRunner(path, workers=0)


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
    calls = _kotlin_calls(os.path.join(os.path.dirname(__file__), os.pardir, doc))
    assert "release" in {name for name, _ in calls}
    for name, used in calls:
        assert name in signatures, name
        assert used == set(signatures[name]["inputs"]) | set(signatures[name]["outputs"]), (name, used)


def test_model_analyzer_builtin_ops_only(exported):
    # LiteRT's model analyzer (what tf.lite.experimental.Analyzer prints), TensorFlow-free: every signature is
    # a subgraph of builtin ops; nothing needs the Flex delegate.
    from dpact_tf.deploy.tflite_inspect import analyzer_report, check_builtin_only, operator_names

    report = analyzer_report(exported[1])
    for name in ("clean", "release", "train", "gradient", "apply_gradient"):
        assert f"{name}(" in report
    assert "Flex" not in report and "CUSTOM" not in report
    check_builtin_only(exported[1])
    ops = operator_names(exported[1])
    assert "LOCAL_RESPONSE_NORMALIZATION" not in ops["clean"] and {"CONV_2D", "RSQRT"} <= set(ops["clean"])
    # release: the lookup of the noise table (a float32's bits as a bucket, GATHER, one comparison), the grid's CEIL,
    # the fingerprint of the last accepted entropy
    assert {"CONV_2D", "RSQRT", "BITCAST", "RIGHT_SHIFT", "GATHER", "GREATER", "CEIL", "ASSIGN_VARIABLE"} <= set(
        ops["release"])
    for graph in ops.values():
        assert not set(graph) & {"RANDOM_UNIFORM", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL"}


def test_one_call_train_equals_the_streamed_update(exported):
    # HeadRunner streams `gradient` per image and applies the sum once; the Kotlin app may call `train` on the
    # whole batch: the two must give the same weights (checked through the clean activation).
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
    np.testing.assert_allclose(streamed.clean(probe), raw.get_signature_runner("clean")(image=probe)["activation"],
                               atol=1e-5)


def test_forked_processes_release_independent_noise(exported):
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    split, path, _ = exported
    runner = HeadRunner(path, workers=2)
    image = _images(n=1, seed=9)
    scaled = _clean(split, image).astype(np.float64) * grid.grid_scale(5.0, 1e-5)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child releases and sends its noise back
        os.close(r)
        os.write(w, (runner.release(image, 5.0).levels - scaled).astype(np.float32).tobytes())
        os._exit(0)
    os.close(w)
    mine = (runner.release(image, 5.0).levels - scaled).astype(np.float32).ravel()
    data = b""
    while len(data) < mine.nbytes:
        chunk = os.read(r, mine.nbytes - len(data))
        if not chunk:
            break
        data += chunk
    os.waitpid(pid, 0)
    theirs = np.frombuffer(data, np.float32)
    assert theirs.size == mine.size and abs(np.corrcoef(mine, theirs)[0, 1]) < 6 / math.sqrt(mine.size)


def test_privacy_constants_are_the_layers(exported):
    # the head's delta, S_f and true range are the Keras layer's: the grid is the one the client's epsilon means
    split, _, meta = exported
    dp = split.client.get_layer("dp_activation")
    assert meta["delta"] == dp.delta and meta["sensitivity"] == dp.sensitivity
    assert meta["release"]["true_range"] == pytest.approx(privacy.lrn_output_bound(bias=2.0, alpha=1.0, beta=0.5))
