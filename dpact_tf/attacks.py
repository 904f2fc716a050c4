"""What a curious edge server can actually recover from the noisy activations (and from the model).

Threats named by the paper (Sec. III), measured against epsilon:

1. Reconstruction of the client's images from what the server receives:
   * :func:`invert` -- optimization-based inversion: find x in [0, 1] minimizing
     ||client_clean(x) - received||^2 + tv * TV(x) (the server knows, or guesses, the first layer);
   * :func:`train_decoder` -- a learned decoder (activation -> image) the server trains on public faces,
     simulating the client's noise (it knows epsilon and, when conv1 is public, the weights).
   With unknown weights (training from scratch, conv1 private) the server uses a surrogate first layer.
2. Identity leakage: :func:`reidentification_accuracy` -- the server embeds each noisy activation with a
   model trained on public identities and matches a client's new (unlabelled) activation to the labelled
   activations it received during training.
3. Membership inference on the trained model: :func:`membership_inference` (TF Privacy's threshold and
   logistic-regression attacks; AUC, attacker advantage and TF Privacy's empirical epsilon lower bound).
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import tensorflow as tf

__all__ = ["image_similarity", "invert", "train_decoder", "decode", "reidentification_accuracy",
           "membership_inference"]


def image_similarity(reconstructed: np.ndarray, original: np.ndarray) -> Dict[str, float]:
    """Mean SSIM and PSNR (images in [0, 1])."""
    a = tf.clip_by_value(tf.convert_to_tensor(reconstructed, tf.float32), 0.0, 1.0)
    b = tf.convert_to_tensor(original, tf.float32)
    return {"ssim": float(tf.reduce_mean(tf.image.ssim(a, b, max_val=1.0))),
            "psnr": float(tf.reduce_mean(tf.image.psnr(a, b, max_val=1.0)))}


def invert(clean_client: tf.keras.Model, received: np.ndarray, *, steps: int = 200, learning_rate: float = 0.05,
           tv_weight: float = 1e-3, seed: int = 0) -> np.ndarray:
    """Optimization-based inversion of ``received`` activations through ``clean_client`` (no noise)."""
    shape = (received.shape[0],) + tuple(clean_client.input_shape[1:])
    logits = tf.Variable(tf.random.stateless_normal(shape, seed=[seed, 0], stddev=0.01))
    target = tf.constant(received, tf.float32)
    opt = tf.keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            x = tf.sigmoid(logits)
            fit = tf.reduce_mean(tf.square(clean_client(x, training=False) - target))
            tv = tf.reduce_mean(tf.image.total_variation(x)) / float(np.prod(shape[1:]))
            loss = fit + tv_weight * tv
        opt.apply_gradients([(tape.gradient(loss, logits), logits)])
        return loss

    for _ in range(int(steps)):
        step()
    return tf.sigmoid(logits).numpy()


def _decoder(activation_shape, image_shape) -> tf.keras.Model:
    inp = tf.keras.Input(activation_shape)
    x = inp
    h = activation_shape[0]
    for filters in (32, 32):
        x = tf.keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    while h < image_shape[0]:  # undo pooling cuts
        x = tf.keras.layers.UpSampling2D()(x)
        x = tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
        h *= 2
    out = tf.keras.layers.Conv2D(3, 3, padding="same", activation="sigmoid")(x)
    return tf.keras.Model(inp, out, name="decoder")


def train_decoder(attacker_client: tf.keras.Model, public_images: np.ndarray, *, epochs: int = 5,
                  batch_size: int = 64, seed: int = 0) -> tf.keras.Model:
    """Train activation -> image on public faces, through ``attacker_client`` (noisy, the target epsilon)."""
    tf.keras.utils.set_random_seed(seed)
    x = public_images.astype(np.float32) / 255.0 if public_images.dtype == np.uint8 else public_images
    decoder = _decoder(tuple(attacker_client.output_shape[1:]), x.shape[1:])
    opt = tf.keras.optimizers.Adam(1e-3)

    @tf.function
    def step(batch):
        act = attacker_client(batch, training=False)  # fresh noise every batch, as the client would add
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(decoder(act, training=True) - batch))
        opt.apply_gradients(zip(tape.gradient(loss, decoder.trainable_variables), decoder.trainable_variables))
        return loss

    ds = tf.data.Dataset.from_tensor_slices(x).shuffle(len(x), seed=seed).batch(batch_size)
    for _ in range(int(epochs)):
        for batch in ds:
            step(batch)
    return decoder


def decode(decoder: tf.keras.Model, received: np.ndarray) -> np.ndarray:
    return decoder.predict(received, batch_size=128, verbose=0)


def reidentification_accuracy(embed: tf.keras.Model, gallery: np.ndarray, gallery_labels: np.ndarray,
                              probes: np.ndarray, probe_labels: np.ndarray) -> float:
    """Top-1 nearest-neighbour (cosine) identification of ``probes`` against the labelled ``gallery``."""
    g = tf.math.l2_normalize(embed.predict(gallery, batch_size=256, verbose=0), axis=-1)
    p = tf.math.l2_normalize(embed.predict(probes, batch_size=256, verbose=0), axis=-1)
    nearest = tf.argmax(tf.matmul(p, g, transpose_b=True), axis=-1).numpy()
    return float(np.mean(np.asarray(gallery_labels)[nearest] == np.asarray(probe_labels)))


def membership_inference(logits_train: np.ndarray, labels_train: np.ndarray, logits_test: np.ndarray,
                         labels_test: np.ndarray) -> Dict[str, Dict[str, Any]]:
    """TF Privacy's threshold and logistic-regression membership-inference attacks on the whole dataset."""
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import \
        membership_inference_attack as mia
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack.data_structures import (
        AttackInputData, AttackType, SlicingSpec)

    data = AttackInputData(logits_train=np.asarray(logits_train, np.float64),
                           logits_test=np.asarray(logits_test, np.float64),
                           labels_train=np.asarray(labels_train, np.int64), labels_test=np.asarray(labels_test, np.int64))
    results = mia.run_attacks(data, SlicingSpec(entire_dataset=True, by_class=False),
                              attack_types=(AttackType.THRESHOLD_ATTACK, AttackType.LOGISTIC_REGRESSION))
    out: Dict[str, Dict[str, Any]] = {}
    for r in results.single_attack_results:
        bounds = [float(b) for b in r.get_epsilon_lower_bound()]
        out[r.attack_type.name] = {"auc": float(r.get_auc()), "attacker_advantage": float(r.get_attacker_advantage()),
                                   "epsilon_lower_bound": max(bounds) if bounds else None}
    return out
