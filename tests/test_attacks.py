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


def _smooth_images(n, seed, size=32):
    rng = np.random.default_rng(seed)
    return tf.image.resize(rng.uniform(size=(n, 4, 4, 3)).astype(np.float32), (size, size)).numpy()


def test_averaging_attacker_beats_single_copy():
    # A training face is released E times (frozen conv1): the mean has noise / sqrt(E).  Both the inversion and
    # the decoder must reconstruct better from the mean of E = 16 releases than from one.
    tf.keras.utils.set_random_seed(0)
    noisy = build_split_vggface((32, 32, 3), 2, width=1 / 4, fc_units=8, epsilon=2.0, noise_seed=1)
    attacker = build_split_vggface((32, 32, 3), 2, width=1 / 4, fc_units=8, epsilon=2.0, noise_seed=2)
    attacker.client.set_weights(noisy.client.get_weights())
    x = _smooth_images(8, 1)
    public = _smooth_images(256, 2)
    one = noisy.client.predict(x, verbose=0)
    mean = attacks.average_releases(noisy.client, x, 16)
    clean = noisy.clean_client().predict(x, verbose=0)
    # the average's noise std is the single release's / 4 (4,096 coordinates per image: tolerance ~ 10 %)
    ratio = np.std(mean - clean) / np.std(one - clean)
    assert ratio == pytest.approx(0.25, rel=0.1)
    psnr = lambda rec: attacks.image_similarity(rec, x)["psnr"]  # noqa: E731
    inv_one = attacks.invert(noisy.clean_client(), one, steps=150)
    inv_mean = attacks.invert(noisy.clean_client(), mean, steps=150)
    assert psnr(inv_mean) > psnr(inv_one) + 1.0
    dec_one = attacks.decode(attacks.train_decoder(attacker.client, public, epochs=3, seed=0), one)
    dec_mean = attacks.decode(attacks.train_decoder(attacker.client, public, epochs=3, seed=0, releases=16), mean)
    assert psnr(dec_mean) > psnr(dec_one) + 0.5


def test_trivial_baselines_hand_values():
    faces = np.full((3, 16, 16, 3), 0.25, np.float32)  # SSIM needs >= 11 x 11
    public = np.stack([np.full((16, 16, 3), v, np.float32) for v in (0.0, 0.5)])  # mean face: 0.25 everywhere
    base = attacks.trivial_baselines(faces, public)
    # grey: MSE = 0.25^2 -> PSNR = 10 log10(1 / 0.0625) = 12.04 dB
    assert base["grey"]["psnr"] == pytest.approx(10 * np.log10(1 / 0.0625), abs=1e-3)
    assert base["mean_face"]["ssim"] == pytest.approx(1.0) and base["mean_face"]["psnr"] > 60
    np.testing.assert_allclose(base["mean_face"]["image"], 0.25)
    with pytest.raises(ValueError, match="size"):
        attacks.trivial_baselines(faces, np.zeros((2, 4, 4, 3), np.float32))


def test_embedding_is_trained_on_noisy_activations():
    tf.keras.utils.set_random_seed(0)
    split = build_split_vggface((32, 32, 3), 2, width=1 / 8, fc_units=8, epsilon=3.0, noise_seed=3)
    base = tf.keras.Sequential([tf.keras.Input(split.activation_shape), tf.keras.layers.Flatten(),
                                tf.keras.layers.Dense(4)])
    before = [w.copy() for w in base.get_weights()]
    images, labels = _smooth_images(40, 4), np.arange(40) % 4
    out = attacks.train_embedding(split.client, base, images, labels, epochs=2, batch_size=16, releases=3)
    assert out is base and not np.allclose(before[0], base.get_weights()[0])
    # every batch is released (noisily) `releases` times: 2 epochs x 3 batches x 3 releases
    assert int(split.dp_layer.noise_counter.numpy()) == 2 * 3 * 3


def test_membership_inference_is_seeded():
    rng = np.random.default_rng(3)
    n, k = 200, 4
    lt, le = rng.integers(0, k, n), rng.integers(0, k, n)
    xt, xe = rng.normal(0, 1, (n, k)), rng.normal(0, 1, (n, k))
    xt[np.arange(n), lt] += 1.0
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    first = attacks.membership_inference(xt, lt, xe, le, seed=5)
    assert np.random.random() == expected  # the caller's global NumPy stream is untouched
    # a second call, the global NumPy stream moved on in between, gives identical results
    second = attacks.membership_inference(xt, lt, xe, le, seed=5)
    assert first == second


def test_mean_release_client_has_the_averaged_noise():
    # one output of the simulated client ~ the mean of E releases: noise std s / sqrt(E); 4,096 coordinates x 4
    # images: the sample std is within ~1 % (std of a sample std ~ s / sqrt(2n)); a 5 % tolerance
    tf.keras.utils.set_random_seed(0)
    split = build_split_vggface((32, 32, 3), 2, width=1 / 4, fc_units=8, epsilon=2.0, noise_seed=1)
    x = _smooth_images(4, 5)
    clean = split.clean_client()
    sim = attacks.mean_release_client(clean, split.dp_layer.stddev, 9)
    err = sim.predict(x, verbose=0) - clean.predict(x, verbose=0)
    assert np.std(err) == pytest.approx(split.dp_layer.stddev / 3, rel=0.05)
    assert attacks.mean_release_client(clean, 0.0, 9) is clean
    with pytest.raises(ValueError, match="releases"):
        attacks.mean_release_client(clean, 1.0, 0)


def test_the_attacks_chapter_runs_the_profiles_attack_epsilons():
    from dpact_tf.repro.privacy_studies import attack_epsilons, attack_scope
    from dpact_tf.repro.profiles import DEFAULT_EPSILONS

    small = attack_epsilons("small")
    assert None in small and set(small) < set(DEFAULT_EPSILONS)   # a subset of the sweep, with the baseline
    assert attack_epsilons("paper") == list(DEFAULT_EPSILONS)    # paper attacks the whole sweep
    assert attack_epsilons("small", [None, 2]) == [None, 2.0]   # given epsilons win (make book EPSILONS=...)
    left = [e for e in DEFAULT_EPSILONS if e not in small]
    text = attack_scope("small")
    assert all(f"{e:g}" in text.split("left out")[0] for e in left) and "`paper`" in text
    assert "left out" not in attack_scope("paper") and "left out" not in attack_scope("small", [None, 2])


def test_the_attack_study_attacks_the_profiles_epsilons_by_default(monkeypatch):
    from dpact_tf.repro import attack_study
    from dpact_tf.repro.profiles import DEFAULT_EPSILONS, get_profile

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    seen = []
    real = attack_study.attack_epsilons
    monkeypatch.setattr(attack_study, "attack_epsilons", lambda *a: seen.append(real(*a)) or seen[-1])
    monkeypatch.setattr(attack_study, "load_faces", stop)  # stops before any work, once the epsilons are resolved
    with pytest.raises(Stop):
        attack_study.attack_study(profile="small", dataset="synthetic", progress=False)
    assert seen == [list(get_profile("small").attack_epsilons)] and seen[0] != list(DEFAULT_EPSILONS)


def test_ssim_per_face_averages_to_the_mean_ssim():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(size=(2, 5, 16, 16, 3)).astype(np.float32)
    per_face = attacks.ssim_per_face(a, b)
    assert per_face.shape == (5,) and per_face.mean() == pytest.approx(attacks.image_similarity(a, b)["ssim"], abs=1e-6)
    assert attacks.ssim_per_face(b, b) == pytest.approx(np.ones(5))
