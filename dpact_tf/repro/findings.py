"""What the book found, in the words a reader needs first: built from the claims table
(:func:`dpact_tf.repro.claims.claims_table`), itself read from the recorded metrics -- nothing typed by hand.

* :func:`findings_markdown` -- the intro's opening: one line per claim with its verdict, grouped by verdict;
* :func:`verdict_table` -- the discussion's table with short cells (figure, claim, ours, verdict);
* :func:`reasons_html` -- the reasoning behind each verdict (why and the rule), one collapsible block per claim.
"""
from __future__ import annotations

import html
from typing import Any, Dict, List, Mapping, Sequence

__all__ = ["findings_markdown", "verdict_table", "reasons_html", "short_claim"]

Row = Mapping[str, Any]


def short_claim(text: str, limit: int = 90) -> str:
    """The claim's first clause, at most ``limit`` characters (whole words, with an ellipsis when cut)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + " …"


def findings_markdown(rows: Sequence[Row], *, profile: str, dataset: str) -> str:
    """The intro's summary: how many of the paper's claims each verdict got, and one bullet per claim."""
    if not rows:
        raise ValueError("no claims: run the chapters first")
    bullets = ["* **{}** — {}: *{}*".format(r["in the paper"], short_claim(r["paper's claim"]), r["verdict"])
               for r in rows]
    synthetic = (" **These results come from SYNTHETIC data, not LFW.**" if dataset == "synthetic" else "")
    return (f"What this build of the book found (profile `{profile}`, dataset `{dataset}`), claim by claim; the "
            f"discussion chapter gives the numbers and the reasons.{synthetic}\n\n" + "\n".join(bullets))


def verdict_table(rows: Sequence[Row]) -> List[Dict[str, str]]:
    """The claims table with short cells: the figure, the claim (shortened), our number and the verdict."""
    return [{"in the paper": r["in the paper"], "claim": short_claim(r["paper's claim"]), "ours": r["ours"],
             "verdict": r["verdict"]} for r in rows]


def reasons_html(rows: Sequence[Row]) -> str:
    """One ``<details>`` block per claim: its whole wording, why it got its verdict, and the rule that decides."""
    blocks = []
    for r in rows:
        why = r.get("why") or "—"
        blocks.append(
            "<details><summary><b>{fig}</b>: {verdict}</summary>"
            "<p><i>Claim:</i> {claim}</p><p><i>Why:</i> {why}</p><p><i>Rule:</i> {rule}</p></details>".format(
                fig=html.escape(r["in the paper"]), verdict=html.escape(r["verdict"]),
                claim=html.escape(r["paper's claim"]), why=html.escape(why), rule=html.escape(r["rule"])))
    return "\n".join(blocks)
