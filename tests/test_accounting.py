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
    # sigma(eps=1, delta=1e-5) = 4.844805; d = 224*224*64 -> sqrt(d) = 1792
    z = accounting.image_noise_multiplier(1.0, 1e-5, (224, 224, 64))
    assert z == pytest.approx(4.844805 / 1792, rel=1e-6)


def test_single_coordinate_is_the_paper_guarantee_for_small_eps():
    # one coordinate (d = 1) with the classic sigma at eps = 0.5 is at least as private as claimed
    z = accounting.image_noise_multiplier(0.5, 1e-5, (1,))
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
    assert math.isnan(accounting.image_epsilon(z, 1e-5, accountant="pld"))
    assert accounting.image_epsilon(z, 1e-5) > accounting.PLD_MAX_EPSILON


def test_golden_values():
    # composition of Gaussians is exact: 10 releases at z=0.5 == one release at z=0.5/sqrt(10)
    assert accounting.image_epsilon(0.5, 1e-5, releases=10) == pytest.approx(
        privacy.epsilon_for_sigma(0.5 / math.sqrt(10), 1e-5, method="analytic"))
    assert accounting.image_epsilon(0.5, 1e-5, releases=10) == pytest.approx(46.2112, abs=1e-3)


def test_table_rows():
    rows = accounting.accounting_table([None, 1.0, 20.0], activation_shape=(64, 64, 8), epochs=15)
    assert [r["epsilon_per_coordinate"] for r in rows] == [1.0, 20.0]
    for r in rows:
        assert r["image_epsilon_exact"] > r["epsilon_per_coordinate"]
        assert r["run_epsilon_exact"] > r["image_epsilon_exact"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="releases"):
        accounting.image_epsilon(0.5, 1e-5, releases=0)
    with pytest.raises(ValueError, match="accountant"):
        accounting.image_epsilon(0.5, 1e-5, accountant="moments")
    with pytest.raises(ValueError, match="positions"):
        accounting.paper_composition_bound(1.0, 1e-5, positions=0)
