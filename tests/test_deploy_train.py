"""The exported head's on-device training: equal to Keras' update, refusing poison from the server, one call equal
to the streamed update."""
import numpy as np
import pytest
import tensorflow as tf

from dpact_tf.deploy.runtime import HeadRunner
from tests.deploy_util import _images, exported  # noqa: F401 (exported: the fixture)


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
