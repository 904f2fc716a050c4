import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import ActivationMessage, SplitTrainer, TrainingConfig, build_split_vggface
from dpact_tf.callbacks import Callback
from dpact_tf.split import GradientMessage, make_optimizer

SHAPE = (32, 32, 3)


def _data(n=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=(n,) + SHAPE).astype(np.float32), rng.integers(0, classes, n).astype(np.int32))


def _split(epsilon=None, seed=0, **kw):
    tf.keras.utils.set_random_seed(seed)
    return build_split_vggface(SHAPE, 3, width=1 / 16, fc_units=8, epsilon=epsilon, noise_seed=1, **kw)


def test_split_step_equals_monolithic_step():
    x, y = _data()
    cfg = TrainingConfig(lr_decay_steps=10)
    split = _split()
    reference = _split()  # same seed -> identical initial weights
    mono = reference.monolithic()
    for a, b in zip(split.client.weights + split.server.weights, reference.client.weights + reference.server.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    # Monolithic reference gradients and loss.
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        ref_loss = loss_fn(y, mono(x, training=True))
    ref_grads = tape.gradient(ref_loss, mono.trainable_variables)

    trainer = SplitTrainer(split, cfg)
    msg = trainer.train_step(tf.constant(x), tf.constant(y))
    np.testing.assert_allclose(float(msg.loss), float(ref_loss), rtol=1e-5)
    split_grads = list(trainer.client.last_gradients) + list(trainer.server.last_gradients)
    assert len(split_grads) == len(ref_grads)
    for g, r in zip(split_grads, ref_grads):
        np.testing.assert_allclose(g.numpy(), r.numpy(), atol=1e-5, rtol=1e-5)

    # Same step through Keras' own training loop.
    mono.compile(optimizer=make_optimizer(cfg, 10), loss=loss_fn)
    mono.train_on_batch(x, y)
    for a, b in zip(split.client.trainable_weights + split.server.trainable_weights, mono.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_in_process_step_is_the_message_protocol():
    # SplitTrainer.train_step runs the step as one compiled call; with the same (seeded) noise it must move every
    # weight exactly as client.forward -> server.step -> client.backward (the gRPC edge's path) does.
    x, y = _data()
    cfg = TrainingConfig(lr_decay_steps=10)
    fused, messages = SplitTrainer(_split(epsilon=5.0), cfg), SplitTrainer(_split(epsilon=5.0), cfg)
    seen = []
    server_step = fused.server._train_step

    def spy(*args):  # what the server's half of the compiled step is given: the activation and the labels only
        seen.append([(tuple(a.shape), a.dtype) for a in args])
        return server_step(*args)

    fused.server._train_step = spy
    for i in range(3):
        a = fused.train_step(tf.constant(x), tf.constant(y))
        b = messages.server.step(messages.client.forward(tf.constant(x), tf.constant(y)))
        messages.client.backward(b)
        np.testing.assert_allclose(float(a.loss), float(b.loss), rtol=1e-6)
        np.testing.assert_allclose(a.grad_activations.numpy(), b.grad_activations.numpy(), atol=1e-7)
    assert seen and all(args == [((None,) + fused.split.activation_shape, tf.float32), ((None,), tf.int32)]
                        for args in seen)  # traced (once or twice: its optimizer's slots), never given more
    for u, v in zip(fused.split.client.weights + fused.split.server.weights,
                    messages.split.client.weights + messages.split.server.weights):
        np.testing.assert_allclose(u.numpy(), v.numpy(), atol=1e-6)
    for g, h in zip(fused.client.last_gradients, messages.client.last_gradients):
        np.testing.assert_allclose(g.numpy(), h.numpy(), atol=1e-6)
    assert int(fused.split.dp_layer.noise_counter.numpy()) == 3


def test_in_process_step_refuses_bad_images_and_bad_gradients():
    x, y = _data()
    trainer = SplitTrainer(_split(epsilon=5.0), TrainingConfig(lr_decay_steps=10))
    trainer.train_step(tf.constant(x), tf.constant(y))
    weights = lambda: [w.numpy().copy() for w in trainer.split.client.weights + trainer.split.server.weights]  # noqa
    before = weights()
    with pytest.raises(ValueError, match=r"must be in \[0, 1\] .*divide by 255"):
        trainer.train_step(tf.constant(x * 255.0), tf.constant(y))
    with pytest.raises(ValueError, match="NaN or inf pixels"):
        trainer.train_step(tf.constant(np.full_like(x, np.nan)), tf.constant(y))
    # a refused batch releases nothing (no noise drawn) and changes no weight of either party
    assert int(trainer.split.dp_layer.noise_counter.numpy()) == 1
    for b, w in zip(before, weights()):
        np.testing.assert_array_equal(b, w)
    # a server whose dL/da is not finite (here: a NaN weight) cannot touch the client's weights or slots
    client_before = [w.numpy().copy() for w in trainer.split.client.trainable_weights]  # (the release counts)
    slots = [v.numpy().copy() for v in trainer.client.optimizer.variables]
    fc8 = trainer.split.server.get_layer("fc8")
    fc8.bias.assign(tf.fill(fc8.bias.shape, float("nan")))
    with pytest.raises(ValueError, match="grad_activations contains NaN or inf"):
        trainer.train_step(tf.constant(x), tf.constant(y))
    for b, w in zip(client_before, trainer.split.client.trainable_weights):
        np.testing.assert_array_equal(b, w.numpy())
    for s, v in zip(slots, trainer.client.optimizer.variables):
        np.testing.assert_array_equal(s, v.numpy())


def test_server_bound_message_has_no_pixels():
    x, y = _data()
    split = _split(epsilon=5.0)
    trainer = SplitTrainer(split, TrainingConfig(lr_decay_steps=10))
    msg = trainer.client.forward(tf.constant(x), tf.constant(y))
    assert [f.name for f in dataclasses.fields(ActivationMessage)] == ["activations", "labels"]
    assert tuple(msg.activations.shape) == (16,) + split.activation_shape
    np.testing.assert_array_equal(msg.labels.numpy(), y)
    # The activation is noisy: it is neither the input nor the clean activation.
    clean = split.clean_client()(x).numpy()
    assert np.abs(msg.activations.numpy() - clean).std() > 0.1
    # what travels is exactly the activation and the labels, byte for byte (float32 + int32)
    assert msg.nbytes == 16 * int(np.prod(split.activation_shape)) * 4 + 16 * 4


def test_frozen_client_and_output_only_server():
    x, y = _data()
    split = _split()
    before_client = [w.numpy().copy() for w in split.client.weights]
    before_server = {w.name: w.numpy().copy() for w in split.server.weights}
    trainer = SplitTrainer(split, TrainingConfig(lr_decay_steps=10, train_client=False, server_trainable="output"))
    trainer.train_step(tf.constant(x), tf.constant(y))
    for b, w in zip(before_client, split.client.weights):
        np.testing.assert_array_equal(b, w.numpy())
    changed = {w.name for w in split.server.weights if not np.array_equal(before_server[w.name], w.numpy())}
    assert changed and all(name.startswith("fc8") for name in changed)


def test_fit_infers_schedule_callbacks_and_determinism():
    x, y = _data(n=24)

    class Recorder(Callback):
        wants_batch_logs = True

        def __init__(self):
            self.events = []

        def on_train_begin(self, *, epochs, steps_per_epoch):
            self.events.append(("begin", epochs, steps_per_epoch))

        def on_batch_end(self, step, logs):
            self.events.append(("batch", step, round(logs["loss"], 6)))

        def on_epoch_end(self, epoch, history):
            self.events.append(("epoch", epoch, history["loss"][-1]))

    def run():
        split = _split(epsilon=3.0, seed=0)
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        rec = Recorder()
        # the API as promised: no total_steps, the schedule comes from the dataset's 3 batches x 2 epochs
        hist = SplitTrainer(split, TrainingConfig()).fit(ds, 2, validation_data=ds, callbacks=[rec])
        return hist, rec.events

    (h1, ev1), (h2, ev2) = run(), run()
    assert h1["epoch"] == [1, 2] and len(h1["test_accuracy"]) == 2
    assert h1["loss"] == h2["loss"] and h1["test_accuracy"] == h2["test_accuracy"] and ev1 == ev2
    assert ev1[0] == ("begin", 2, 3)
    assert [e[1] for e in ev1 if e[0] == "batch"] == [0, 1, 2, 0, 1, 2]
    assert [e for e in ev1 if e[0] == "epoch"] == [("epoch", 1, h1["loss"][0]), ("epoch", 2, h1["loss"][1])]
    # the epoch's loss is the mean over its batches, as the last batch log of the epoch reports it
    assert [e[2] for e in ev1 if e[0] == "batch"][2] == pytest.approx(h1["loss"][0], abs=1e-6)
    # lr decays by 0.1 over the 6 steps of the run; the 6th step (step index 5) uses 0.01 * 0.1 ** (5 / 6)
    assert h1["learning_rate"][-1] == pytest.approx(0.01 * 0.1 ** (5 / 6), rel=1e-5)


def test_fit_needs_a_known_length_without_total_steps():
    x, y = _data(n=16)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).filter(lambda a, b: True)  # cardinality unknown
    with pytest.raises(ValueError, match="number of batches is unknown"):
        SplitTrainer(_split(), TrainingConfig()).fit(ds, 1)
    hist = SplitTrainer(_split(), TrainingConfig(), total_steps=2).fit(ds, 1)
    assert hist["epoch"] == [1]
    with pytest.raises(RuntimeError, match="call fit"):
        SplitTrainer(_split(), TrainingConfig()).train_step(tf.constant(x[:2]), tf.constant(y[:2]))


def test_training_reduces_loss_without_noise():
    x, y = _data(n=24, seed=3)
    split = _split()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    trainer = SplitTrainer(split, TrainingConfig(learning_rate=0.05, lr_decay_rate=1.0), total_steps=60)
    hist = trainer.fit(ds, 20)
    assert hist["loss"][-1] < hist["loss"][0]


def test_bad_config():
    with pytest.raises(ValueError, match="server_trainable"):
        TrainingConfig(server_trainable="fc7")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainingConfig(learning_rate=0)
    with pytest.raises(ValueError, match="total_steps"):
        SplitTrainer(_split(), TrainingConfig(), total_steps=0)
    with pytest.raises(ValueError, match="epochs"):
        SplitTrainer(_split(), TrainingConfig(lr_decay_steps=1)).fit([], 0)


def _client_weights(trainer):
    return [w.numpy().copy() for w in trainer.client.model.weights]


@pytest.fixture(scope="module")
def noisy_trainer():
    # Shared by the refusal tests: a refused message or batch leaves the trainer as it was.
    return SplitTrainer(_split(epsilon=5.0), TrainingConfig(lr_decay_steps=10))


@pytest.mark.parametrize("poison,match", [
    (lambda g: tf.tensor_scatter_nd_update(g, [[0, 0, 0, 0]], [float("nan")]), "NaN or inf"),
    (lambda g: tf.tensor_scatter_nd_update(g, [[3, 1, 2, 0]], [float("inf")]), "NaN or inf"),
    (lambda g: g[:, :16], r"shape \(16, 16, 32, 4\), expected \(16, 32, 32, 4\)"),
    (lambda g: g[:8], r"expected \(16, 32, 32, 4\)"),
    (lambda g: tf.cast(g, tf.float64) * 1e300 + 1e300, "NaN or inf"),  # finite in float64, inf in float32
    (lambda g: "garbage", "not a float tensor"),
])
def test_client_refuses_a_poisoned_gradient_and_keeps_its_weights(noisy_trainer, poison, match):
    x, y = _data()
    trainer = noisy_trainer
    msg = trainer.server.step(trainer.client.forward(tf.constant(x), tf.constant(y)))
    before = _client_weights(trainer)
    bad = dataclasses.replace(msg, grad_activations=poison(msg.grad_activations))
    with pytest.raises(ValueError, match=match):
        trainer.client.backward(bad)
    for b, w in zip(before, trainer.client.model.weights):
        np.testing.assert_array_equal(b, w.numpy())
    # The step is aborted: the good gradient cannot be applied afterwards (one gradient per forward).
    with pytest.raises(RuntimeError, match="without a preceding forward"):
        trainer.client.backward(msg)


@pytest.mark.parametrize("images,match", [
    (lambda x: x * 255.0, r"must be in \[0, 1\] .*divide by 255"),
    (lambda x: x - 0.6, r"must be in \[0, 1\] \(got min -0.59"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x).astype(np.float32), "NaN or inf"),
    (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x).astype(np.float32), "NaN or inf"),
    (lambda x: (x * 255).astype(np.uint8), "dtype uint8.*divide uint8 images by 255"),
])
def test_client_refuses_bad_images_before_releasing(noisy_trainer, images, match):
    x, y = _data()
    trainer = noisy_trainer
    counter = trainer.client.model.get_layer("dp_activation").noise_counter
    releases = int(counter.numpy())
    with pytest.raises(ValueError, match=match):
        trainer.client.forward(images(x), tf.constant(y))
    with pytest.raises(ValueError, match=match):
        trainer.client.release(images(x))
    assert int(counter.numpy()) == releases, "nothing may be released from a refused batch"


def test_client_accepts_resize_rounding(noisy_trainer):
    # tf.image.resize of a 0/255 image can return 1 + 2.4e-7: float rounding, not a 0..255 mix-up.
    x, y = _data()
    noisy_trainer.client.release(np.minimum(x + 1.0, 1.0 + 2.4e-7).astype(np.float32))
    noisy_trainer.client.forward(np.minimum(x + 1.0, 1.0 + 2.4e-7).astype(np.float32), tf.constant(y))


def test_a_finite_but_overflowing_gradient_is_refused_and_rolled_back():
    # 3e38 is finite, but the SGD update it causes is not
    x, y = _data()
    split = _split(epsilon=5.0)
    trainer = SplitTrainer(split, TrainingConfig(lr_decay_steps=10))
    trainer.train_step(tf.constant(x), tf.constant(y))  # one good step: the momentum slots are non-zero
    msg = trainer.client.forward(tf.constant(x), tf.constant(y))
    before = [w.numpy().copy() for w in split.client.weights]
    slots = [v.numpy().copy() for v in trainer.client.optimizer.variables]
    huge = GradientMessage(grad_activations=tf.fill(tf.shape(msg.activations), 3e38), loss=tf.constant(0.0),
                           correct=tf.constant(0.0))
    with pytest.raises(ValueError, match="overflows"):
        trainer.client.backward(huge)
    for b, w in zip(before, split.client.weights):
        np.testing.assert_array_equal(b, w.numpy())
    for s, v in zip(slots, trainer.client.optimizer.variables):
        np.testing.assert_array_equal(s, v.numpy())
    # and the client still trains afterwards
    trainer.train_step(tf.constant(x), tf.constant(y))
    assert all(np.all(np.isfinite(w.numpy())) for w in split.client.weights)
