import math

import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import DPActivation, privacy
from dpact_tf.layers import normalize_activations


def _lrn_reference(a):
    """Eq. (1) by hand: f_i = a_i / (2 + sum_{|j-i|<=2} a_j^2)^0.5 over the channel axis."""
    a = np.clip(a, 0.0, 1.0)
    out = np.zeros_like(a)
    c = a.shape[-1]
    for i in range(c):
        window = a[..., max(0, i - 2): min(c, i + 3)]
        out[..., i] = a[..., i] / np.sqrt(2.0 + np.sum(window ** 2, axis=-1))
    return out


def test_lrn_hand_values():
    # channels a = [1, 0.5, 0]: every window covers all three, sum a^2 = 1.25
    #   f = [1, 0.5, 0] / sqrt(3.25) = [0.5547002, 0.2773501, 0]
    x = tf.constant([[[[1.0, 0.5, 0.0]]]])
    layer = DPActivation(epsilon=None)
    np.testing.assert_allclose(layer(x).numpy().ravel(), [0.5547002, 0.2773501, 0.0], atol=1e-6)
    # a single channel at its maximum: 1 / sqrt(2 + 1) = 0.5773503 (the sensitivity bound 1/sqrt(3))
    np.testing.assert_allclose(DPActivation(epsilon=None)(tf.ones((1, 1, 1, 1))).numpy(), [[[[0.5773503]]]], atol=1e-6)


def test_lrn_matches_reference_on_random_input():
    rng = np.random.default_rng(0)
    a = rng.uniform(-0.5, 1.5, size=(2, 4, 4, 9)).astype(np.float32)
    np.testing.assert_allclose(DPActivation(epsilon=None)(a).numpy(), _lrn_reference(a), atol=1e-6)


def test_clipping():
    # inputs above 1 act as 1, below 0 as 0: [3, -2] -> [1, 0] / sqrt(2 + 1)
    out = DPActivation(epsilon=None)(tf.constant([[[[3.0, -2.0]]]])).numpy().ravel()
    np.testing.assert_allclose(out, [1 / math.sqrt(3), 0.0], atol=1e-6)


def test_output_bounded_by_sensitivity_without_noise():
    x = tf.random.uniform((4, 8, 8, 16), -5, 5, seed=1)
    out = DPActivation(epsilon=None)(x).numpy()
    assert out.min() >= 0 and out.max() <= 1 / math.sqrt(3) + 1e-7


@pytest.mark.parametrize("eps", [1.0, 5.0, 20.0])
def test_noise_std_statistical(eps):
    n = 200 * 200 * 2  # 80,000 coordinates
    x = tf.zeros((1, 200, 200, 2))  # clean activation is exactly 0
    layer = DPActivation(epsilon=eps, seed=123)
    noise = layer(x).numpy().ravel()
    expected = privacy.noise_std(eps, 1e-5)
    # std of a sample std ~ sigma / sqrt(2n); 4 of those is a 1-in-15,000 tolerance
    assert abs(noise.std() - expected) < 4 * expected / math.sqrt(2 * n)
    assert abs(noise.mean()) < 4 * expected / math.sqrt(n)


def test_noise_in_training_and_inference():
    x = tf.random.uniform((2, 4, 4, 8), seed=2)
    layer = DPActivation(epsilon=5.0, seed=7)
    clean = layer.normalize(x).numpy()
    for training in (True, False, None):
        diff = layer(x, training=training).numpy() - clean
        assert np.abs(diff).max() > 0.01, f"no noise with training={training}"


def test_seeds():
    x = tf.zeros((1, 8, 8, 4))
    a1, a2 = DPActivation(epsilon=2.0, seed=5), DPActivation(epsilon=2.0, seed=5)
    b = DPActivation(epsilon=2.0, seed=6)
    first = a1(x).numpy()
    np.testing.assert_array_equal(first, a2(x).numpy())
    assert not np.allclose(first, b(x).numpy())
    assert not np.allclose(first, a1(x).numpy()), "a second release must get fresh noise"
    # seed=None draws from OS entropy: two layers differ
    assert not np.allclose(DPActivation(epsilon=2.0)(x).numpy(), DPActivation(epsilon=2.0)(x).numpy())


def test_no_noise_baseline():
    x = tf.random.uniform((2, 4, 4, 8), seed=3)
    layer = DPActivation(epsilon=None)
    np.testing.assert_array_equal(layer(x).numpy(), layer(x).numpy())
    np.testing.assert_array_equal(DPActivation(epsilon=float("inf"))(x).numpy(), layer(x).numpy())
    np.testing.assert_allclose(layer(x).numpy(), normalize_activations(x).numpy())


def test_config_round_trip_and_tf_function():
    layer = DPActivation(epsilon=3.0, delta=1e-6, method="analytic", seed=9, name="dp")
    config = layer.get_config()
    assert config["epsilon"] == 3.0 and config["delta"] == 1e-6 and config["method"] == "analytic"
    clone = DPActivation.from_config(config)
    x = tf.zeros((1, 4, 4, 4))
    np.testing.assert_array_equal(layer(x).numpy(), clone(x).numpy())
    assert clone.stddev == pytest.approx(privacy.noise_std(3.0, 1e-6, method="analytic"))
    fn = tf.function(lambda t: clone(t))
    out1, out2 = fn(x).numpy(), fn(x).numpy()
    assert not np.allclose(out1, out2)
    assert tf.keras.utils.get_registered_object("dpact>DPActivation") is DPActivation


@pytest.mark.parametrize("kwargs,match", [
    ({"epsilon": 0.0}, "epsilon must be > 0"),
    ({"epsilon": -3.0}, "epsilon must be > 0"),
    ({"epsilon": 1.0, "delta": 2.0}, "delta must be in"),
    ({"epsilon": None, "delta": 0.0}, "delta must be in"),
    ({"epsilon": 1.0, "sensitivity": -1.0}, "sensitivity must be > 0"),
    ({"epsilon": 1.0, "method": "bogus"}, "method must be one of"),
    ({"epsilon": 1.0, "seed": -1}, "seed must be"),
    ({"epsilon": 1.0, "seed": 1.5}, "seed must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPActivation(**kwargs)


def test_epsilon_is_keyword_only():
    with pytest.raises(TypeError):
        DPActivation(1.0)  # noqa


@pytest.mark.parametrize("eps,match", [
    (float("nan"), "NaN"), (float("-inf"), "must be > 0"), (-1.0, "must be > 0"), (0.0, "must be > 0"),
    (3.4e38, "above MAX_EPSILON"), (privacy.MAX_EPSILON * 2, "above MAX_EPSILON"),
])
def test_refuses_invalid_epsilon(eps, match):
    # Never a release with less noise than asked: 3.4e38 would be inf in a float32 graph (no noise).
    with pytest.raises(ValueError, match=match):
        DPActivation(epsilon=eps, method="analytic")


def test_an_epsilon_the_grid_cannot_certify_is_refused_and_no_noise_is_accepted():
    # At epsilon = MAX_EPSILON the noise is ~1/4000 of the range: the 64-bit table's tail cannot cover the shift.
    with pytest.raises(ValueError, match="no grid releases epsilon=1000"):
        DPActivation(epsilon=privacy.MAX_EPSILON, method="analytic")
    for eps in (None, float("inf"), np.float32("inf")):
        layer = DPActivation(epsilon=eps)
        assert layer.epsilon is None and layer.stddev == 0.0


def test_refuses_sensitivity_below_the_lrn_range():
    # Paper constants: the true range is 1/sqrt(2 + 1) = 0.57735; S = 0.5 would under-noise.
    with pytest.raises(ValueError, match=r"sensitivity=0.5 is below the true range 0.57735"):
        DPActivation(epsilon=1.0, sensitivity=0.5)
    with pytest.raises(ValueError, match="below the true range"):  # also for the no-noise config
        DPActivation(epsilon=None, sensitivity=0.5)
    # bias = 1: range 1/sqrt(1 + 1) = 0.70711 > 0.6
    with pytest.raises(ValueError, match=r"sensitivity=0.6 is below the true range 0.707107"):
        DPActivation(epsilon=1.0, sensitivity=0.6, bias=1.0)
    exact = DPActivation(epsilon=1.0, sensitivity=1 / math.sqrt(3))
    assert exact.true_range == 1 / math.sqrt(3)
    # The bound is attained by a lone channel at a* = sqrt(bias / (alpha (2 beta - 1))) = sqrt(2/3) here.
    peak = tf.fill((1, 1, 1, 1), math.sqrt(2 / 3))
    out = DPActivation(epsilon=None, bias=1.0, alpha=3.0, beta=0.75)(peak).numpy()
    assert float(out) == pytest.approx(privacy.lrn_output_bound(bias=1.0, alpha=3.0, beta=0.75), rel=1e-6)


def test_classic_refused_where_it_under_noises():
    # The paper's sweep stays valid up to 21.93 (true range 1/sqrt(3) < S_f) ...
    assert DPActivation(epsilon=20.0).stddev == pytest.approx(privacy.noise_std(20.0, 1e-5))
    with pytest.raises(ValueError, match="method='analytic'"):
        DPActivation(epsilon=25.0)
    assert DPActivation(epsilon=25.0, method="analytic").spec.delta <= 1e-5  # more noise than classic's at 25
    # ... but with S equal to the true range the classic sigma is valid only up to 8.42.
    with pytest.raises(ValueError, match="valid only up to epsilon=8.42"):
        DPActivation(epsilon=10.0, sensitivity=1 / math.sqrt(3))


def test_seed_none_ignores_the_global_seed():
    # set_random_seed makes "unseeded" TF ops deterministic; the layer's noise must not follow it, eagerly or
    # in a traced graph (the cross-process version of this test is in test_trust.py).
    x = tf.zeros((1, 8, 8, 4))
    outs = []
    for _ in range(2):
        tf.keras.utils.set_random_seed(0)
        layer = DPActivation(epsilon=2.0)
        outs.append((layer(x).numpy(), tf.function(lambda t: layer(t))(x).numpy()))
    assert not np.allclose(outs[0][0], outs[1][0])
    assert not np.allclose(outs[0][1], outs[1][1])


@pytest.mark.parametrize("eps", [5e-324, 1e-300])
def test_an_epsilon_whose_noise_is_not_representable_is_refused(eps):
    # the noise std of epsilon=5e-324 is inf: its grid step is 0 in float32
    with pytest.raises(ValueError, match="too small"):
        DPActivation(epsilon=eps)


@pytest.mark.parametrize("channels,radius,bias,alpha,beta", [(8, 2, 2.0, 1.0, 0.5), (64, 2, 2.0, 1.0, 0.5),
                                                             (5, 1, 1.0, 0.3, 0.75), (3, 4, 2.0, 1.0, 0.5)])
def test_normalize_activations_is_tensorflow_lrn_in_value_and_gradient(channels, radius, bias, alpha, beta):
    from dpact_tf.layers import normalize_activations

    x = tf.constant(np.random.default_rng(channels).uniform(-0.5, 1.5, (2, 5, 4, channels)).astype(np.float32))
    w = tf.constant(np.random.default_rng(1).normal(size=x.shape).astype(np.float32))

    def both(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(y * w)
        return y.numpy(), tape.gradient(loss, x).numpy()

    ours = both(lambda v: normalize_activations(v, depth_radius=radius, bias=bias, alpha=alpha, beta=beta))
    ref = both(lambda v: tf.nn.local_response_normalization(tf.clip_by_value(v, 0.0, 1.0), depth_radius=radius,
                                                            bias=bias, alpha=alpha, beta=beta))
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours[1], ref[1], rtol=1e-5, atol=1e-6)


def test_compiled_releases_draw_128_fresh_bits_from_the_os_per_call(monkeypatch):
    # A traced graph cannot call `secrets`; the callers of compiled releases put 128 bits from it in the key
    # variable before every call, and the graph's key reads that variable (not only TensorFlow's 32-bit-seeded
    # kernel and the clock).
    import secrets

    from dpact_tf import build_split_vggface, layers
    from dpact_tf.split import SplitClient

    split = build_split_vggface((32, 32, 3), 3, width=1 / 16, fc_units=8, epsilon=2.0)
    client = SplitClient(split.client, tf.keras.optimizers.SGD(0.1))
    layer = client.dp_layer
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    client.release_levels(x)  # traced once
    drawn, keys = [], []
    real = secrets.randbits
    monkeypatch.setattr(layers.secrets, "randbits", lambda k: drawn.append(k) or real(k))
    for call in (client.release_levels, client.release, lambda images: client.forward(images, [0, 1])):
        call(x)
        keys.append(tuple(layer._graph_entropy.variable.numpy()))
    assert drawn == [64] * 6 and len(set(keys)) == 3
    for compiled in (client._levels, client._release, client._forward):
        captured = compiled.get_concrete_function().captured_inputs
        assert any(h is layer._graph_entropy.variable.handle for h in captured)
    assert len(split.client.weights) == 3  # kernel, bias, noise counter: the key is never saved with the model
