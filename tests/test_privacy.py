import math
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest

from dpact_tf import privacy


def test_classic_sigma_hand_value():
    # sigma = sqrt(2 ln(1.25 / 1e-5)) / 1 = sqrt(2 * ln(125000)) = sqrt(2 * 11.736069) = 4.844805
    assert privacy.gaussian_sigma(1.0, 1e-5) == pytest.approx(4.844805, abs=1e-6)
    # epsilon = 5 divides it by 5
    assert privacy.gaussian_sigma(5.0, 1e-5) == pytest.approx(4.844805 / 5, abs=1e-6)


def test_noise_std_is_sensitivity_times_sigma():
    assert privacy.PAPER_SENSITIVITY == pytest.approx(0.70710678)
    assert privacy.noise_std(1.0, 1e-5) == pytest.approx(4.844805 / math.sqrt(2), abs=1e-6)
    assert privacy.noise_std(2.0, 1e-5, sensitivity=0.5) == pytest.approx(0.5 * 4.844805 / 2, abs=1e-6)


def test_paper_sensitivity_bound_holds():
    # f_i = a_i / sqrt(2 + sum a_j^2) is maximal at a_i = 1 with neighbours 0: 1/sqrt(3) < 1/sqrt(2).
    assert 1 / math.sqrt(3) < privacy.PAPER_SENSITIVITY


@pytest.mark.parametrize("method", privacy.METHODS)
@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0, 3.0, 10.0, 20.0])
def test_round_trip(method, eps):
    std = privacy.noise_std(eps, 1e-5, method=method)
    back = privacy.epsilon_for_sigma(std, 1e-5, sensitivity=privacy.PAPER_SENSITIVITY, method=method)
    assert back == pytest.approx(eps, rel=1e-8)
    sigma = privacy.gaussian_sigma(eps, 1e-5, method=method)
    assert privacy.epsilon_for_sigma(sigma, 1e-5, method=method) == pytest.approx(eps, rel=1e-8)


@pytest.mark.parametrize("eps", [0.5, 1.0, 5.0, 20.0])
def test_analytic_sigma_matches_dp_accounting_pld(eps):
    # Independent check: the PLD of the Gaussian mechanism in dp_accounting has delta(eps) == 1e-5
    # at the analytic sigma (it is exact for a single Gaussian mechanism).
    sigma = privacy.gaussian_sigma(eps, 1e-5, method="analytic")
    pld = dp_accounting.pld.privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=sigma, sensitivity=1.0, value_discretization_interval=1e-3)
    assert pld.get_delta_for_epsilon(eps) == pytest.approx(1e-5, rel=1e-6)
    assert privacy.analytic_gaussian_delta(eps, sigma) == pytest.approx(1e-5, rel=1e-6)


@pytest.mark.parametrize("eps", [0.1, 0.5, 0.9])
def test_analytic_is_tighter_than_classic(eps):
    classic = privacy.gaussian_sigma(eps, 1e-5)
    analytic = privacy.gaussian_sigma(eps, 1e-5, method="analytic")
    assert analytic < classic
    # the classic sigma is (eps, delta)-DP where its proof holds (eps < 1): its exact delta is below 1e-5
    assert privacy.analytic_gaussian_delta(eps, classic) < 1e-5


@pytest.mark.parametrize("kwargs,match", [
    ({"epsilon": 0.0, "delta": 1e-5}, "epsilon must be > 0"),
    ({"epsilon": -1.0, "delta": 1e-5}, "epsilon must be > 0"),
    ({"epsilon": float("nan"), "delta": 1e-5}, "epsilon must be > 0"),
    ({"epsilon": float("inf"), "delta": 1e-5}, "epsilon=None for the no-noise"),
    ({"epsilon": None, "delta": 1e-5}, "no noise"),
    ({"epsilon": 1.0, "delta": 0.0}, "delta must be in"),
    ({"epsilon": 1.0, "delta": 1.0}, "delta must be in"),
    ({"epsilon": 1.0, "delta": 1e-5, "sensitivity": 0.0}, "sensitivity must be > 0"),
    ({"epsilon": 1.0, "delta": 1e-5, "method": "rdp"}, "method must be one of"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        privacy.noise_std(**kwargs)


def test_sigma_validation():
    with pytest.raises(ValueError, match="sigma must be > 0"):
        privacy.epsilon_for_sigma(0.0, 1e-5)


def test_no_tensorflow_import():
    code = "import sys, dpact_tf.privacy, dpact_tf.repro.profiles; assert 'tensorflow' not in sys.modules, 'tf imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lrn_output_bound_hand_values():
    # beta = 1/2: g(a) = a / sqrt(bias + alpha a^2) increases on [0, 1], so the bound is 1 / sqrt(bias + alpha)
    assert privacy.lrn_output_bound(bias=2.0, alpha=1.0, beta=0.5) == 1 / math.sqrt(3)
    assert privacy.PAPER_ACTIVATION_RANGE == 1 / math.sqrt(3) < privacy.PAPER_SENSITIVITY
    assert privacy.lrn_output_bound(bias=1.0, alpha=1.0, beta=0.5) == pytest.approx(1 / math.sqrt(2))
    # beta = 1, bias = 1, alpha = 10: g peaks inside [0, 1] at a* = sqrt(bias / (alpha (2 beta - 1))) = sqrt(0.1),
    # g(a*) = sqrt(0.1) / (1 + 1) = 0.1581139
    assert privacy.lrn_output_bound(bias=1.0, alpha=10.0, beta=1.0) == pytest.approx(math.sqrt(0.1) / 2, rel=1e-12)
    # alpha = 0: no normalization by neighbours, f = a / bias^beta <= 1 / bias^beta
    assert privacy.lrn_output_bound(bias=4.0, alpha=0.0, beta=2.0) == pytest.approx(1 / 16)


@pytest.mark.parametrize("bias,alpha,beta", [(2.0, 1.0, 0.75), (1.0, 10.0, 1.0), (0.5, 3.0, 0.3), (1.0, 2.0, 3.0)])
def test_lrn_output_bound_is_the_max_over_a_grid(bias, alpha, beta):
    a = np.linspace(0.0, 1.0, 200_001)
    brute = float(np.max(a / (bias + alpha * a ** 2) ** beta))
    bound = privacy.lrn_output_bound(bias=bias, alpha=alpha, beta=beta)
    assert brute <= bound <= brute * (1 + 1e-9)


@pytest.mark.parametrize("kwargs,match", [
    ({"bias": 0.0, "alpha": 1.0, "beta": 0.5}, "bias must be > 0"),
    ({"bias": 2.0, "alpha": -1.0, "beta": 0.5}, "alpha must be >= 0"),
    ({"bias": 2.0, "alpha": 1.0, "beta": float("nan")}, "beta must be >= 0"),
])
def test_lrn_output_bound_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        privacy.lrn_output_bound(**kwargs)


def test_classic_under_noises_above_its_valid_range():
    # The module docstring's numbers.  With the true range equal to the S in the formula the classic sigma is
    # (eps, 1e-5)-DP only up to eps ~ 8.42; at eps = 20 it achieves delta 1.5e-3, 150 times what was asked.
    limit = privacy.classic_valid_max_epsilon(1e-5, sensitivity=1.0)
    assert limit == pytest.approx(8.4198, abs=1e-3)
    assert privacy.classic_achieved_delta(20.0, 1e-5, sensitivity=1.0) == pytest.approx(1.5267e-3, rel=1e-3)
    # The limit is where the exact delta (Balle & Wang) of the classic sigma crosses 1e-5.
    sigma = privacy.gaussian_sigma(limit, 1e-5)
    assert privacy.analytic_gaussian_delta(limit, sigma) == pytest.approx(1e-5, rel=1e-6)
    assert privacy.analytic_gaussian_delta(limit * 0.999, privacy.gaussian_sigma(limit * 0.999, 1e-5)) < 1e-5
    assert privacy.analytic_gaussian_delta(limit * 1.001, privacy.gaussian_sigma(limit * 1.001, 1e-5)) > 1e-5
    # It depends on the ratio S / true range only.
    assert privacy.classic_valid_max_epsilon(1e-5, sensitivity=0.3) == pytest.approx(limit, rel=1e-9)


def test_classic_achieved_delta_grows_along_the_curve():
    # classic_valid_max_epsilon assumes the valid epsilons form an interval: check monotonicity on a grid.
    for ratio in (1.0, math.sqrt(1.5), 3.0):
        eps = np.geomspace(1e-3, 200, 400)
        d = [privacy.classic_achieved_delta(e, 1e-5, sensitivity=ratio, true_range=1.0) for e in eps]
        assert np.all(np.diff(d) >= 0)


@pytest.mark.parametrize("eps", [1, 2, 3, 5, 10, 14, 20])
def test_paper_sweep_is_valid_because_the_true_range_is_smaller(eps):
    # The paper's sweep at delta = 1e-5 with S_f = 1/sqrt(2): valid since the true range is 1/sqrt(3) < S_f.
    kwargs = {"sensitivity": privacy.PAPER_SENSITIVITY, "true_range": privacy.PAPER_ACTIVATION_RANGE}
    assert privacy.classic_valid_max_epsilon(1e-5, **kwargs) == pytest.approx(21.930, abs=1e-3)
    assert privacy.check_calibration(float(eps), 1e-5, method="classic", **kwargs) == eps
    assert privacy.classic_achieved_delta(float(eps), 1e-5, **kwargs) <= 1e-5


def test_check_calibration_refuses_under_noising():
    paper = {"sensitivity": privacy.PAPER_SENSITIVITY, "true_range": privacy.PAPER_ACTIVATION_RANGE}
    with pytest.raises(ValueError, match="valid only up to epsilon=21.93.*method='analytic'"):
        privacy.check_calibration(25.0, 1e-5, method="classic", **paper)
    assert privacy.check_calibration(25.0, 1e-5, method="analytic", **paper) == 25.0
    with pytest.raises(ValueError, match="valid only up to epsilon=8.42"):
        privacy.check_calibration(10.0, 1e-5, method="classic", sensitivity=0.5, true_range=0.5)
    with pytest.raises(ValueError, match=r"sensitivity=0.5 is below the true range 0.57735"):
        privacy.check_calibration(1.0, 1e-5, method="analytic", sensitivity=0.5,
                                  true_range=privacy.PAPER_ACTIVATION_RANGE)
    assert privacy.check_calibration(None, 1e-5, method="classic", **paper) is None


@pytest.mark.parametrize("eps,expected", [(None, None), (float("inf"), None), (1, 1.0), (privacy.MAX_EPSILON,
                                                                                        privacy.MAX_EPSILON)])
def test_release_epsilon_accepts(eps, expected):
    assert privacy.check_release_epsilon(eps) == expected


@pytest.mark.parametrize("eps,match", [
    (float("nan"), "NaN"), (0.0, "must be > 0"), (-1.0, "must be > 0"), (float("-inf"), "must be > 0"),
    (3.4e38, "above MAX_EPSILON"), (privacy.MAX_EPSILON * 1.001, "above MAX_EPSILON"), (True, "must be a number"),
    ("1", "must be a number"),
])
def test_release_epsilon_refuses(eps, match):
    with pytest.raises(ValueError, match=match):
        privacy.check_release_epsilon(eps)
