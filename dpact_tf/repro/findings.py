"""What the book found, in the words a reader needs first: built from the claims table
(:func:`dpact_tf.repro.claims.claims_table`), itself read from the recorded metrics -- nothing typed by hand.

* :func:`findings_markdown` -- the intro's opening: one line per claim with its verdict, grouped by verdict;
* :func:`verdict_table` -- the discussion's table with short cells (figure, claim, ours, verdict);
* :func:`reasons_html` -- the reasoning behind each verdict (why and the rule), one collapsible block per claim;
* :func:`profiles_markdown` -- Figs. 3 and 4 at ``small`` beside ``medium`` when both are recorded: what the larger
  budgets show that the default cannot.
"""
from __future__ import annotations

import html
from typing import Any, Dict, List, Mapping, Sequence

from dpact_tf.repro.claims import NOT_RUN_VERDICT

__all__ = ["findings_markdown", "verdict_table", "reasons_html", "short_claim", "profiles_markdown", "COMPARED"]

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


#: the CPU profiles the intro sets side by side (the larger one's budgets are what the smaller one cannot afford)
COMPARED = ("small", "medium")


def _figs_3_and_4(rows: Sequence[Row]) -> List[Row]:
    return [r for r in rows if r["in the paper"].startswith(("Fig. 3", "Fig. 4"))
            and not r["in the paper"].endswith("(setup)")]


def profiles_markdown(rows_by_profile: Mapping[str, Sequence[Row]], *, profile: str) -> str:
    """Figs. 3 and 4's verdicts at each profile of :data:`COMPARED` whose claims are recorded (``rows_by_profile``:
    profile -> :func:`~dpact_tf.repro.claims.claims_table`; a claim whose study was not run has the verdict "—"),
    one bullet per claim, once when both profiles agree (verdict, number and the scale ladder's reasons), else one
    line per profile; or, when the other profile has nothing recorded, how to run it (Markdown).  "" for a profile
    outside :data:`COMPARED`."""
    if profile not in COMPARED:
        return ""
    if profile not in rows_by_profile:
        raise ValueError(f"rows_by_profile has no claims of the profile {profile!r} itself "
                         f"(it has {sorted(rows_by_profile)}): pass claims_table(profile={profile!r}, ...) too")
    other = next(p for p in COMPARED if p != profile)
    if not any(r["verdict"] != NOT_RUN_VERDICT for r in _figs_3_and_4(rows_by_profile.get(other) or ())):
        return (f"The `{other}` profile (`make book PROFILE={other}`) is not recorded in this results directory; "
                "its verdicts for Figs. 3 and 4 would appear here beside these.")
    figs = _figs_3_and_4(rows_by_profile[profile])
    theirs = {(r["in the paper"], r["paper's claim"]): r for r in rows_by_profile[other]}
    lines, partial = [], False
    for r in figs:
        o = theirs.get((r["in the paper"], r["paper's claim"]))
        by = {profile: r, other: o if o and o["verdict"] != NOT_RUN_VERDICT else None}
        if r["verdict"] == NOT_RUN_VERDICT:
            by[profile] = None
        claim = short_claim(r["paper's claim"])
        head = f"* **{r['in the paper']}** — {claim}"
        o = by[other]
        if o and by[profile] and all(o.get(k, "") == r.get(k, "") for k in ("verdict", "ours", "ladder")):
            lines.append(f"{head}: *{r['verdict']}* at both ({r['ours']})")
            continue
        lines.append(head + ":")
        for p in COMPARED:
            row = by[p]
            if not row:
                lines.append(f"  * `{p}`: not recorded")
                partial = True
                continue
            ladder = row.get("ladder", "")
            lines.append(f"  * `{p}`: *{row['verdict']}* — {row['ours']}" + (f"; {ladder}" if ladder else ""))
    recorded = ("some of them recorded (a claim whose study has not run at a profile says so)" if partial
                else "both recorded")
    return (f"Figs. 3 and 4 at both CPU profiles, {recorded} in this results directory. `medium` trains the "
            "fidelity chapter's convergence runs and scale ladder longer and larger; Fig. 3's ε sweep and Fig. 4's "
            "fine-tuning keep `small`'s settings, so what differs below is what the longer, larger runs decide:\n\n"
            + "\n".join(lines))
