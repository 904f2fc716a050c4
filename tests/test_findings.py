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
