"""The server half: a step that would leave the model non-finite is rolled back exactly, the gradient clip
bounds one step's update, and the learning rate a step is given is the one it applies."""
import numpy as np
import pytest

import tensorflow as tf

from dpact_tf.edge.model import ServerHalf, UnsafeStep
from tests.edge_util import CLASSES, CONFIG, batch


def _server(seed=0):
    """A small server half on tiny_split's activation (32 x 32 x 4): conv, pool, dense.  ServerHalf takes any
    activation -> logits model; a few layers build and trace far quicker than VGG-Face's fifteen."""
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input(shape=(32, 32, 4), name="activation")
    h = tf.keras.layers.MaxPooling2D(4)(tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs))
    return tf.keras.Model(inputs, tf.keras.layers.Dense(CLASSES)(tf.keras.layers.Flatten()(h)), name="server")


def _state(half):
    """Every variable a step changes: weights, momentum slots, the iteration count."""
    return [v.numpy().copy() for v in half.model.weights] + \
        [v.numpy().copy() for v in half.edge.optimizer.variables]


def test_a_step_that_would_make_the_model_non_finite_is_rolled_back_exactly():
    half, reference = ServerHalf(_server(), CONFIG, 10), ServerHalf(_server(), CONFIG, 10)
    x, y = batch()
    half.train_step(x, y)
    reference.train_step(x, y)
    before = _state(half)
    for poison in (3e38, -3e38):  # finite float32 values whose update overflows the weights
        with pytest.raises(UnsafeStep, match="rolled back"):
            half.train_step(np.full_like(x, poison), y)
        assert half.steps == 1
        for a, b in zip(before, _state(half)):
            np.testing.assert_array_equal(a, b)  # bit for bit: weights, momentum and iterations
    x2, y2 = batch(seed=1)
    got, want = half.train_step(x2, y2), reference.train_step(x2, y2)  # the refused steps left no trace
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1:] == want[1:] and half.steps == 2


def test_max_grad_norm_bounds_what_one_step_moves_the_weights():
    x, y = batch()
    moved = {}
    for clip in (None, 1e-3):
        half = ServerHalf(_server(), CONFIG, 10, max_grad_norm=clip)
        start = [v.numpy().copy() for v in half.model.trainable_variables]
        half.train_step(x, y)
        # first SGD step with momentum: m = -lr g, w += m, so the change is lr x the (clipped) gradient
        moved[clip] = np.sqrt(sum(np.sum((v.numpy() - s) ** 2)
                                  for v, s in zip(half.model.trainable_variables, start)))
    assert moved[1e-3] == pytest.approx(CONFIG.learning_rate * 1e-3, rel=1e-3)
    assert moved[None] > 10 * moved[1e-3]  # the clip bit
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_grad_norm"):
            ServerHalf(_server(), CONFIG, 10, max_grad_norm=bad)


def test_the_learning_rate_of_a_step_is_the_one_given():
    x, y = batch()
    default, given, other = (ServerHalf(_server(), CONFIG, 10) for _ in range(3))
    for step in range(2):
        rate = default.default_learning_rate(default.steps)
        # CONFIG: 0.01 x 0.1 ** (steps / 10)
        assert rate == pytest.approx(0.01 * 0.1 ** (step / 10), rel=1e-12)
        a, b = default.train_step(x, y), given.train_step(x, y, learning_rate=rate)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    other.train_step(x, y, learning_rate=0.5)
    assert not np.allclose(other.model.weights[0].numpy(), default.model.weights[0].numpy())
    for bad in (0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="learning_rate"):
            other.train_step(x, y, learning_rate=bad)
    assert other.steps == 1
