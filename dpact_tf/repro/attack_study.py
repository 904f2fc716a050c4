"""The attacks chapter: what a curious server recovers from the releases, each measure with its uncertainty and
beside what needs no release at all.

Per epsilon, with the public conv1 (the fine-tuning case: the server knows the released layer, and a face is
released E = ``finetune_epochs`` times, so the full-strength server averages its copies):

1. **reconstruction** over ``n_faces`` test faces of different people: a decoder the server trains on public faces
   (simulating the averaged noise) applied to the mean of E releases, optimization-based inversion from one copy and
   from the mean, and the **null decoder** -- the same decoder fed another face's releases.  SSIM per face with
   percentile-bootstrap intervals; the decoder's margin over the best guess that uses no release of this face (grey
   image, public mean face, null decoder) as a paired interval;
2. **identity**: an evaluation oracle (:mod:`dpact_tf.repro.oracle`: dlib's public face ResNet with a softmax
   trained on the clean training split; the chapter sets its test accuracy beside the book's non-private models)
   names the person in each reconstruction; its accuracy on the true faces is the ceiling every identity score
   is read against.  The server's own classifier, trained on
   the noisy activations (the fine-tuning run at this epsilon, final epoch), is an identity attack too, read
   against always guessing the largest class;
3. **membership** against the server (:mod:`dpact_tf.membership`): a likelihood test on the releases it received,
   with a threshold chosen on calibration candidates and Clopper--Pearson bounds on held-out ones
   (:func:`dpact_tf.audit.membership_audit`).

Results are cached under ``attacks/<hash>`` of the settings and code; the study returns an :class:`AttackStudy`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from dpact_tf import accounting
from dpact_tf.repro import plots
from dpact_tf.repro.claims import ATTACK_CONFIDENCE
from dpact_tf.repro.oracle import ORACLE_MODULES, evaluation_oracle, evaluation_oracle_key
from dpact_tf.repro.privacy_studies import attack_epsilons
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.results import TRAINING_MODULES, cache_key, record_metrics, study_dir
from dpact_tf.repro.runs import RunSpec, load_faces, run_training
from dpact_tf.jsonio import write_json

__all__ = ["AttackInputs", "AttackStudy", "attack_inputs", "attack_study", "attack_table", "attack_summary",
           "scale_note", "FIGURES", "ATTACK_MODULES"]

# The code behind the attack study's cached results (its cache key includes their source).
ATTACK_MODULES = (*TRAINING_MODULES, "dpact_tf.attacks", "dpact_tf.membership", "dpact_tf.audit",
                  "dpact_tf.repro.attack_study", "dpact_tf.repro.pretrain", *ORACLE_MODULES)
# The chapter's figures, by MyST name.
FIGURES = ("fig-reconstructions", "fig-attacks", "fig-identity", "fig-membership")
# Reconstructions kept per epsilon for the figure (the first faces), by attack.
_SHOWN = {"decoder (mean of E)": "decoder", "inversion (mean of E)": "inversion"}


@dataclasses.dataclass
class AttackInputs:
    """What the attacks share: the victim's faces, the public faces, the public model (whose conv1 is released)."""

    faces: np.ndarray          # [n, H, W, 3] in [0, 1]: test faces of different people
    face_labels: np.ndarray    # their identities
    public_images: np.ndarray  # [m, H, W, 3] uint8: the public (disjoint) identities the server trains on
    data: Any                  # the evaluation split (dpact_tf.data.FaceSplit)
    public_model: Any          # the public model's run (conv1 frozen and released while fine-tuning)
    releases: int              # E: releases of one training face (one per fine-tuning epoch)
    decoder_epochs: int        # the profile's decoder training budget


@dataclasses.dataclass
class AttackStudy:
    """The attacks chapter's results (``rows``: one dict per epsilon; figures keyed by their MyST names)."""

    rows: List[Dict[str, Any]]
    baselines: Dict[str, Dict[str, Any]]   # grey / mean_face: SSIM (mean, interval) and the oracle's accuracy
    oracle: Dict[str, Any]                 # the identity oracle: what it is, its ceiling on the true faces
    scale: Dict[str, Any]                  # per-image noise multipliers at this size and the paper's
    releases_averaged: int
    people: int
    n_faces: int
    n_candidates: int                      # membership candidates per class (half calibration, half held out)
    public_images: int
    majority_class_test_accuracy: float
    figures: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def metrics(self) -> Dict[str, Any]:
        """Everything but the figures (what is recorded for the discussion chapter)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "figures"}

    def row(self, epsilon: Optional[float]) -> Dict[str, Any]:
        return next(r for r in self.rows if r["epsilon"] == epsilon)


def attack_inputs(*, profile: str, dataset: str, results_dir: Optional[str] = None, seed: int = 0,
                  n_faces: int = 128, progress: bool = True) -> AttackInputs:
    from dpact_tf.repro.pretrain import pretrain

    prof = get_profile(profile)
    data = load_faces(prof, dataset, seed=seed, progress=progress)
    public = load_faces(prof, dataset, public=True, seed=seed, progress=progress)
    pre = pretrain(prof.name, dataset, results_dir=results_dir, seed=seed, progress=progress)
    idx = data.distinct_people_test_indices(n_faces)
    return AttackInputs(faces=data.test_images[idx].astype(np.float32) / 255.0, face_labels=data.test_labels[idx],
                        public_images=public.train_images, data=data, public_model=pre,
                        releases=int(prof.finetune_epochs), decoder_epochs=int(prof.baselines.attack_epochs))


def scale_note(profile) -> Dict[str, Any]:
    """Per-image noise multipliers (proven sensitivity bound, epsilon 1; the ratio holds at every epsilon) at the
    profile's conv1 activation and at the paper's: the larger activation gets relatively less noise per image."""
    from dpact_tf.vggface import layer_plan

    out = {}
    for name, p in (("profile", get_profile(profile)), ("paper", get_profile("paper"))):
        shape = (p.image_size, p.image_size, layer_plan(p.width)[0][2])
        out[name] = {"shape": list(shape), "noise_multiplier": accounting.image_noise_multiplier(1.0, 1e-5, shape)}
    out["ratio"] = out["profile"]["noise_multiplier"] / out["paper"]["noise_multiplier"]
    return out


def _scored(prefix: str, per_face: np.ndarray, seed: int) -> Dict[str, float]:
    from dpact_tf import audit

    lo, hi = audit.bootstrap_interval(per_face, confidence=ATTACK_CONFIDENCE, seed=seed)
    return {prefix: float(np.mean(per_face)), f"{prefix}_lo": lo, f"{prefix}_hi": hi}


def attack_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, epsilons=None, seed: int = 0,
                 n_faces: int = 128, n_candidates: int = 200, inversion_steps: int = 200,
                 inputs: Optional[AttackInputs] = None, force: bool = False, progress: bool = True) -> AttackStudy:
    """Reconstruction, identity and membership per epsilon (see the module docstring)."""
    prof = get_profile(profile)
    eps_list = attack_epsilons(prof, epsilons)
    inputs = inputs or attack_inputs(profile=prof.name, dataset=dataset, results_dir=results_dir, seed=seed,
                                     n_faces=n_faces, progress=progress)
    settings = {"epsilons": eps_list, "seed": seed, "n_faces": len(inputs.faces), "n_candidates": n_candidates,
                "inversion_steps": inversion_steps, "decoder_epochs": inputs.decoder_epochs,
                "releases": inputs.releases, "pretrain": inputs.public_model.spec.key(),
                "profile": prof.training_settings(), "oracle": evaluation_oracle_key(prof.name, dataset, seed=seed),
                "finetune": [_finetune_spec(prof, dataset, eps, inputs, seed).key() for eps in eps_list]}
    cache = os.path.join(study_dir(results_dir, prof.name, dataset, "attacks"), cache_key(settings, modules=ATTACK_MODULES))
    if not force and os.path.exists(cache + ".json") and os.path.exists(cache + ".npz"):
        with open(cache + ".json") as fh:
            saved = json.load(fh)
        arrays = np.load(cache + ".npz")
        shown = {name: {e: arrays[f"{tag}_{i}"] for i, e in enumerate(eps_list)} for name, tag in _SHOWN.items()}
    else:
        saved, shown = _run(prof, dataset, eps_list, inputs, results_dir=results_dir, seed=seed,
                            n_candidates=n_candidates, inversion_steps=inversion_steps, progress=progress)
        write_json(cache + ".json", saved)
        np.savez_compressed(cache + ".npz", **{f"{tag}_{i}": shown[name][e] for name, tag in _SHOWN.items()
                                               for i, e in enumerate(eps_list)})
    study = AttackStudy(**saved, scale=scale_note(prof), majority_class_test_accuracy=inputs.data.majority_class_rate)
    _figures(study, shown, inputs.faces, prof, dataset, results_dir)
    record_metrics(results_dir, prof.name, dataset, "attacks", study.metrics())
    return study


def _finetune_spec(prof, dataset: str, eps, inputs: AttackInputs, seed: int) -> RunSpec:
    """The fine-tuning chapter's run at ``eps``: the server's own classifier on the noisy activations."""
    return RunSpec(task="finetune", profile=prof.name, dataset=dataset, epsilon=eps, epochs=prof.finetune_epochs,
                   seed=seed, init=inputs.public_model.spec.key())


def _run(prof, dataset, eps_list, inputs: AttackInputs, *, results_dir, seed, n_candidates, inversion_steps,
         progress):
    from dpact_tf import attacks, audit, membership

    data, faces, E = inputs.data, inputs.faces, inputs.releases
    x_train = data.train_images.astype(np.float32) / 255.0
    x_test = data.test_images.astype(np.float32) / 255.0
    n_cand = int(min(n_candidates, len(x_train), len(x_test)))
    rng = np.random.default_rng(seed)
    candidates = np.concatenate([x_train[rng.choice(len(x_train), n_cand, replace=False)],
                                 x_test[rng.choice(len(x_test), n_cand, replace=False)]])
    judge = evaluation_oracle(prof.name, dataset, data, results_dir=results_dir, seed=seed, progress=progress)
    identity = judge.for_labels(inputs.face_labels)
    trivial = attacks.trivial_baselines(faces, inputs.public_images)
    per_face = {name: attacks.ssim_per_face(np.broadcast_to(b["image"], faces.shape), faces)
                for name, b in trivial.items()}
    baselines = {name: {**_scored("ssim", per_face[name], seed),
                        "identity": identity(np.broadcast_to(b["image"], faces.shape).copy())}
                 for name, b in trivial.items()}
    ceiling = identity(faces)
    oracle = {**judge.summary(), "ceiling": ceiling}
    public_x = inputs.public_images.astype(np.float32) / 255.0
    rows, shown = [], {name: {} for name in _SHOWN}
    for k, eps in enumerate(eps_list):
        if progress:
            print(f"attacks: {plots.eps_label(eps)}", file=sys.stderr, flush=True)
        victim = inputs.public_model.load_split(epsilon=eps, noise_seed=seed + 10 + k)
        clean_client = victim.clean_client()
        one = victim.client.predict(faces, batch_size=256, verbose=0)
        mean = attacks.average_releases(victim.client, faces, E)
        decoder = attacks.train_decoder(attacks.mean_release_client(clean_client, victim.dp_layer.stddev, E),
                                        public_x, epochs=inputs.decoder_epochs, seed=seed)
        recs = {"decoder": attacks.decode(decoder, mean),
                "null_decoder": attacks.decode(decoder, np.roll(mean, 1, axis=0)),  # another face's releases
                "inversion": attacks.invert(clean_client, one, steps=inversion_steps, seed=seed),
                "inversion_avg": attacks.invert(clean_client, mean, steps=inversion_steps, seed=seed)}
        shown["decoder (mean of E)"][eps] = recs["decoder"][:4]
        shown["inversion (mean of E)"][eps] = recs["inversion_avg"][:4]
        row: Dict[str, Any] = {"epsilon": eps}
        ssim = {name: attacks.ssim_per_face(rec, faces) for name, rec in recs.items()}
        for name, values in ssim.items():
            row.update(_scored(f"{name}_ssim", values, seed))
            row[f"{name}_identity"] = identity(recs[name])
        guesses = {"grey": per_face["grey"], "mean_face": per_face["mean_face"], "null_decoder": ssim["null_decoder"]}
        best_guess = max(guesses, key=lambda g: float(np.mean(guesses[g])))
        lo, hi = audit.bootstrap_interval(ssim["decoder"] - guesses[best_guess], confidence=ATTACK_CONFIDENCE,
                                          seed=seed)
        row.update({"best_guess": best_guess, "decoder_margin": float(np.mean(ssim["decoder"] - guesses[best_guess])),
                    "decoder_margin_lo": lo, "decoder_margin_hi": hi})
        finetune = run_training(_finetune_spec(prof, dataset, eps, inputs, seed), results_dir=results_dir,
                                progress=progress, data=data)
        row["server_classifier_accuracy"] = float(finetune.history["test_accuracy"][-1])
        scores = membership.server_membership_scores(clean_client, victim.dp_layer, x_train, candidates, releases=E)
        mia = audit.membership_audit(scores[:n_cand], scores[n_cand:], delta=victim.dp_layer.delta,
                                     confidence=ATTACK_CONFIDENCE, seed=seed)
        row.update({f"mia_{name}": v for name, v in mia.to_dict().items()})
        rows.append(row)
    saved = {"rows": rows, "baselines": baselines, "oracle": oracle, "releases_averaged": E,
             "people": int(data.num_classes), "n_faces": int(len(faces)), "n_candidates": n_cand,
             "public_images": int(len(public_x))}
    return saved, shown


def _figures(study: AttackStudy, shown, faces, prof, dataset, results_dir) -> None:
    out_dir = study_dir(results_dir, prof.name, dataset, "figures")
    figs = {"fig-reconstructions": plots.reconstruction_grid(faces[:4], shown, dataset=dataset),
            "fig-attacks": plots.reconstruction_quality_plot(study.rows, study.baselines, dataset=dataset),
            "fig-identity": plots.identity_attack_plot(study.rows, study.baselines, oracle=study.oracle,
                                                       chance=study.majority_class_test_accuracy, dataset=dataset),
            "fig-membership": plots.membership_plot(study.rows, dataset=dataset)}
    for name, fig in figs.items():
        plots.save_figure(fig, out_dir, "attack_" + name[4:], {"rows": study.rows, "baselines": study.baselines})
    study.figures = figs


def _pm(row: Mapping[str, Any], key: str) -> str:
    return f"{row[key]:.2f} [{row[key + '_lo']:.2f}, {row[key + '_hi']:.2f}]"


def attack_table(study: AttackStudy) -> List[Dict[str, str]]:
    """One short row per epsilon for the chapter (SSIM means with 95 % bootstrap intervals)."""
    ceiling = study.oracle["ceiling"]
    out = []
    for r in study.rows:
        out.append({"ε": plots.eps_label(r["epsilon"]).replace("ε = ", ""),
                    "decoder SSIM": _pm(r, "decoder_ssim"),
                    "null decoder": _pm(r, "null_decoder_ssim"),
                    "inversion (mean)": _pm(r, "inversion_avg_ssim"),
                    "named (of ceiling)": f"{r['decoder_identity'] / ceiling:.0%}" if ceiling else "—",
                    "server classifier": f"{r['server_classifier_accuracy']:.3f}",
                    "membership ε ≥": f"{r['mia_epsilon_lower']:.2f}"})
    return out


def _at(values) -> str:
    return "at ε ∈ {" + ", ".join(f"{e:g}" for e in values) + "}" if values else "at no ε attacked"


def attack_summary(study: AttackStudy) -> str:
    """Markdown: the verdict of each attack, computed from the study's numbers and intervals."""
    from dpact_tf import audit

    rows = study.rows
    noisy = [r for r in rows if r["epsilon"] is not None]
    base = next((r for r in rows if r["epsilon"] is None), None)
    if not noisy:
        return "No noisy run in this sweep."
    g, m = study.baselines["grey"], study.baselines["mean_face"]
    beats = [r["epsilon"] for r in noisy if r["decoder_margin_lo"] > 0]
    lo, hi = noisy[0], noisy[-1]
    text = [f"**Reconstruction** ({study.n_faces} faces, 95 % bootstrap intervals). Guesses that use no release of "
            f"the face: a grey image scores SSIM {_pm(g, 'ssim')}, the public mean face {_pm(m, 'ssim')}, the "
            f"decoder fed another face's releases {_pm(lo, 'null_decoder_ssim')} at ε = {lo['epsilon']:g}. The "
            f"decoder on the mean of {study.releases_averaged} releases scores {_pm(lo, 'decoder_ssim')} at ε = "
            f"{lo['epsilon']:g} and {_pm(hi, 'decoder_ssim')} at ε = {hi['epsilon']:g}"
            + (f" ({_pm(base, 'decoder_ssim')} without noise)" if base else "") + ". Its paired margin over the best "
            f"of those guesses has an interval above 0 {_at(beats)}."]
    ceiling = study.oracle["ceiling"]
    share = lambda r: r["decoder_identity"] / ceiling if ceiling else float("nan")  # noqa: E731
    fallback = (f" **{study.oracle['fallback']}, so the oracle is {study.oracle['description']}.**"
                if study.oracle.get("fallback") else "")
    text.append(f"**Identity.**{fallback} The evaluation oracle, not an attacker ({study.oracle['description']}; test accuracy "
                f"{study.oracle['test_accuracy']:.3f}) names {ceiling:.0%} of the true faces: that is the ceiling. "
                f"It names the person in {share(lo):.0%} of that ceiling from the decoder's reconstructions at ε = "
                f"{lo['epsilon']:g} and {share(hi):.0%} at ε = {hi['epsilon']:g} (the grey image: "
                f"{g['identity'] / ceiling if ceiling else float('nan'):.0%}; the mean face: "
                f"{m['identity'] / ceiling if ceiling else float('nan'):.0%}). The server's own classifier, trained on "
                f"the noisy activations, names the person in {lo['server_classifier_accuracy']:.1%} of the test "
                f"images at ε = {lo['epsilon']:g} and {hi['server_classifier_accuracy']:.1%} at ε = {hi['epsilon']:g}, "
                f"against {study.majority_class_test_accuracy:.1%} for always guessing the largest class.")
    leaks = [r["epsilon"] for r in noisy if r["mia_advantage_lower"] > 0]
    ref = base or hi
    where = "without noise" if base else f"at ε = {hi['epsilon']:g}"
    n_held = ref["mia_heldout"]
    most = audit.largest_epsilon_lower(n_held, confidence=ref["mia_confidence"], delta=ref["mia_delta"])
    text.append(f"**Membership** against the server ({study.n_candidates} training and {study.n_candidates} "
                f"held-out test faces as candidates, half to choose the threshold, half to measure it; 95 % "
                f"Clopper–Pearson bounds). The server's likelihood test tells members apart with a true-positive "
                f"rate ≥ {ref['mia_tpr_lower']:.2f} at a false-positive rate ≤ {ref['mia_fpr_upper']:.2f} "
                f"{where} (per-image ε ≥ {ref['mia_epsilon_lower']:.2f}; {n_held} held-out candidates per class "
                f"can show at most {most:.2f}); its advantage bound is above 0 {_at(leaks)}; at ε = {lo['epsilon']:g}: "
                f"TPR ≥ {lo['mia_tpr_lower']:.2f}, FPR ≤ {lo['mia_fpr_upper']:.2f}.")
    sc = study.scale
    text.append(f"**Scale.** Every attack here runs at {'×'.join(map(str, sc['profile']['shape']))}, where one "
                f"image's release has a noise multiplier of {sc['profile']['noise_multiplier']:.3f} (at ε = 1); at "
                f"the paper's {'×'.join(map(str, sc['paper']['shape']))} it is "
                f"{sc['paper']['noise_multiplier']:.4f}, {sc['ratio']:.0f}× smaller: the same attacks at the paper's "
                "size would face relatively less noise per image, so these measurements understate the paper-scale "
                "leakage.")
    return "\n\n".join(text)
