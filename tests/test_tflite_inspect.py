"""Reading a written .tflite back: operators, random ops, custom (Flex) ops, signatures, the conv weights it
stores -- without TensorFlow."""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from dpact_tf.deploy import tflite_inspect


def _model(fn, spec, *, select_tf=False):
    concrete = tf.function(fn, input_signature=spec).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    if select_tf:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    return converter.convert()


def _saved(module, tmp_path, *, variables=False):
    """A module's tf.functions as the signatures of a .tflite (through a SavedModel: the keys are ours)."""
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={
        name: getattr(module, name).get_concrete_function() for name in module.names})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"), signature_keys=list(module.names))
    converter.experimental_enable_resource_variables = variables
    return converter.convert()


def test_random_ops_and_their_seeds_are_read_back():
    spec = [tf.TensorSpec([4], tf.int32)]
    fresh = _model(lambda s: tf.raw_ops.RandomUniform(shape=s, dtype=tf.float32, seed=0, seed2=0), spec)
    fixed = _model(lambda s: tf.raw_ops.RandomStandardNormal(shape=s, dtype=tf.float32, seed=0, seed2=2**31 - 1), spec)
    (op,) = tflite_inspect.random_ops(fresh)
    assert (op.op, op.seed, op.seed2) == ("RANDOM_UNIFORM", 0, 0)
    (op,) = tflite_inspect.random_ops(fixed)
    assert (op.op, op.seed, op.seed2) == ("RANDOM_STANDARD_NORMAL", 0, 2**31 - 1)
    assert tflite_inspect.random_ops(_model(lambda x: x * 2.0, [tf.TensorSpec([2], tf.float32)])) == []


def test_flex_ops_are_refused():
    flex = _model(lambda x: tf.linalg.qr(x)[1], [tf.TensorSpec([4, 4], tf.float32)], select_tf=True)
    assert any(name.startswith("CUSTOM:Flex") for names in tflite_inspect.operator_names(flex).values()
               for name in names)
    with pytest.raises(ValueError, match="Flex"):
        tflite_inspect.check_builtin_only(flex)


def _release_module(levels_dtype=tf.int32, random=False):
    class Release(tf.Module):
        names = ("release",)

        @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 3], tf.uint8, name="image"),
                                      tf.TensorSpec([], tf.float32, name="epsilon"),
                                      tf.TensorSpec([1, 4, 4, 2], tf.int64, name="entropy")])
        def release(self, image, epsilon, entropy):
            levels = tf.cast(entropy, levels_dtype) + tf.cast(image[..., :2], levels_dtype)
            if random:
                levels += tf.cast(tf.raw_ops.RandomUniform(shape=[1, 4, 4, 2], dtype=tf.float32, seed=0, seed2=0),
                                  levels_dtype)
            return {"levels": levels, "scale": epsilon * 2.0, "valid": tf.constant(1)}

    return Release()


def test_check_grid_release(tmp_path):
    grid_like = _saved(_release_module(), tmp_path)
    assert tflite_inspect.signature_io(grid_like)["release"] == tflite_inspect.GRID_RELEASE_IO
    tflite_inspect.check_grid_release(grid_like)
    with pytest.raises(ValueError, match="not the grid release"):  # a float release
        tflite_inspect.check_grid_release(_saved(_release_module(tf.float32), tmp_path))
    with pytest.raises(ValueError, match="random ops"):
        tflite_inspect.check_grid_release(_saved(_release_module(random=True), tmp_path))
    with pytest.raises(ValueError, match="no 'release' signature"):
        tflite_inspect.check_grid_release(_model(lambda x: x * 2.0, [tf.TensorSpec([2], tf.float32)]))


class _Convs(tf.Module):
    """Two 3x3 convs and a 1x1 one (Eq. (1)'s window sum in a head), with constant or variable weights."""

    names = ("clean",)

    def __init__(self, variables):
        super().__init__()
        rng = np.random.default_rng(0)
        make = tf.Variable if variables else tf.constant
        self.weights = [(rng.normal(size=(3, 3, 3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)),
                        (rng.normal(size=(3, 3, 4, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32))]
        self.params = [(make(k), make(b)) for k, b in self.weights]
        self.band = tf.constant(np.ones((1, 1, 5, 5), np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.uint8, name="image")])
    def clean(self, image):
        x = tf.nn.relu(tf.cast(image, tf.float32) / 255.0)
        for k, b in self.params:
            x = tf.nn.relu(tf.nn.conv2d(x, k, 1, "SAME") + b)
        return {"activation": x * tf.nn.conv2d(x * x, self.band, 1, "VALID")}


@pytest.mark.parametrize("variables", [False, True])
def test_stored_conv_weights_are_the_convs_own(tmp_path, variables):
    # constant kernels are stored [out, kh, kw, in]; variables keep [kh, kw, in, out] and are transposed at run time
    module = _Convs(variables)
    model = _saved(module, tmp_path, variables=variables)
    stored = tflite_inspect.stored_conv_weights(model, "clean")
    assert len(stored) == 2  # the 1x1 conv is not a layer
    for (kernel, bias), (k, b) in zip(stored, module.weights):
        np.testing.assert_array_equal(kernel, k)
        np.testing.assert_array_equal(bias, b)
    assert tflite_inspect.weights_sha256(stored) == tflite_inspect.weights_sha256(module.weights)
    changed = [(module.weights[0][0] * 1.0001, module.weights[0][1]), module.weights[1]]
    assert tflite_inspect.weights_sha256(changed) != tflite_inspect.weights_sha256(module.weights)
    with pytest.raises(ValueError, match="no 'release' signature"):
        tflite_inspect.stored_conv_weights(model)


def test_weights_computed_at_run_time_cannot_be_read(tmp_path):
    class Computed(tf.Module):
        names = ("clean",)

        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="image")])
        def clean(self, image):
            kernel = tf.ones([3, 3, 3, 2]) * tf.reduce_mean(image)  # depends on the input: not stored
            return {"activation": tf.nn.conv2d(image, kernel, 1, "SAME")}

    with pytest.raises(ValueError, match="cannot read the stored weights"):
        tflite_inspect.stored_conv_weights(_saved(Computed(), tmp_path), "clean")


def test_inspection_needs_no_tensorflow(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(_model(lambda x: tf.nn.relu(x) * 2.0, [tf.TensorSpec([2], tf.float32)]))
    code = ("import sys\nfrom dpact_tf.deploy import tflite_inspect as t\n"
            f"ops = t.operator_names({str(path)!r})\nassert 'tensorflow' not in sys.modules\n"
            f"assert 'RELU' in t.analyzer_report({str(path)!r})\nprint(ops)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
