import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import build_split_vggface
from dpact_tf.vggface import CUT_CHOICES


def _trainable(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def test_layer_names_follow_vggface():
    split = build_split_vggface((32, 32, 3), 5, width=1 / 16, fc_units=8)
    names = [l.name for l in split.client.layers] + [l.name for l in split.server.layers]
    for expected in ["conv1_1", "conv1_2", "pool1", "conv3_3", "conv5_3", "pool5", "fc6", "fc7", "fc8"]:
        assert expected in names
    assert split.client.layers[-1].name == "dp_activation"
    assert [l.name for l in split.client.layers if "conv" in l.name] == ["conv1_1"]


def test_full_vggface_parameter_count():
    # VGG-Face with 2622 classes has 145,002,878 parameters (conv 14,714,688 + fc 130,288,190).
    split = build_split_vggface((224, 224, 3), 2622, kernel_initializer="zeros")  # counts alike; no 145M draws
    # (the client's only non-trainable weight is the DP layer's noise counter)
    assert _trainable(split.client) + _trainable(split.server) == 145_002_878
    assert split.activation_shape == (224, 224, 64)
    # conv1_1: 224*224*64 outputs * (2*27 MACs-as-FLOPs + bias + ReLU) = 3,211,264 * 56
    conv = 224 * 224 * 64 * 56
    lrn = 224 * 224 * 64 * 16
    assert split.client_flops == conv + lrn
    assert split.client_params == 3 * 3 * 3 * 64 + 64 == _trainable(split.client)


@pytest.mark.parametrize("cut,shape", [("conv1_1", (32, 32, 4)), ("conv1_2", (32, 32, 4)), ("pool1", (16, 16, 4)),
                                       ("conv2_2", (16, 16, 8)), ("pool2", (8, 8, 8)), ("pool5", (1, 1, 32))])
def test_cuts(cut, shape):
    split = build_split_vggface((32, 32, 3), 3, width=1 / 16, fc_units=8, cut=cut)
    assert split.activation_shape == shape
    x = tf.random.uniform((2, 32, 32, 3))
    act = split.client(x)
    assert tuple(act.shape[1:]) == shape
    assert split.server(act).shape == (2, 3)
    assert split.client_params == _trainable(split.client)
    assert split.activation_bytes == 4 * int(np.prod(shape))


def test_monolithic_shares_weights():
    split = build_split_vggface((32, 32, 3), 3, width=1 / 16, fc_units=8)
    mono = split.monolithic()
    x = tf.random.uniform((2, 32, 32, 3), seed=1)
    np.testing.assert_allclose(mono(x).numpy(), split.server(split.client(x)).numpy(), atol=1e-6)
    assert len(mono.trainable_variables) == len(split.client.trainable_variables) + len(split.server.trainable_variables)


def test_clean_client_is_noise_free():
    split = build_split_vggface((32, 32, 3), 3, width=1 / 16, fc_units=8, epsilon=1.0, noise_seed=0)
    x = tf.random.uniform((2, 32, 32, 3), seed=1)
    clean = split.clean_client()
    np.testing.assert_array_equal(clean(x).numpy(), clean(x).numpy())
    assert np.abs(split.client(x).numpy() - clean(x).numpy()).max() > 0.5


@pytest.mark.parametrize("kwargs,match", [
    ({"cut": "conv9_9"}, "valid cut layers are: conv1_1"),
    ({"input_shape": (30, 30, 3)}, "multiples of 32"),
    ({"input_shape": (32, 32, 1)}, "RGB"),
    ({"num_classes": 1}, "num_classes must be"),
    ({"width": 0}, "width must be > 0"),
    ({"fc_units": 0}, "fc_units"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_arguments(kwargs, match):
    args = {"input_shape": (32, 32, 3), "num_classes": 3, "width": 1 / 16, "fc_units": 8}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_split_vggface(**args)


def test_all_cut_choices_listed():
    assert CUT_CHOICES[0] == "conv1_1" and CUT_CHOICES[-1] == "pool5" and len(CUT_CHOICES) == 18


def test_save_load_round_trip(tmp_path):
    split = build_split_vggface((32, 32, 3), 3, width=1 / 16, fc_units=8, epsilon=2.0, noise_seed=11)
    x = tf.random.uniform((2, 32, 32, 3), seed=4)
    split.client(x)  # advance the noise counter once before saving
    split.client.save(tmp_path / "client.keras")
    split.server.save(tmp_path / "server.keras")
    client = tf.keras.models.load_model(tmp_path / "client.keras")
    server = tf.keras.models.load_model(tmp_path / "server.keras")
    # same weights, same seed and same noise counter -> the next releases are identical
    a_orig, a_loaded = split.client(x).numpy(), client(x).numpy()
    np.testing.assert_allclose(a_orig, a_loaded, atol=1e-6)
    np.testing.assert_allclose(split.server(a_orig).numpy(), server(a_orig).numpy(), atol=1e-5)
    assert client.get_layer("dp_activation").epsilon == 2.0


def test_channel_overrides_change_only_the_named_layer():
    split = build_split_vggface((32, 32, 3), 3, width=1 / 8, fc_units=8, channels={"conv1_1": 64})
    assert split.activation_shape == (32, 32, 64)
    assert split.client.get_layer("conv1_1").filters == 64
    assert split.server.get_layer("conv1_2").filters == 8  # the rest keeps width 1/8
    # client parameters: 3x3x3x64 kernel + 64 biases
    assert split.client_params == 27 * 64 + 64
    with pytest.raises(ValueError, match="unknown conv layers"):
        build_split_vggface((32, 32, 3), 3, width=1 / 8, fc_units=8, channels={"fc6": 4})
    with pytest.raises(ValueError, match="positive integers"):
        build_split_vggface((32, 32, 3), 3, width=1 / 8, fc_units=8, channels={"conv1_1": 0})


def test_data_dependent_init_standardizes_every_layer_but_fc8():
    from dpact_tf.vggface import initialize_from_data

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(48, 32, 32, 3)).astype(np.float32)
    tf.keras.utils.set_random_seed(1)
    split = build_split_vggface((32, 32, 3), 5, width=1 / 8, fc_units=16, dropout=0.5)
    fc8 = split.server.get_layer("fc8").get_weights()
    tf.keras.utils.set_random_seed(1)
    noisy = build_split_vggface((32, 32, 3), 5, width=1 / 8, fc_units=16, dropout=0.5, epsilon=1.0, noise_seed=3)
    initialize_from_data(split, images)
    initialize_from_data(noisy, images)
    # Re-run the initialized network and read every pre-activation: zero mean, unit std per channel on the images.
    x = images
    layers = [l for m in (split.client, split.server) for l in m.layers if not isinstance(l, tf.keras.layers.InputLayer)]
    checked = []
    for layer in layers:
        if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)) and layer.name != "fc8":
            kernel, bias = layer.get_weights()
            pre = (tf.nn.conv2d(x, kernel, 1, "SAME") if kernel.ndim == 4 else x @ kernel) + bias
            axes = tuple(range(pre.ndim - 1))
            np.testing.assert_allclose(np.mean(pre, axes), 0.0, atol=1e-4)
            np.testing.assert_allclose(np.std(pre, axes), 1.0, rtol=1e-3)
            checked.append(layer.name)
        x = layer.normalize(x) if layer.name == "dp_activation" else layer(x)
    assert checked[0] == "conv1_1" and checked[-1] == "fc7" and len(checked) == 15
    for a, b in zip(split.server.get_layer("fc8").get_weights(), fc8):
        np.testing.assert_array_equal(a, b)
    # the DP noise plays no part: a noisy client is initialized exactly like the noise-free one
    for a, b in zip(split.client.get_weights() + split.server.get_weights(),
                    noisy.client.get_weights() + noisy.server.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
