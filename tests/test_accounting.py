import math

import pytest

from dpact_tf import accounting, privacy


def test_paper_composition_bound_hand_value():
    # eps=1, delta'=1e-5, pq=9: sqrt(2*9*ln(1e5)) = sqrt(18*11.512925) = 14.395...; 9*(e-1) = 15.464...
    out = accounting.paper_composition_bound(1.0, 1e-5, positions=9, delta_prime=1e-5)
    assert out["epsilon"] == pytest.approx(math.sqrt(18 * math.log(1e5)) + 9 * (math.e - 1), rel=1e-12)
    assert out["epsilon"] == pytest.approx(29.8605, abs=1e-3)
    assert out["delta"] == pytest.approx(9e-5 + 1e-5)


def test_image_noise_multiplier():
    # paper bound: sigma(eps=1, delta=1e-5) = 4.844805; d = 224*224*64 -> sqrt(d) = 1792; S_f cancels
    z = accounting.image_noise_multiplier(1.0, 1e-5, (224, 224, 64), bound="paper")
    assert z == pytest.approx(4.844805 / 1792, rel=1e-6)
    # tight: per-pixel Delta^2 = 97/6 attained (0110 vs 1001 patterns), so Delta_2 = sqrt(50176 * 97/6) = 900.6
    z_lower = accounting.image_noise_multiplier(1.0, 1e-5, (224, 224, 64), bound="lower")
    assert z_lower == pytest.approx(4.844805 / math.sqrt(2) / math.sqrt(224 * 224 * 97 / 6), rel=1e-6)
    z_upper = accounting.image_noise_multiplier(1.0, 1e-5, (224, 224, 64))
    assert z_upper < z_lower < 1.41 * z  # the paper's implicit bound over-states Delta_2 by sqrt(32 / 16.17) = 1.407


def test_paper_size_per_image_epsilon_bracket():
    # one release at 224x224x64, per-coordinate eps = 1, is eps ~ 35.7k-41.0k, not 69,982
    lo = accounting.image_epsilon(accounting.image_noise_multiplier(1.0, 1e-5, (224, 224, 64), bound="lower"), 1e-5)
    hi = accounting.image_epsilon(accounting.image_noise_multiplier(1.0, 1e-5, (224, 224, 64)), 1e-5)
    old = accounting.image_epsilon(accounting.image_noise_multiplier(1.0, 1e-5, (224, 224, 64), bound="paper"), 1e-5)
    assert 35_000 < lo <= hi < 36_000 and old == pytest.approx(69_982, abs=5)


def test_single_coordinate_is_the_paper_guarantee_for_small_eps():
    # one coordinate (1x1x1) with the classic sigma at eps = 0.5 is at least as private as claimed
    z = accounting.image_noise_multiplier(0.5, 1e-5, (1, 1, 1))
    assert accounting.image_epsilon(z, 1e-5) <= 0.5


@pytest.mark.parametrize("z,releases", [(0.5, 1), (0.5, 10), (0.0267, 30), (0.00134, 1)])
def test_accountants_bracket(z, releases):
    exact = accounting.image_epsilon(z, 1e-5, releases=releases)
    p = accounting.image_epsilon(z, 1e-5, releases=releases, accountant="pld")
    r = accounting.image_epsilon(z, 1e-5, releases=releases, accountant="rdp")
    assert exact <= p * (1 + 1e-6) and p <= r
    assert p == pytest.approx(exact, rel=5e-3)
    assert r < 1.2 * exact


def test_pld_skipped_for_huge_epsilon():
    z = accounting.image_noise_multiplier(20.0, 1e-5, (224, 224, 64))
    assert accounting.image_epsilon(z, 1e-5, accountant="pld") is None
    assert accounting.image_epsilon(z, 1e-5) > accounting.PLD_MAX_EPSILON


def test_golden_values():
    # composition of Gaussians is exact: 10 releases at z=0.5 == one release at z=0.5/sqrt(10)
    assert accounting.image_epsilon(0.5, 1e-5, releases=10) == pytest.approx(
        privacy.epsilon_for_sigma(0.5 / math.sqrt(10), 1e-5, method="analytic"))
    assert accounting.image_epsilon(0.5, 1e-5, releases=10) == pytest.approx(46.2112, abs=1e-3)


def test_table_rows():
    rows = accounting.accounting_table([None, 1.0, 20.0], activation_shape=(64, 64, 8), epochs=15, n_train=100,
                                       n_test=10, batch_size=64)
    assert [r["epsilon_per_coordinate"] for r in rows] == [1.0, 20.0]
    for r in rows:
        assert r["epsilon_per_coordinate"] < r["image_epsilon_lower"] <= r["image_epsilon_exact"]
        assert r["image_epsilon_exact"] < r["image_epsilon_paper_bound"]
        assert r["frozen_releases"] == 15 and r["trained_releases"] == 15 * 110 - 63
        assert r["trained_epsilon_exact"] > r["frozen_epsilon_exact"] > r["image_epsilon_exact"]
    assert rows[0]["pld_note"] == "" and rows[0]["trained_epsilon_pld"] is not None
    paper = accounting.accounting_table([20.0], activation_shape=(224, 224, 64), epochs=30, n_train=3890,
                                        n_test=434, batch_size=64)[0]
    assert paper["trained_epsilon_pld"] is None and paper["pld_note"] == accounting.PLD_SKIPPED
    assert paper["trained_epsilon_rdp"] >= paper["trained_epsilon_exact"]


def test_release_count_hand_values():
    # paper size: 3,890 train / 434 test images, 30 epochs, one evaluation per epoch, batch 64
    frozen = accounting.release_count(train_conv1=False, n_train=3890, n_test=434, epochs=30, batch_size=64)
    assert frozen == {"train_image": 30, "test_image": 30, "per_image": 30, "total": 129_720, "evaluations": 30}
    trained = accounting.release_count(train_conv1=True, n_train=3890, n_test=434, epochs=30, batch_size=64)
    # 30 * 3890 = 116,700 training releases + 30 * 434 = 13,020 test releases, minus the 63 others of batch 1
    assert trained["train_image"] == 116_700 + 13_020 - 63 and trained["test_image"] == 30
    with pytest.raises(ValueError, match="n_train"):
        accounting.release_count(train_conv1=True, n_train=0, n_test=1, epochs=1)


def _instrumented_run(train_conv1: bool):
    """A tiny SplitTrainer run that logs every image released and the client weights it was released with."""
    import numpy as np
    import tensorflow as tf

    from dpact_tf import SplitTrainer, TrainingConfig, build_split_vggface
    from dpact_tf.data import make_dataset

    tf.keras.utils.set_random_seed(0)
    split = build_split_vggface((32, 32, 3), 3, width=1 / 8, fc_units=8, epsilon=5.0, noise_seed=1)
    n_train, n_test, batch, epochs = 10, 6, 4, 2
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_train + n_test, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n_train + n_test) * 10  # the image's id
    labels = rng.integers(0, 3, n_train + n_test)
    train = make_dataset(images[:n_train], labels[:n_train], batch_size=batch, shuffle=True, seed=0)
    test = make_dataset(images[n_train:], labels[n_train:], batch_size=batch)
    trainer = SplitTrainer(split, TrainingConfig(train_client=train_conv1), total_steps=epochs * 3)
    log = []  # (image id, client-weights version, is a training step)
    version = {"v": 0}

    def ident(x):
        return [int(round(float(v) * 255)) for v in np.asarray(x)[:, 0, 0, 0]]  # images differ in pixel (0, 0, 0)

    def wrap(name, training):
        # the trainer's compiled protocol step (client forward -> server step -> client backward) and its
        # evaluation step (client release -> server predict): every call releases each image of the batch once
        original = getattr(trainer, name)

        def counted(images, *rest):
            weights = np.concatenate([w.numpy().ravel() for w in split.client.trainable_weights])
            if log and not np.array_equal(weights, version.get("w", weights)):
                version["v"] += 1
            version["w"] = weights
            log.extend((i, version["v"], training) for i in ident(images))
            return original(images, *rest)
        setattr(trainer, name, counted)

    wrap("_step", True)
    wrap("_evaluate", False)
    trainer.fit(train, epochs, validation_data=test)
    ids = sorted({i for i, _, _ in log})
    dp = split.dp_layer
    return log, ids, (n_train, n_test, batch, epochs), int(dp.noise_counter.numpy()), images


@pytest.mark.parametrize("train_conv1", [False, True])
def test_release_count_matches_a_tiny_run(train_conv1):
    # Count, for every image, the releases that depend on it: its own, plus (when conv1 changes) every release
    # made with weights updated after its first training step.  Compare with release_count's prediction.
    log, ids, (n_train, n_test, batch, epochs), calls, images = _instrumented_run(train_conv1)
    assert len(log) == epochs * (n_train + n_test)  # every image, once per epoch and once per evaluation
    assert calls == epochs * (math.ceil(n_train / batch) + math.ceil(n_test / batch))  # DPActivation's counter
    versions = {v for _, v, _ in log}
    assert (len(versions) > 1) == train_conv1  # the client's weights change only when conv1 is trained
    counts = {}
    for i in ids:
        own = [k for k, (j, _, _) in enumerate(log) if j == i]
        first_train = next((k for k in own if log[k][2]), None)
        later = set()
        if first_train is not None:
            later = {k for k, (_, v, _) in enumerate(log) if v > log[first_train][1]}
        counts[i] = len(set(own) | later)
    train_ids = {int(v) for v in images[:n_train, 0, 0, 0]}
    want = accounting.release_count(train_conv1=train_conv1, n_train=n_train, n_test=n_test, epochs=epochs,
                                    batch_size=batch)
    assert max(c for i, c in counts.items() if i in train_ids) == want["train_image"]
    assert max(c for i, c in counts.items() if i not in train_ids) == want["test_image"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="releases"):
        accounting.image_epsilon(0.5, 1e-5, releases=0)
    with pytest.raises(ValueError, match="accountant"):
        accounting.image_epsilon(0.5, 1e-5, accountant="moments")
    with pytest.raises(ValueError, match="positions"):
        accounting.paper_composition_bound(1.0, 1e-5, positions=0)


def test_the_papers_bound_under_its_three_readings():
    # p q = H W = 224 * 224 = 50,176 at paper size: eps' = sqrt(2 * 50176 * ln 1e5) + 50176 (e - 1) ~ 87,300
    readings = accounting.composition_readings((224, 224, 64))
    assert readings == {"map": 50176, "kernel": 9, "kernel_inputs": 576}
    k = readings["map"]
    expected = math.sqrt(2 * k * math.log(1e5)) + k * (math.e - 1)
    assert accounting.paper_composition_bound(1.0, 1e-5, positions=k)["epsilon"] == pytest.approx(expected)
    assert 87_000 < expected < 87_500
    row = accounting.accounting_table([1.0], activation_shape=(224, 224, 64), epochs=1, n_train=10, n_test=2,
                                      batch_size=2)[0]
    assert row["paper_composition_epsilon_map"] == pytest.approx(expected)
    assert row["paper_composition_epsilon_kernel_inputs"] == pytest.approx(
        math.sqrt(2 * 576 * math.log(1e5)) + 576 * (math.e - 1))
