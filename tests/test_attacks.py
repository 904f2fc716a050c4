import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import attacks, build_split_vggface


def test_image_similarity_identity():
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    sim = attacks.image_similarity(x, x)
    assert sim["ssim"] == pytest.approx(1.0) and sim["psnr"] > 60


def test_inversion_recovers_more_without_noise():
    tf.keras.utils.set_random_seed(0)
    clean = build_split_vggface((32, 32, 3), 2, width=1 / 4, fc_units=8)
    noisy = build_split_vggface((32, 32, 3), 2, width=1 / 4, fc_units=8, epsilon=1.0, noise_seed=1)
    noisy.client.set_weights(clean.client.get_weights())
    rng = np.random.default_rng(1)
    # smooth test images: blurred noise
    x = tf.image.resize(rng.uniform(size=(4, 8, 8, 3)).astype(np.float32), (32, 32)).numpy()
    rec_clean = attacks.invert(clean.clean_client(), clean.client(x).numpy(), steps=150)
    rec_noisy = attacks.invert(clean.clean_client(), noisy.client(x).numpy(), steps=150)
    blank = attacks.image_similarity(np.full_like(x, 0.5), x)["psnr"]
    assert attacks.image_similarity(rec_clean, x)["psnr"] > attacks.image_similarity(rec_noisy, x)["psnr"]
    assert attacks.image_similarity(rec_clean, x)["psnr"] > blank + 3


def test_reidentification_on_separable_embeddings():
    embed = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Lambda(lambda t: t)])
    gallery = np.eye(4, dtype=np.float32)
    probes = np.eye(4, dtype=np.float32) + 0.1
    assert attacks.reidentification_accuracy(embed, gallery, np.arange(4), probes, np.arange(4)) == 1.0


def test_membership_inference_detects_overfitting():
    rng = np.random.default_rng(0)
    n, k = 400, 5
    labels_train, labels_test = rng.integers(0, k, n), rng.integers(0, k, n)
    logits_train = rng.normal(0, 1, (n, k))
    logits_train[np.arange(n), labels_train] += 8.0  # members: confidently correct
    logits_test = rng.normal(0, 1, (n, k))            # non-members: random
    res = attacks.membership_inference(logits_train, labels_train, logits_test, labels_test)
    assert set(res) == {"THRESHOLD_ATTACK", "LOGISTIC_REGRESSION"}
    assert res["THRESHOLD_ATTACK"]["auc"] > 0.9 and res["THRESHOLD_ATTACK"]["attacker_advantage"] > 0.7
    assert res["THRESHOLD_ATTACK"]["epsilon_lower_bound"] > 0
    same = attacks.membership_inference(logits_test, labels_test, logits_test[::-1], labels_test[::-1])
    assert same["THRESHOLD_ATTACK"]["auc"] < 0.6
