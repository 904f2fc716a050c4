"""SPNN-style conv1_1 on secret shares: fixed point, shares, truncation, the protocol against float references,
the transcript's byte counts, and what each party sees."""
import numpy as np
import pytest
from scipy import stats

from dpact_tf.baselines import secret_sharing as ss

F = ss.FRAC_BITS
ULP = 2.0 ** -F


def reference_conv(x, kernel, bias):
    """conv1_1 pre-activation by explicit loops over the 3x3 taps (SAME zero padding, stride 1), float64."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    z = np.zeros((n, h, w, kernel.shape[3])) + bias
    for dy in range(3):
        for dx in range(3):
            z += np.einsum("nhwc,cd->nhwd", xp[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
    return z


def conv_tolerance(x, kernel):
    """|z_shared - z| bound: each of the 9*Cin products has its pixel and its weight rounded by <= ulp/2
    (|x dk| + |k dx| + |dx dk|), the ring sum is exact, then z is rounded to float32 (relative 2^-24)."""
    taps = 9 * kernel.shape[2]
    fixed = taps * (np.abs(x).max() + np.abs(kernel).max() + ULP / 2) * ULP / 2
    return fixed + 2.0 ** -24 * (np.abs(reference_conv(x, kernel, 0)).max() + 1) + 1e-12


def chi2_uniform_bytes(values):
    """p-value of the top byte and of the low byte of ring elements being uniform on 256 values."""
    v = np.asarray(values).ravel()
    return min(stats.chisquare(np.bincount((v >> np.uint64(s)).astype(np.int64) & 255, minlength=256)).pvalue
               for s in (0, 56))


def test_the_protocol_module_is_pure_numpy():
    import ast

    tree = ast.parse(open(ss.__file__).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "dpact_tf")}, imported


# --- fixed point and shares ---------------------------------------------------------------------------------

def test_encode_decode_round_trip_within_half_an_ulp_including_negatives():
    x = np.random.default_rng(0).normal(0, 100, 10_000)
    x[:3] = [0.0, -1.0, 2.0 ** 20]
    err = np.abs(ss.decode(ss.encode(x)) - x)
    assert err.max() <= ULP / 2
    assert ss.encode(-1.0).item() == 2 ** 64 - 2 ** F   # two's complement: -1 at scale 2^F


def test_encode_refuses_overflow_and_non_finite():
    with pytest.raises(ValueError, match="overflow"):
        ss.encode(2.0 ** (63 - F))
    with pytest.raises(ValueError, match="non-finite"):
        ss.encode([1.0, np.nan])
    with pytest.raises(ValueError, match="uint64"):
        ss.decode(np.zeros(3))


def test_shares_reconstruct_exactly_and_each_share_is_uniform():
    rng = np.random.default_rng(1)
    for v in (np.zeros(20_000, np.uint64), ss.encode(np.full(20_000, 0.5))):  # constant secrets
        s0, s1 = ss.share(v, rng)
        assert np.array_equal(ss.reconstruct(s0, s1), v)
        assert chi2_uniform_bytes(s0) > 1e-4 and chi2_uniform_bytes(s1) > 1e-4
    with pytest.raises(ValueError, match="uint64"):
        ss.share(np.zeros(3), rng)
    with pytest.raises(ValueError, match="same shape"):
        ss.reconstruct(np.zeros(3, np.uint64), np.zeros(4, np.uint64))


def test_truncation_is_floor_or_ceil_unbiased_and_never_fails_up_to_2_62():
    rng = np.random.default_rng(2)
    bits, n = 32, 200_000
    y = rng.integers(-2 ** 62 + 1, 2 ** 62, size=n, dtype=np.int64)
    y[:4] = [2 ** 62 - 1, -2 ** 62 + 1, 0, -1]                 # the extremes of the precondition
    y0, y1 = ss.share(y.view(np.uint64), rng)
    dealer = ss.TrustedDealer(3)
    t0, t1 = ss.truncate(y0, y1, bits, dealer=dealer, transcript=dealer.transcript)
    t = ss.reconstruct(t0, t1).view(np.int64)
    floor = y >> bits
    assert np.all((t == floor) | (t == floor + 1))            # no wrap-around failure at all
    # Stochastic rounding: E[t] = y / 2^bits; the rounding error is within [-1, 1], std <= 1/2 per sample.
    frac = (y - (floor << bits)) / 2.0 ** bits
    assert abs(np.mean(t - floor - frac)) < 5 * 0.5 / np.sqrt(n)
    with pytest.raises(ValueError, match="bits"):
        ss.truncate(y0, y1, 0, dealer=dealer, transcript=dealer.transcript)


# --- the protocol against float references -------------------------------------------------------------------

@pytest.mark.parametrize("seed, shape, column", [(0, (2, 6, 5, 3), 2), (1, (1, 4, 7, 3), 1), (2, (3, 5, 4, 3), 3)])
def test_forward_equals_reference_conv_of_the_whole_image(seed, shape, column):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, shape)
    kernel, bias = rng.normal(0, 0.5, (3, 3, 3, 4)), rng.normal(0, 0.2, 4)
    z = ss.SharedConv1(kernel, bias, rng=seed).forward(*ss.split_columns(x, column))
    assert z.dtype == np.float32 and z.shape == shape[:3] + (4,)
    np.testing.assert_allclose(z, reference_conv(x, kernel, bias), rtol=0, atol=conv_tolerance(x, kernel))


def test_z_is_the_same_whatever_the_randomness_but_the_shares_differ():
    rng = np.random.default_rng(3)
    x, kernel, bias = rng.uniform(0, 1, (1, 4, 4, 3)), rng.normal(0, 1, (3, 3, 3, 2)), rng.normal(0, 1, 2)
    runs = []
    for seed in (5, 5, 6):
        proto = ss.SharedConv1(kernel, bias, rng=seed, keep_views=True)
        runs.append((proto.forward(*ss.split_columns(x, 2)), proto.view("server")["z share from A"]))
    assert np.array_equal(runs[0][0], runs[2][0])             # ring arithmetic is exact: z depends on x, K, b only
    assert np.array_equal(runs[0][1], runs[1][1])             # same seed, same shares
    assert not np.array_equal(runs[0][1], runs[2][1])         # another seed, other shares


def test_relu_of_z_equals_the_keras_conv1_1_layer():
    import tensorflow as tf

    from dpact_tf import build_split_vggface

    split = build_split_vggface((32, 32, 3), 4, width=1 / 8, fc_units=8, epsilon=None)
    layer = split.client.get_layer("conv1_1")                 # Conv2D(3x3, SAME, relu)
    layer.bias.assign(np.random.default_rng(4).normal(0, 0.1, layer.bias.shape))
    x = np.random.default_rng(5).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    keras_out = tf.keras.Model(split.client.input, layer.output)(x).numpy()
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    z = ss.SharedConv1(kernel, bias, rng=0).forward(*ss.split_columns(x, 13))
    # float32 Keras vs the exact fixed-point sum: Keras' own rounding over 27 taps dominates (~1e-6).
    np.testing.assert_allclose(np.maximum(z, 0), keras_out, rtol=0, atol=conv_tolerance(x, kernel) + 1e-5)


def test_backward_equals_float_sgd_momentum_over_three_steps():
    rng = np.random.default_rng(6)
    kernel, bias = rng.normal(0, 0.5, (3, 3, 3, 4)), rng.normal(0, 0.2, 4)
    proto = ss.SharedConv1(kernel, bias, rng=7)
    k_ref, b_ref, vk, vb = kernel.copy(), bias.copy(), 0.0, 0.0
    lr, mu, steps = 0.05, 0.9, 3
    grad_l1 = 0.0
    for _ in range(steps):
        x = rng.uniform(0, 1, (2, 5, 6, 3))
        proto.forward(*ss.split_columns(x, 3))
        g = rng.normal(0, 1, (2, 5, 6, 4)).astype(np.float32)
        proto.backward(g, learning_rate=lr, momentum=mu)
        gk = np.einsum("mk,mc->kc", ss.im2col3x3(x), g.reshape(-1, 4)).reshape(kernel.shape)
        vk, vb = mu * vk - lr * gk, mu * vb - lr * g.sum(axis=(0, 1, 2))
        k_ref, b_ref = k_ref + vk, b_ref + vb
        grad_l1 = max(grad_l1, np.abs(g).sum())
    k, b = proto.weights()
    # Per step and weight: the velocity's truncation (<= 1 ulp), the pixels' rounding inside P^T g
    # (lr * sum|g| * ulp/2), and the encoding of lr*g and mu (2^-32 each, negligible); velocities carry
    # earlier errors on (sum of mu^j <= steps), the initial weight is rounded by ulp/2.
    tol = ULP / 2 + steps * steps * (ULP + lr * grad_l1 * ULP / 2 + 1e-9)
    assert np.abs(k - k_ref).max() <= tol
    assert np.abs(b - b_ref).max() <= ULP / 2 + steps * ULP / 2  # public bias velocity, rounded once per step
    assert np.abs(k - kernel).max() > 100 * tol                   # the weights did move


def test_training_steps_with_a_keras_server_match_the_same_steps_in_float_tensorflow():
    import tensorflow as tf

    rng = np.random.default_rng(13)
    c, lr, mu = 4, 0.1, 0.9
    kernel, bias = rng.normal(0, 0.4, (3, 3, 3, c)).astype(np.float32), rng.normal(0, 0.1, c).astype(np.float32)
    batches = [(rng.uniform(0, 1, (4, 8, 8, 3)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(3)]

    def head():
        tf.keras.utils.set_random_seed(14)
        return tf.keras.Sequential([tf.keras.Input((8, 8, c)), tf.keras.layers.ReLU(), tf.keras.layers.Flatten(),
                                    tf.keras.layers.Dense(3)])

    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    # The SPNN side: the server is a Keras head fed z; the holders update conv1_1's shares from dL/dz.
    server, server_opt = head(), tf.keras.optimizers.SGD(lr, momentum=mu)
    proto = ss.SharedConv1(kernel, bias, rng=0)
    # The float reference: conv1_1 (linear, as z is pre-activation) + the same head, one Keras model.
    conv = tf.keras.layers.Conv2D(c, 3, padding="same")
    reference = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), conv, head()])
    conv.set_weights([kernel, bias])
    ref_opt = tf.keras.optimizers.SGD(lr, momentum=mu)
    for x, y in batches:
        z = tf.constant(proto.forward(*ss.split_columns(x, 3)))
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = loss_fn(y, server(z))
        grad_z, *grads = tape.gradient(loss, [z] + server.trainable_variables)
        server_opt.apply_gradients(zip(grads, server.trainable_variables))
        proto.backward(grad_z.numpy(), learning_rate=lr, momentum=mu)
        with tf.GradientTape() as tape:
            ref_loss = loss_fn(y, reference(x))
        ref_opt.apply_gradients(zip(tape.gradient(ref_loss, reference.trainable_variables),
                                    reference.trainable_variables))
        np.testing.assert_allclose(loss.numpy(), ref_loss.numpy(), rtol=0, atol=1e-5)
    k, b = proto.weights()
    # float32 TF vs fixed point at 2^-20: both err by ~1e-6 per step; 1e-4 is 100 times that.
    np.testing.assert_allclose(k, conv.kernel.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(b, conv.bias.numpy(), rtol=0, atol=1e-4)
    for w, w_ref in zip(server.get_weights(), reference.layers[-1].get_weights()):
        np.testing.assert_allclose(w, w_ref, rtol=0, atol=1e-4)
    assert np.abs(k - kernel).max() > 1e-2                       # conv1_1 did train


# --- validation: hostile or wrong inputs are refused and nothing changes -------------------------------------

def test_wrong_inputs_are_refused():
    rng = np.random.default_rng(8)
    kernel, bias = rng.normal(0, 1, (3, 3, 3, 2)), rng.normal(0, 1, 2)
    with pytest.raises(ValueError, match="kernel"):
        ss.SharedConv1(kernel[:2], bias)
    with pytest.raises(ValueError, match="bias"):
        ss.SharedConv1(kernel, bias[:1])
    with pytest.raises(ValueError, match="finite floats"):
        ss.SharedConv1(kernel.astype(np.int64), bias)
    with pytest.raises(ValueError, match="frac_bits"):
        ss.SharedConv1(kernel, bias, frac_bits=40)
    x = rng.uniform(0, 1, (2, 4, 6, 3))
    for column in (0, 6, 2.5):
        with pytest.raises(ValueError, match="column"):
            ss.split_columns(x, column)
    proto = ss.SharedConv1(kernel, bias, rng=0)
    left, right = ss.split_columns(x, 2)
    bad_inputs = [((left * 255).astype(np.uint8), right, "floating-point"),
                  (left[..., :2], right, "N, H, w, 3"),
                  (left[0], right, "N, H, w, 3"),
                  (left, right[:, :3], "share N and H"),
                  (left, np.where(right > 0.5, np.nan, right), "non-finite")]
    for a, b, msg in bad_inputs:
        with pytest.raises(ValueError, match=msg):
            proto.forward(a, b)
    with pytest.raises(ValueError, match="forward first"):
        proto.backward(np.zeros((2, 4, 6, 2)), learning_rate=0.1)
    proto.forward(left, right)
    before = proto.weights()
    g = np.ones((2, 4, 6, 2), np.float32)
    for grad, kw, msg in [(g[:1], {}, "shape"), (g * np.nan, {}, "finite"), (g.astype(np.int32), {}, "finite"),
                          (g, {"learning_rate": np.inf}, "learning_rate"), (g, {"learning_rate": -1.0},
                          "learning_rate"), (g, {"momentum": 1.0}, "momentum")]:
        with pytest.raises(ValueError, match=msg):
            proto.backward(grad, **{"learning_rate": 0.1, **kw})
    after = proto.weights()
    assert all(np.array_equal(u, v) for u, v in zip(before, after))   # nothing changed
    proto.backward(g, learning_rate=0.1)
    with pytest.raises(ValueError, match="forward first"):             # a replayed gradient is refused
        proto.backward(g, learning_rate=0.1)
    with pytest.raises(ValueError, match="keep_views"):
        proto.view("B")


# --- the transcript: what the sharing costs -----------------------------------------------------------------

def test_transcript_byte_counts_for_a_known_shape():
    n, h, w, column, c = 2, 4, 5, 2, 4
    m, k = n * h * w, 27                                          # 40 output pixels, 27 taps
    rng = np.random.default_rng(9)
    proto = ss.SharedConv1(rng.normal(0, 1, (3, 3, 3, c)), rng.normal(0, 1, c), rng=0)
    x = rng.uniform(0, 1, (n, h, w, 3))
    proto.forward(*ss.split_columns(x, column))
    proto.backward(np.ones((n, h, w, c), np.float32), learning_rate=0.01)
    tr = proto.transcript
    e = 8                                                         # bytes per ring element
    assert tr.bytes(phase="setup", receiver="A") == (k * c + c) * e == 896
    assert tr.bytes(sender="A", receiver="B", phase="forward") == (n * h * column * 3 + m * k + k * c) * e
    assert tr.bytes(sender="B", receiver="A", phase="forward") == (n * h * (w - column) * 3 + m * k + k * c) * e
    assert tr.bytes(sender="A", receiver="server") == tr.bytes(sender="B", receiver="server") == m * c * e
    assert tr.bytes(sender="server", receiver="A") == m * c * 4  # dL/dz as float32
    assert tr.bytes(sender="dealer", receiver="B", phase="offline") == (m * k + k * c + m * c + 3 * k * c) * e
    assert tr.bytes(sender="A", receiver="B", phase="backward") == k * c * e   # the truncation opening
    summary = tr.summary()
    assert summary["online_rounds_per_forward"] == 5                # share, open E/F, z, dL/dz, open c
    assert summary["messages_per_forward"] == 16                    # 2 set-up + 2 per round + 2 x 2 dealer
    assert summary["bytes_per_image"]["A->server"] == m * c * e / n
    online = 2 * (n * h * w * 3 / 2 + m * k + k * c) * e / n  # pixels once in all, E and F both ways...
    online += (2 * m * c * e + 2 * m * c * 4 + 2 * k * c * e) / n  # ... z shares, dL/dz, truncation
    assert summary["online_bytes_per_image"] == online


# --- what each party sees ------------------------------------------------------------------------------------

def test_the_server_receives_two_uniform_shares_of_z_and_nothing_else():
    rng = np.random.default_rng(10)
    x = rng.uniform(0, 1, (4, 16, 16, 3))
    proto = ss.SharedConv1(rng.normal(0, 1, (3, 3, 3, 8)), rng.normal(0, 1, 8), rng=1, keep_views=True)
    z = proto.forward(*ss.split_columns(x, 7))
    view = proto.view("server")
    assert sorted(view) == ["z share from A", "z share from B"]
    z_ring = ss.reconstruct(view["z share from A"], view["z share from B"])
    assert np.array_equal(ss.decode(z_ring, 2 * F).astype(np.float32).reshape(z.shape), z)
    assert chi2_uniform_bytes(view["z share from A"]) > 1e-4 and chi2_uniform_bytes(view["z share from B"]) > 1e-4


class LeakyDealer(ss.TrustedDealer):
    """A broken dealer for the negative control: A's share of U is zero, so A's E = P_A is not masked, yet the
    product stays correct -- only a test of B's view can notice."""

    def matmul_triple(self, m, k, c):
        u, v = ss._uniform(self.rng, (m, k)), ss._uniform(self.rng, (k, c))
        a, b = self._deal({"U": u, "V": v, "W": u @ v})
        a["U"], b["U"] = np.zeros_like(u), u
        return a, b


def b_views(x_a, x_b, trials, dealer_class=ss.TrustedDealer):
    """B's forward-pass view over ``trials`` runs with fresh randomness of A and the dealer and B's fixed: every
    array B received, plus B's natural unmasking of the products, E + U_B = P - U_A (E opened, U_B B's share)."""
    kernel, bias = np.random.default_rng(11).normal(0, 1, (3, 3, 3, 2)), np.zeros(2)
    views = []
    for t in range(trials):
        rngs = {"A": np.random.default_rng(1000 + t), "B": np.random.default_rng(7)}
        proto = ss.SharedConv1(kernel, bias, rng=rngs, keep_views=True, dealer=dealer_class(5000 + t))
        z = proto.forward(x_a, x_b)
        np.testing.assert_allclose(z, reference_conv(np.concatenate([x_a, x_b], 2), kernel, bias), atol=1e-4)
        view = proto.view("B")
        view["E + U_B"] = view["E from A"] + proto.view("A")["E from B"] + view["U from dealer"]
        views.append(view)
    return {name: np.stack([v[name] for v in views]) for name in views[0]}


def view_dependence_pvalue(dealer_class):
    """Smallest p-value over B's view of: uniformity of each array's top and low bytes, and equality of their
    distributions when A's pixels are all zero vs a random face (two-sample chi-square, and per position)."""
    rng = np.random.default_rng(12)
    x_b = rng.uniform(0, 1, (1, 3, 2, 3))
    inputs = [np.zeros((1, 3, 2, 3)), rng.uniform(0, 1, (1, 3, 2, 3))]
    views = [b_views(x_a, x_b, 300, dealer_class) for x_a in inputs]
    pvalues = []
    for name in views[0]:
        if name.startswith(("pixel share", "E", "F", "U", "V", "W")):
            for shift in (0, 56):
                counts = [np.bincount(((v[name] >> np.uint64(shift)) & np.uint64(255)).astype(np.int64).ravel(),
                                      minlength=256) for v in views]
                pvalues += [stats.chisquare(c).pvalue for c in counts]
                pvalues.append(stats.chi2_contingency(np.array(counts) + 1)[1])
            # per position: mean of the top 16 bits as a fraction of the ring, zero-vs-face, Bonferroni
            means = [(v[name] >> np.uint64(48)).astype(np.float64).reshape(len(v[name]), -1) / 2 ** 16 for v in views]
            zscore = (means[0].mean(0) - means[1].mean(0)) / np.sqrt(2 / 12 / len(means[0]))
            pvalues.append(min(1.0, 2 * stats.norm.sf(np.abs(zscore).max()) * zscore.size))
    return min(pvalues)


def test_holder_b_sees_nothing_of_holder_a_pixels():
    assert view_dependence_pvalue(ss.TrustedDealer) > 1e-6


def test_the_view_test_catches_a_dealer_that_leaves_a_unmasked():
    # With U_A = 0, E + U_B = P = im2col(x): B reads A's pixels, though z is still correct (checked in b_views).
    assert view_dependence_pvalue(LeakyDealer) < 1e-12
