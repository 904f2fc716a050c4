"""The accounting chapter's study (the guarantee a user actually gets) and the attacks chapter's scope (which
epsilons it attacks; the study itself is :mod:`dpact_tf.repro.attack_study`).  Results are saved as JSON and
figures under ``<results_dir>/<profile>/<dataset>/``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from dpact_tf import accounting
from dpact_tf.repro import plots
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.results import record_metrics, study_dir
from dpact_tf.repro.studies import resolve_epsilons

__all__ = ["accounting_study", "attack_epsilons", "attack_scope", "accounting_summary",
           "sensitivity_summary"]


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
