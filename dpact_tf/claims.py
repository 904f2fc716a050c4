"""The discussion chapter's table: each claim of the paper, our number, reproduced or not.

Every number is read from the metrics JSON the notebooks record (:func:`dpact_tf.experiments.record_metrics`);
a study that has not been run shows as "not run".  The verdict rules are written out in each row.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from dpact_tf.experiments import load_metrics, mobile_results_path

__all__ = ["claims_table", "summary_text"]


def _row(figure: str, claim: str, ours: str, verdict: str, rule: str) -> Dict[str, str]:
    return {"in the paper": figure, "paper's claim": claim, "ours": ours, "verdict": verdict, "rule": rule}


def _final(histories: List[Dict[str, Any]], eps: Optional[float]) -> Optional[float]:
    for h in histories:
        if h["epsilon"] == eps:
            return h["history"]["test_accuracy"][-1]
    return None


def claims_table(*, results_dir: str, profile: str, dataset: str) -> List[Dict[str, str]]:
    rows: List[Dict[str, str]] = []
    act = load_metrics(results_dir, profile, dataset, "activations")
    if act:
        t = sorted(act["table"], key=lambda r: r["epsilon"])
        eps, ssim = [r["epsilon"] for r in t], [r["ssim"] for r in t]
        increasing = bool(np.all(np.diff(ssim) > -0.02))
        rows.append(_row("Fig. 2", "Activation images lose their content as ε decreases",
                         "SSIM to the clean map: " + ", ".join(f"ε={e:g}: {s:.2f}" for e, s in zip(eps, ssim)),
                         "reproduced" if increasing and ssim[0] < 0.2 else "not reproduced",
                         "SSIM grows with ε and is < 0.2 at the smallest ε"))
    else:
        rows.append(_row("Fig. 2", "Activation images lose their content as ε decreases", "not run", "—", ""))

    sc = load_metrics(results_dir, profile, dataset, "scratch")
    if sc:
        hs = sc["histories"]
        base, hi, lo = _final(hs, None), _final(hs, 20.0), _final(hs, 1.0)
        chance = sc["majority_class_test_accuracy"]
        if None not in (base, hi, lo):
            ok = hi >= base - 0.05 and lo < hi
            rows.append(_row("Fig. 3", "Training from scratch on DP activations approaches the no-noise accuracy "
                             "for large ε and degrades as ε decreases",
                             f"final test accuracy: no noise {base:.3f}, ε=20 {hi:.3f}, ε=1 {lo:.3f} "
                             f"(majority class {chance:.3f})",
                             "reproduced" if ok else "not reproduced",
                             "acc(ε=20) ≥ acc(no noise) − 5 points and acc(ε=1) < acc(ε=20)"))
        else:
            rows.append(_row("Fig. 3", "Training from scratch approaches the baseline for large ε",
                             "the sweep did not include no noise, ε=1 and ε=20", "—", ""))
    else:
        rows.append(_row("Fig. 3", "Training from scratch approaches the baseline for large ε", "not run", "—", ""))

    ft = load_metrics(results_dir, profile, dataset, "finetune")
    if ft:
        c = ft["claims"]
        if "eps3_within_5_epochs" in c:
            e3 = c["eps3_within_5_epochs"]
            rows.append(_row("Fig. 4", "Fine-tuning with ε = 3 reaches the baseline's accuracy within 5 epochs",
                             f"baseline final {e3['baseline_final']:.3f}; ε=3 best of epochs 1–5 {e3['eps3_best_first5']:.3f}",
                             "reproduced" if e3["holds"] else "not reproduced",
                             f"best of first 5 epochs ≥ baseline − {c['tolerance'] * 100:.0f} points"))
        if "eps_le_1_fails" in c:
            e1 = c["eps_le_1_fails"]
            vals = ", ".join(f"ε={k}: {v:.3f}" for k, v in e1["final_test_accuracy"].items())
            rows.append(_row("Fig. 4", "Fine-tuning with ε ≤ 1 fails to converge",
                             f"final test accuracy {vals} (majority class {c['majority_class_test_accuracy']:.3f})",
                             "reproduced" if e1["holds"] else "not reproduced",
                             "final accuracy within 5 points of the majority-class rate"))
        p = ft["pretrain"]
        rows.append(_row("Fig. 4 (setup)", "The public model is VGG-Face trained on 2.6 M images of 2,622 people",
                         f"offline stand-in: {p['people']} disjoint LFW people, {p['images']} images; "
                         f"held-out accuracy {p['final_heldout_accuracy']:.3f}",
                         "different setup", "no download here: a much weaker public model"))
    else:
        rows.append(_row("Fig. 4", "ε = 3 reaches the baseline within 5 epochs; ε ≤ 1 fails", "not run", "—", ""))

    mob = _mobile(results_dir, profile)
    if mob:
        paper = mob["paper_nexus6p"]
        conf = next((c for c in mob["configs"] if c["label"] == "paper"), mob["configs"][0])
        lite = conf["litert"]
        within = (lite["load_s"] < paper["load_s"] and lite["forward_s"] < paper["forward_s"]
                  and lite.get("backward_s_per_sample", 0) < paper["backward_s_per_sample"]
                  and lite["peak_rss_mb"] < paper["memory_mb"])
        rows.append(_row("Sec. VI (cost)", "The client runs on a phone: batch of 8 loads < 0.4 s, forward < 0.6 s, "
                         "backward < 0.2 s/sample, < 500 MB",
                         f"LiteRT, {conf['image_size']}×{conf['image_size']}, {mob['hardware']['cpu']}: load "
                         f"{lite['load_s']:.4f} s, forward {lite['forward_s']:.3f} s, backward "
                         f"{lite.get('backward_s_per_sample', float('nan')):.3f} s/sample, {lite['peak_rss_mb']:.0f} MB",
                         ("within the bounds" if within else "outside the bounds") + " (different hardware)",
                         "all four below the paper's bounds; a server CPU, not a phone"))
    else:
        rows.append(_row("Sec. VI (cost)", "The client runs on a phone within the stated bounds", "not run", "—", ""))

    acc = load_metrics(results_dir, profile, dataset, "accounting")
    coord = "implemented exactly (σ = √(2 ln(1.25/δ))/ε, S_f = 1/√2, clipping makes the bound hold)"
    if acc:
        label, rows_acc = next(iter(acc["tables"].items()))
        lo = rows_acc[0]
        rows.append(_row("Sec. IV", "Each activation coordinate is (ε, δ)-DP (classic Gaussian mechanism)",
                         coord + "; the classic proof covers ε < 1 only",
                         "holds per coordinate (ε < 1)", "the formula and the sensitivity bound are tested"))
        rows.append(_row("Sec. IV", "The released activations protect the client's images",
                         f"per image ({label}): ε = {lo['image_epsilon_exact']:,.0f} for one release at per-coordinate "
                         f"ε = {lo['epsilon_per_coordinate']:g}, {lo['run_epsilon_exact']:,.0f} over {lo['epochs']} epochs",
                         "not as a DP guarantee", "per-image ε of the same noise (analytic Gaussian; PLD/RDP agree)"))
    else:
        rows.append(_row("Sec. IV", "Each activation coordinate is (ε, δ)-DP", coord, "holds per coordinate (ε < 1)", ""))

    att = load_metrics(results_dir, profile, dataset, "attacks")
    if att:
        noisy = sorted((r for r in att["rows"] if r["epsilon"] is not None), key=lambda r: r["epsilon"])
        best = {r["epsilon"]: max(r["inversion_known_ssim"], r["decoder_known_ssim"]) for r in noisy}
        blocked = [e for e, v in best.items() if v < 0.2]
        rows.append(_row("Sec. III", "A curious server cannot reconstruct the images from the noisy activations",
                         "best SSIM of inversion/decoder with a public conv1: " +
                         ", ".join(f"ε={e:g}: {v:.2f}" for e, v in best.items()),
                         ("reconstruction fails (SSIM < 0.2) for ε ≤ " + f"{max(blocked):g}") if blocked
                         else "reconstruction succeeds at every ε",
                         "empirical, for these two attackers; SSIM < 0.2 taken as failure"))
        aucs = {r["epsilon"]: max(r["mia_threshold_attack_auc"], r["mia_logistic_regression_auc"]) for r in att["rows"]}
        rows.append(_row("Sec. III", "The trained model does not reveal its training images",
                         "membership-inference AUC: " + ", ".join(
                             f"{'no noise' if e is None else f'ε={e:g}'}: {v:.3f}" for e, v in aucs.items()),
                         "weak leakage (AUC ≤ 0.6)" if max(aucs.values()) <= 0.6 else "leaks membership (AUC > 0.6)",
                         "TF Privacy threshold and logistic-regression attacks"))
    return rows


def _mobile(results_dir: str, profile: str):
    path = mobile_results_path(results_dir, profile)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def summary_text(rows: List[Dict[str, str]], *, profile: str, dataset: str) -> str:
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    parts = ", ".join(f"{n} {v}" for v, n in counts.items())
    note = (" **These results come from SYNTHETIC data, not LFW.**" if dataset == "synthetic" else "")
    return (f"At the `{profile}` profile on `{dataset}`: {parts}.{note} The `small` profile is a reduced "
            "network (1/8 of VGG-Face's channels, 64×64 inputs) trained for few epochs on a CPU; the `paper` "
            "profile reruns every study at the paper's exact settings on a GPU.")
