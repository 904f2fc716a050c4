"""The intro's findings and the discussion's short table are built from the claims rows, never typed."""
import pytest

from dpact_tf.repro import findings

ROWS = [{"in the paper": "Fig. 3", "paper's claim": "Training from scratch on DP activations approaches the no-noise "
         "accuracy for large ε and degrades as ε decreases", "ours": "0.41 vs 0.12", "verdict": "not reproduced",
         "rule": "acc(ε=20) ≥ acc(no noise) − 5 points", "why": "budget <and> scale"},
        {"in the paper": "Fig. 2", "paper's claim": "Images are well preserved at ε ≈ 5", "ours": "SSIM 0.04",
         "verdict": "partly reproduced", "rule": "SSIM ≥ 0.5", "why": ""}]


def test_short_claim_cuts_at_a_word_and_says_so():
    assert findings.short_claim("a b c", limit=10) == "a b c"
    cut = findings.short_claim(ROWS[0]["paper's claim"], limit=40)
    assert cut.endswith(" …") and len(cut) <= 42 and ROWS[0]["paper's claim"].startswith(cut[:-2])


def test_findings_name_every_claim_with_its_verdict():
    text = findings.findings_markdown(ROWS, profile="small", dataset="lfw")
    assert "*not reproduced*" in text and "*partly reproduced*" in text and "Fig. 2" in text
    assert "SYNTHETIC" not in text and "SYNTHETIC" in findings.findings_markdown(ROWS, profile="s", dataset="synthetic")
    with pytest.raises(ValueError):
        findings.findings_markdown([], profile="small", dataset="lfw")


def test_the_reasons_are_escaped_and_complete():
    html = findings.reasons_html(ROWS)
    assert html.count("<details>") == 2 and "budget &lt;and&gt; scale" in html and "<i>Why:</i> —" in html
    assert [r["claim"] for r in findings.verdict_table(ROWS)][1] == "Images are well preserved at ε ≈ 5"


def _fig(fig, claim, verdict, ours="0.3", ladder=""):
    return {"in the paper": fig, "paper's claim": claim, "ours": ours, "verdict": verdict, "rule": "r",
            "why": "budget; " + ladder, "ladder": ladder}


def test_the_profiles_are_set_side_by_side_only_where_they_differ():
    small = [_fig("Fig. 3", "trains well at ε 3-5", "not reproduced", ladder="scale ladder: no run at these ε"),
             _fig("Fig. 4", "fine-tuning at ε 3", "not reproduced with the stand-in"),
             _fig("Fig. 4 (setup)", "VGG-Face", "different setup"), _fig("Fig. 2", "images", "partly reproduced")]
    medium = [_fig("Fig. 3", "trains well at ε 3-5", "consistent", ours="0.32",
                   ladder="scale ladder (needs ≥ 0.80): ε=5: predicted 0.84"),
              _fig("Fig. 4", "fine-tuning at ε 3", "not reproduced with the stand-in"),
              _fig("Fig. 4 (setup)", "VGG-Face", "different setup"), _fig("Fig. 2", "images", "partly reproduced")]
    text = findings.profiles_markdown({"small": small, "medium": medium}, profile="medium")
    assert "* `small`: *not reproduced* — 0.3; scale ladder: no run at these ε" in text
    assert "* `medium`: *consistent* — 0.32; scale ladder (needs ≥ 0.80): ε=5: predicted 0.84" in text
    assert "fine-tuning at ε 3: *not reproduced with the stand-in* at both (0.3)" in text
    assert "Fig. 2" not in text and "setup" not in text  # Figs. 3 and 4's claims only
    # the same verdict and ladder but another number: both lines
    ours = [dict(small[0], verdict="consistent", ours="0.31", ladder=medium[0]["ladder"])] + small[1:]
    assert "* `small`: *consistent* — 0.31" in findings.profiles_markdown({"small": ours, "medium": medium},
                                                                          profile="small")
    # the same verdict and number but another ladder: both lines
    other = [dict(small[0], verdict="consistent", ours="0.32", ladder="scale ladder: ε=5: predicted 0.5")] + small[1:]
    assert "* `small`: *consistent* — 0.32; scale ladder: ε=5: predicted 0.5" in findings.profiles_markdown(
        {"small": other, "medium": medium}, profile="small")


def test_an_unrecorded_profile_is_named_not_invented():
    small = [_fig("Fig. 3", "trains well", "not reproduced")]
    not_run = [_fig("Fig. 3", "trains well", "—")]
    no_figure = not_run + [_fig("Sec. IV", "per coordinate", "holds per coordinate")]  # needs no run: not a record
    for medium in (None, [], not_run, no_figure):
        text = findings.profiles_markdown({"small": small, "medium": medium}, profile="small")
        assert "(`make book PROFILE=medium`) is not recorded in this results directory" in text
        assert "not reproduced" not in text
    partial = [_fig("Fig. 3", "trains well", "not reproduced"), _fig("Fig. 4", "fine-tuning", "—")]
    text = findings.profiles_markdown({"small": small + [_fig("Fig. 4", "fine-tuning", "reproduced")],
                                       "medium": partial}, profile="small")
    assert "* `medium`: not recorded" in text and "some of them recorded" in text and "both recorded" not in text
    # a claim not run at the profile itself is not recorded either
    own_not_run = findings.profiles_markdown({"small": [_fig("Fig. 3", "trains well", "—")],
                                              "medium": [_fig("Fig. 3", "trains well", "not reproduced")]},
                                             profile="small")
    assert "* `small`: not recorded" in own_not_run and "*not reproduced* at both" not in own_not_run
    with pytest.raises(ValueError, match="claims of the profile 'small' itself"):
        findings.profiles_markdown({"medium": partial}, profile="small")
    assert findings.profiles_markdown({"tiny": small}, profile="tiny") == ""
