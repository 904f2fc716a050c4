"""What the baselines that train the whole network in one Keras model share (DP-SGD, DSSGD): scoring a batch.

:class:`dpact_tf.training.EpochTrainer` evaluates through its trainer's ``_evaluate_step``; for a whole model
(no split) that step is the model's summed loss and correct count, after the shared image check.
"""
from __future__ import annotations

from typing import Tuple

import tensorflow as tf

from dpact_tf.training import correct_count, images_ok

__all__ = ["evaluate_batch"]


def evaluate_batch(model: tf.keras.Model, images: tf.Tensor, labels: tf.Tensor) -> Tuple[tf.Tensor, ...]:
    """(images ok, summed cross-entropy, correct count) of ``model`` on one batch; a batch outside the pixel range
    is not scored (zeros) and reported not ok (the trainer raises on it)."""
    ok = images_ok(images)

    def run():
        logits = model(images, training=False)
        loss_sum = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        return loss_sum, correct_count(logits, labels)

    return (ok,) + tuple(tf.cond(ok, run, lambda: (tf.constant(0.0), tf.constant(0.0))))
