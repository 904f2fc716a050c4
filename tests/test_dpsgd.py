"""DP-SGD baseline: the step against hand-computed SGD (noise off), clipping, the noise's std, and the accounting
against TF Privacy's own numbers."""
import io
import math
import re

import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import build_split_vggface
from dpact_tf.baselines.dpsgd import (IMPLEMENTATIONS, MIN_NOISE_MULTIPLIER, DPSGDTrainer, RunShape, _dpsgd_event,
                                      calibrate_noise_multiplier, composed_epsilon, dpsgd_epsilon)
from dpact_tf.callbacks import EarlyStopping, ProgressBar
from dpact_tf.split import SplitTrainer, TrainingConfig, make_optimizer
from dpact_tf.training import HISTORY_KEYS

SHAPE = (8, 8, 3)
CLASSES = 5


def _model(seed=0):
    """A small image -> logits network (conv, dense, dense; ~12,700 weights): the trainer takes any Keras model, and
    a few layers trace in a fraction of the time VGG-Face's sixteen take."""
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input(shape=SHAPE, name="image")
    h = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = tf.keras.layers.Dense(24, activation="relu")(tf.keras.layers.Flatten()(h))
    return tf.keras.Model(inputs, tf.keras.layers.Dense(CLASSES)(h), name="small")


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, *SHAPE)).astype(np.float32), (np.arange(n) % CLASSES).astype(np.int32)


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def _loss(model, x, y):
    return tf.keras.losses.sparse_categorical_crossentropy(y, model(x, training=True), from_logits=True)


def _per_example_grads(model, x, y):
    """Each example's gradient, one tape per example (the reference the trainer's clipping is checked against)."""
    grads = []
    for i in range(len(y)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(_loss(model, x[i:i + 1], y[i:i + 1]))
        grads.append([g.numpy() for g in tape.gradient(loss, model.trainable_variables)])
    return grads


# ---------------------------------------------------------------------------------------------------------------
# The step


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_without_noise_or_clipping_it_is_sgd_momentum_on_the_mean_loss(implementation):
    """z = 0 and a clip no gradient reaches: the mean of the per-example gradients is the gradient of the mean loss,
    so two steps equal two steps of the split protocol's optimizer (SGD momentum, the same decay)."""
    x, y = _batch()
    model, reference = _model(), _model(seed=1)
    reference.set_weights(model.get_weights())
    initial = _weights(model)
    trainer = DPSGDTrainer(model, l2_norm_clip=1e9, noise_multiplier=0.0, total_steps=3,
                           implementation=implementation)
    optimizer = make_optimizer(TrainingConfig(), 3)
    for _ in range(2):
        out = trainer.train_step(x, y)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(_loss(reference, x, y))
        optimizer.apply_gradients(zip(tape.gradient(loss, reference.trainable_variables),
                                      reference.trainable_variables))
        assert float(out.loss) == pytest.approx(float(loss), rel=1e-5)
    for got, want in zip(_weights(model), _weights(reference)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert max(np.abs(g - w).max() for g, w in zip(_weights(model), initial)) > 1e-4  # the weights did move


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_each_example_is_clipped_to_the_norm(implementation):
    """With a clip C below every example's gradient norm and no noise, the first step (momentum slots at zero, rate
    lr) is -lr/B sum_i g_i C/||g_i||: its norm is at most lr C, and it equals that hand-computed sum.  (lr = 1 keeps
    the update well above the float32 rounding of the weights.)"""
    lr = 1.0
    x, y = _batch()
    model = _model()
    before = _weights(model)
    grads = _per_example_grads(model, x, y)
    norms = [math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in gi)) for gi in grads]
    clip = min(norms) / 10  # every example is clipped, by 10x or more
    want = np.concatenate([-lr / len(y) * sum(gi[k].astype(np.float64) * clip / n for gi, n in zip(grads, norms))
                           .ravel() for k in range(len(before))])
    DPSGDTrainer(model, l2_norm_clip=clip, noise_multiplier=0.0, learning_rate=lr, total_steps=10,
                 implementation=implementation).train_step(x, y)
    got = np.concatenate([(a - b).ravel() for a, b in zip(_weights(model), before)]).astype(np.float64)
    assert np.linalg.norm(got) <= lr * clip * (1 + 1e-3)
    assert np.linalg.norm(got - want) < 2e-3 * np.linalg.norm(want)
    # unclipped, the step would be 10x or more larger: the clip did act
    unclipped = np.concatenate([-lr / len(y) * sum(gi[k] for gi in grads).ravel() for k in range(len(before))])
    assert np.linalg.norm(got - unclipped) > 0.5 * np.linalg.norm(unclipped)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_the_noise_std_is_z_clip_over_batch(implementation):
    """The same step with and without noise from the same weights: the difference is -lr N(0, (z C)^2) / B per
    weight.  The std of the ~12,700 weights' differences matches lr z C / B within 4 standard errors (sigma/sqrt(2n))."""
    z, clip, lr = 1.3, 0.5, 0.01
    x, y = _batch()
    noisy, clean = _model(), _model(seed=1)
    clean.set_weights(noisy.get_weights())
    before = _weights(noisy)
    tf.random.set_seed(7)
    DPSGDTrainer(noisy, l2_norm_clip=clip, noise_multiplier=z, learning_rate=lr, total_steps=10,
                 implementation=implementation).train_step(x, y)
    DPSGDTrainer(clean, l2_norm_clip=clip, noise_multiplier=0.0, learning_rate=lr, total_steps=10,
                 implementation=implementation).train_step(x, y)
    diff = np.concatenate([(a - b).ravel() for a, b in zip(_weights(noisy), _weights(clean))]).astype(np.float64)
    assert diff.size >= 10_000
    sigma = lr * z * clip / len(y)
    assert abs(diff.std() - sigma) < 4 * sigma / math.sqrt(2 * diff.size)
    assert abs(diff.mean()) < 4 * sigma / math.sqrt(diff.size)
    assert any(not np.array_equal(a, b) for a, b in zip(before, _weights(clean)))


@pytest.mark.parametrize("implementation, expected_batch_size, microbatches",
                         [("model", None, None), ("model", 8, None), ("model", None, 2), ("optimizer", None, None)])
def test_the_step_is_traced_once(implementation, expected_batch_size, microbatches):
    """Batches of any size share one trace (its input signature), and the first call does not trace it twice
    (every variable the step uses exists before it is traced): a retrace costs seconds on the paper's network."""
    trainer = DPSGDTrainer(_model(), l2_norm_clip=1.0, noise_multiplier=0.5, total_steps=10,
                           implementation=implementation, expected_batch_size=expected_batch_size,
                           num_microbatches=microbatches)
    for n in ((4, 4, 2) if microbatches else (4, 4, 3)):
        trainer.train_step(*_batch(n))
    assert trainer._step.experimental_get_tracing_count() == 1


def test_poisson_steps_divide_by_the_expected_batch_size():
    """expected_batch_size=B: (sum of clipped gradients + noise) / B whatever the batch holds.  Noise off and a clip
    no gradient reaches, a batch of 4 with B = 8 takes the first step of a batch of 4 averaged at half the rate
    (the first momentum step is -lr g)."""
    x, y = _batch()
    poisson, reference = _model(), _model(seed=1)
    reference.set_weights(poisson.get_weights())
    DPSGDTrainer(poisson, l2_norm_clip=1e6, noise_multiplier=0.0, learning_rate=0.02, total_steps=10,
                 expected_batch_size=8).train_step(x, y)
    DPSGDTrainer(reference, l2_norm_clip=1e6, noise_multiplier=0.0, learning_rate=0.01, total_steps=10).train_step(x, y)
    for a, b in zip(_weights(poisson), _weights(reference)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_an_empty_poisson_batch_is_a_noise_only_step():
    """An empty batch moves the weights by -lr N(0, (z C)^2) / B (std within 4 standard errors over ~12,700
    weights); without noise it moves nothing; without expected_batch_size it is refused."""
    z, clip, lr, b = 1.3, 0.5, 0.01, 8
    x, y = _batch()
    empty_x, empty_y = x[:0], y[:0]
    model = _model()
    before = _weights(model)
    trainer = DPSGDTrainer(model, l2_norm_clip=clip, noise_multiplier=z, learning_rate=lr, total_steps=10,
                           expected_batch_size=b)
    out = trainer.train_step(empty_x, empty_y)
    assert float(out.correct) == 0.0 and int(trainer.optimizer.iterations) == 1
    diff = np.concatenate([(a - c).ravel() for a, c in zip(_weights(model), before)]).astype(np.float64)
    sigma = lr * z * clip / b
    assert diff.size >= 10_000 and abs(diff.std() - sigma) < 4 * sigma / math.sqrt(2 * diff.size)
    quiet = _model()
    before = _weights(quiet)
    DPSGDTrainer(quiet, l2_norm_clip=clip, noise_multiplier=0.0, total_steps=10, expected_batch_size=b).train_step(
        empty_x, empty_y)
    assert all(np.array_equal(a, c) for a, c in zip(_weights(quiet), before))
    with pytest.raises(ValueError, match="empty batch"):
        DPSGDTrainer(_model(), l2_norm_clip=clip, noise_multiplier=z, total_steps=10).train_step(empty_x, empty_y)


def test_expected_batch_size_needs_per_example_clipping_in_the_model():
    for kwargs in ({"implementation": "optimizer"}, {"num_microbatches": 2}, {"expected_batch_size": 0}):
        with pytest.raises(ValueError, match="expected_batch_size"):
            DPSGDTrainer(_model(), l2_norm_clip=1.0, noise_multiplier=1.0, **{"expected_batch_size": 4, **kwargs})


def test_fit_returns_the_history_and_works_with_callbacks(capsys):
    x, y = _batch(12)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    stream = io.StringIO()
    trainer = DPSGDTrainer(_model(), l2_norm_clip=1.0, noise_multiplier=1.0)
    # min_delta no metric can beat: the callback stops after epoch 2 (patience 1) of the 5 asked for
    stop = EarlyStopping(monitor="test_accuracy", patience=1, min_delta=1e9)
    history = trainer.fit(train, 5, validation_data=train, callbacks=[ProgressBar("dpsgd", stream=stream), stop])
    assert set(HISTORY_KEYS) <= set(history)
    assert history["epoch"] == [1, 2] and stop.stopped_epoch == 2
    assert all(len(history[k]) == 2 for k in HISTORY_KEYS)
    assert all(0 <= a <= 1 for a in history["train_accuracy"] + history["test_accuracy"])
    assert all(np.isfinite(history["loss"] + history["test_loss"]))
    assert "dpsgd" in stream.getvalue()
    assert trainer.decay_steps == 5 * 3
    # The reported rates are the split protocol's for the same schedule.
    split_train = tf.data.Dataset.from_tensor_slices((np.zeros((12, 32, 32, 3), np.float32), y)).batch(4)
    split = SplitTrainer(build_split_vggface(input_shape=(32, 32, 3), num_classes=CLASSES, width=1 / 16, fc_units=8),
                         total_steps=5 * 3)
    assert split.fit(split_train, 2)["learning_rate"] == pytest.approx(history["learning_rate"], rel=1e-6)
    captured = capsys.readouterr()
    assert "while_loop" not in captured.err + captured.out  # tracing warnings are silenced


def test_refused_inputs_change_nothing():
    model = _model()
    before = _weights(model)
    trainer = DPSGDTrainer(model, l2_norm_clip=1.0, noise_multiplier=1.0, total_steps=10)
    x, y = _batch()
    with pytest.raises(ValueError, match="0..255"):
        trainer.train_step(x * 255, y)
    with pytest.raises(ValueError, match="float"):
        trainer.train_step((x * 255).astype(np.uint8), y)
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(model)))
    with pytest.raises(ValueError, match="num_microbatches"):
        DPSGDTrainer(model, l2_norm_clip=1.0, noise_multiplier=1.0, num_microbatches=3, total_steps=5).train_step(x, y)
    for kwargs, match in [({"l2_norm_clip": 0.0, "noise_multiplier": 1.0}, "l2_norm_clip"),
                          ({"l2_norm_clip": 1.0, "noise_multiplier": -1.0}, "noise_multiplier"),
                          ({"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "momentum": 1.0}, "momentum"),
                          ({"l2_norm_clip": 1.0, "noise_multiplier": 1.0, "implementation": "x"}, "implementation")]:
        with pytest.raises(ValueError, match=match):
            DPSGDTrainer(model, **kwargs)
    with pytest.raises(RuntimeError, match="total_steps"):
        DPSGDTrainer(model, l2_norm_clip=1.0, noise_multiplier=1.0).train_step(x, y)


# ---------------------------------------------------------------------------------------------------------------
# Accounting

RUN = dict(batch_size=64, num_examples=1000, epochs=15, delta=1e-5)


def test_epsilon_decreases_in_noise_and_increases_in_epochs():
    eps = [dpsgd_epsilon(z, **RUN) for z in (0.5, 0.8, 1.1, 2.0, 4.0)]
    assert all(a > b for a, b in zip(eps, eps[1:]))
    by_epochs = [dpsgd_epsilon(1.1, **{**RUN, "epochs": e}) for e in (1, 5, 15, 40)]
    assert all(a < b for a, b in zip(by_epochs, by_epochs[1:]))


@pytest.mark.parametrize("target", [0.5, 3.0, 10.0, 1000.0, 35_000.0])
def test_calibrate_then_epsilon_round_trip(target):
    tol = 1e-4
    z = calibrate_noise_multiplier(target, tolerance=tol, **RUN)
    assert dpsgd_epsilon(z, **RUN) <= target
    assert dpsgd_epsilon(z * (1 - 2 * tol), **RUN) > target  # and not much more noise than needed


def test_targets_beyond_the_accounting_are_refused():
    floor = dpsgd_epsilon(MIN_NOISE_MULTIPLIER, **RUN)
    with pytest.raises(ValueError, match="beyond"):
        calibrate_noise_multiplier(2 * floor, **RUN)


def test_composed_epsilon_of_runs():
    """k identical runs compose to one run of k times the epochs (the same steps); one run is dpsgd_epsilon; a
    second, different run only adds."""
    one = RunShape(1.1, RUN["batch_size"], RUN["num_examples"], RUN["epochs"])
    assert composed_epsilon([one], delta=1e-5) == pytest.approx(dpsgd_epsilon(1.1, **RUN), rel=1e-12)
    assert composed_epsilon([one] * 3, delta=1e-5) == pytest.approx(
        dpsgd_epsilon(1.1, **{**RUN, "epochs": 3 * RUN["epochs"]}), rel=1e-9)
    other = RunShape(2.0, 128, RUN["num_examples"], 5)
    both = composed_epsilon([one, other], delta=1e-5)
    assert both > max(composed_epsilon([one], delta=1e-5), composed_epsilon([other], delta=1e-5))
    # repeated runs, in any order, compose as the explicit list of every run's event
    import dp_accounting
    from dp_accounting import rdp

    from dpact_tf.baselines.dpsgd import DPSGD_RDP_ORDERS
    explicit = rdp.RdpAccountant(DPSGD_RDP_ORDERS).compose(dp_accounting.ComposedDpEvent(
        [_dpsgd_event(r.noise_multiplier, batch_size=r.batch_size, num_examples=r.num_examples, epochs=r.epochs)
         for r in (one, other, one)])).get_epsilon(1e-5)
    assert composed_epsilon([one, other, one], delta=1e-5) == pytest.approx(explicit, rel=1e-9)
    with pytest.raises(ValueError, match="at least one"):
        composed_epsilon([], delta=1e-5)
    with pytest.raises(ValueError, match="noise_multiplier"):
        composed_epsilon([one._replace(noise_multiplier=0.0)], delta=1e-5)


def _tf_privacy_poisson_epsilon(n, batch, epochs, z, delta):
    from tensorflow_privacy import compute_dp_sgd_privacy_statement

    text = compute_dp_sgd_privacy_statement(number_of_examples=n, batch_size=batch, num_epochs=epochs,
                                            noise_multiplier=z, delta=delta, used_microbatching=False)
    return float(re.search(r"Epsilon assuming Poisson sampling \(\*\):\s+([0-9.]+)", text).group(1))


def test_matches_tf_privacy_statement():
    """TF Privacy's statement (3 decimals) counts ceil(epochs / q) steps: the same as ours when the batch divides n.
    Our orders include dp-accounting's defaults, so our epsilon is never larger."""
    want = _tf_privacy_poisson_epsilon(60000, 250, 60, 1.1, 1e-5)
    got = dpsgd_epsilon(1.1, batch_size=250, num_examples=60000, epochs=60, delta=1e-5)
    assert want - 0.005 <= got <= want + 0.0005
    # MNIST tutorial's setting: 14,100 steps here vs 14,063 there
    want = _tf_privacy_poisson_epsilon(60000, 256, 60, 1.1, 1e-5)
    got = dpsgd_epsilon(1.1, batch_size=256, num_examples=60000, epochs=60, delta=1e-5)
    assert got == pytest.approx(want, rel=5e-3)


def test_reproduces_the_mnist_tutorial_epsilon():
    """TF Privacy's MNIST tutorial table: noise 1.12, batch 256, 60 epochs, delta 1e-5 -> epsilon 2.92, computed with
    the classic RDP-to-DP conversion min_a RDP(a) + log(1/delta)/(a - 1) over orders 1.1..63.  Our event's RDP
    curve gives it back; the conversion dp-accounting uses now (Canonne et al.) is tighter, so ours is lower."""
    from dp_accounting import rdp

    orders = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))
    accountant = rdp.RdpAccountant(orders).compose(
        _dpsgd_event(1.12, batch_size=256, num_examples=60000, epochs=60))
    classic = min(r + math.log(1 / 1e-5) / (a - 1) for r, a in zip(accountant._rdp, orders))
    assert classic == pytest.approx(2.92, abs=0.01)
    assert 2.3 < dpsgd_epsilon(1.12, batch_size=256, num_examples=60000, epochs=60, delta=1e-5) < 2.92


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 2000}, "batch_size"), ({"batch_size": 0}, "batch_size"), ({"num_examples": 0}, "num_examples"),
    ({"epochs": 0}, "epochs"), ({"delta": 0.0}, "delta"), ({"delta": 1.0}, "delta")])
def test_accounting_refuses_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpsgd_epsilon(1.0, **{**RUN, **kwargs})
    with pytest.raises(ValueError, match=match):
        calibrate_noise_multiplier(3.0, **{**RUN, **kwargs})


def test_accounting_refuses_bad_epsilon_and_noise():
    for eps in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="target_epsilon"):
            calibrate_noise_multiplier(eps, **RUN)
    for z in (0.0, MIN_NOISE_MULTIPLIER / 2, float("nan")):
        with pytest.raises(ValueError, match="noise_multiplier"):
            dpsgd_epsilon(z, **RUN)
    with pytest.raises(ValueError, match="tolerance"):
        calibrate_noise_multiplier(3.0, tolerance=0.5, **RUN)
