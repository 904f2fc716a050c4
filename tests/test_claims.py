"""Every claim of the discussion table flips its verdict when its number crosses its named threshold."""
import pytest

from dpact_tf.repro import claims as c


def _hist(eps, test_acc):
    return {"epsilon": eps, "history": {"test_accuracy": list(test_acc)}}


def test_not_run_is_never_a_pass():
    for _, fn in c.CLAIMS:
        row = fn(None)
        assert row["ours"] == c.NOT_RUN or fn in (c.claim_per_coordinate,), row
        assert row["verdict"] not in ("reproduced", c.WITHIN_BOUNDS, c.PARTLY, c.REPRODUCED_WEAK_PUBLIC_MODEL)


def test_fig2_threshold_and_monotonicity():
    def act(ssims):
        return {"table": [{"epsilon": e, "ssim": s} for e, s in zip((1.0, 5.0, 20.0), ssims)]}
    below = c.FIG2_MAX_SSIM_AT_SMALLEST_EPS - 0.01
    assert c.claim_fig2(act([below, 0.5, 0.8]))["verdict"] == "reproduced"
    # the map fades with epsilon, but at epsilon 5 it is below "well preserved": only partly the paper's claim
    faded = c.claim_fig2(act([below, c.FIG2_PRESERVED_SSIM - 0.01, 0.8]))
    assert faded["verdict"] == c.PARTLY and "not 'well preserved'" in faded["why"]
    # without epsilon 5 in the sweep, the nearest epsilon (in ratio) stands for it: 3 rather than 10
    sweep = {"table": [{"epsilon": e, "ssim": s} for e, s in ((1.0, 0.05), (3.0, 0.1), (10.0, 0.9))]}
    assert "ε = 3 the SSIM is 0.10" in c.claim_fig2(sweep)["why"]
    assert c.claim_fig2(act([below + 0.02, 0.5, 0.8]))["verdict"] == "not reproduced"
    assert c.claim_fig2(act([below, 0.5, 0.5 - c.FIG2_MONOTONE_SLACK - 0.01]))["verdict"] == "not reproduced"
    assert c.claim_fig2(act([below, 0.5, 0.5 - c.FIG2_MONOTONE_SLACK + 0.01]))["verdict"] == "reproduced"
    assert f"{c.FIG2_MAX_SSIM_AT_SMALLEST_EPS:g}" in c.claim_fig2(None)["rule"]


@pytest.mark.parametrize("delta, verdict", [(-0.001, "reproduced"), (0.001, "not reproduced")])
def test_fig3_gap(delta, verdict):
    base = 0.5
    sc = {"majority_class_test_accuracy": 0.1,
          "histories": [_hist(None, [base]), _hist(20.0, [base - c.FIG3_GAP_AT_EPS20 - delta]), _hist(1.0, [0.1])]}
    assert c.claim_fig3(sc)["verdict"] == verdict


def test_fig3_low_eps_must_be_worse_and_missing_runs():
    sc = {"majority_class_test_accuracy": 0.1,
          "histories": [_hist(None, [0.5]), _hist(20.0, [0.5]), _hist(1.0, [0.5])]}
    assert c.claim_fig3(sc)["verdict"] == "not reproduced"
    sc["histories"] = sc["histories"][:2]
    assert c.claim_fig3(sc)["verdict"] == c.NOT_MEASURED


@pytest.mark.parametrize("delta, verdict", [(-0.001, "reproduced"), (0.001, "not reproduced")])
def test_fig4_eps3(delta, verdict):
    base = 0.4
    early = base - c.FIG4_TOLERANCE - delta
    ft = {"histories": [_hist(None, [0.1, base]), _hist(3.0, [0.0, early, 0.0, 0.0, 0.0, 0.99])]}
    assert c.claim_fig4_eps3(ft)["verdict"] == verdict  # epoch 6 (0.99) does not count


@pytest.mark.parametrize("delta, verdict", [(-0.001, "reproduced"), (0.001, "not reproduced")])
def test_fig4_low_eps(delta, verdict):
    chance = 0.1
    ft = {"majority_class_test_accuracy": chance,
          "histories": [_hist(None, [0.5]), _hist(1.0, [chance + c.FIG4_FAIL_MARGIN + delta]), _hist(3.0, [0.9])]}
    assert c.claim_fig4_low_eps(ft)["verdict"] == verdict


def test_fig4_low_eps_under_the_stand_in_carries_its_caveat():
    chance = 0.1
    ft = {"majority_class_test_accuracy": chance, "pretrain": {"source": "stand-in", "people": 1522},
          "histories": [_hist(None, [0.2]), _hist(1.0, [chance]), _hist(3.0, [chance])]}
    row = c.claim_fig4_low_eps(ft)
    assert row["verdict"] == c.REPRODUCED_WEAK_PUBLIC_MODEL and "stand-in" in row["why"]


def _mobile(**litert):
    lite = {"batch_load_s": 0.1, "forward_s": 0.1, "backward_s_per_sample": 0.1, "memory_mb": 100.0, **litert}
    return {"paper_nexus6p": {"load_s": 0.4, "forward_s": 0.6, "backward_s_per_sample": 0.2, "memory_mb": 500.0},
            "hardware": {"cpu": "test cpu"}, "configs": [{"label": "paper", "litert": lite}]}


def test_cost_bounds_flip_and_missing_is_not_measured():
    assert c.claim_cost(_mobile())["verdict"].startswith("within")
    for key, bound in (("batch_load_s", 0.4), ("forward_s", 0.6), ("backward_s_per_sample", 0.2), ("memory_mb", 500.0)):
        assert c.claim_cost(_mobile(**{key: bound * 0.99}))["verdict"].startswith("within")
        assert c.claim_cost(_mobile(**{key: bound * 1.01}))["verdict"].startswith("outside")
    row = c.claim_cost(_mobile(backward_s_per_sample=None))
    assert row["verdict"].startswith(c.NOT_MEASURED) and "backward not measured" in row["ours"]
    no_paper = _mobile()
    no_paper["configs"][0]["label"] = "small"
    assert c.claim_cost(no_paper)["verdict"] == c.NOT_MEASURED


def _attacks(margins, advantages):
    """Attack metrics with the given decoder-margin lower bounds and membership-advantage lower bounds per epsilon."""
    rows = [{"epsilon": e, "decoder_margin": m + 0.01, "decoder_margin_lo": m, "decoder_margin_hi": m + 0.02,
             "mia_tpr_lower": 0.5, "mia_fpr_upper": 0.5 - a, "mia_epsilon_lower": 0.0, "mia_advantage_lower": a,
             "mia_heldout": 100} for e, m, a in zip((None, 1.0, 3.0), margins, advantages)]
    return {"rows": rows, "n_faces": 128, "n_candidates": 200}


@pytest.mark.parametrize("margins, verdict", [
    ((0.1, -0.01, 0.0), "no better than a guess"),          # an interval touching 0 is not a success
    ((0.1, -0.01, 0.001), "the attack succeeds at ε ∈ {3}"),
    ((0.1, 0.2, 0.3), "the attack succeeds at every ε"),
    ((0.0, 0.2, 0.3), "inconclusive"),                     # fails without noise: the test could not fail
])
def test_reconstruction_rule_reads_the_interval(margins, verdict):
    assert c.claim_reconstruction(_attacks(margins, (0.5, 0.0, 0.0)))["verdict"].startswith(verdict)


@pytest.mark.parametrize("advantages, verdict", [
    ((0.9, 0.0, -0.1), "no membership shown"),
    ((0.9, 0.0, 0.05), "the attack succeeds at ε ∈ {3}"),
    ((-0.05, 0.2, 0.3), "inconclusive"),
])
def test_membership_rule_reads_the_heldout_bound(advantages, verdict):
    assert c.claim_membership(_attacks((0.1, 0.1, 0.1), advantages))["verdict"].startswith(verdict)


def test_per_image_claim_separates_the_composition_cases():
    from dpact_tf import accounting
    rows = accounting.accounting_table([1.0], activation_shape=(32, 32, 8), epochs=3, finetune_epochs=2,
                                       n_train=20, n_test=4, batch_size=8)
    row = c.claim_per_image({"tables": {"tiny 32×32×8": rows}})
    assert "conv1 frozen" in row["ours"] and "conv1 trained" in row["ours"] and "2 releases" in row["ours"]
    assert f"{3 * 24 - 7:,} releases" in row["ours"] and "clear" in row["rule"]


def test_rules_state_the_thresholds_they_apply():
    assert f"{c.FIG3_GAP_AT_EPS20 * 100:g} points" in c.claim_fig3(None)["rule"]
    assert f"{c.FIG4_TOLERANCE * 100:g} points" in c.claim_fig4_eps3(None)["rule"]
    assert f"{c.FIG4_FAIL_MARGIN * 100:g} points" in c.claim_fig4_low_eps(None)["rule"]
    assert f"{c.ATTACK_CONFIDENCE:.0%}" in c.claim_reconstruction(None)["rule"]
    assert f"{c.ATTACK_CONFIDENCE:.0%}" in c.claim_membership(None)["rule"]


# --- why (not) reproduced ------------------------------------------------------------------------------------
def _conv(base_best, rel3, rel5, rel10=None):
    rows = [{"epsilon": None, "final_test_accuracy": base_best, "retained_gain": 1.0, "epochs_trained": 30,
             "stopped_early": True, "epochs_to_90%": 20}]
    for e, r in ((3.0, rel3), (5.0, rel5), (10.0, rel10)):
        if r is not None:
            rows.append({"epsilon": e, "final_test_accuracy": r * base_best, "retained_gain": r,
                         "epochs_trained": 40, "stopped_early": False, "epochs_to_90%": None})
    return {"rows": rows, "baseline_final": base_best, "max_epochs": 40, "reach_fractions": [0.5, 0.9],
            "majority_class_test_accuracy": 0.1}


def _ladder(pred3, pred5, half=0.1):
    return {"trends": {k: {"slope_per_decade": 0.1, "prediction": p, "lower": p - half, "upper": p + half,
                           "level": 0.9} for k, p in (("3", pred3), ("5", pred5))}}


def _sweep(base=0.4, hi=0.2, lo=0.1):
    return {"majority_class_test_accuracy": 0.1,
            "histories": [_hist(None, [base]), _hist(20.0, [hi]), _hist(1.0, [lo])]}


def test_fig3_budget_artefact_flips_at_the_gap():
    base = 0.6
    gap = c.FIG3_GAP_AT_EPS20
    within = _conv(base, 0.5, 0.6, rel10=(base - gap + 0.001) / base)
    outside = _conv(base, 0.5, 0.6, rel10=(base - gap - 0.001) / base)
    assert c.claim_fig3(_sweep(), within, None)["verdict"] == c.BUDGET_ARTEFACT
    assert c.claim_fig3(_sweep(), outside, None)["verdict"] == "not reproduced"
    assert "convergence" in c.claim_fig3(_sweep(), outside, None)["why"]


def test_fig3_eps20_uses_the_ladder_but_is_never_contradicted_by_noisier_runs():
    base = 0.6
    required = 1 - c.FIG3_GAP_AT_EPS20 / (base - _sweep()["majority_class_test_accuracy"])
    conv = _conv(base, 0.3, 0.4, rel10=0.5)
    assert c.claim_fig3(_sweep(), conv, _ladder(0.5, required + 0.101))["verdict"] == c.CONSISTENT
    assert c.claim_fig3(_sweep(), conv, _ladder(0.5, required + 0.001))["verdict"] == c.INCONCLUSIVE_REACHING
    row = c.claim_fig3(_sweep(), conv, _ladder(0.5, required - 0.3))
    assert row["verdict"] == c.INCONCLUSIVE and "scale ladder" in row["why"]
    assert c.claim_fig3(_sweep(base=0.2, hi=0.2 - c.FIG3_GAP_AT_EPS20 + 0.001), conv,
                        _ladder(0.1, 0.1))["verdict"] == "reproduced"


@pytest.mark.parametrize("delta, verdict", [(0.001, "reproduced"), (-0.001, "not reproduced")])
def test_fig3_mid_threshold(delta, verdict):
    t = c.FIG3_TRAINS_WELL_RELATIVE
    assert c.claim_fig3_mid(_conv(0.5, t + delta, 0.95))["verdict"] == verdict
    assert c.claim_fig3_mid(_conv(0.5, 0.95, t + delta))["verdict"] == verdict


def test_fig3_mid_ladder_consistent_contradicted_inconclusive():
    t = c.FIG3_TRAINS_WELL_RELATIVE
    conv = {**_conv(0.5, 0.3, 0.4), "baseline_converged": True, "baseline_epochs": 30}

    def ladder(p3, p5, half=0.1, epochs=30):
        return {**_ladder(p3, p5, half), "max_epochs": epochs}

    assert c.claim_fig3_mid(conv, ladder(t + 0.11, t + 0.2))["verdict"] == c.CONSISTENT
    # the predictions reach the bar but an interval's lower end does not: consistent, not decided
    assert c.claim_fig3_mid(conv, ladder(t + 0.09, t + 0.2))["verdict"] == c.INCONCLUSIVE_REACHING
    assert c.claim_fig3_mid(conv, ladder(t + 0.01, t + 0.2))["verdict"] == c.INCONCLUSIVE_REACHING
    at_the_bar = ladder(t + 0.3, t + 0.3)
    at_the_bar["trends"]["3"]["lower"] = t  # an interval's lower end exactly at the bar decides
    assert c.claim_fig3_mid(conv, at_the_bar)["verdict"] == c.CONSISTENT
    # an epsilon of the claim that the ladder did not run cannot be consistent
    only5 = ladder(t + 0.3, t + 0.3)
    del only5["trends"]["3"]
    row = c.claim_fig3_mid(conv, only5)
    assert row["verdict"] == c.INCONCLUSIVE and "ε=3: not on the ladder" in row["why"]
    # the ladder's part of the reasons, apart for the intro's side-by-side
    assert row["ladder"].startswith("scale ladder (") and row["why"].endswith(row["ladder"])
    assert c.claim_fig3_mid(_conv(0.5, 0.95, 0.95))["ladder"] == ""  # reproduced without the ladder
    # a prediction above 1 is the line's, and says so
    assert "above 1, the straight line's value" in c.claim_fig3_mid(conv, ladder(1.2, 1.3))["why"]
    assert "above 1" not in c.claim_fig3_mid(conv, ladder(0.95, 0.99))["why"]
    assert c.claim_fig3_mid(conv, ladder(t - 0.11, t + 0.2, half=0.1))["verdict"] == c.CONTRADICTED
    assert c.claim_fig3_mid(conv, ladder(t - 0.09, t + 0.2, half=0.1))["verdict"] == c.INCONCLUSIVE
    # a ladder shorter than the baseline's convergence, or an unconverged baseline, cannot contradict
    assert c.claim_fig3_mid(conv, ladder(t - 0.11, t + 0.2, epochs=29))["verdict"] == c.INCONCLUSIVE
    unconverged = {**conv, "baseline_converged": False}
    assert c.claim_fig3_mid(unconverged, ladder(t - 0.11, t + 0.2))["verdict"] == c.INCONCLUSIVE
    no_interval = _ladder(t - 0.3, t - 0.3)
    for tr in no_interval["trends"].values():
        tr["lower"] = tr["upper"] = None
    assert c.claim_fig3_mid(conv, no_interval)["verdict"] == c.INCONCLUSIVE
    for tr in no_interval["trends"].values():
        tr["prediction"] = t + 0.3
    assert c.claim_fig3_mid(conv, no_interval)["verdict"] == c.INCONCLUSIVE_REACHING  # no interval decides nothing
    floor = {"trends": {}, "no_trend": {"3": "at chance at every size (3 runs)", "5": "at chance at every size (3 runs)"},
             "max_epochs": 30}
    row = c.claim_fig3_mid(conv, floor)
    assert row["verdict"] == c.INCONCLUSIVE and "at chance at every size" in row["why"] and "0.00" not in row["why"]
    assert c.claim_fig3_mid(conv, None)["verdict"] == "not reproduced"
    missing = _conv(0.5, 0.3, None)
    assert c.claim_fig3_mid(missing, None)["verdict"] == c.NOT_MEASURED


def test_fig4_why_names_the_public_model():
    ft = {"histories": [_hist(None, [0.1, 0.5]), _hist(3.0, [0.0] * 6)],
          "pretrain": {"source": "lfw", "people": 1522, "final_heldout_accuracy": 0.2}}
    row = c.claim_fig4_eps3(ft)
    assert row["verdict"] == c.WEAK_PUBLIC_MODEL and "1522" in row["why"]
    ft["pretrain"] = {"source": "vggface", "weights_sha256": "ab" * 32}
    assert c.claim_fig4_eps3(ft)["verdict"] == "not reproduced"


def test_every_row_has_a_why_column():
    for _, fn in c.CLAIMS:
        assert "why" in fn(None)


def _identity(named, null=(0.0, 0.0, 0.0), guess=1 / 128, fallback=None):
    """Attack metrics with the decoder's and the null decoder's identification rates per epsilon (none, 1, 3)."""
    rows = [{"epsilon": e, "decoder_identity": d, "null_decoder_identity": z}
            for e, d, z in zip((None, 1.0, 3.0), named, null)]
    return {"rows": rows, "n_faces": 128, "baselines": {"grey": {"identity": guess}, "mean_face": {"identity": guess}},
            "oracle": {"ceiling": 0.95, "test_accuracy": 0.97, "fallback": fallback}}


@pytest.mark.parametrize("named, verdict", [
    # 6 of 128: lower bound 0.017, above a fixed guess's 1 of 128 but not the null decoder's 0 of 128 (upper 0.028)
    ((0.9, 0.047, 0.352), "the attack succeeds at ε ∈ {3}"),
    ((0.9, 0.1, 0.352), "the attack succeeds at every ε"),
    ((0.9, 0.02, 0.03), "no better than a guess"),
    ((0.9, 0.5, 0.6), "the attack succeeds at every ε"),
    ((0.02, 0.5, 0.6), "inconclusive"),                         # the oracle names no reconstruction without noise
])
def test_identity_rule_compares_exact_bounds(named, verdict):
    assert c.claim_identity(_identity(named))["verdict"].startswith(verdict)


def test_identity_rule_bounds_against_the_best_guess_and_says_a_fallback():
    # a null decoder that names 30 % makes 35 % no leak; with the guesses at 1 of 128 it is one
    assert c.claim_identity(_identity((0.9, 0.02, 0.35), null=(0.3, 0.3, 0.3)))["verdict"].startswith("no better")
    # the null decoder's share is an estimate (bounded above), a fixed guess's a fixed share
    assert c.claim_identity(_identity((0.9, 0.02, 0.10), null=(0.0, 0.0, 0.04)))["verdict"].startswith("no better")
    assert c.claim_identity(_identity((0.9, 0.02, 0.10), guess=0.04))["verdict"].startswith("the attack succeeds")
    no_base = _identity((0.9, 0.5, 0.6))
    no_base["rows"] = no_base["rows"][1:]
    assert c.claim_identity(no_base)["verdict"].startswith("inconclusive: no run without noise")
    # the same for every attack rule: without a run without noise, nothing shows the attack could succeed
    no_base = _attacks((0.1, 0.2, 0.3), (0.5, 0.1, 0.1))
    no_base["rows"] = no_base["rows"][1:]
    for claim in (c.claim_reconstruction, c.claim_membership):
        assert claim(no_base)["verdict"].startswith("inconclusive: no run without noise")
    lo, hi = c._rate_bounds(0.35, 128)
    assert lo < 0.35 < hi and hi - lo < 0.2
    row = c.claim_identity(_identity((0.9, 0.02, 0.35), fallback="dlib's face ResNet was not found"))
    assert "dlib's face ResNet was not found" in row["ours"] and "95%" in row["ours"] and "a fixed guess 1%" in row["ours"]
    assert c.claim_identity(None)["verdict"] == c.NOT_RUN_VERDICT
    assert f"{c.ATTACK_CONFIDENCE:.0%}" in c.claim_identity(None)["rule"]
