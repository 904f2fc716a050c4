"""The exported head's release and clean activation: equal to Keras, noisy in LiteRT, without TensorFlow, refusing
bad inputs, independent across forked processes.  Exactness and attacks: tests/test_release_exact.py."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import dpact_tf
from dpact_tf import grid
from dpact_tf.deploy.convert import convert_client_head
from dpact_tf.deploy.runtime import HeadRunner
from tests.deploy_util import SHAPE, _clean, _images, exported  # noqa: F401 (exported: the fixture)


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


def test_builtin_lrn_matches_the_lrn_kernel(exported, tmp_path):
    split, path, _ = exported
    images = _images()
    other = str(tmp_path / "lrn_kernel.tflite")
    convert_client_head(split.client, other, with_train=False, lrn="lrn_kernel")
    np.testing.assert_allclose(HeadRunner(path).clean(images), HeadRunner(other).clean(images), atol=1e-6)


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


def test_a_non_finite_activation_is_refused_not_clamped(tmp_path):
    # conv1_1 weights holding a NaN (e.g. a corrupted file) make the clean activation NaN: the graph's own check
    # refuses the release, so nothing built from it leaves the phone.
    tf.keras.utils.set_random_seed(0)
    split = dpact_tf.build_split_vggface(SHAPE, 3, width=1 / 8, fc_units=8, epsilon=5.0, noise_seed=0)
    kernel, bias = split.client.get_layer("conv1_1").get_weights()
    kernel[0, 0, 0, 0] = np.nan
    split.client.get_layer("conv1_1").set_weights([kernel, bias])
    path = str(tmp_path / "nan.tflite")
    convert_client_head(split.client, path, with_train=False)
    with pytest.raises(RuntimeError, match="refused the release"):
        HeadRunner(path).release(_images(n=1), 5.0)
