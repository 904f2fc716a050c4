"""The attacks chapter's scale study: the server's membership test at larger activations."""
import math

import numpy as np
import pytest

from dpact_tf import accounting
from dpact_tf.repro import attack_scale
from dpact_tf.repro.profiles import get_profile


def test_points_grow_towards_the_paper_and_the_noise_multiplier_falls():
    small, medium = get_profile("small"), get_profile("medium")
    assert small.attack_scale_points[0] == (small.image_size, 8)  # the chapter's own activation first
    assert set(small.attack_scale_points) < set(medium.attack_scale_points)
    # medium reaches the paper's 64 channels at 128x128 (224x224x64 holds more than 24 GiB at once); paper runs 224
    assert (128, 64) in medium.attack_scale_points and (224, 64) in get_profile("paper").attack_scale_points
    for name in ("tiny", "small", "medium", "paper"):
        points = get_profile(name).attack_scale_points
        assert len(points) >= 2
        z = [accounting.image_noise_multiplier(1.0, 1e-5, (s, s, c)) for s, c in points]
        assert all(a > b for a, b in zip(z, z[1:])), (name, z)  # listed from the smallest activation up
    with pytest.raises(ValueError, match="multiple of 32"):
        import dataclasses
        dataclasses.replace(small, attack_scale_points=((48, 8),))


def test_separation_by_hand():
    # means 2 and 1, variances (ddof 1) 2 and 2: d' = 1 / sqrt(2)
    assert attack_scale.separation([1.0, 3.0], [0.0, 2.0]) == pytest.approx(1 / math.sqrt(2))
    assert attack_scale.separation([1.0, 1.0], [0.0, 0.0]) == math.inf
    assert attack_scale.separation([0.0, 0.0], [0.0, 0.0]) == 0.0
    # an impossible release (-inf) counts as the lowest finite score: [1, 3] vs [0, 0]: gap 2, spread 1
    assert attack_scale.separation([1.0, 3.0], [-np.inf, 0.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2"):
        attack_scale.separation([1.0], [0.0, 1.0])


def _images(n, side, seed):
    return np.random.default_rng(seed).uniform(size=(n, side, side, 3)).astype(np.float32)


def test_known_conv1_is_seeded_and_scaled_on_public_images():
    import tensorflow as tf

    public = _images(16, 32, 0)
    a = attack_scale.known_conv1_client(32, 4, public, seed=3)
    b = attack_scale.known_conv1_client(32, 4, public, seed=3)
    x = _images(2, 32, 1)
    np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))
    conv = a.get_layer("conv1_1")
    pre = tf.nn.conv2d(public, conv.kernel, 1, "SAME") + conv.bias
    # data-dependent scale: every channel's pre-activation has mean 0 and std 1 on the public images
    np.testing.assert_allclose(tf.reduce_mean(pre, [0, 1, 2]).numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(tf.math.reduce_std(pre, [0, 1, 2]).numpy(), 1.0, rtol=1e-4)
    kernel = [np.zeros((3, 3, 3, 4), np.float32), np.full(4, 0.5, np.float32)]
    fixed = attack_scale.known_conv1_client(32, 4, public, kernel=kernel)
    # conv1 = 0.5 everywhere; Eq. (1) over a window of 3 channels at the border, 5 inside: 0.5 / sqrt(2 + n / 4)
    out = fixed.predict(x, verbose=0)
    np.testing.assert_allclose(out[0, 0, 0], 0.5 / np.sqrt(2 + np.array([3, 4, 4, 3]) * 0.25), rtol=1e-5)
    with pytest.raises(ValueError, match="needs"):
        attack_scale.known_conv1_client(32, 8, public, kernel=kernel)


def test_membership_is_certain_at_a_large_activation_and_grows_with_size():
    members, outsiders = _images(16, 64, 0), _images(16, 64, 1)
    big = attack_scale.membership_at_point(attack_scale.known_conv1_client(64, 32, members, seed=0), members,
                                           outsiders, epsilon=3.0, releases=4, noise_seed=1)
    assert big["shape"] == [64, 64, 32] and big["coordinates"] == 64 * 64 * 32
    assert big["noise_multiplier"] == accounting.image_noise_multiplier(3.0, 1e-5, (64, 64, 32))
    # 131,072 coordinates at epsilon 3, 4 copies each: every member's own releases are far likelier
    assert big["mia_auc"] == 1.0 and big["mia_tpr"] == 1.0 and big["mia_fpr"] == 0.0
    assert big["mia_advantage_lower"] > 0 and big["mia_epsilon_lower"] > 0
    small_m, small_o = members[:, :32, :32], outsiders[:, :32, :32]
    little = attack_scale.membership_at_point(attack_scale.known_conv1_client(32, 2, small_m, seed=0), small_m,
                                              small_o, epsilon=3.0, releases=4, noise_seed=1)
    assert little["noise_multiplier"] > 5 * big["noise_multiplier"]
    assert little["separation"] < big["separation"]
    with pytest.raises(ValueError, match="noisy releases"):
        attack_scale.membership_at_point(None, members, outsiders, epsilon=None, releases=4)


def _row(shape, eps, sep, auc=0.9, conv1="known", adv=0.2):
    return {"conv1": conv1, "shape": list(shape), "epsilon": eps, "separation": sep, "mia_auc": auc,
            "noise_multiplier": accounting.image_noise_multiplier(eps, 1e-5, shape), "mia_heldout": 50,
            "mia_confidence": 0.95, "mia_delta": 1e-5, "mia_advantage_lower": adv, "mia_tpr_lower": 0.8,
            "mia_fpr_upper": 0.1, "mia_epsilon_lower": 1.2, "seconds": 1.0, "coordinates": math.prod(shape)}


def _study(rows):
    return attack_scale.ScaleStudy(rows=rows, faces=100, releases=10, seconds=96.0, points=[[64, 8], [64, 64]])


def test_summary_reads_the_growth_and_the_control():
    rows = [_row((64, 64, 8), 1.0, 1.5, 0.8, adv=-0.1), _row((64, 64, 64), 1.0, 4.0, 1.0),
            _row((64, 64, 8), 3.0, 6.0, 1.0), _row((64, 64, 64), 3.0, 16.0, 1.0),
            _row((64, 64, 8), 1.0, 2.0, 0.85, conv1="public")]
    text = attack_scale.scale_summary(_study(rows))
    assert "AUC is 0.80 and 1.00" in text and "from 1.5 to 4.0 standard deviations" in text
    assert "95% Clopper–Pearson bounds" in text and "it does at 0 of the 4 settings" in text and "easier here than in the chapter's" in text
    assert "advantage bound is above 0 at 64×64×64." in text
    assert "the untrained conv1 is the weaker" in text
    assert "Every step up in size raised the separation" in text and "12× the coordinates" in text
    assert "understate the leakage at the paper's size" in text and "1.6 minutes" in text
    rows[3]["separation"] = 5.0  # epsilon 3 shrinks with size
    rows[4]["separation"] = 1.0  # the public conv1 separates less than the known one: 1.5 / 1.0
    text = attack_scale.scale_summary(_study(rows))
    assert "did not grow at every step" in text and "understate the leakage" not in text
    assert "1.5× as far as the trained one" in text and "may overstate" in text
    rows[4]["separation"] = 1.4  # 1.5 / 1.4 = 1.07: within 10 %
    assert "within 10 % of each other" in attack_scale.scale_summary(_study(rows))
    table = attack_scale.scale_table(_study(rows))
    assert len(table) == 5 and table[0]["activation"] == "64×64×8" and table[1]["separation"] == "4.0"


def test_study_is_cached_and_recorded(tmp_path, monkeypatch):
    from dpact_tf import build_split_vggface, membership
    from dpact_tf.repro.results import load_metrics

    class PublicModel:  # the public model's run, as membership_at_scale uses it
        class spec:
            @staticmethod
            def key():
                return "public"

        @staticmethod
        def load_split(epsilon=None):
            return build_split_vggface((32, 32, 3), 4, width=1 / 8, fc_units=8)

    kwargs = dict(profile="tiny", dataset="synthetic", results_dir=str(tmp_path), epsilons=[None, 3.0, 20.0],
                  public_model=PublicModel(), progress=False)
    study = attack_scale.membership_at_scale(**kwargs)
    # tiny: 32x32x8 (known and the public model's 8-channel conv1) and 32x32x32, at the two noisy epsilons
    assert [(r["shape"], r["conv1"], r["epsilon"]) for r in study.rows] == [
        ([32, 32, 8], "known", 3.0), ([32, 32, 8], "known", 20.0), ([32, 32, 8], "public", 3.0),
        ([32, 32, 8], "public", 20.0), ([32, 32, 32], "known", 3.0), ([32, 32, 32], "known", 20.0)]
    assert study.faces == 24 and study.releases == 4 and study.seconds > 0
    assert load_metrics(str(tmp_path), "tiny", "synthetic", "attack_scale")["rows"] == study.rows

    def boom(*args, **kwargs):
        raise AssertionError("the scale study ran again although cached")
    monkeypatch.setattr(membership, "server_membership_scores", boom)
    assert attack_scale.membership_at_scale(**kwargs).rows == study.rows
