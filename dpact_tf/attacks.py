"""What a curious edge server can recover from the noisy activations: reconstruction and identity.

The server holds every release: a training face is released once per epoch (E noisy copies of the same
activation when conv1 is frozen), so the full-strength attacker first averages them
(:func:`average_releases`: noise / sqrt(E)) and simulates the same averaging when it trains on public faces
(:func:`mean_release_client`).

1. Reconstruction of the client's images from what the server receives, when it knows the released layer:
   * :func:`invert` -- optimization-based inversion: find x in [0, 1] minimizing
     ||client_clean(x) - received||^2 + tv * TV(x);
   * :func:`train_decoder` -- a learned decoder (activation -> image) the server trains on public faces,
     simulating the client's noise (it knows epsilon and the weights).
   Scores (:func:`image_similarity`, :func:`ssim_per_face`) are compared with :func:`trivial_baselines` (a flat
   grey image, the public mean face): a reconstruction that does not beat them has recovered nothing about the face.
2. Identity: :func:`reidentification_accuracy` -- nearest-neighbour matching of embedded activations against a
   labelled gallery, with an embedding trained on noisy public activations (:func:`train_embedding`).
3. Membership inference on a trained model's outputs: :func:`membership_inference` (TF Privacy's threshold and
   logistic-regression attacks; seeded: TF Privacy draws its splits from NumPy's global generator, which is
   seeded around the call).  Membership against the server, from the releases it holds, is
   :mod:`dpact_tf.membership`.
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import tensorflow as tf

from dpact_tf.data import without_autotune

__all__ = ["image_similarity", "ssim_per_face", "trivial_baselines", "average_releases", "mean_release_client", "invert", "train_decoder", "decode",
           "train_embedding", "nearest_identity_accuracy", "reidentification_accuracy", "membership_inference"]


def image_similarity(reconstructed: np.ndarray, original: np.ndarray) -> Dict[str, float]:
    """Mean SSIM and PSNR (images in [0, 1])."""
    a = tf.clip_by_value(tf.convert_to_tensor(reconstructed, tf.float32), 0.0, 1.0)
    b = tf.convert_to_tensor(original, tf.float32)
    return {"ssim": float(tf.reduce_mean(tf.image.ssim(a, b, max_val=1.0))),
            "psnr": float(tf.reduce_mean(tf.image.psnr(a, b, max_val=1.0)))}


def ssim_per_face(reconstructed: np.ndarray, original: np.ndarray) -> np.ndarray:
    """SSIM of each reconstruction to its face ([n]; images in [0, 1], reconstructions clipped to [0, 1])."""
    a = tf.clip_by_value(tf.convert_to_tensor(reconstructed, tf.float32), 0.0, 1.0)
    return tf.image.ssim(a, tf.convert_to_tensor(original, tf.float32), max_val=1.0).numpy().astype(np.float64)


def _to_unit(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else np.asarray(images, np.float32)


def trivial_baselines(faces: np.ndarray, public_images: np.ndarray) -> Dict[str, Dict[str, Any]]:
    """What a "reconstruction" scores without looking at any release: a flat grey image and the public mean face.

    Returns ``{"grey": {"ssim", "psnr", "image"}, "mean_face": {...}}`` (``image``: the one guess, [H, W, 3]).
    """
    faces = _to_unit(faces)
    guesses = {"grey": np.full(faces.shape[1:], 0.5, np.float32),
               "mean_face": _to_unit(public_images).mean(axis=0)}
    if guesses["mean_face"].shape != faces.shape[1:]:
        raise ValueError(f"public images {guesses['mean_face'].shape} and faces {faces.shape[1:]} differ in size")
    return {name: {**image_similarity(np.broadcast_to(g, faces.shape), faces), "image": g}
            for name, g in guesses.items()}


def average_releases(client: tf.keras.Model, images: np.ndarray, releases: int, *, batch_size: int = 256) -> np.ndarray:
    """The mean of ``releases`` noisy releases of each image by ``client`` (fresh noise per call).

    With a fixed client this is the clean activation plus noise of std / sqrt(releases): what a server holding
    every epoch's copy of a training face can compute.
    """
    if int(releases) != releases or releases < 1:
        raise ValueError(f"releases must be a positive integer (got {releases})")
    x = _to_unit(images)
    total = None
    for _ in range(int(releases)):
        out = client.predict(x, batch_size=batch_size, verbose=0)
        total = out if total is None else total + out
    return total / float(releases)


def mean_release_client(clean_client: tf.keras.Model, noise_std: float, releases: int) -> tf.keras.Model:
    """A model whose one output has the distribution of the mean of ``releases`` noisy releases.

    The mean of E i.i.d. Gaussian noises of std s is Gaussian with std s / sqrt(E): ``clean_client`` (the
    noise-free activation) plus fresh N(0, (s / sqrt(E))^2) noise per call.  The attacker uses it to simulate
    averaged releases at the cost of one pass (and :func:`average_releases` on the victim is the same
    distribution).
    """
    if int(releases) != releases or releases < 1:
        raise ValueError(f"releases must be a positive integer (got {releases})")
    if not noise_std >= 0:
        raise ValueError(f"noise_std must be >= 0 (got {noise_std})")
    std = float(noise_std) / float(np.sqrt(releases))
    if std == 0.0:
        return clean_client
    noisy = tf.keras.layers.Lambda(lambda t: t + tf.random.normal(tf.shape(t), stddev=std),
                                   name="mean_release_noise")(clean_client.output)
    return tf.keras.Model(clean_client.input, noisy, name="mean_release_client")


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


def _released(attacker_client: tf.keras.Model, batch: tf.Tensor, releases: int) -> tf.Tensor:
    """Mean of ``releases`` noisy calls (fresh noise each), as the attacker will see averaged releases."""
    act = attacker_client(batch, training=False)
    for _ in range(releases - 1):
        act = act + attacker_client(batch, training=False)
    return act / float(releases)


def train_decoder(attacker_client: tf.keras.Model, public_images: np.ndarray, *, epochs: int = 5,
                  batch_size: int = 64, seed: int = 0, releases: int = 1) -> tf.keras.Model:
    """Train activation -> image on public faces, through ``attacker_client`` (noisy, the target epsilon).

    ``releases``: the decoder sees the mean of that many noisy releases, as it will be applied to
    :func:`average_releases` of the victim's faces.
    """
    if int(releases) != releases or releases < 1:
        raise ValueError(f"releases must be a positive integer (got {releases})")
    tf.keras.utils.set_random_seed(seed)
    x = _to_unit(public_images)
    decoder = _decoder(tuple(attacker_client.output_shape[1:]), x.shape[1:])
    opt = tf.keras.optimizers.Adam(1e-3)

    @tf.function
    def step(batch):
        act = _released(attacker_client, batch, int(releases))  # fresh noise every batch, as the client adds
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(decoder(act, training=True) - batch))
        opt.apply_gradients(zip(tape.gradient(loss, decoder.trainable_variables), decoder.trainable_variables))
        return loss

    ds = without_autotune(tf.data.Dataset.from_tensor_slices(x).shuffle(len(x), seed=seed).batch(batch_size))
    for _ in range(int(epochs)):
        for batch in ds:
            step(batch)
    return decoder


def decode(decoder: tf.keras.Model, received: np.ndarray) -> np.ndarray:
    return decoder.predict(received, batch_size=128, verbose=0)


def train_embedding(attacker_client: tf.keras.Model, base: tf.keras.Model, public_images: np.ndarray,
                    public_labels: np.ndarray, *, epochs: int = 2, batch_size: int = 64, learning_rate: float = 1e-3,
                    releases: int = 1, seed: int = 0) -> tf.keras.Model:
    """Fit ``base`` (activation -> embedding, trained in place) on *noisy* activations of public identities.

    A softmax head over the public identities sits on the embedding during training; every batch gets fresh
    noise from ``attacker_client`` (averaged over ``releases``, to match the averaged gallery).  Returns
    ``base``.  An embedding trained on clean activations would understate what the server can do at this epsilon.
    """
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer (got {epochs})")
    tf.keras.utils.set_random_seed(seed)
    x = _to_unit(public_images)
    y = np.asarray(public_labels, np.int64)
    head = tf.keras.layers.Dense(int(y.max()) + 1)
    model = tf.keras.Sequential([base, head])
    opt = tf.keras.optimizers.Adam(learning_rate)
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(images, labels):
        act = _released(attacker_client, images, int(releases))
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(act, training=True))
        variables = model.trainable_variables
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    ds = without_autotune(tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).batch(batch_size))
    for _ in range(int(epochs)):
        for images, labels in ds:
            step(images, labels)
    return base


def nearest_identity_accuracy(gallery: np.ndarray, gallery_labels: np.ndarray, probes: np.ndarray,
                              probe_labels: np.ndarray) -> float:
    """Top-1 nearest-neighbour (cosine) identification of embedded ``probes`` against an embedded ``gallery``."""
    g = tf.math.l2_normalize(tf.reshape(tf.convert_to_tensor(gallery, tf.float32), (len(gallery), -1)), axis=-1)
    p = tf.math.l2_normalize(tf.reshape(tf.convert_to_tensor(probes, tf.float32), (len(probes), -1)), axis=-1)
    nearest = tf.argmax(tf.matmul(p, g, transpose_b=True), axis=-1).numpy()
    return float(np.mean(np.asarray(gallery_labels)[nearest] == np.asarray(probe_labels)))


def reidentification_accuracy(embed: tf.keras.Model, gallery: np.ndarray, gallery_labels: np.ndarray,
                              probes: np.ndarray, probe_labels: np.ndarray) -> float:
    """Top-1 nearest-neighbour (cosine) identification of ``probes`` against the labelled ``gallery``."""
    return nearest_identity_accuracy(embed.predict(gallery, batch_size=256, verbose=0), gallery_labels,
                                     embed.predict(probes, batch_size=256, verbose=0), probe_labels)


def membership_inference(logits_train: np.ndarray, labels_train: np.ndarray, logits_test: np.ndarray,
                         labels_test: np.ndarray, *, seed: int = 0) -> Dict[str, Dict[str, Any]]:
    """TF Privacy's threshold and logistic-regression membership-inference attacks on the whole dataset.

    Deterministic for a given ``seed``: TF Privacy shuffles and splits with NumPy's global generator, which is
    seeded for the call and restored afterwards (the caller's random stream is left as it was).
    """
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack import \
        membership_inference_attack as mia
    from tensorflow_privacy.privacy.privacy_tests.membership_inference_attack.data_structures import (
        AttackInputData, AttackType, SlicingSpec)

    data = AttackInputData(logits_train=np.asarray(logits_train, np.float64),
                           logits_test=np.asarray(logits_test, np.float64),
                           labels_train=np.asarray(labels_train, np.int64), labels_test=np.asarray(labels_test, np.int64))
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        results = mia.run_attacks(data, SlicingSpec(entire_dataset=True, by_class=False),
                                  attack_types=(AttackType.THRESHOLD_ATTACK, AttackType.LOGISTIC_REGRESSION))
    finally:
        np.random.set_state(state)
    out: Dict[str, Dict[str, Any]] = {}
    for r in results.single_attack_results:
        bounds = [float(b) for b in r.get_epsilon_lower_bound()]
        out[r.attack_type.name] = {"auc": float(r.get_auc()), "attacker_advantage": float(r.get_attacker_advantage()),
                                   "epsilon_lower_bound": max(bounds) if bounds else None}
    return out
