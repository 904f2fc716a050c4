"""The attacks chapter's prose and table: built from the study's numbers (no figure, no training)."""
import math

import pytest

from dpact_tf import accounting
from dpact_tf.repro import attack_study


def _row(eps, margin_lo, advantage_lo, decoder=0.5):
    row = {"epsilon": eps, "best_guess": "mean_face", "decoder_margin": margin_lo + 0.02,
           "decoder_margin_lo": margin_lo, "decoder_margin_hi": margin_lo + 0.04, "server_classifier_accuracy": 0.2,
           "decoder_identity": 0.25, "inversion_avg_identity": 0.1, "null_decoder_identity": 0.0}
    for name, value in (("decoder_ssim", decoder), ("null_decoder_ssim", 0.35), ("inversion_ssim", 0.1),
                        ("inversion_avg_ssim", 0.2)):
        row.update({name: value, f"{name}_lo": value - 0.01, f"{name}_hi": value + 0.01})
    row.update({"mia_tpr": 0.9, "mia_fpr": 0.1, "mia_tpr_lower": 0.8, "mia_fpr_upper": 0.8 - advantage_lo,
                "mia_advantage_lower": advantage_lo, "mia_epsilon_lower": 1.5, "mia_heldout": 100,
                "mia_confidence": 0.95, "mia_delta": 1e-5, "mia_auc": 0.9, "mia_threshold": 0.0})
    return row


def _study():
    base = {"ssim": 0.38, "ssim_lo": 0.37, "ssim_hi": 0.39, "identity": 0.0}
    return attack_study.AttackStudy(
        rows=[_row(None, 0.4, 0.9, decoder=0.9), _row(1.0, -0.01, -0.1), _row(20.0, 0.3, 0.5, decoder=0.8)],
        baselines={"grey": {**base, "ssim": 0.21}, "mean_face": base},
        oracle={"description": "an oracle", "test_accuracy": 0.6, "ceiling": 0.5},
        scale=attack_study.scale_note("small"), releases_averaged=10, people=158, n_faces=128, n_candidates=200,
        public_images=3318, majority_class_test_accuracy=0.124)


def test_summary_reads_the_intervals_and_the_ceiling():
    text = attack_study.attack_summary(_study())
    # only epsilon 20's margin interval is above 0; only epsilon 20's advantage bound is
    assert "interval above 0 at ε ∈ {20}" in text and "advantage bound is above 0 at ε ∈ {20}" in text
    none = _study()
    none.rows[2].update(decoder_margin_lo=-0.01, mia_advantage_lower=0.0)
    assert "interval above 0 at no ε attacked" in attack_study.attack_summary(none)
    # identity as a share of the oracle's ceiling: 0.25 / 0.5
    assert "names 50% of the true faces" in text and "50% of that ceiling" in text
    assert "12.4%" in text and "0.90 [0.89, 0.91] without noise" in text


def test_scale_note_is_the_accounting_ratio():
    sc = attack_study.scale_note("small")
    assert sc["profile"]["shape"] == [64, 64, 8] and sc["paper"]["shape"] == [224, 224, 64]
    expected = (accounting.image_noise_multiplier(1.0, 1e-5, (64, 64, 8))
                / accounting.image_noise_multiplier(1.0, 1e-5, (224, 224, 64)))
    assert sc["ratio"] == pytest.approx(expected) and 5 < sc["ratio"] < 20
    assert f"{sc['ratio']:.0f}× smaller" in attack_study.attack_summary(_study())


def test_table_is_short_and_per_epsilon():
    table = attack_study.attack_table(_study())
    assert [r["ε"] for r in table] == ["no noise", "1", "20"]
    assert len(table[0]) <= 7 and all(len(k) <= 20 for k in table[0])
    assert table[2]["decoder SSIM"] == "0.80 [0.79, 0.81]" and table[2]["named (of ceiling)"] == "50%"


def test_metrics_leave_the_figures_out():
    study = _study()
    study.figures = {"fig-attacks": object()}
    assert "figures" not in study.metrics() and study.metrics()["n_faces"] == 128
    assert study.row(20.0)["decoder_ssim"] == 0.8 and not math.isnan(study.scale["ratio"])
