"""Converting the head: its sidecar, what the converter checks in the written bytes (builtin ops, no random op,
the grid release), the CLI, other cuts and the docs' Kotlin names."""
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import build_split_vggface, grid, privacy
from dpact_tf.deploy.convert import ConversionError, _convert, convert_client_head
from dpact_tf.deploy.runtime import HeadRunner
from tests.deploy_util import SHAPE, _clean, _images, exported  # noqa: F401 (exported: the fixture)


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


def test_convert_cli(tmp_path, monkeypatch, capsys):
    """``python tflite/convert.py ...`` as its command line runs it: the script's ``__main__`` with its arguments
    (in this process, which already has TensorFlow and this dpact_tf imported: the script is a thin CLI)."""
    import runpy

    out = tmp_path / "head.tflite"
    script = os.path.join(os.path.dirname(__file__), os.pardir, "tflite", "convert.py")
    monkeypatch.setattr(sys, "argv", [script, "--seed", "0", "--image-size", "32", "--width", "0.125",
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(script, run_name="__main__")
    assert done.value.code == 0
    stdout = capsys.readouterr().out
    assert out.exists() and (tmp_path / "head.json").exists()
    assert "signatures ['apply_gradient', 'clean', 'gradient', 'release', 'train']" in stdout
    assert "certified epsilons [0.7417, 20.3967]" in stdout and "16 grid steps per std" in stdout


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


def test_privacy_constants_are_the_layers(exported):
    # the head's delta, S_f and true range are the Keras layer's: the grid is the one the client's epsilon means
    split, _, meta = exported
    dp = split.client.get_layer("dp_activation")
    assert meta["delta"] == dp.delta and meta["sensitivity"] == dp.sensitivity
    assert meta["release"]["true_range"] == pytest.approx(privacy.lrn_output_bound(bias=2.0, alpha=1.0, beta=0.5))
