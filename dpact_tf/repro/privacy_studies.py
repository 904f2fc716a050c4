"""The two "privacy truth" chapters: the guarantee a user actually gets (accounting) and what a curious
server actually recovers (attacks).  Like :mod:`dpact_tf.repro.studies`, one function per notebook; results
are saved as JSON and figures under ``<results_dir>/<profile>/<dataset>/``.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from dpact_tf import accounting
from dpact_tf.repro import plots
from dpact_tf.repro.claims import ATTACK_SSIM_MARGIN
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.results import TRAINING_MODULES, cache_key, record_metrics, study_dir
from dpact_tf.repro.studies import resolve_epsilons
from dpact_tf.jsonio import write_json
from dpact_tf.repro.runs import RunSpec, load_faces, run_training

__all__ = ["accounting_study", "attack_epsilons", "attack_scope", "attack_study", "identity_oracle"]

# The code behind the attack study's cached results (its cache key includes their source).
ATTACK_MODULES = (*TRAINING_MODULES, "dpact_tf.attacks", "dpact_tf.repro.privacy_studies", "dpact_tf.repro.pretrain")


def split_counts(prof, dataset: str, *, seed: int = 0) -> Dict[str, int]:
    """Training and test images of the evaluation split of ``dataset`` (counted, no image is loaded)."""
    from dpact_tf.data import resolve_lfw_dir, scan_lfw_dir, select_people, split_people

    if dataset == "lfw":
        people = select_people(scan_lfw_dir(resolve_lfw_dir()), 10, None)
    elif dataset == "synthetic":
        people = {f"p{k}": [f"p{k}/{i}" for i in range(prof.synthetic_images_per_identity)]
                  for k in range(prof.synthetic_identities)}
    else:
        raise ValueError(f"dataset must be 'lfw' or 'synthetic' (got {dataset!r})")
    train, test, names = split_people(people, seed=seed)
    return {"n_train": len(train), "n_test": len(test), "people": len(names)}


def accounting_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, epsilons=None,
                     delta: float = 1e-5, seed: int = 0) -> Dict[str, Any]:
    """Per-coordinate, paper-composed, per-image and per-run epsilon at the paper's size and this profile's.

    Per run, the two composition cases are separated: conv1 frozen (fine-tuning, ``finetune_epochs``) and conv1
    trained (from scratch, ``epochs``); release counts come from the dataset's split (one evaluation per epoch).
    """
    from dpact_tf.sensitivity import pixel_sensitivity
    from dpact_tf.vggface import layer_plan

    prof = get_profile(profile)
    eps_list = [e for e in resolve_epsilons(epsilons) if e is not None]
    tables, setups = {}, {}
    for p in (get_profile("paper"), prof):
        shape = (p.image_size, p.image_size, layer_plan(p.width)[0][2])  # conv1_1's activation
        counts = split_counts(p, dataset, seed=seed)
        label = f"{p.name} {'×'.join(map(str, shape))}"
        tables[label] = accounting.accounting_table(
            eps_list, delta=delta, activation_shape=shape, epochs=p.epochs, finetune_epochs=p.finetune_epochs,
            n_train=counts["n_train"], n_test=counts["n_test"], batch_size=p.batch_size)
        setups[label] = {**counts, "epochs": p.epochs, "finetune_epochs": p.finetune_epochs,
                         "batch_size": p.batch_size, "pixel": pixel_sensitivity(shape[2]).to_dict()}
    fig = plots.accounting_plot(tables, dataset=dataset)
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), "accounting", {"tables": tables})
    record_metrics(results_dir, prof.name, dataset, "accounting", {"tables": tables, "setups": setups, "delta": delta})
    return {"tables": tables, "setups": setups, "figures": [fig]}


def attack_epsilons(profile, epsilons=None) -> List[Optional[float]]:
    """The epsilons the attacks chapter runs: ``epsilons`` when given, else the profile's ``attack_epsilons``
    (``small``: six of the sweep's eight, for time), else the paper's sweep."""
    prof = get_profile(profile)
    return resolve_epsilons(prof.attack_epsilons if epsilons is None else epsilons)


def attack_scope(profile, epsilons=None) -> str:
    """One sentence for the attacks chapter: the epsilons attacked at ``profile`` and, when its default leaves part
    of the paper's sweep out, which part and which profiles attack all of it."""
    from dpact_tf.repro.profiles import DEFAULT_EPSILONS, PROFILES

    prof = get_profile(profile)
    attacked = attack_epsilons(prof, epsilons)
    text = f"At `{prof.name}` the attacks run at ε ∈ {plots.eps_set(attacked)}"
    left = [e for e in DEFAULT_EPSILONS if e not in attacked] if epsilons is None else []
    if not left:
        return text + "."
    whole = [name for name in PROFILES if attack_epsilons(name) == list(DEFAULT_EPSILONS)]
    return (text + f"; the sweep's ε ∈ {plots.eps_set(left)} are left out to fit this profile's time budget "
            f"(`Profile.attack_epsilons`); the whole sweep is attacked at " + ", ".join(f"`{n}`" for n in whole) + ".")


def attack_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, epsilons=None, seed: int = 0,
                 n_faces: int = 16, inversion_steps: int = 200, decoder_epochs: int = 3, embedding_epochs: int = 1,
                 force: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Reconstruction (known / unknown first layer), identity leakage and membership inference per epsilon.

    With a public conv1 (fine-tuning, conv1 frozen) each face is released E = ``finetune_epochs`` times and the
    full-strength attacker averages the copies (``*_avg_*``: noise / sqrt(E)); the inversion and the
    re-identification are also scored from a single copy.  Reconstructions are scored against trivial
    baselines (a grey image, the public mean face) and by whether they re-identify the person among the private
    gallery.  Results (rows and the reconstructions shown) are cached under ``attacks/<hash>`` of the settings
    and code; ``force=True`` reruns.
    """
    import tensorflow as tf

    from dpact_tf import attacks
    from dpact_tf.repro.pretrain import pretrain
    from dpact_tf.vggface import build_split_vggface

    prof = get_profile(profile)
    eps_list = attack_epsilons(prof, epsilons)
    releases = int(prof.finetune_epochs)
    data = load_faces(prof, dataset, seed=seed, progress=progress)
    pre = pretrain(prof.name, dataset, results_dir=results_dir, seed=seed, force=force, progress=progress)
    face_idx = data.distinct_people_test_indices(n_faces)
    faces = data.test_images[face_idx].astype(np.float32) / 255.0
    face_labels = data.test_labels[face_idx]
    chance = data.majority_class_rate
    cache = _attack_cache_path(results_dir, prof, dataset, {
        "epsilons": eps_list, "seed": seed, "n_faces": n_faces, "inversion_steps": inversion_steps,
        "decoder_epochs": decoder_epochs, "embedding_epochs": embedding_epochs, "releases": releases,
        "pretrain": pre.spec.key(), "profile": prof.training_settings(), "scratch_epochs": prof.epochs})
    if not force and os.path.exists(cache + ".json") and os.path.exists(cache + ".npz"):
        with open(cache + ".json") as fh:
            saved = json.load(fh)
        arrays = np.load(cache + ".npz")
        shown = {name: {e: arrays[f"{tag}_{i}"] for i, e in enumerate(eps_list)}
                 for name, tag in _SHOWN.items()}
        return _attack_outputs(saved, shown, faces, chance, prof, dataset, results_dir)
    public = load_faces(prof, dataset, public=True, seed=seed, progress=progress)
    public_x = public.train_images
    x_train = data.train_images.astype(np.float32) / 255.0
    x_test = data.test_images.astype(np.float32) / 255.0
    clean_split = pre.load_split(epsilon=None)
    fc7 = tf.keras.Model(clean_split.server.input, clean_split.server.get_layer("fc7").output)
    identity = identity_oracle(clean_split, data, face_labels)
    baselines = attacks.trivial_baselines(faces, public_x)
    summary: Dict[str, Any] = {
        "releases_averaged": releases, "people": int(data.num_classes), "identity_chance": 1.0 / data.num_classes,
        "true_face_identity_accuracy": identity(faces),
        "baselines": {k: {"ssim": v["ssim"], "psnr": v["psnr"],
                          "identity_accuracy": identity(np.broadcast_to(v["image"], faces.shape).copy())}
                      for k, v in baselines.items()}}
    tf.keras.utils.set_random_seed(seed + 999)
    surrogate = build_split_vggface(num_classes=2, **prof.model_kwargs())  # the attacker's guess of a private conv1

    rows: List[Dict[str, Any]] = []
    shown: Dict[str, Dict[Any, np.ndarray]] = {name: {} for name in _SHOWN}
    for k, eps in enumerate(eps_list):
        label = plots.eps_label(eps)
        if progress:
            print(f"attacks: {label}", file=sys.stderr, flush=True)
        row: Dict[str, Any] = {"epsilon": eps}
        # 1. Reconstruction, first layer public (fine-tuning case): the server knows conv1's weights.
        victim = pre.load_split(epsilon=eps, noise_seed=seed + 10 + k)
        one = victim.client(faces).numpy()
        mean = attacks.average_releases(victim.client, faces, releases)
        clean_client = victim.clean_client()
        # The attacker simulates the mean of E releases with one client whose noise has that distribution.
        attacker = attacks.mean_release_client(clean_client, victim.dp_layer.stddev, releases)
        recs = {"inversion_known": attacks.invert(clean_client, one, steps=inversion_steps, seed=seed),
                "inversion_known_avg": attacks.invert(clean_client, mean, steps=inversion_steps, seed=seed),
                "decoder_known_avg": attacks.decode(attacks.train_decoder(
                    attacker, public_x, epochs=decoder_epochs, seed=seed), mean)}
        shown["inversion (public conv1, mean of E)"][eps] = recs["inversion_known_avg"][:4]
        shown["decoder (public conv1, mean of E)"][eps] = recs["decoder_known_avg"][:4]
        # Unknown first layer (training from scratch, conv1 private): a surrogate conv1 stands in.
        scratch = run_training(RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=eps,
                                       epochs=prof.epochs, seed=seed), results_dir=results_dir, force=False,
                               progress=progress, data=data)
        private = scratch.load_split(noise_seed=seed + 20 + k)
        received_private = private.client(faces).numpy()
        sur_client = build_split_vggface(num_classes=2, epsilon=eps, noise_seed=seed + 700 + k, **prof.model_kwargs())
        sur_client.client.set_weights(surrogate.client.get_weights())
        recs["inversion_unknown"] = attacks.invert(surrogate.clean_client(), received_private, steps=inversion_steps,
                                                   seed=seed)
        recs["decoder_unknown"] = attacks.decode(attacks.train_decoder(
            sur_client.client, public_x, epochs=decoder_epochs, seed=seed), received_private)
        for name, rec in recs.items():
            row.update({f"{name}_{m}": v for m, v in attacks.image_similarity(rec, faces).items()})
            row[f"{name}_identity_accuracy"] = identity(rec)
        # 2. Identity leakage: an embedding trained on noisy public activations at this epsilon matches a new
        # noisy activation to the labelled ones received in training (single copies, then means of E copies).
        single = pre.load_split(epsilon=eps, noise_seed=seed + 600 + k).client
        embed = tf.keras.models.clone_model(fc7)
        embed.set_weights(fc7.get_weights())
        attacks.train_embedding(single, embed, public_x, public.train_labels, epochs=embedding_epochs,
                                batch_size=prof.batch_size, seed=seed)
        row["reidentification_accuracy"] = attacks.reidentification_accuracy(
            embed, victim.client.predict(x_train, batch_size=256, verbose=0), data.train_labels,
            victim.client.predict(x_test, batch_size=256, verbose=0), data.test_labels)
        averaged = attacks.mean_release_client(clean_client, victim.dp_layer.stddev, releases)
        row["reidentification_accuracy_avg"] = attacks.reidentification_accuracy(
            embed, averaged.predict(x_train, batch_size=256, verbose=0), data.train_labels,
            averaged.predict(x_test, batch_size=256, verbose=0), data.test_labels)
        # 3. Membership inference on the model trained from scratch at this epsilon (noise on, as deployed).
        logits_train = private.server.predict(private.client.predict(x_train, batch_size=256, verbose=0),
                                              batch_size=256, verbose=0)
        logits_test = private.server.predict(private.client.predict(x_test, batch_size=256, verbose=0),
                                             batch_size=256, verbose=0)
        mia = attacks.membership_inference(logits_train, data.train_labels, logits_test, data.test_labels, seed=seed)
        for attack, res in mia.items():
            row.update({f"mia_{attack.lower()}_{m}": v for m, v in res.items()})
        row["model_test_accuracy"] = scratch.history["test_accuracy"][-1]
        rows.append(row)
    saved = {"rows": rows, "public_images": int(len(public_x)), **summary}
    write_json(cache + ".json", saved)
    np.savez_compressed(cache + ".npz", **{f"{tag}_{i}": shown[name][e] for name, tag in _SHOWN.items()
                                           for i, e in enumerate(eps_list)})
    return _attack_outputs(saved, shown, faces, chance, prof, dataset, results_dir)


def identity_oracle(clean_split, data, face_labels: np.ndarray) -> Callable[[np.ndarray], float]:
    """The evaluator's identity oracle: does an image look like the person?  The public model's fc7 embedding of
    clean pixels, nearest neighbour among the private training faces; returns images -> accuracy on
    ``face_labels``."""
    import tensorflow as tf

    from dpact_tf import attacks

    fc7 = tf.keras.Model(clean_split.server.input, clean_split.server.get_layer("fc7").output)
    image_embed = tf.keras.Model(clean_split.client.input, fc7(clean_split.client.output))
    gallery = image_embed.predict(data.train_images.astype(np.float32) / 255.0, batch_size=256, verbose=0)
    return lambda images: attacks.nearest_identity_accuracy(
        gallery, data.train_labels, image_embed.predict(images, batch_size=256, verbose=0), face_labels)


_SHOWN = {"inversion (public conv1, mean of E)": "inversion", "decoder (public conv1, mean of E)": "decoder"}


def _attack_cache_path(results_dir: Optional[str], prof, dataset: str, settings: Dict[str, Any]) -> str:
    key = cache_key(settings, modules=ATTACK_MODULES)
    return os.path.join(study_dir(results_dir, prof.name, dataset, "attacks"), key)


def _attack_outputs(saved, shown, faces, chance, prof, dataset, results_dir) -> Dict[str, Any]:
    rows = saved["rows"]
    eps_list = [r["epsilon"] for r in rows]
    out_dir = study_dir(results_dir, prof.name, dataset, "figures")
    fig_grid = plots.reconstruction_grid(faces[:4], {k: {e: v[:4] for e, v in d.items()} for k, d in shown.items()},
                                         dataset=dataset)
    plots.save_figure(fig_grid, out_dir, "attack_reconstructions", {"epsilons": eps_list})
    fig_curves = plots.attack_curves(rows, chance=chance, baselines=saved["baselines"],
                                     identity_chance=saved["identity_chance"], dataset=dataset)
    plots.save_figure(fig_curves, out_dir, "attack_curves", {"rows": rows, "baselines": saved["baselines"]})
    metrics = {k: v for k, v in saved.items()}
    metrics.update({"majority_class_test_accuracy": chance, "n_faces": int(len(faces))})
    record_metrics(results_dir, prof.name, dataset, "attacks", metrics)
    return {**metrics, "figures": [fig_grid, fig_curves], "chance": chance}


_PLD_TAGS = (("image", "one release"), ("frozen", "conv1 frozen"), ("trained", "conv1 trained"))


def sensitivity_summary(setups: Dict[str, Dict[str, Any]]) -> str:
    """Markdown: the per-pixel sensitivity bounds, computed (nothing typed in by hand)."""
    parts = []
    for label, st in setups.items():
        pix = st["pixel"]
        value = (f"exactly {pix['upper_sq']:.4f}" if pix["exact"] else
                 f"between {pix['lower_sq']:.4f} (attained by the channel patterns "
                 f"{''.join(str(int(v)) for v in pix['pair'][0][:8])}… against "
                 f"{''.join(str(int(v)) for v in pix['pair'][1][:8])}…) and {pix['upper_sq']:.4f} (proven bound)")
        parts.append(f"**{label}** ({pix['channels']} channels): the worst-case squared change of one pixel's "
                     f"normalized channel vector is {value}; the paper's per-coordinate S_f implies "
                     f"{pix['paper_sq']:g}.")
    return " ".join(parts)


def accounting_summary(tables: Dict[str, List[Dict[str, Any]]]) -> str:
    """Markdown sentences with the computed numbers (nothing typed in by hand)."""
    parts = []
    for label, rows in tables.items():
        lo, hi = rows[0], rows[-1]
        parts.append(
            f"At **{label}** ({lo['activation_coordinates']:,} coordinates), a per-coordinate ε of "
            f"{lo['epsilon_per_coordinate']:g} is a per-image ε between {lo['image_epsilon_lower']:,.0f} and "
            f"{lo['image_epsilon_exact']:,.0f} for one release (the paper's implicit bound S_f√d would give "
            f"{lo['image_epsilon_paper_bound']:,.0f}). "
            f"Fine-tuning (conv1 frozen): {lo['frozen_releases']} releases per image, ε = "
            f"{lo['frozen_epsilon_exact']:,.0f}. Training from scratch (conv1 trained on the raw images): the "
            f"worst-case image composes over {lo['trained_releases']:,} releases ({lo['n_train']:,} training "
            f"images × {lo['epochs']} epochs plus {lo['n_test']:,} test images × {lo['epochs']} evaluations, "
            f"less the rest of its first batch), ε = {lo['trained_epsilon_exact']:,.0f}. "
            f"At ε = {hi['epsilon_per_coordinate']:g} per coordinate: {hi['image_epsilon_exact']:,.0f} per release, "
            f"{hi['frozen_epsilon_exact']:,.0f} (frozen) and {hi['trained_epsilon_exact']:,.0f} (trained). "
            f"With the grid's rounding in the worst case (one more grid step per coordinate) the sensitivity at ε = "
            f"{lo['epsilon_per_coordinate']:g} grows from {lo['image_sensitivity_upper']:.1f} to "
            f"{lo['image_sensitivity_grid']:.1f}, and one release is ε = {lo['image_epsilon_grid']:,.0f} per image "
            f"({lo['trained_epsilon_grid']:,.0f} over the trained run).")
        skipped = {tag: [r["epsilon_per_coordinate"] for r in rows if r[f"{tag}_epsilon_pld"] is None]
                   for tag, name in _PLD_TAGS}
        listed = [f"{name} at per-coordinate ε {', '.join(f'{e:g}' for e in skipped[tag])}"
                  for tag, name in _PLD_TAGS if skipped[tag]]
        if listed:
            parts[-1] += (f" The PLD accountant was not run where the exact ε exceeds "
                          f"{accounting.PLD_MAX_EPSILON:.0e} ({'; '.join(listed)}): no PLD value is reported "
                          "there, only the exact value and the RDP bound.")
    parts.append("Per image, every ε of the sweep is formally vacuous (an ε of even 10 already allows the "
                 "probability of any outcome to change by a factor e¹⁰ ≈ 22,000). The per-coordinate guarantee "
                 "protects each single activation value, not the image. **The labels travel in the clear** with "
                 "every training release: no ε here covers who is in the picture. How much an actual attacker "
                 "recovers is measured in the next chapter.")
    return "\n\n".join(parts)


def attack_summary(study: Mapping[str, Any]) -> str:
    """Where the formal guarantee and the empirical leakage agree or disagree, with the computed numbers.

    Every reconstruction score is put next to the trivial baselines (grey image, public mean face) and chance.
    """
    rows, chance = study["rows"], study["majority_class_test_accuracy"]
    base = study["baselines"]
    by = {r["epsilon"]: r for r in rows}
    noisy = sorted(e for e in by if e is not None)
    if not noisy:
        return "No noisy run in this sweep."
    lo, hi = by[noisy[0]], by[noisy[-1]]
    floor = max(b["ssim"] for b in base.values())
    keys = ("inversion_known_ssim", "inversion_known_avg_ssim", "decoder_known_avg_ssim")
    best = lambda r: max(r[k] for k in keys)  # noqa: E731
    beats = [e for e in noisy if best(by[e]) > floor + ATTACK_SSIM_MARGIN]
    text = [f"Trivial baselines, no release used: a grey image scores SSIM {base['grey']['ssim']:.2f}, the public "
            f"mean face {base['mean_face']['ssim']:.2f}. The best reconstruction with a public first layer (single "
            f"copy or the mean of {study['releases_averaged']} releases) scores {best(hi):.2f} at ε = {noisy[-1]:g} "
            f"and {best(lo):.2f} at ε = {noisy[0]:g}" + (f" ({best(by[None]):.2f} without noise)." if None in by
                                                        else ".")]
    text.append(f"It beats the best baseline by more than {ATTACK_SSIM_MARGIN:g} at "
                + (f"ε ∈ {{{', '.join(f'{e:g}' for e in beats)}}}." if beats else "no ε attacked."))
    ident = lambda r: max(r[k] for k in r if k.endswith("_identity_accuracy"))  # noqa: E731
    text.append(f"Identity level: the best reconstruction is matched to the right person among "
                f"{study['people']} for {ident(hi):.0%} of the faces at ε = {noisy[-1]:g} and {ident(lo):.0%} at "
                f"ε = {noisy[0]:g} (chance {study['identity_chance']:.1%}; the grey image "
                f"{base['grey']['identity_accuracy']:.0%}, the mean face {base['mean_face']['identity_accuracy']:.0%}, "
                f"the true face itself {study['true_face_identity_accuracy']:.0%}).")
    text.append(f"Re-identification from noisy activations (embedding trained on noisy public activations at the "
                f"same ε): {hi['reidentification_accuracy']:.3f} from one copy and "
                f"{hi['reidentification_accuracy_avg']:.3f} from the mean of {study['releases_averaged']} at ε = "
                f"{noisy[-1]:g}; {lo['reidentification_accuracy']:.3f} and {lo['reidentification_accuracy_avg']:.3f} "
                f"at ε = {noisy[0]:g} (always guessing the largest class: {chance:.3f}).")
    aucs = [max(r["mia_threshold_attack_auc"], r["mia_logistic_regression_auc"]) for r in rows]
    text.append(f"Membership inference AUC ranges from {min(aucs):.3f} to {max(aucs):.3f} across the ε attacked "
                "(0.5 = guessing).")
    return " ".join(text)
