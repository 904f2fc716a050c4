"""The discussion chapter's table: each claim of the paper, our number, reproduced or not.

Every number is read from the metrics JSON the notebooks record (:func:`dpact_tf.repro.results.record_metrics`);
a study that has not been run shows as "not run", a quantity that was not measured as "not measured" -- never
as a pass.  Each claim is one small function ``claim_*(metrics) -> row`` whose verdict follows a rule written
with the named thresholds below; the rule text is built from the same constants, so the table cannot state a
rule other than the one applied.
"""
from __future__ import annotations

import math

from typing import Any, Dict, List, Mapping, Optional, Tuple

from dpact_tf.repro.results import load_metrics

__all__ = ["claims_table", "summary_text", "CLAIMS", "NOT_RUN", "NOT_RUN_VERDICT", "NOT_MEASURED",
           "FIG2_MAX_SSIM_AT_SMALLEST_EPS", "FIG2_MONOTONE_SLACK", "FIG2_PRESERVED_SSIM", "FIG2_PRESERVED_EPSILON", "FIG3_GAP_AT_EPS20", "FIG4_TOLERANCE",
           "FIG4_FAIL_MARGIN", "ATTACK_CONFIDENCE", "FIG3_TRAINS_WELL_RELATIVE", "CONSISTENT",
           "INCONCLUSIVE_REACHING", "INCONCLUSIVE", "CONTRADICTED", "BUDGET_ARTEFACT", "WEAK_PUBLIC_MODEL"]

Row = Dict[str, str]
NOT_RUN = "not run"
NOT_RUN_VERDICT = "—"  # the verdict of a claim whose study has not run
NOT_MEASURED = "not measured"

# Fig. 2: the SSIM between released and clean maps grows with epsilon (up to this slack between neighbours) ...
FIG2_MONOTONE_SLACK = 0.02
# ... and is below this at the smallest epsilon (the map has lost its content) ...
FIG2_MAX_SSIM_AT_SMALLEST_EPS = 0.2
# ... while at epsilon 5 the paper calls the images "well preserved": an SSIM of at least this.
FIG2_PRESERVED_SSIM = 0.5
FIG2_PRESERVED_EPSILON = 5.0
# Fig. 3: "approaches the baseline" = final test accuracy at epsilon 20 within this many (absolute) points.
FIG3_GAP_AT_EPS20 = 0.05
# Fig. 4: "reaches the baseline within 5 epochs" = best of epochs 1-5 at epsilon 3 >= baseline final - this.
FIG4_TOLERANCE = 0.02
# Fig. 4: "fails to converge" = final test accuracy <= the majority-class rate + this.
FIG4_FAIL_MARGIN = 0.05
# Attacks: the confidence of the reconstruction's bootstrap intervals and of the membership test's joint bounds.
ATTACK_CONFIDENCE = 0.95
# Fig. 3: "trains well" at epsilon 3-5 = the final test accuracy keeps at least this share of the no-noise run's gain
# over chance: (acc - chance) / (no-noise acc - chance) (dpact_tf.repro.fidelity.retained_gain).
FIG3_TRAINS_WELL_RELATIVE = 0.8

# Verdicts of a claim that does not reproduce here, by what the fidelity studies say about it.
BUDGET_ARTEFACT = "not reproduced in the sweep's epochs; reproduced with a converged budget"
CONSISTENT = "not reproduced at this scale; trend consistent with the paper"
INCONCLUSIVE_REACHING = ("not reproduced at this scale; trend inconclusive (its prediction reaches the claim but is "
                         "too uncertain to decide)")
INCONCLUSIVE = "not reproduced at this scale; trend inconclusive"
CONTRADICTED = "contradicted (the trend predicts it fails at the paper's size too)"
WEAK_PUBLIC_MODEL = "not reproduced with the stand-in public model (VGG-Face itself not tested)"
REPRODUCED_WEAK_PUBLIC_MODEL = "reproduced with the stand-in public model, under which ε = 3 fails too"
PARTLY = "partly reproduced"
WITHIN_BOUNDS = "within the bounds on a server CPU; not tested on a phone"


def _row(figure: str, claim: str, ours: str, verdict: str, rule: str, why: str = "", ladder: str = "") -> Row:
    """One claim: ``why`` its verdict, of which ``ladder`` is the scale ladder's part ("" when it has none)."""
    return {"in the paper": figure, "paper's claim": claim, "ours": ours, "verdict": verdict, "rule": rule,
            "why": why, "ladder": ladder}


def _ladder_outlook(ladder: Optional[Mapping[str, Any]], epsilons, required: float, *,
                    allow_contradiction: bool = True):
    """(verdict, text) from the scale ladder's predictions at the paper's size for ``epsilons`` (the ladder's
    largest when None) against the relative accuracy ``required``; (None, text) when the ladder was not run.
    Consistent (:data:`CONSISTENT`) when every prediction interval's lower end meets ``required``;
    :data:`INCONCLUSIVE_REACHING` when every prediction does but not every interval (or there is none);
    contradicted when an interval's upper end misses it; else inconclusive.  An epsilon of ``epsilons`` that the
    ladder did not run, or one without a trend (its runs at chance at every size but one), leaves the verdict
    inconclusive."""
    if not ladder or not (ladder.get("trends") or ladder.get("no_trend")):
        return None, "scale ladder: not run"
    trends, no_trend = ladder.get("trends", {}), ladder.get("no_trend", {})
    known = {**{k: None for k in no_trend}, **{k: None for k in trends}}
    keys = list(known) if epsilons is None else [f"{e:g}" for e in epsilons if f"{e:g}" in known]
    if epsilons is None:
        keys = [max(keys, key=float)]
    if not keys:
        return None, "scale ladder: no run at these ε"
    parts, consistent, decided, contradicted = [], True, True, False
    for k in ([] if epsilons is None else [f"{e:g}" for e in epsilons if f"{e:g}" not in known]):
        parts.append(f"ε={k}: not on the ladder")
        consistent = False
    for k in keys:
        if k not in trends:
            parts.append(f"ε={k}: no trend ({no_trend[k]})")
            consistent = False
            continue
        t = trends[k]
        interval = (f" ({round(100 * t['level'])}% interval {t['lower']:.2f}–{t['upper']:.2f})"
                    if t["lower"] is not None else " (no interval: fewer than 3 runs above chance)")
        above = (" — above 1, the straight line's value, not a share a noisy run can keep"
                 if t["prediction"] > 1 else "")
        parts.append(f"ε={k}: {t['slope_per_decade']:+.2f} per decade of coordinates, predicted "
                     f"{t['prediction']:.2f}{interval} at the paper's size{above}")
        consistent &= t["prediction"] >= required
        decided &= t["lower"] is not None and t["lower"] >= required
        contradicted |= t["upper"] is not None and t["upper"] < required
    text = f"scale ladder (share of the no-noise gain over chance kept, needs ≥ {required:.2f}): " + "; ".join(parts)
    if consistent:
        return (CONSISTENT if decided else INCONCLUSIVE_REACHING), text
    if contradicted and allow_contradiction:
        return CONTRADICTED, text
    if contradicted:
        text += " (ladder runs shorter than the baseline needed to converge cannot contradict: see the rule)"
    return INCONCLUSIVE, text


def _ladder_can_contradict(conv: Optional[Mapping[str, Any]], ladder: Optional[Mapping[str, Any]]) -> bool:
    """A ladder says "fails at the paper's size" only if its runs could be as long as the baseline needed to
    converge: at a shorter budget a noisy run may sit at chance only because it has not had the epochs."""
    if not conv or not ladder or not conv.get("baseline_converged"):
        return False
    return ladder.get("max_epochs", 0) >= conv.get("baseline_epochs", float("inf"))


def _convergence_text(conv: Mapping[str, Any]) -> str:
    base = next(r for r in conv["rows"] if r["epsilon"] is None)
    state = (f"stopped at epoch {base['epochs_trained']}" if base["stopped_early"]
             else f"still improving after {base['epochs_trained']} epochs")
    parts = [f"final {_eps(r['epsilon'])} {r['final_test_accuracy']:.3f}" for r in conv["rows"]
             if r["epsilon"] is not None]
    frac = max(conv["reach_fractions"])
    key = f"epochs_to_{round(frac * 100)}%"
    reach = ", ".join(f"{_eps(r['epsilon'])} {r[key] if r[key] is not None else 'never'}" for r in conv["rows"])
    return (f"convergence (budget {conv['max_epochs']} epochs, early stopping): baseline final "
            f"{base['final_test_accuracy']:.3f}, {state}; " + ", ".join(parts)
            + f"; epochs to {frac:.0%} of the baseline: {reach}")


def _final(histories: List[Dict[str, Any]], eps: Optional[float]) -> Optional[float]:
    for h in histories:
        if h["epsilon"] == eps:
            return h["history"]["test_accuracy"][-1]
    return None


def _eps(e: Optional[float]) -> str:
    return "no noise" if e is None else f"ε={e:g}"


def claim_fig2(act: Optional[Mapping[str, Any]]) -> Row:
    claim = (f"Activation images are well preserved at ε ≈ {FIG2_PRESERVED_EPSILON:g} and lose their content as ε "
             "decreases")
    rule = (f"SSIM to the clean map grows with ε (slack {FIG2_MONOTONE_SLACK:g}) and is < "
            f"{FIG2_MAX_SSIM_AT_SMALLEST_EPS:g} at the smallest ε (the loss); ≥ {FIG2_PRESERVED_SSIM:g} at "
            f"ε = {FIG2_PRESERVED_EPSILON:g} (well preserved)")
    if not act:
        return _row("Fig. 2", claim, NOT_RUN, NOT_RUN_VERDICT, rule)
    t = sorted(act["table"], key=lambda r: r["epsilon"])
    ssim = [r["ssim"] for r in t]
    increasing = all(b - a > -FIG2_MONOTONE_SLACK for a, b in zip(ssim, ssim[1:]))
    loses = increasing and ssim[0] < FIG2_MAX_SSIM_AT_SMALLEST_EPS
    # the sweep's epsilon nearest the paper's "well preserved" one (a small profile's sweep may skip 5)
    near = min(t, key=lambda r: abs(math.log(r["epsilon"] / FIG2_PRESERVED_EPSILON)))
    at = near["ssim"]
    ours = "SSIM to the clean map: " + ", ".join(f"ε={r['epsilon']:g}: {r['ssim']:.2f}" for r in t)
    preserved = at >= FIG2_PRESERVED_SSIM
    if loses and preserved:
        return _row("Fig. 2", claim, ours, "reproduced", rule)
    if loses:
        return _row("Fig. 2", claim, ours, PARTLY, rule,
                    f"the content fades with ε, but at ε = {near['epsilon']:g} the SSIM is {at:.2f}, not "
                    "'well preserved'")
    return _row("Fig. 2", claim, ours, "not reproduced", rule)


def claim_fig3(sc: Optional[Mapping[str, Any]], conv: Optional[Mapping[str, Any]] = None,
               ladder: Optional[Mapping[str, Any]] = None) -> Row:
    claim = ("Training from scratch on DP activations approaches the no-noise accuracy for large ε and degrades "
             "as ε decreases")
    rule = (f"acc(ε=20) ≥ acc(no noise) − {FIG3_GAP_AT_EPS20 * 100:g} points and acc(ε=1) < acc(ε=20) (final, the "
            f"sweep); if not: reproduced with a converged budget when the convergence study's largest ε is within "
            f"{FIG3_GAP_AT_EPS20 * 100:g} points of its baseline (best accuracies), else the scale ladder's largest ε "
            "decides: consistent (its prediction interval's lower end reaches the gap) or inconclusive")
    if not sc:
        return _row("Fig. 3", claim, NOT_RUN, NOT_RUN_VERDICT, rule)
    hs = sc["histories"]
    base, hi, lo = _final(hs, None), _final(hs, 20.0), _final(hs, 1.0)
    if None in (base, hi, lo):
        return _row("Fig. 3", claim, "the sweep did not include no noise, ε=1 and ε=20", NOT_MEASURED, rule)
    ours = (f"final test accuracy: no noise {base:.3f}, ε=20 {hi:.3f}, ε=1 {lo:.3f} "
            f"(majority class {sc['majority_class_test_accuracy']:.3f})")
    if hi >= base - FIG3_GAP_AT_EPS20 and lo < hi:
        return _row("Fig. 3", claim, ours, "reproduced", rule)
    if not lo < hi:
        return _row("Fig. 3", claim, ours, "not reproduced", rule, "ε=1 is not worse than ε=20 in the sweep")
    why = []
    if conv:
        why.append(_convergence_text(conv))
        noisy = [r for r in conv["rows"] if r["epsilon"] is not None]
        top = max(noisy, key=lambda r: r["epsilon"]) if noisy else None
        if top and top["final_test_accuracy"] >= conv["baseline_final"] - FIG3_GAP_AT_EPS20:
            return _row("Fig. 3", claim, ours, BUDGET_ARTEFACT, rule, "; ".join(why))
    base_final = conv["baseline_final"] if conv else base
    gain = base_final - sc["majority_class_test_accuracy"]
    verdict, text = _ladder_outlook(ladder, None, 1 - FIG3_GAP_AT_EPS20 / gain if gain > 0 else 1.0,
                                    allow_contradiction=False)  # the ladder's ε are noisier than 20
    why.append(text)
    return _row("Fig. 3", claim, ours, verdict or "not reproduced", rule, "; ".join(why), ladder=text)


def claim_fig3_mid(conv: Optional[Mapping[str, Any]], ladder: Optional[Mapping[str, Any]] = None) -> Row:
    claim = "With ε between 2 and 5 the network still trains well, with more epochs as the noise grows"
    rule = (f"convergence study: final test accuracy at ε=3 and ε=5 keeps ≥ {FIG3_TRAINS_WELL_RELATIVE:g} of the "
            "baseline's gain over chance; if not, the scale ladder's prediction at the paper's size (ε=3 and 5) decides: "
            f"consistent (every ε on the ladder, every prediction interval's lower end ≥ "
            f"{FIG3_TRAINS_WELL_RELATIVE:g}), contradicted (an interval's upper end below it) or inconclusive")
    if not conv:
        return _row("Fig. 3", claim, NOT_RUN, NOT_RUN_VERDICT, rule)
    rows = {r["epsilon"]: r for r in conv["rows"]}
    if None not in rows or 3.0 not in rows or 5.0 not in rows:
        return _row("Fig. 3", claim, "the convergence study did not include no noise, ε=3 and ε=5", NOT_MEASURED,
                    rule)
    rel = {e: rows[e]["retained_gain"] for e in (3.0, 5.0)}
    ours = (f"share of the baseline's gain over chance kept (baseline final {rows[None]['final_test_accuracy']:.3f}, "
            f"chance {conv['majority_class_test_accuracy']:.3f}): "
            + ", ".join(f"ε={e:g}: {v:.2f}" for e, v in rel.items()))
    if all(v >= FIG3_TRAINS_WELL_RELATIVE for v in rel.values()):
        return _row("Fig. 3", claim, ours, "reproduced", rule, "")
    verdict, text = _ladder_outlook(ladder, (3.0, 5.0), FIG3_TRAINS_WELL_RELATIVE,
                                    allow_contradiction=_ladder_can_contradict(conv, ladder))
    return _row("Fig. 3", claim, ours, verdict or "not reproduced", rule,
                _convergence_text(conv) + "; " + text, ladder=text)


def claim_fig4_eps3(ft: Optional[Mapping[str, Any]]) -> Row:
    claim = "Fine-tuning with ε = 3 reaches the baseline's accuracy within 5 epochs"
    rule = f"best test accuracy of epochs 1–5 at ε=3 ≥ baseline final − {FIG4_TOLERANCE * 100:g} points"
    if not ft:
        return _row("Fig. 4", claim, NOT_RUN, NOT_RUN_VERDICT, rule)
    base, e3 = _final(ft["histories"], None), next((h for h in ft["histories"] if h["epsilon"] == 3.0), None)
    if base is None or e3 is None:
        return _row("Fig. 4", claim, "the sweep did not include no noise and ε=3", NOT_MEASURED, rule)
    early = max(e3["history"]["test_accuracy"][:5])
    ours = f"baseline final {base:.3f}; ε=3 best of epochs 1–5 {early:.3f}"
    if early >= base - FIG4_TOLERANCE:
        return _row("Fig. 4", claim, ours, "reproduced", rule)
    verdict, why = _fig4_not_reproduced(ft)
    return _row("Fig. 4", claim, ours, verdict, rule, why)


def _fig4_not_reproduced(ft: Mapping[str, Any]):
    """(verdict, why) of a Fig. 4 claim that does not reproduce: whose public model was fine-tuned."""
    p = ft.get("pretrain") or {}
    if not p:
        return "not reproduced", ""
    if p.get("source") == "vggface":
        return "not reproduced", "fine-tuned from the real VGG-Face weights"
    acc = p.get("final_heldout_accuracy")
    return WEAK_PUBLIC_MODEL, (
        f"the public model is the offline stand-in ({p.get('people', '?')} disjoint LFW people"
        + (f", held-out accuracy {acc:.3f}" if acc is not None else "")
        + "), not VGG-Face trained on 2.6 M images: run the chapter with vggface_weights= to test the claim itself")


def claim_fig4_low_eps(ft: Optional[Mapping[str, Any]]) -> Row:
    claim = "Fine-tuning with ε ≤ 1 fails to converge"
    rule = f"final test accuracy ≤ majority-class rate + {FIG4_FAIL_MARGIN * 100:g} points for every ε ≤ 1"
    if not ft:
        return _row("Fig. 4", claim, NOT_RUN, NOT_RUN_VERDICT, rule)
    chance = ft["majority_class_test_accuracy"]
    finals = {h["epsilon"]: h["history"]["test_accuracy"][-1] for h in ft["histories"]
              if h["epsilon"] is not None and h["epsilon"] <= 1.0}
    if not finals:
        return _row("Fig. 4", claim, "the sweep had no ε ≤ 1", NOT_MEASURED, rule)
    ok = all(v <= chance + FIG4_FAIL_MARGIN for v in finals.values())
    vals = ", ".join(f"ε={e:g}: {v:.3f}" for e, v in sorted(finals.items()))
    ours = f"final test accuracy {vals} (majority class {chance:.3f})"
    if ok:
        if (ft.get("pretrain") or {}).get("source") not in (None, "vggface"):
            # A weak public model makes every noisy fine-tuning fail: ε = 3's row carries the same caveat.
            return _row("Fig. 4", claim, ours, REPRODUCED_WEAK_PUBLIC_MODEL, rule, _fig4_not_reproduced(ft)[1])
        return _row("Fig. 4", claim, ours, "reproduced", rule)
    verdict, why = _fig4_not_reproduced(ft)
    return _row("Fig. 4", claim, ours, verdict, rule, why)


def claim_fig4_setup(ft: Optional[Mapping[str, Any]]) -> Row:
    claim = "The public model is VGG-Face trained on 2.6 M images of 2,622 people"
    if not ft:
        return _row("Fig. 4 (setup)", claim, NOT_RUN, NOT_RUN_VERDICT, "")
    p = ft["pretrain"]
    if p.get("source") == "vggface":
        return _row("Fig. 4 (setup)", claim, f"the public VGG-Face weights (sha256 {p['weights_sha256'][:12]}…)",
                    "same setup", "the real weights were loaded")
    return _row("Fig. 4 (setup)", claim, f"offline stand-in: {p['people']} disjoint LFW people, {p['images']} images; "
                f"held-out accuracy {p['final_heldout_accuracy']:.3f}", "different setup",
                "no download here: a much weaker public model")


# (our key in the LiteRT results, name, unit, the paper's bound).  The paper's "load" is the batch load: 8 LFW
# images decoded and resized on the phone (the model's load is reported beside it, not bounded by the paper).
_COST_FIELDS = (("batch_load_s", "batch load", "s", "load_s"), ("forward_s", "forward", "s", "forward_s"),
                ("backward_s_per_sample", "backward", "s/sample", "backward_s_per_sample"),
                ("memory_mb", "memory", "MB", "memory_mb"))


def claim_cost(mob: Optional[Mapping[str, Any]]) -> Row:
    claim = "The client runs on a phone: batch of 8 loads < 0.4 s, forward < 0.6 s, backward < 0.2 s/sample, < 500 MB"
    rule = "every quantity measured for the paper-size head and below the paper's bound; a server CPU, not a phone"
    if not mob:
        return _row("Sec. VI (cost)", claim, NOT_RUN, NOT_RUN_VERDICT, rule)
    paper = mob["paper_nexus6p"]
    conf = next((c for c in mob["configs"] if c["label"] == "paper"), None)
    if conf is None:
        return _row("Sec. VI (cost)", claim, "the paper-size (224×224, full width) head was not measured",
                    NOT_MEASURED, rule)
    lite = conf["litert"]
    parts, missing, outside = [], [], []
    for key, name, unit, bound in _COST_FIELDS:
        value = lite.get(key)
        if value is None:
            missing.append(name)
            parts.append(f"{name} {NOT_MEASURED}")
            continue
        parts.append(f"{name} {value:.3g} {unit}")
        if not value < paper[bound]:
            outside.append(name)
    if outside:
        verdict = "outside the bounds (" + ", ".join(outside) + ") on a server CPU; not tested on a phone"
    elif missing:
        verdict = NOT_MEASURED + " (" + ", ".join(missing) + ")"
    else:
        verdict = WITHIN_BOUNDS
    if lite.get("model_load_s") is not None:
        parts.append(f"(model load {lite['model_load_s']:.3g} s, not a paper bound)")
    return _row("Sec. VI (cost)", claim, f"LiteRT, 224×224, {mob['hardware']['cpu']}: " + ", ".join(parts),
                verdict, rule)


def claim_per_coordinate(acc: Optional[Mapping[str, Any]]) -> Row:
    return _row("Sec. IV", "Each activation coordinate is (ε, δ)-DP (classic Gaussian mechanism)",
                "implemented as integers on a grid with discrete Gaussian noise of the paper's σ = √(2 ln(1.25/δ))/ε "
                "and S_f = 1/√2; clipping makes the sensitivity bound hold; δ computed as implemented",
                "holds per coordinate", "the formula, the sensitivity bound, the noise table and the sampler are "
                "tested")


def claim_per_image(acc: Optional[Mapping[str, Any]]) -> Row:
    claim = "The released activations protect the client's images"
    rule = ("per-image ε of the same noise: the analytic Gaussian mechanism with the proven per-pixel sensitivity "
            "bound (exact for that Gaussian model, an upper bound for the release), from the lower bound a pair of "
            "channel vectors attains (which a fixed conv1 may not reach from any image) to the upper bound; composed "
            "over an image's own releases (conv1 frozen) or over every release after its first use (conv1 trained); "
            "labels are sent in the clear")
    if not acc:
        return _row("Sec. IV", claim, NOT_RUN, NOT_RUN_VERDICT, rule)
    label, rows_acc = next(iter(acc["tables"].items()))
    lo = rows_acc[0]
    return _row("Sec. IV", claim, f"per image ({label}), per-coordinate ε = {lo['epsilon_per_coordinate']:g}: "
                f"ε = {lo['image_epsilon_lower']:,.0f}–{lo['image_epsilon_exact']:,.0f} for one release; "
                f"{lo['frozen_epsilon_exact']:,.0f} over {lo['frozen_releases']} releases (conv1 frozen); "
                f"{lo['trained_epsilon_exact']:,.3g} over {lo['trained_releases']:,} releases (conv1 trained)",
                "not as a DP guarantee", rule)


def _attack_rows(att: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The attack study's rows, noisy ones by epsilon, the run without noise last."""
    return sorted(att["rows"], key=lambda r: float("inf") if r["epsilon"] is None else r["epsilon"])


def _attack_verdict(rows, passed, *, what: str, none_ok: str) -> str:
    """The verdict of an attack rule over the noisy rows, refused when the attack fails without noise, or was not
    run without noise (a test that cannot detect the leak with nothing hidden cannot show that noise hides it)."""
    base = next((r for r in rows if r["epsilon"] is None), None)
    if base is None:
        return f"inconclusive: no run without noise shows that the attack can {what}"
    if not passed(base):
        return f"inconclusive: the attack does not {what} even without noise"
    noisy = sorted((r for r in rows if r["epsilon"] is not None), key=lambda r: r["epsilon"])
    hits = [r["epsilon"] for r in noisy if passed(r)]
    if not hits:
        return none_ok
    if len(hits) == len(noisy):
        return f"the attack succeeds at every ε attacked ({what})"
    return f"the attack succeeds at ε ∈ {{{', '.join(f'{e:g}' for e in hits)}}} ({what})"


def claim_reconstruction(att: Optional[Mapping[str, Any]]) -> Row:
    claim = "A curious server cannot reconstruct the images from the noisy activations"
    rule = (f"empirical, public conv1, a decoder on the mean of E releases: the reconstruction succeeds at ε when "
            f"the {ATTACK_CONFIDENCE:.0%} bootstrap interval of its SSIM margin (paired, over the faces) above the best "
            "guess that uses no release of the face (grey image, public mean face, the same decoder fed another "
            "face's releases) lies above 0; it must succeed without noise for the test to count")
    if not att:
        return _row("Sec. III", claim, NOT_RUN, NOT_RUN_VERDICT, rule)
    rows = _attack_rows(att)
    verdict = _attack_verdict(rows, lambda r: r["decoder_margin_lo"] > 0, what="beat every guess without the release",
                              none_ok="no better than a guess without the release at any ε")
    ours = (f"SSIM margin over the best guess without the release ({att['n_faces']} faces): "
            + ", ".join(f"{_eps(r['epsilon'])}: {r['decoder_margin']:+.2f} [{r['decoder_margin_lo']:+.2f}, "
                        f"{r['decoder_margin_hi']:+.2f}]" for r in rows))
    return _row("Sec. III", claim, ours, verdict, rule)


def _rate_bounds(rate: float, n: int) -> Tuple[float, float]:
    """One-sided Clopper--Pearson bounds on a share of ``n`` faces, each at 1 - (1 - ATTACK_CONFIDENCE) / 2 (so a
    lower and an upper bound hold jointly at ATTACK_CONFIDENCE)."""
    from dpact_tf.audit import clopper_pearson

    return clopper_pearson(int(round(rate * n)), n, confidence=1 - (1 - ATTACK_CONFIDENCE) / 2)


def claim_identity(att: Optional[Mapping[str, Any]]) -> Row:
    claim = "A curious server cannot tell who is in the images from the noisy activations"
    rule = ("empirical, public conv1, the decoder on the mean of E releases, judged by the evaluation oracle (a face "
            "model trained on the clean training split), per ε: identity leaks when the one-sided Clopper–Pearson "
            "lower bound on the share of reconstructions it names correctly lies above both the share a fixed guess "
            "without the release reaches (grey image, public mean face: the same image for every face) and the "
            "upper bound on the share of the same decoder fed another face's releases, jointly "
            f"{ATTACK_CONFIDENCE:.0%}; it must leak without noise for the test to count")
    if not att or "oracle" not in att:
        return _row("Sec. III", claim, NOT_RUN, NOT_RUN_VERDICT, rule)
    n = int(att["n_faces"])
    rows = _attack_rows(att)
    fixed = max(att["baselines"]["grey"]["identity"], att["baselines"]["mean_face"]["identity"])

    def leaks(r) -> bool:
        return _rate_bounds(r["decoder_identity"], n)[0] > max(fixed, _rate_bounds(r["null_decoder_identity"], n)[1])
    verdict = _attack_verdict(rows, leaks, what="name the person above every guess without the release",
                              none_ok="no better than a guess without the release at any ε")
    oracle = att["oracle"]
    weaker = f"; {oracle['fallback']}" if oracle.get("fallback") else ""
    ours = (f"reconstructions named by the oracle ({n} faces; it names {oracle['ceiling']:.0%} of the true faces, "
            f"test accuracy {oracle['test_accuracy']:.3f}{weaker}): "
            + ", ".join(f"{_eps(r['epsilon'])}: {r['decoder_identity']:.0%}" for r in rows)
            + f"; a fixed guess {fixed:.0%}, the null decoder's upper bound at most "
            f"{max(_rate_bounds(r['null_decoder_identity'], n)[1] for r in rows):.1%}")
    return _row("Sec. III", claim, ours, verdict, rule)


def claim_membership(att: Optional[Mapping[str, Any]]) -> Row:
    claim = "The server cannot tell which images it was trained on"
    rule = ("the server's likelihood test on the releases it received (public conv1), threshold chosen on half the "
            f"candidates, Clopper–Pearson bounds on the other half (jointly {ATTACK_CONFIDENCE:.0%}): membership leaks "
            "at ε when the lower bound on TPR − FPR is above 0; it must leak without noise for the test to count")
    if not att:
        return _row("Sec. III", claim, NOT_RUN, NOT_RUN_VERDICT, rule)
    rows = _attack_rows(att)
    verdict = _attack_verdict(rows, lambda r: r["mia_advantage_lower"] > 0, what="tell members apart",
                              none_ok="no membership shown at any ε")
    ours = (f"held-out TPR ≥ / FPR ≤ ({rows[0]['mia_heldout']} per class), per-image ε ≥: "
            + ", ".join(f"{_eps(r['epsilon'])}: {r['mia_tpr_lower']:.2f} / {r['mia_fpr_upper']:.2f}, "
                        f"{r['mia_epsilon_lower']:.2f}" for r in rows))
    return _row("Sec. III", claim, ours, verdict, rule)


# (metrics names, claim function), in the table's order; the function takes those metrics in that order.
CLAIMS: List[tuple] = [(("activations",), claim_fig2), (("scratch", "convergence", "ladder"), claim_fig3),
                       (("convergence", "ladder"), claim_fig3_mid), (("finetune",), claim_fig4_eps3),
                       (("finetune",), claim_fig4_low_eps), (("finetune",), claim_fig4_setup),
                       (("mobile",), claim_cost), (("accounting",), claim_per_coordinate),
                       (("accounting",), claim_per_image), (("attacks",), claim_reconstruction),
                       (("attacks",), claim_identity), (("attacks",), claim_membership)]


def claims_table(*, results_dir: Optional[str] = None, profile: str, dataset: str) -> List[Row]:
    """One row per claim, read from the recorded metrics of ``profile`` / ``dataset``."""
    cache: Dict[str, Optional[Dict[str, Any]]] = {}
    rows = []
    for names, fn in CLAIMS:
        for name in names:
            if name not in cache:
                cache[name] = load_metrics(results_dir, profile, dataset, name)
        rows.append(fn(*(cache[name] for name in names)))
    return rows


def summary_text(rows: List[Row], *, profile: str, dataset: str) -> str:
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    parts = ", ".join(f"{n} {v}" for v, n in counts.items())
    note = (" **These results come from SYNTHETIC data, not LFW.**" if dataset == "synthetic" else "")
    return (f"At the `{profile}` profile on `{dataset}`: {parts}.{note} The `small` profile is a reduced "
            "network (1/8 of VGG-Face's channels, 64×64 inputs) trained for few epochs on a CPU: the \"why\" column "
            "and the chapter \"Why (not) reproduced\" separate what the budget, the activation's size and the public "
            "model explain; the `paper` profile reruns every study at the paper's exact settings on a GPU.")
