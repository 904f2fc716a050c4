"""The baselines chapter: is DP on activations better than the alternatives?

Each alternative is trained on the same LFW protocol, the same network (:func:`dpact_tf.build_split_vggface`) and
by the same loop (:class:`dpact_tf.training.EpochTrainer`, through :func:`dpact_tf.repro.runs.run_training`), with
the budget of Fig. 3 (``profile.baselines.epochs``).  One function per study:

* :func:`dpsgd_study` -- DP-SGD on the whole network (the paper's reference [1]) at the paper's nominal epsilons
  and at the per-image epsilon the DP-activation runs actually provide (the accounting chapter's);
* :func:`privynet_study` -- the public model's first layers frozen as the client, no noise, the cut swept; the
  attacks chapter's decoder against what the server receives;
* :func:`dssgd_study` -- K participants with shards of the private set, top-theta gradient sharing;
* :func:`spnn_study` -- conv1 on additive secret shares of two data holders' halves of each face;
* :func:`summary_table` -- one row per method: privacy notion, guarantee per image, accuracy, client compute,
  bytes uploaded per image.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np

from dpact_tf.repro import plots
from dpact_tf.repro.oracle import ORACLE_MODULES, evaluation_oracle_key
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.results import TRAINING_MODULES, cache_key, record_metrics, resolve_results_dir, study_dir
from dpact_tf.repro.runs import RunSpec, load_faces, run_training
from dpact_tf.jsonio import write_json

__all__ = ["dpsgd_study", "privynet_study", "dssgd_study", "spnn_study", "summary_table", "dpsgd_summary",
           "privynet_summary", "privynet_reconstructions", "dssgd_summary", "spnn_summary", "dpact_reference",
           "reconstruction_scores", "client_step_flops"]

#: the code behind the baselines' cached attack scores (their cache key includes its source)
BASELINE_MODULES = (*TRAINING_MODULES, "dpact_tf.attacks", "dpact_tf.repro.baselines", "dpact_tf.repro.pretrain",
                    "dpact_tf.repro.privacy_studies", *ORACLE_MODULES)


def client_step_flops(split, *, trains: bool) -> float:
    """FLOPs per image of one training step on the client: its forward pass, plus -- when its layers are trained
    -- the backward pass (about twice the forward: the gradients with respect to the weights and the inputs)."""
    return float(split.client_flops) * (3.0 if trains else 1.0)


def reconstruction_scores(attacker_client, victim_client, faces: np.ndarray, public_images: np.ndarray, *,
                          identity, epochs: int, seed: int) -> Dict[str, Any]:
    """The attacks chapter's decoder: trained on public faces through ``attacker_client`` (the server's model of
    what it receives), applied to what ``victim_client`` sends for ``faces``; SSIM, PSNR and the identity
    oracle's accuracy on the reconstructions, and the first four reconstructions."""
    from dpact_tf import attacks

    decoder = attacks.train_decoder(attacker_client, public_images, epochs=epochs, seed=seed)
    rec = attacks.decode(decoder, victim_client.predict(faces, batch_size=256, verbose=0))
    return {**attacks.image_similarity(rec, faces), "identity_accuracy": identity(rec), "shown": rec[:4]}


def _attack_context(prof, dataset: str, data, *, seed: int, n_faces: int, results_dir, force: bool, progress: bool):
    """(pre-trained public model, public images, faces attacked, a function building (their identity scorer, the
    oracle's summary)): the attacks chapter's evaluation oracle (:func:`dpact_tf.repro.oracle.evaluation_oracle`),
    built only when an attack runs."""
    from dpact_tf.repro.oracle import evaluation_oracle
    from dpact_tf.repro.pretrain import pretrain

    pre = pretrain(prof.name, dataset, results_dir=results_dir, seed=seed, force=force, progress=progress)
    public = load_faces(prof, dataset, public=True, seed=seed, progress=progress)
    face_idx = data.distinct_people_test_indices(n_faces)
    faces = data.test_images[face_idx].astype(np.float32) / 255.0
    labels = data.test_labels[face_idx]
    def identity():
        judge = evaluation_oracle(prof.name, dataset, data, results_dir=results_dir, seed=seed, progress=progress)
        return judge.for_labels(labels), judge.summary()
    return pre, public.train_images, faces, identity


def _cache(results_dir: Optional[str], prof, dataset: str, name: str, settings: Dict[str, Any]) -> str:
    key = cache_key(settings, modules=BASELINE_MODULES)
    return os.path.join(resolve_results_dir(results_dir), prof.name, dataset, "baselines", f"{name}_{key}")


# --- PrivyNet-style: a frozen public head, no noise ---------------------------------------------------------
def privynet_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, seed: int = 0,
                   n_faces: int = 16, force: bool = False, progress: bool = True) -> Dict[str, Any]:
    """PrivyNet-style split: the client runs the public model's layers up to the cut, frozen, without noise; the
    server trains the rest from scratch.  Per cut: test accuracy, the client's cost, and how well the attacks
    chapter's decoder -- trained on public faces through the same public layers, which the server knows --
    reconstructs private faces from what the server receives.  Privacy comes from the representation alone.
    """
    prof = get_profile(profile)
    sched = prof.baselines
    data = load_faces(prof, dataset, seed=seed, progress=progress)
    pre, public_x, faces, identity = _attack_context(prof, dataset, data, seed=seed, n_faces=n_faces,
                                                     results_dir=results_dir, force=force, progress=progress)
    runs = [run_training(RunSpec(task="frozen_head", profile=prof.name, dataset=dataset, epsilon=None, cut=cut,
                                 epochs=sched.epochs, seed=seed, init=pre.spec.key()),
                         results_dir=results_dir, force=force, progress=progress, data=data)
            for cut in sched.cuts]
    cache = _cache(results_dir, prof, dataset, "privynet", {
        "runs": [r.spec.key() for r in runs], "n_faces": n_faces, "attack_epochs": sched.attack_epochs, "seed": seed,
        "oracle": evaluation_oracle_key(prof.name, dataset, seed=seed)})
    if force or not (os.path.exists(cache + ".json") and os.path.exists(cache + ".npz")):
        rows, shown = [], {}
        identity, oracle = identity()
        for run in runs:
            split = run.load_split()
            if progress:
                print(f"baselines: decoder against the frozen head cut at {run.spec.cut}", file=sys.stderr, flush=True)
            scores = reconstruction_scores(split.client, split.client, faces, public_x, identity=identity,
                                           epochs=sched.attack_epochs, seed=seed)
            shown[run.spec.cut] = scores.pop("shown")
            rows.append({"cut": run.spec.cut, "test_accuracy": run.history["test_accuracy"][-1],
                         "best_test_accuracy": max(run.history["test_accuracy"]),
                         "client_mflops_per_step": client_step_flops(split, trains=False) / 1e6,
                         "client_params": split.client_params, "activation_shape": list(split.activation_shape),
                         "upload_bytes_per_image": split.activation_bytes,
                         **{f"decoder_{k}": v for k, v in scores.items()}, "run": run.spec.key(),
                         "wall_seconds": run.info.get("wall_seconds")})
        write_json(cache + ".json", {"rows": rows, "oracle": oracle})
        np.savez_compressed(cache + ".npz", **{cut: rec for cut, rec in shown.items()})
    with open(cache + ".json") as fh:
        saved = json.load(fh)
    rows, oracle = saved["rows"], saved["oracle"]
    arrays = np.load(cache + ".npz")
    shown = {cut: arrays[cut] for cut in arrays.files}
    from dpact_tf import attacks

    trivial = {k: {"ssim": v["ssim"], "psnr": v["psnr"]}
               for k, v in attacks.trivial_baselines(faces, public_x).items()}
    reference = dpact_reference(data, prof=prof, dataset=dataset,
                                epsilons=[None, *sorted(set(sched.dpsgd_matched_epsilons))],
                                results_dir=results_dir, seed=seed, progress=progress)
    dp_acc = {("no noise, conv1_1 trained" if r["epsilon_per_coordinate"] is None else
               f"DP activations ε = {r['epsilon_per_coordinate']:g}"): r["test_accuracy"] for r in reference}
    fig = plots.privynet_plot(rows, chance=data.majority_class_rate, baselines=trivial, dp_reference=dp_acc,
                              dataset=dataset)
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), "baseline_privynet",
                      {"rows": rows, "trivial": trivial, "dp_activations": reference})
    metrics = {"rows": rows, "trivial": trivial, "dp_activations": reference, "oracle": oracle,
               "majority_class_test_accuracy": data.majority_class_rate, "pretrain": pre.spec.key()}
    record_metrics(results_dir, prof.name, dataset, "baseline_privynet", metrics)
    return {**metrics, "faces": faces[:4], "shown": shown, "figures": [fig]}


# --- DP-SGD at matched privacy ---------------------------------------------------------------------------------
def dpact_reference(faces, *, prof, dataset: str, epsilons, results_dir: Optional[str], seed: int,
                    progress: bool) -> List[Dict[str, Any]]:
    """The paper's method at the baselines' budget (the Fig. 3 runs when the budgets agree): test accuracy and
    both readings of its epsilon -- per coordinate (the paper's) and per image over the run with conv1 trained
    (the accounting chapter's, the unit DP-SGD's per-example epsilon is in)."""
    from dpact_tf import accounting
    from dpact_tf.repro.privacy_studies import split_counts
    from dpact_tf.vggface import layer_plan

    counts = split_counts(prof, dataset, seed=seed)
    shape = (prof.image_size, prof.image_size, layer_plan(prof.width)[0][2])
    noisy = [e for e in epsilons if e is not None]
    table = {r["epsilon_per_coordinate"]: r for r in accounting.accounting_table(
        noisy, activation_shape=shape, epochs=prof.baselines.epochs, n_train=counts["n_train"],
        n_test=counts["n_test"], batch_size=prof.batch_size)}
    rows = []
    for eps in epsilons:
        run = run_training(RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=eps,
                                   epochs=prof.baselines.epochs, seed=seed),
                           results_dir=results_dir, progress=progress, data=faces)
        acc = table.get(eps, {})
        rows.append({"epsilon_per_coordinate": eps, "test_accuracy": run.history["test_accuracy"][-1],
                     "image_epsilon_per_run": acc.get("trained_epsilon_exact"),
                     "image_epsilon_per_release": acc.get("image_epsilon_exact"),
                     "releases_per_image": acc.get("trained_releases"), "run": run.spec.key()})
    return rows


def dpsgd_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, seed: int = 0,
                delta: float = 1e-5, force: bool = False, progress: bool = True) -> Dict[str, Any]:
    """DP-SGD on the whole network by the data holder, at the paper's nominal epsilons (per example, over the
    run) and at the per-image epsilon the DP-activation runs at ``dpsgd_matched_epsilons`` provide; accuracy vs
    epsilon beside the DP-activation runs read both ways."""
    from dpact_tf.baselines.dpsgd import calibrate_noise_multiplier, dpsgd_epsilon

    prof = get_profile(profile)
    sched = prof.baselines
    data = load_faces(prof, dataset, seed=seed, progress=progress)
    n_train = int(len(data.train_labels))
    reference = dpact_reference(data, prof=prof, dataset=dataset,
                                epsilons=[None, *sorted(set(sched.dpsgd_matched_epsilons))],
                                results_dir=results_dir, seed=seed, progress=progress)
    targets = [{"target_epsilon": float(e), "matched_to": None} for e in sched.dpsgd_epsilons]
    targets += [{"target_epsilon": float(r["image_epsilon_per_run"]), "matched_to": r["epsilon_per_coordinate"]}
                for r in reference if r["epsilon_per_coordinate"] in sched.dpsgd_matched_epsilons]
    common = dict(batch_size=prof.batch_size, num_examples=n_train, epochs=sched.epochs, delta=delta)
    rows = []
    for t in targets:
        z = calibrate_noise_multiplier(t["target_epsilon"], **common)
        spec = RunSpec(task="dpsgd", profile=prof.name, dataset=dataset, epsilon=None, epochs=sched.epochs,
                       seed=seed, options=(("l2_norm_clip", float(sched.dpsgd_clip)), ("noise_multiplier", float(z))))
        run = run_training(spec, results_dir=results_dir, force=force, progress=progress, data=data)
        rows.append({**t, "noise_multiplier": float(z), "epsilon": dpsgd_epsilon(z, **common),
                     "l2_norm_clip": sched.dpsgd_clip, "test_accuracy": run.history["test_accuracy"][-1],
                     "best_test_accuracy": max(run.history["test_accuracy"]),
                     "seconds_per_epoch": float(np.median(run.history["seconds"])), "run": spec.key()})
    fig = plots.dpsgd_plot(rows, reference, chance=data.majority_class_rate, dataset=dataset)
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), "baseline_dpsgd",
                      {"dpsgd": rows, "dp_activations": reference})
    metrics = {"rows": rows, "dp_activations": reference, "delta": delta, "num_classes": int(data.num_classes),
               "majority_class_test_accuracy": data.majority_class_rate}
    record_metrics(results_dir, prof.name, dataset, "baseline_dpsgd", metrics)
    return {**metrics, "figures": [fig]}


# --- DSSGD ---------------------------------------------------------------------------------------------------
def dssgd_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, seed: int = 0,
                force: bool = False, progress: bool = True) -> Dict[str, Any]:
    """DSSGD: K participants with disjoint shards of the private training set, top-theta gradient sharing, per
    K and theta; against one participant alone (its shard only) and centralized training (the no-noise run)."""
    prof = get_profile(profile)
    sched = prof.baselines
    data = load_faces(prof, dataset, seed=seed, progress=progress)
    central = run_training(RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=None,
                                   epochs=sched.epochs, seed=seed), results_dir=results_dir, progress=progress,
                           data=data)
    rows = []
    for k in sched.dssgd_participants:
        # Each participant's own momentum at every theta (local training, as the paper); full sharing once more with
        # one momentum at the server (centralized SGD: the staleness of local momentum, measured); one alone.
        settings = ([(theta, False, "participant") for theta in sched.dssgd_thetas]
                    + [(1.0, False, "server"), (1.0, True, "participant")])
        for theta, standalone, momentum_at in settings:
            spec = RunSpec(task="dssgd", profile=prof.name, dataset=dataset, epsilon=None, epochs=sched.epochs,
                           seed=seed, options=(("momentum_at", momentum_at), ("participants", int(k)),
                                               ("standalone", bool(standalone)), ("theta_download", 1.0),
                                               ("theta_upload", float(theta))))
            run = run_training(spec, results_dir=results_dir, force=force, progress=progress, data=data)
            report = run.info.get("trainer", {})
            rows.append({"participants": int(k), "theta_upload": None if standalone else float(theta),
                         "standalone": bool(standalone), "momentum_at": momentum_at,
                         "test_accuracy": run.history["test_accuracy"][-1],
                         "best_test_accuracy": max(run.history["test_accuracy"]),
                         "upload_bytes_per_image": report.get("upload_bytes_per_image"),
                         "download_bytes_per_image": report.get("download_bytes_per_image"),
                         "seconds_per_epoch": float(np.median(run.history["seconds"])), "run": spec.key()})
    centralized = {"test_accuracy": central.history["test_accuracy"][-1], "run": central.spec.key()}
    fig = plots.dssgd_plot(rows, centralized=centralized, chance=data.majority_class_rate, dataset=dataset)
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), "baseline_dssgd",
                      {"rows": rows, "centralized": centralized})
    metrics = {"rows": rows, "centralized": centralized, "majority_class_test_accuracy": data.majority_class_rate}
    record_metrics(results_dir, prof.name, dataset, "baseline_dssgd", metrics)
    return {**metrics, "figures": [fig]}


# --- what the chapter says ------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


# Accuracy differences the summaries do not call a difference (half a point: ~2 of the 429 test faces at small).
TIE_MARGIN = 0.005


def dpsgd_summary(study: Dict[str, Any]) -> str:
    """The DP-SGD comparison in words, from the numbers."""
    ref = {r["epsilon_per_coordinate"]: r for r in study["dp_activations"]}
    base = ref[None]["test_accuracy"]
    lines = [f"Without privacy the network reaches {_pct(base)} at this budget "
             f"(majority class: {_pct(study['majority_class_test_accuracy'])})."]
    nominal = [r for r in study["rows"] if r["matched_to"] is None]
    if nominal:
        lines.append("DP-SGD at the paper's nominal ε, per example over the run: " + ", ".join(
            f"ε = {r['epsilon']:.3g} → {_pct(r['test_accuracy'])} (noise multiplier {r['noise_multiplier']:.3g})"
            for r in sorted(nominal, key=lambda r: r["epsilon"])) + ".")
    for r in study["rows"]:
        if r["matched_to"] is None:
            continue
        dp = ref[r["matched_to"]]
        diff = r["test_accuracy"] - dp["test_accuracy"]
        lines.append(
            f"At the same per-image guarantee as the DP-activation run at ε = {r['matched_to']:g} per coordinate "
            f"(ε ≈ {dp['image_epsilon_per_run']:,.0f} per image over the run, {dp['releases_per_image']} releases "
            f"per face), DP-SGD needs a noise multiplier of only {r['noise_multiplier']:.3g} and reaches "
            f"{_pct(r['test_accuracy'])} against the DP activations' {_pct(dp['test_accuracy'])} "
            f"({'+' if diff >= 0 else '−'}{abs(100 * diff):.1f} points for DP-SGD).")
    matched = [ref[r["matched_to"]]["image_epsilon_per_run"] for r in study["rows"] if r["matched_to"] is not None]
    if matched:
        lines.append(f"A per-image ε of {min(matched):,.0f} is no meaningful guarantee for either method: at matched "
                     "privacy the comparison is one of utility at (almost) no privacy; at the paper's nominal ε, "
                     "only DP-SGD's number protects a face of the training set.")
    chance = study["majority_class_test_accuracy"]
    if study["rows"] and all(r["test_accuracy"] <= chance + TIE_MARGIN for r in study["rows"]):
        quiet = min(r["noise_multiplier"] for r in study["rows"])
        clip = study["rows"][0]["l2_norm_clip"]
        lines.append(f"Every DP-SGD run stays at the majority class, even with a noise multiplier of {quiet:.3g}: "
                     f"per-example clipping at L2 norm {clip:g} (not tuned) with the paper's learning rate does not "
                     "learn in this budget, so these numbers are DP-SGD untuned at this budget, not its best (the "
                     f"paper profile trains {get_profile('paper').baselines.epochs} epochs).")
    return " ".join(lines)


def oracle_words(oracle: Dict[str, Any]) -> str:
    """The identity oracle in a few words for the summaries: what it is, in bold with the reason when it is the
    fallback."""
    if oracle.get("fallback"):
        return f"**{oracle['fallback']}, so the oracle is {oracle['description']}**"
    return f"the attacks chapter's: {oracle['description']}"


def privynet_summary(study: Dict[str, Any]) -> str:
    rows = study["rows"]
    trivial = study["trivial"]
    best_trivial = max(v["ssim"] for v in trivial.values())
    ref = {r["epsilon_per_coordinate"]: r["test_accuracy"] for r in study["dp_activations"]}
    lines = []
    for r in rows:
        verdict = ("above" if r["decoder_ssim"] > best_trivial else "not above")
        lines.append(f"cut at `{r['cut']}`: {_pct(r['test_accuracy'])} test accuracy; the decoder's SSIM "
                     f"{r['decoder_ssim']:.2f} is {verdict} the best guess that looks at nothing "
                     f"({best_trivial:.2f}), and {_pct(r['decoder_identity_accuracy'])} of its reconstructions are "
                     "named as the right person by the evaluation oracle")
    noisy = ", ".join(f"{_pct(v)} at ε = {k:g}" for k, v in ref.items() if k is not None)
    return ("Frozen public head, no noise — " + "; ".join(lines) + f" ({oracle_words(study['oracle'])}). For "
            "comparison, training conv1_1 without "
            f"noise gives {_pct(ref[None])} and the DP activations {noisy}. Without noise the representation is "
            "the only protection: whatever the decoder recovers, the server recovers.")


def privynet_reconstructions(study: Dict[str, Any], *, dataset: str):
    """The private faces and the decoder's reconstruction per cut (a closed figure: the notebook displays it once,
    explicitly; an open one would be shown a second time by the inline backend, under the same label)."""
    fig = plots.reconstruction_grid(study["faces"], {"decoder (frozen public head)": {
        cut: study["shown"][cut] for cut in (r["cut"] for r in study["rows"])}}, dataset=dataset,
        column_label=lambda cut: f"cut {cut}")
    plots.close(fig)
    return fig


def dssgd_summary(study: Dict[str, Any]) -> str:
    central = study["centralized"]["test_accuracy"]
    lines = [f"Centralized training reaches {_pct(central)}."]
    for k in sorted({r["participants"] for r in study["rows"]}):
        rows = [r for r in study["rows"] if r["participants"] == k]
        alone = next((r for r in rows if r["standalone"]), None)
        shared = sorted((r for r in rows if not r["standalone"] and r.get("momentum_at", "participant") == "participant"),
                        key=lambda r: r["theta_upload"])
        text = f"With K = {k} participants, each with its own momentum: " + ", ".join(
            f"θ = {r['theta_upload']:g} → {_pct(r['test_accuracy'])}" for r in shared)
        if alone:
            text += f"; one participant alone (1/{k} of the images) reaches {_pct(alone['test_accuracy'])}"
        lines.append(text + ".")
        full = next((r for r in shared if r["theta_upload"] == 1.0), None)
        central = next((r for r in rows if not r["standalone"] and r.get("momentum_at") == "server"), None)
        if k > 1 and full and central:
            diff = central["test_accuracy"] - full["test_accuracy"]
            how = "costs" if diff > TIE_MARGIN else "gains" if diff < -TIE_MARGIN else "changes"
            lines.append(
                f"Each participant's velocity misses the other {k - 1} participants' steps. With one momentum at the "
                f"server instead, full sharing is SGD with momentum on the participants' batches in turn and reaches "
                f"{_pct(central['test_accuracy'])}: the local momentum's staleness {how} {100 * abs(diff):.1f} points at θ = 1.")
        better = [r for r in shared if full and r["theta_upload"] < 1.0
                  and r["test_accuracy"] > full["test_accuracy"] + TIE_MARGIN]
        if k > 1 and better:
            lines.append(f"With local momentum, sharing less (θ = {better[0]['theta_upload']:g}) scores above full "
                         "sharing.")
    lines.append("DSSGD as run here adds no noise: its privacy is that raw images never leave a participant, "
                 "not a formal bound (the shared gradients can leak training faces; Shokri and Shmatikov's optional "
                 "DP on the shared values is not applied).")
    return " ".join(lines)


def summary_table(*, profile: str, dataset: str, results_dir: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per method and setting, from the recorded metrics of this chapter's studies: privacy notion, the
    guarantee per image (or that there is none), final test accuracy, client compute and upload per image and
    training step."""
    from dpact_tf.repro.fidelity import training_flops_per_image
    from dpact_tf.repro.results import load_metrics
    from dpact_tf.vggface import build_split_vggface

    prof = get_profile(profile)
    m = {name: load_metrics(results_dir, prof.name, dataset, f"baseline_{name}")
         for name in ("dpsgd", "privynet", "dssgd", "spnn")}
    missing = [k for k, v in m.items() if v is None]
    if missing:
        raise ValueError(f"the studies {missing} have not been run at profile {prof.name!r} on {dataset!r}; run "
                         "this chapter's studies first")
    num_classes = int(m["dpsgd"]["num_classes"])
    head = build_split_vggface(num_classes=num_classes, cut="conv1_1", **prof.model_kwargs())
    whole = training_flops_per_image(image_size=prof.image_size, width=prof.width, fc_units=prof.fc_units,
                                     num_classes=num_classes)
    mflop = lambda flops: round(flops / 1e6, 2)  # noqa: E731
    ref = {r["epsilon_per_coordinate"]: r for r in m["dpsgd"]["dp_activations"]}
    rows = [{"method": "no privacy: faces sent to the server", "privacy notion": "none",
             "guarantee per image": "none (the server sees the faces)",
             "test accuracy": ref[None]["test_accuracy"], "client MFLOP / image / step": 0.0,
             "upload bytes / image / step": prof.image_size ** 2 * 3}]
    for eps, r in sorted(((e, r) for e, r in ref.items() if e is not None)):
        rows.append({"method": f"DP activations (this paper), ε = {eps:g} per coordinate",
                     "privacy notion": "(ε, δ)-DP of each release; composed over the run",
                     "guarantee per image": f"ε ≈ {r['image_epsilon_per_run']:,.0f} over the run (δ = 1e-5)",
                     "test accuracy": r["test_accuracy"],
                     "client MFLOP / image / step": mflop(client_step_flops(head, trains=True)),
                     "upload bytes / image / step": head.activation_bytes})
    for r in sorted(m["dpsgd"]["rows"], key=lambda r: r["epsilon"]):
        rows.append({"method": f"DP-SGD, ε = {r['epsilon']:,.3g} (noise multiplier {r['noise_multiplier']:.3g})",
                     "privacy notion": "(ε, δ)-DP per example over the run (RDP accountant)",
                     "guarantee per image": f"ε = {r['epsilon']:,.3g} (δ = {m['dpsgd']['delta']:g})",
                     "test accuracy": r["test_accuracy"], "client MFLOP / image / step": mflop(whole),
                     "upload bytes / image / step": 0})
    trivial = max(v["ssim"] for v in m["privynet"]["trivial"].values())
    for r in m["privynet"]["rows"]:
        rows.append({"method": f"PrivyNet-style, frozen public head to {r['cut']}",
                     "privacy notion": "none formal (the representation only)",
                     "guarantee per image": f"none; decoder SSIM {r['decoder_ssim']:.2f} (guessing: {trivial:.2f})",
                     "test accuracy": r["test_accuracy"],
                     "client MFLOP / image / step": round(r["client_mflops_per_step"], 2),
                     "upload bytes / image / step": r["upload_bytes_per_image"]})
    for r in m["dssgd"]["rows"]:
        setting = "alone" if r["standalone"] else f"θ = {r['theta_upload']:g}"
        rows.append({"method": f"DSSGD, K = {r['participants']}, {setting}",
                     "privacy notion": "none formal (raw data stay local; gradients shared)",
                     "guarantee per image": "none", "test accuracy": r["test_accuracy"],
                     "client MFLOP / image / step": mflop(whole),
                     "upload bytes / image / step": r["upload_bytes_per_image"]})
    s = m["spnn"]
    rows.append({"method": "SPNN-style, conv1 on secret shares (2 holders)",
                 "privacy notion": "cryptographic between holders; none against the server's view",
                 "guarantee per image": f"none vs the server; decoder SSIM {s['decoder_ssim']:.2f} (guessing: "
                                        f"{trivial:.2f})",
                 "test accuracy": s["test_accuracy"], "client MFLOP / image / step": s["client_mflop_per_image"],
                 "upload bytes / image / step": s["upload_bytes_per_image"]})
    for r in rows:
        r["test accuracy"] = round(float(r["test accuracy"]), 4)
        r["upload bytes / image / step"] = int(round(r["upload bytes / image / step"]))
    return rows


# --- SPNN-style: conv1 on secret shares ------------------------------------------------------------------------
def spnn_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, seed: int = 0, n_faces: int = 16,
               force: bool = False, progress: bool = True) -> Dict[str, Any]:
    """SPNN-style: holder A has the left half of every face's columns, holder B the right half; conv1_1 runs on
    additive secret shares (:class:`dpact_tf.baselines.secret_sharing.SharedConv1`) and the server receives its
    output z only, applies ReLU and Eq. (1) itself and trains the rest.

    The protocol computes the same function as the no-noise network (exact up to its fixed point), so its
    accuracy is measured by running the trained no-noise model of Fig. 3's budget with conv1_1 computed through
    the protocol on the whole test set (training the 15 epochs through the NumPy protocol would cost ~100x the
    float run; tests check that protocol steps equal float steps).  Also: the protocol's messages and bytes per
    image for one training step, its time here, and the decoder (trained on public faces through conv1_1's
    weights -- the worst case: SPNN keeps them secret-shared) against the z the server receives.
    """
    import time

    import tensorflow as tf

    from dpact_tf.baselines.secret_sharing import SharedConv1, split_columns

    prof = get_profile(profile)
    sched = prof.baselines
    data = load_faces(prof, dataset, seed=seed, progress=progress)
    run = run_training(RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=None,
                               epochs=sched.epochs, seed=seed), results_dir=results_dir, progress=progress, data=data)
    cache = _cache(results_dir, prof, dataset, "spnn", {"run": run.spec.key(), "seed": seed, "n_faces": n_faces,
                                                        "attack_epochs": sched.attack_epochs,
                                                        "oracle": evaluation_oracle_key(prof.name, dataset, seed=seed)})
    if force or not (os.path.exists(cache + ".json") and os.path.exists(cache + ".npz")):
        _, public_x, faces, identity = _attack_context(prof, dataset, data, seed=seed, n_faces=n_faces,
                                                       results_dir=results_dir, force=False, progress=progress)
        identity, oracle = identity()
        split = run.load_split()
        conv = split.client.get_layer("conv1_1")
        kernel, bias = (w.numpy() for w in conv.weights)
        column = prof.image_size // 2
        # z as Keras computes it (conv1_1 before its ReLU): what the server would get without the protocol
        pre = tf.keras.Sequential([tf.keras.Input(data.test_images.shape[1:]),
                                   tf.keras.layers.Conv2D(kernel.shape[-1], 3, padding="same", name="conv1_1")])
        pre.set_weights([kernel, bias])
        dp = split.dp_layer
        proto = SharedConv1(kernel, bias, rng=seed)
        correct = correct_float = 0
        max_err = 0.0
        start = time.perf_counter()
        for i in range(0, len(data.test_labels), 64):
            x = data.test_images[i:i + 64].astype(np.float32) / 255.0
            z = proto.forward(*split_columns(x, column))
            z_float = pre(x).numpy()
            max_err = max(max_err, float(np.max(np.abs(z - z_float))))
            y = data.test_labels[i:i + 64]
            for zz, counter in ((z, "mpc"), (z_float, "float")):
                logits = split.server(dp.normalize(tf.nn.relu(zz))).numpy()
                hits = int(np.sum(np.argmax(logits, -1) == y))
                if counter == "mpc":
                    correct += hits
                else:
                    correct_float += hits
        forward_seconds = (time.perf_counter() - start) / len(data.test_labels)
        # One training step through the protocol (forward, the server's dL/dz, backward) on one batch: its bytes,
        # messages and rounds per image, and its time.
        step = SharedConv1(kernel, bias, rng=seed + 1)
        x = data.train_images[:prof.batch_size].astype(np.float32) / 255.0
        t0 = time.perf_counter()
        z = step.forward(*split_columns(x, column))
        z_t = tf.convert_to_tensor(z)
        with tf.GradientTape() as tape:
            tape.watch(z_t)
            logits = split.server(dp.normalize(tf.nn.relu(z_t)))
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                data.train_labels[:prof.batch_size], logits, from_logits=True))
        step.backward(tape.gradient(loss, z_t).numpy(), learning_rate=prof.learning_rate, momentum=prof.momentum)
        step_seconds = (time.perf_counter() - t0) / len(x)
        transcript = step.transcript.summary()
        links = transcript["bytes_per_image"]
        upload = sum(v for k, v in links.items() if k.split("->")[0] in ("A", "B"))
        if progress:
            print("baselines: decoder against the z the SPNN server receives", file=sys.stderr, flush=True)
        scores = reconstruction_scores(pre, pre, faces, public_x, identity=identity, epochs=sched.attack_epochs,
                                       seed=seed)
        shown = scores.pop("shown")
        from dpact_tf import attacks

        trivial = {k: {"ssim": v["ssim"], "psnr": v["psnr"]}
                   for k, v in attacks.trivial_baselines(faces, public_x).items()}
        h = w = prof.image_size
        saved = {"test_accuracy": correct / len(data.test_labels),
                 "float_test_accuracy": correct_float / len(data.test_labels),
                 "run_test_accuracy": run.history["test_accuracy"][-1], "max_abs_error_z": max_err,
                 "column_split": column, "forward_seconds_per_image": forward_seconds,
                 "step_seconds_per_image": step_seconds, "transcript": transcript,
                 "upload_bytes_per_image": upload,
                 "dp_activation_upload_bytes_per_image": split.activation_bytes,
                 # per holder: two ring matrix products forward (Beaver), one backward, of [HW, 27] x [27, C]
                 "client_mflop_per_image": round(3 * 2 * h * w * 27 * kernel.shape[-1] / 1e6, 2),
                 **{f"decoder_{k}": v for k, v in scores.items()}, "trivial": trivial, "run": run.spec.key(),
                 "oracle": oracle}
        write_json(cache + ".json", saved)
        np.savez_compressed(cache + ".npz", shown=shown, faces=faces[:4])
    with open(cache + ".json") as fh:
        saved = json.load(fh)
    arrays = np.load(cache + ".npz")
    messages = [{"link": link, "bytes / image / step": int(round(b))}
                for link, b in saved["transcript"]["bytes_per_image"].items()]
    record_metrics(results_dir, prof.name, dataset, "baseline_spnn", saved)
    return {**saved, "messages": messages, "shown": arrays["shown"], "faces": arrays["faces"]}


def spnn_summary(study: Dict[str, Any]) -> str:
    t = study["transcript"]
    guess = max(v["ssim"] for v in study["trivial"].values())
    diff = study["test_accuracy"] - study["float_test_accuracy"]
    cost = ("secret sharing costs no accuracy" if diff == 0 else
            f"the fixed point changes the accuracy by {100 * diff:+.2f} points")
    return (
        f"Computed through the protocol, the trained no-noise network classifies {_pct(study['test_accuracy'])} of "
        f"the test faces correctly ({_pct(study['float_test_accuracy'])} with conv1_1 in float32; the largest "
        f"difference in z is {study['max_abs_error_z']:.1e}): {cost}. It costs "
        f"communication: one training step sends **{study['upload_bytes_per_image']:,.0f} bytes per image** from "
        f"the two holders (the DP client uploads {study['dp_activation_upload_bytes_per_image']:,} bytes as float32), "
        f"in {t['messages_per_forward']:.0f} messages over {t['online_rounds_per_forward']:.0f} online rounds, plus "
        f"the dealer's {t['phase_bytes_per_image'].get('offline', 0):,.0f} bytes per image offline; here it takes "
        f"{1e3 * study['step_seconds_per_image']:.1f} ms per image and step in NumPy. Against the server it adds "
        f"no protection: z is conv1_1's clean output, and the decoder's reconstructions score SSIM "
        f"{study['decoder_ssim']:.2f} ({'above' if study['decoder_ssim'] > guess else 'not above'} the "
        f"{guess:.2f} of the best guess that looks at nothing), {_pct(study['decoder_identity_accuracy'])} of them "
        f"named as the right person by the evaluation oracle ({oracle_words(study['oracle'])}). The pixels are hidden from the *other holder*, not from the server.")
