"""Last-layer DP-SGD: exact per-example clipping (noise off), accounting equal to dp-accounting's, noise on."""
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from dpact_tf.baselines import linear_dpsgd as L


def _model(d=5, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return L.SoftmaxModel(rng.normal(size=(d, k)), rng.normal(size=k))


def _brute_force(model, x, y):
    """Each example's gradient of its cross-entropy, by central finite differences of the loss."""
    grads = []
    for xi, yi in zip(x, y):
        theta = np.concatenate([model.weights.ravel(), model.bias])

        def loss(t):
            w, b = t[:model.weights.size].reshape(model.weights.shape), t[model.weights.size:]
            z = xi @ w + b
            return -(z[yi] - np.log(np.exp(z - z.max()).sum()) - z.max())

        h = 1e-6
        g = np.array([(loss(theta + h * e) - loss(theta - h * e)) / (2 * h) for e in np.eye(len(theta))])
        grads.append(g)
    return np.array(grads)


def test_gradient_norms_and_clipped_sum_are_exact():
    rng = np.random.default_rng(1)
    model = _model()
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 4, 6)
    g = _brute_force(model, x, y)
    norms = np.linalg.norm(g, axis=1)
    clip = float(np.median(norms))  # half of the examples are clipped
    gw, gb, got = L.clipped_gradient_sum(model, x, y, clip)
    assert got == pytest.approx(norms, rel=1e-6)
    expected = (g * np.minimum(1.0, clip / norms)[:, None]).sum(axis=0)
    assert np.concatenate([gw.ravel(), gb]) == pytest.approx(expected, rel=1e-5, abs=1e-8)
    gw, gb, _ = L.clipped_gradient_sum(model, x, y, None)  # no clipping: the plain sum
    assert np.concatenate([gw.ravel(), gb]) == pytest.approx(g.sum(axis=0), rel=1e-5, abs=1e-8)


def test_every_clipped_gradient_is_at_most_the_clip():
    rng = np.random.default_rng(2)
    model = _model()
    x, y = 10 * rng.normal(size=(50, 5)), rng.integers(0, 4, 50)
    for i in range(50):  # one example at a time: its clipped gradient's norm
        gw, gb, norm = L.clipped_gradient_sum(model, x[i:i + 1], y[i:i + 1], 0.3)
        assert math.sqrt(np.sum(gw ** 2) + np.sum(gb ** 2)) == pytest.approx(min(0.3, norm[0]), rel=1e-9)


def test_epsilon_equals_dp_accounting_and_calibration_meets_the_target():
    q, steps, delta = 0.05, 300, 1e-5
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.1)), steps)
    direct = rdp.RdpAccountant(L.RDP_ORDERS).compose(event).get_epsilon(delta)
    assert L.epsilon(1.1, sampling_rate=q, steps=steps, delta=delta) == direct
    assert L.epsilon(1.1, sampling_rate=q, steps=steps, delta=delta, accountant="pld") <= direct * 1.001
    z = L.calibrate_noise_multiplier(2.0, sampling_rate=q, steps=steps, delta=delta)
    assert L.epsilon(z, sampling_rate=q, steps=steps, delta=delta) <= 2.0
    assert L.epsilon(z * 0.99, sampling_rate=q, steps=steps, delta=delta) > 2.0


def test_tuning_composes_the_runs():
    one = L.epsilon(1.0, sampling_rate=0.1, steps=100, delta=1e-5)
    two = L.composed_epsilon([(1.0, 0.1, 100)] * 2, delta=1e-5)
    assert two == pytest.approx(L.epsilon(1.0, sampling_rate=0.1, steps=100, delta=1e-5, runs=2))
    assert one < two < 2 * one
    # repeated runs, in any order, compose as the explicit list of every run's event
    import dp_accounting

    runs = [(1.0, 0.1, 100), (2.0, 0.05, 50), (1.0, 0.1, 100)]
    explicit = L._accountant("rdp").compose(dp_accounting.ComposedDpEvent(
        [L._event(*r) for r in runs])).get_epsilon(1e-5)
    assert L.composed_epsilon(runs, delta=1e-5) == pytest.approx(explicit, rel=1e-9)


def test_noise_off_training_is_deterministic_and_learns():
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(3, 8))
    y = rng.integers(0, 3, 300)
    x = centers[y] + 0.3 * rng.normal(size=(300, 8))
    a = L.train_softmax(x, y, num_classes=3, epochs=10, batch_size=32, learning_rate=0.1, seed=0)
    b = L.train_softmax(x, y, num_classes=3, epochs=10, batch_size=32, learning_rate=0.1, seed=0)
    assert np.array_equal(a.weights, b.weights) and a.accuracy(x, y) > 0.95
    dp = L.train_softmax(x, y, num_classes=3, epochs=10, batch_size=32, learning_rate=0.1, clip=1.0,
                         noise_multiplier=0.0, seed=0)  # clipped, no noise: still learns
    assert dp.accuracy(x, y) > 0.95


def test_noise_has_the_calibrated_std():
    # With zero features and a zero learning-rate-free view: one step from zero weights with lr 1 and no momentum
    # moves the bias by -(clipped sum + N(0, (z C)^2)) / (q n); with every gradient's bias part equal to
    # (1/k - e_y), a large z makes the step's std z C / (q n).  10,000 bias coordinates: std of the sample std
    # is about sigma / sqrt(2 n) = 0.7 %.
    k, n = 10_000, 100
    x, y = np.zeros((n, 1)), np.zeros(n, np.int64)
    z, clip = 50.0, 0.5
    m = L.train_softmax(x, y, num_classes=k, epochs=1, batch_size=n, learning_rate=1.0, momentum=0.0, clip=clip,
                        noise_multiplier=z, seed=4)
    sigma = z * clip / n  # q = 1
    assert np.std(m.bias[1:]) == pytest.approx(sigma, rel=4 * 0.0071)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="clip"):
        L.train_softmax(np.zeros((4, 2)), np.zeros(4, int), num_classes=2, epochs=1, batch_size=2,
                        learning_rate=0.1, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        L.epsilon(0.0, sampling_rate=0.1, steps=1, delta=1e-5)
    with pytest.raises(ValueError, match="target_epsilon"):
        L.calibrate_noise_multiplier(-1.0, sampling_rate=0.1, steps=1, delta=1e-5)
