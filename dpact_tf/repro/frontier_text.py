"""What the frontier chapter's numbers say, as prose and tables: read from its recorded metrics
(:func:`dpact_tf.repro.frontier.frontier_study`), so that editing a sentence recomputes nothing.

* :func:`method_choice` / :func:`method_choice_text` / :func:`choice_from_metrics` -- which method to choose at
  which per-image epsilon (the discussion chapter's statement);
* :func:`privacy_units` -- what each method's epsilon protects, side by side;
* :func:`frontier_summary`, :func:`points_table`, :func:`describe_schedule`, :func:`scratch_schedule` -- the
  chapter's prose and table.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from dpact_tf.repro.frontier import METHODS, SCHEDULES
from dpact_tf.repro.frontier_scratch import estimated_seconds
from dpact_tf.repro.profiles import get_profile

__all__ = ["privacy_units", "measured_time", "beats", "method_choice", "method_choice_text", "choice_from_metrics",
           "frontier_summary", "points_table", "describe_schedule", "scratch_schedule"]


def privacy_units() -> List[Dict[str, str]]:
    """The privacy unit of each method, side by side (what epsilon protects, and what it leaves out)."""
    return [
        {"method": METHODS["paper_scratch"], "adjacency": "replace one image",
         "labels": "uploaded in the clear (not covered)",
         "releases per image": "every release after the image's first step (conv1 is trained on it)",
         "accounted as implemented": "yes: exact Gaussian composition of the worst-case release count"},
        {"method": METHODS["paper_finetune"], "adjacency": "replace one image",
         "labels": "uploaded in the clear (not covered)", "releases per image": "one per epoch (conv1 frozen)",
         "accounted as implemented": "yes: exact Gaussian composition"},
        {"method": METHODS["activations_once"], "adjacency": "replace one image",
         "labels": "uploaded in the clear (not covered)",
         "releases per image": "one, plus the private choice of classifier (report-noisy-max)",
         "accounted as implemented": "the grid release yes, its rounding added to the sensitivity; the choice "
                                     "idealized (float64 Gumbel noise); composed"},
        {"method": METHODS["release"], "adjacency": "replace one image (sensitivity 2C)",
         "labels": "uploaded in the clear (not covered); randomized response with a prior can cover them with "
                   "an ε of its own (section 3), with a classifier fixed in advance (the tuned points read the true "
                   "labels in their split and choice)",
         "releases per image": "one, plus the private choice of classifier (report-noisy-max)",
         "accounted as implemented": "idealized: float64 Gaussian noise and Gumbel choice, no exact sampler; "
                                     "composed with the choice"},
        {"method": METHODS["last_layer_dpsgd"], "adjacency": "add or remove one example (image and label)",
         "labels": "covered (never leave the data holder)",
         "releases per image": "every step's noisy gradient, plus the private choice among the candidates",
         "accounted as implemented": "yes: Poisson sampling implemented and accounted (RDP), composed with the "
                                     "choice (report-noisy-max, idealized: float64 Gumbel noise); the per-person "
                                     "fit/validation split is not"},
        {"method": METHODS["scratch_dpsgd"], "adjacency": "add or remove one example (image and label)",
         "labels": "covered (never leave the data holder)", "releases per image": "every step's noisy gradient",
         "accounted as implemented": "yes: Poisson sampling implemented and accounted (RDP); the choice among "
                                     "the candidates reads the validation images without noise, and the "
                                     "per-person fit/validation split is not accounted"},
    ]


def beats(point: Dict[str, Any], chance: float) -> bool:
    """Whether a point beats the majority class: its mean less one standard deviation over seeds is above
    ``chance`` (its mean alone for a single run, whose spread is unknown)."""
    spread = point.get("spread", float("nan"))
    return point["mean"] - (spread if spread == spread else 0.0) > chance


def method_choice(points: Sequence[Dict[str, Any]], targets: Sequence[float]) -> List[Dict[str, Any]]:
    """Per target per-image epsilon: each method's point with the largest per-image epsilon *including tuning* at
    most the target (chosen by its epsilon, never by its test accuracy), the method whose point has the highest
    mean test accuracy, the runner-up, and whether the lead exceeds the sum of their spreads over seeds
    (``clear``: False when it does not, or when a spread is unknown)."""
    rows = []
    for t in targets:
        best: Dict[str, Dict[str, Any]] = {}
        for p in points:
            if p["epsilon_with_tuning"] <= t * (1 + 1e-9) and (
                    p["method"] not in best or p["epsilon_with_tuning"] > best[p["method"]]["epsilon_with_tuning"]):
                best[p["method"]] = p
        ranked = sorted(best.values(), key=lambda p: -p["mean"])
        if not ranked:
            rows.append({"target": t, "method": None, "mean": None, "runner_up": None, "clear": False})
            continue
        top, second = ranked[0], ranked[1] if len(ranked) > 1 else None
        spreads = [top["spread"]] + ([second["spread"]] if second else [])
        known = all(s == s for s in spreads)
        clear = second is not None and known and top["mean"] - second["mean"] > sum(spreads)
        rows.append({"target": t, "method": top["method"], "mean": top["mean"], "spread": top["spread"],
                     "runner_up": second["method"] if second else None,
                     "runner_up_mean": second["mean"] if second else None, "clear": bool(clear)})
    return rows


def method_choice_text(rows: Sequence[Dict[str, Any]], *, chance: float) -> str:
    """The choice as prose: how a point counts, then one sentence per target epsilon."""
    out = ["Each method counts at its per-image ε *with its tuning composed* (the hollow markers): a point whose ε "
           "with tuning exceeds a target does not count there."] if rows else []
    for r in rows:
        if r["method"] is None:
            out.append(f"At a per-image ε of {r['target']:g}, no method has a point.")
            continue
        if not beats(r, chance):
            out.append(f"At a per-image ε of {r['target']:g}, no method beats the majority class "
                       f"({100 * chance:.1f} %) by more than its spread over seeds.")
            continue
        name = METHODS[r["method"]]
        lead = ""
        if r["runner_up"] is not None:
            gap = 100 * (r["mean"] - r["runner_up_mean"])
            lead = (f", {gap:.1f} points ahead of {METHODS[r['runner_up']]}"
                    + ("" if r["clear"] else " (within the spread over seeds: not a clear lead)"))
        out.append(f"At a per-image ε of {r['target']:g}: **{name}**, {100 * r['mean']:.1f} % test accuracy"
                   f"{lead}.")
    return " ".join(out)


def frontier_summary(metrics: Dict[str, Any]) -> str:
    """What the figure shows, from the recorded metrics: the paper's best point and the per-image epsilon it needs,
    the methods that never beat the majority class, and the smallest per-image epsilon (tuning included) at which
    one does."""
    pts = metrics["points"]
    paper = [p for p in pts if p["method"].startswith("paper_")]
    ours = [p for p in pts if not p["method"].startswith("paper_")]
    chance = metrics["chance"]
    text = []
    if paper:
        best = max(paper, key=lambda p: p["mean"])
        above = [p for p in paper if beats(p, chance)]
        text.append(f"The paper's training reaches at best {100 * best['mean']:.1f} % "
                    f"({METHODS[best['method']]}, per-coordinate ε = {best['detail']['epsilon_per_coordinate']:g}) "
                    f"at a per-image ε of {best['image_epsilon']:,.3g}; "
                    + (f"its smallest per-image ε above the majority class ({100 * chance:.1f} %) is "
                       f"{min(p['image_epsilon'] for p in above):,.3g}." if above else
                       f"none of its points beats the majority class ({100 * chance:.1f} %)."))
    floor = [m for m in dict.fromkeys(p["method"] for p in ours)
             if not any(beats(p, chance) for p in ours if p["method"] == m)]
    if floor:
        reach = {m: max(p["epsilon_with_tuning"] for p in ours if p["method"] == m) for m in floor}
        text.append("Not above the majority class by more than one standard deviation over seeds at any per-image "
                    "ε (tuning included) they were run at: "
                    + " and ".join(f"{METHODS[m]} (up to {e:.3g})" for m, e in reach.items()) + ".")
    above = [p for p in ours if beats(p, chance)]
    if above:
        top = min(above, key=lambda p: (p["epsilon_with_tuning"], -p["mean"]))
        spread = "one run" if top["spread"] != top["spread"] else f"± {100 * top['spread']:.1f} over seeds"
        text.append(f"The smallest per-image ε (tuning included) at which a method beats the majority class (by "
                    f"more than one standard deviation over seeds) is "
                    f"{top['epsilon_with_tuning']:.3g}: {METHODS[top['method']]} reaches {100 * top['mean']:.1f} % "
                    f"({spread}).")
    elif ours:
        text.append("None of the methods beats the majority class at any per-image ε of the sweep.")
    return " ".join(text)


def points_table(metrics: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per point of the figure, for the chapter's table (epsilons as text with 3 significant digits)."""
    rows = []
    for p in sorted(metrics["points"], key=lambda p: (p["method"], p["image_epsilon"])):
        n = len(p["accuracies"])
        rows.append({"method": METHODS[p["method"]], "ε per image": f"{p['image_epsilon']:,.3g}",
                     "ε with tuning": f"{p['epsilon_with_tuning']:,.3g}",
                     "test accuracy": round(p["mean"], 4),
                     "± (std over seeds)": round(p["spread"], 4) if n > 1 else "one run",
                     "seeds": n, "chosen on validation (seed 0)": p["configs"][0]})
    return rows


def describe_schedule(profile: str) -> str:
    """What the chapter runs at ``profile`` and what it leaves out, as prose."""
    prof = get_profile(profile)
    sched = SCHEDULES[prof.name]
    fuller = SCHEDULES["medium"]
    eps = ", ".join(f"{e:g}" for e in sched.image_epsilons)
    text = (f"Profile **{prof.name}**: per-image ε ∈ {{{eps}}} at δ = 1e-5; {sched.seeds} seeds per point for "
            f"(c) and (e), {sched.activation_seeds} for (b) (one grid release of every training image per seed "
            f"and ε); {round(100 * sched.validation_fraction)} % of each person's training images held out for "
            f"tuning; the server tries {len(sched.server_grid)} softmax "
            f"configuration{'s' if len(sched.server_grid) > 1 else ''} and the class means for (b) and (c), chosen "
            f"on the clean validation images by report-noisy-max at {sched.selection_share:.0%} of the per-image ε, "
            f"and (e), whose choice spends {sched.selection_share:.0%} of the target on top of it, "
            f"{len(sched.dpsgd_grid)} DP-SGD configurations, per point. The features are projected on the {sched.projection_dims} principal "
            "directions of the public images' features, centred and scaled to a median norm of 1 there; the "
            "release clips them to norm C = 1.")
    text += f" (b) runs at per-image ε ∈ {{{', '.join(f'{e:g}' for e in sched.activation_epsilons)}}}."
    if (sched.activation_seeds, len(sched.activation_epsilons), len(sched.label_epsilons)) < (
            fuller.activation_seeds, len(fuller.activation_epsilons), len(fuller.label_epsilons)):
        text += (f" The `medium` profile runs (b) with {fuller.activation_seeds} seeds at every ε of the sweep and "
                 f"the labels at {len(fuller.label_epsilons)} label ε; `{prof.name}` runs less to stay within the "
                 "book's 90 minutes.")
    return text + " " + scratch_schedule(prof.name)


def scratch_schedule(profile: str) -> str:
    """What (d), DP-SGD on the whole network from scratch, runs at ``profile`` -- or that it is left out, and
    which profile runs it at what estimated cost."""
    profile = get_profile(profile).name
    sched = SCHEDULES[profile]
    if sched.scratch_dpsgd_epsilons:
        cands = sched.scratch_candidates()
        eps = ", ".join(f"{e:g}" for e in sched.scratch_dpsgd_epsilons)
        text = (f"(d) DP-SGD on the whole network runs at per-image ε ∈ {{{eps}}}, {len(cands)} candidates per ε "
                f"({'; '.join(c.label() for c in cands)}), Poisson-sampled, one seed")
        if profile in ("small", "medium"):  # the shape the cost was measured at
            per_run = estimated_seconds((1.0,), cands) / len(cands)
            total = estimated_seconds(sched.scratch_dpsgd_epsilons, cands)
            text += (f": each run costs ~{per_run / 60:.0f} min on a 2-core CPU, the sweep ~{total / 3600:.1f} h "
                     "(estimated)")
        text += ", so (d)'s spread over seeds is not measured."
        fuller = SCHEDULES["medium"].scratch_candidates()
        if profile == "small" and fuller != cands:  # what small leaves out of (d)'s search
            text += (f" `make book PROFILE=medium` searches more: {len(fuller)} candidates per ε "
                     f"({'; '.join(c.label() for c in fuller)}), "
                     f"~{estimated_seconds(SCHEDULES['medium'].scratch_dpsgd_epsilons, fuller) / 3600:.1f} h "
                     "(estimated).")
        return text
    fuller = SCHEDULES["medium"]
    cands = fuller.scratch_candidates()
    total = estimated_seconds(fuller.scratch_dpsgd_epsilons, cands)
    per_run = estimated_seconds((1.0,), cands) / len(cands)
    return (f"`{profile}` leaves out (d), DP-SGD on the whole network from scratch: one candidate "
            f"run costs ~{per_run / 60:.0f} min on a 2-core CPU (estimated), and a fair point needs a tuning grid "
            "of several. `make book PROFILE=medium` runs "
            f"it at per-image ε ∈ {{{', '.join(f'{e:g}' for e in fuller.scratch_dpsgd_epsilons)}}} with "
            f"{len(cands)} candidates per ε and one seed, ~{total / 3600:.1f} h more on a 2-core CPU (estimated).")


def measured_time(metrics: Dict[str, Any]) -> str:
    """What the chapter's computations took on the machine that ran them, from the recorded wall seconds (of the
    computation, not of a cache read): (d)'s candidate runs apart from the rest (Markdown; "" when not recorded)."""
    seconds = metrics.get("seconds") or {}
    if not seconds:
        return ""
    rest = sum(v for k, v in seconds.items() if k != "scratch_dpsgd")
    text = (f"Measured where this chapter ran: (b), (c), (e), (f) and the no-noise references took {_minutes(rest)} "
            "together")
    if "scratch_dpsgd" in seconds:
        runs = sum(len(p["detail"].get("candidates", [])) for p in metrics["points"] if p["method"] == "scratch_dpsgd")
        text += f"; (d)'s {runs} candidate runs {_minutes(seconds['scratch_dpsgd'])} of training"
    return text + " (wall time; the schedule's estimates above are from the `small` shape's speed)."


def _minutes(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(seconds / 60, 1):.0f} min"


def choice_from_metrics(metrics: Optional[Dict[str, Any]], *, profile: str) -> str:
    """The discussion's statement of which method to choose at which per-image epsilon, from the recorded
    metrics of the frontier chapter (or why there is none)."""
    if metrics is None:
        return "The frontier chapter has not been run at this profile: no method is recommended."
    targets = SCHEDULES[get_profile(profile).name].image_epsilons
    rows = method_choice(metrics["points"], targets)
    paper = [p for p in metrics["points"] if p["method"].startswith("paper_") and beats(p, metrics["chance"])]
    family = (f" The paper's own training needs a per-image ε of at least "
              f"{min(p['image_epsilon'] for p in paper):,.3g} to beat the majority class." if paper else
              " The paper's own training beats the majority class at no per-image ε it was run at.")
    missing = "" if any(p["method"] == "scratch_dpsgd" for p in metrics["points"]) else (
        f" {METHODS['scratch_dpsgd']} is not compared: the `{get_profile(profile).name}` profile does not run it "
        "(`medium` does).")
    return method_choice_text(rows, chance=metrics["chance"]) + family + missing

