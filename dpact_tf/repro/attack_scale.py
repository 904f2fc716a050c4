"""The server's membership test at larger activations: how the attacks chapter's leakage grows with size.

The attacks chapter runs at the profile's activation (64x64x8 at ``small``), where one image's release carries a
noise multiplier about ten times the paper's 224x224x64 (:func:`dpact_tf.repro.attack_study.scale_note`).  The
server's membership test (:mod:`dpact_tf.membership`) needs no decoder or classifier, only the released function,
so it runs at larger activations unchanged: per (input side, conv1 channels) point of the profile's
``attack_scale_points`` and per epsilon of the chapter, the server receives E = ``finetune_epochs`` releases of
each of ``attack_scale_faces`` training faces through the grid mechanism the training uses (the
:class:`~dpact_tf.layers.DPActivation` layer), and tests as many of them and as many held-out test faces
(:func:`dpact_tf.audit.membership_audit`: threshold on half, Clopper--Pearson bounds on the other half).

The released conv1 at a shape the public model does not have is one the server knows: He-initialized with a fixed
seed, then scaled by the public model's own data-dependent initialization on public faces
(:func:`dpact_tf.vggface.initialize_from_data`: zero-mean, unit-variance pre-activations per channel).  Where the
channel count is the public model's, the public (trained) conv1 is measured too, so the chapter can show how much
training the filters matters to the test.

Besides the audit's valid bounds -- which saturate at the sample size's ceiling once the test is perfect on the
held-out candidates -- each row reports the **separation** d' of all member and non-member candidates' scores
(:func:`separation`), which keeps growing past that ceiling.  Results are cached under ``attack_scale/<hash>``
of the settings and code; :func:`membership_at_scale` returns a :class:`ScaleStudy`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpact_tf import accounting
from dpact_tf.jsonio import write_json
from dpact_tf.repro.attack_study import ATTACK_MODULES
from dpact_tf.repro.claims import ATTACK_CONFIDENCE
from dpact_tf.repro.privacy_studies import attack_epsilons
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.results import cache_key, record_metrics, study_dir

__all__ = ["ScaleStudy", "membership_at_scale", "membership_at_point", "known_conv1_client", "separation",
           "scale_table", "scale_summary", "SCALE_MODULES"]

# The code behind the scale study's cached results.
SCALE_MODULES = (*ATTACK_MODULES, "dpact_tf.repro.attack_scale")
# Public faces the known conv1's data-dependent scale is computed on.
_INIT_IMAGES = 128
_DELTA = 1e-5


@dataclasses.dataclass
class ScaleStudy:
    """The scale study's rows (one per point, conv1 and epsilon) and what they share."""

    rows: List[Dict[str, Any]]
    faces: int          # received (member) faces, and as many non-member candidates
    releases: int       # E: releases of each received face
    seconds: float      # wall time of computing the rows (when they were computed; a cached study keeps it)
    points: List[List[int]]  # the (input side, conv1 channels) points, in order

    def metrics(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def separation(members: Sequence[float], nonmembers: Sequence[float]) -> float:
    """d' = (mean member score - mean non-member score) / sqrt of the mean of the two variances.

    Descriptive (no threshold): how many standard deviations apart the two classes' scores are.  -inf scores (a
    release impossible under the candidate) are set to the lowest finite score first; equal constant classes give
    0, distinct constant classes +-inf."""
    m, n = np.asarray(members, np.float64), np.asarray(nonmembers, np.float64)
    if m.size < 2 or n.size < 2:
        raise ValueError(f"separation needs at least 2 scores per class (got {m.size} and {n.size})")
    both = np.concatenate([m, n])
    if np.isnan(both).any() or np.isposinf(both).any():
        raise ValueError("scores must not be NaN or +inf")
    finite = both[np.isfinite(both)]
    floor = finite.min() if finite.size else 0.0
    m, n = np.where(np.isfinite(m), m, floor), np.where(np.isfinite(n), n, floor)
    gap = m.mean() - n.mean()
    spread = math.sqrt((m.var(ddof=1) + n.var(ddof=1)) / 2)
    if spread == 0:
        return 0.0 if gap == 0 else math.copysign(math.inf, gap)
    return float(gap / spread)


def known_conv1_client(side: int, channels: int, public_images: np.ndarray, *, seed: int = 0,
                       kernel: Optional[Tuple[np.ndarray, np.ndarray]] = None):
    """images [N, side, side, 3] in [0, 1] -> the clean released activation (conv1_1, ReLU, clip, Eq. 1).

    ``kernel`` (the public model's conv1_1 kernel and bias) when given; else He-initialized with ``seed`` and scaled
    by :func:`dpact_tf.vggface.initialize_from_data` on ``public_images`` (uint8 or [0, 1] floats, at this side)."""
    import tensorflow as tf

    from dpact_tf.vggface import build_split_vggface, initialize_from_data

    tf.keras.utils.set_random_seed(seed)
    split = build_split_vggface((side, side, 3), 2, width=1 / 8, fc_units=8, channels={"conv1_1": int(channels)})
    conv = split.client.get_layer("conv1_1")
    if kernel is not None:
        if tuple(kernel[0].shape) != tuple(conv.kernel.shape):
            raise ValueError(f"the conv1_1 kernel has shape {kernel[0].shape}; a {channels}-channel conv1_1 needs "
                             f"{tuple(conv.kernel.shape)}")
        conv.set_weights(list(kernel))
    else:
        x = np.asarray(public_images[:_INIT_IMAGES])
        if len(x) < 2:
            raise ValueError("the known conv1's data-dependent scale needs at least 2 public images")
        x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
        initialize_from_data(split, x)
    return split.clean_client()


def membership_at_point(clean_client, members: np.ndarray, nonmembers: np.ndarray, *, epsilon: float,
                        releases: int, delta: float = _DELTA, noise_seed: int = 0) -> Dict[str, Any]:
    """The server's membership test at one activation and epsilon: it received ``releases`` grid releases of each of
    ``members`` (float images in [0, 1]) and tests ``members`` and ``nonmembers``.  Returns the audit's fields
    (``mia_*``), the ``separation`` of all candidates' scores and the activation's shape and per-image noise multiplier."""
    from dpact_tf import audit, membership
    from dpact_tf.layers import DPActivation

    if epsilon is None:
        raise ValueError("the scale study measures noisy releases: pass an epsilon > 0 (without noise membership is "
                         "certain at every size)")
    shape = tuple(int(n) for n in clean_client.output_shape[1:])
    layer = DPActivation(epsilon=epsilon, delta=delta, seed=int(noise_seed))
    layer.build((None, *shape))
    scores = membership.server_membership_scores(clean_client, layer, members,
                                                 np.concatenate([members, nonmembers]), releases=releases)
    k = len(members)
    mia = audit.membership_audit(scores[:k], scores[k:], delta=layer.delta, confidence=ATTACK_CONFIDENCE,
                                 seed=noise_seed)
    return {"shape": list(shape), "coordinates": int(np.prod(shape)), "epsilon": float(epsilon),
            "noise_multiplier": accounting.image_noise_multiplier(epsilon, delta, shape),
            "separation": separation(scores[:k], scores[k:]), **{f"mia_{n}": v for n, v in mia.to_dict().items()}}


def _faces(prof, dataset: str, side: int, seed: int, faces: int, progress: bool):
    """The members (training faces), non-members (test faces) and public faces at ``side`` (the same people and
    images at every side: the split does not depend on the size)."""
    from dpact_tf.repro.runs import load_faces

    sized = dataclasses.replace(prof, image_size=int(side))
    data = load_faces(sized, dataset, seed=seed, progress=progress)
    public = load_faces(sized, dataset, public=True, seed=seed, progress=progress)
    n = int(min(faces, len(data.train_images), len(data.test_images)))
    rng = np.random.default_rng(seed)
    members = data.train_images[rng.choice(len(data.train_images), n, replace=False)].astype(np.float32) / 255.0
    nonmembers = data.test_images[rng.choice(len(data.test_images), n, replace=False)].astype(np.float32) / 255.0
    return members, nonmembers, public.train_images


def membership_at_scale(*, profile: str, dataset: str, results_dir: Optional[str] = None, epsilons=None,
                        seed: int = 0, public_model=None, force: bool = False, progress: bool = True) -> ScaleStudy:
    """The server's membership test at each of the profile's ``attack_scale_points`` and each noisy epsilon of the
    attacks chapter (see the module docstring).  ``public_model``: the public model's run (its conv1 is measured
    where the channel count matches); None loads it (:func:`dpact_tf.repro.pretrain.pretrain`)."""
    from dpact_tf.repro.pretrain import pretrain

    prof = get_profile(profile)
    points = [tuple(int(v) for v in p) for p in prof.attack_scale_points]
    if not points:
        raise ValueError(f"profile {prof.name!r} has no attack_scale_points")
    eps_list = [e for e in attack_epsilons(prof, epsilons) if e is not None]
    if not eps_list:
        raise ValueError("the scale study needs at least one noisy epsilon")
    pre = public_model or pretrain(prof.name, dataset, results_dir=results_dir, seed=seed, progress=progress)
    public_split = pre.load_split(epsilon=None)
    public_conv = public_split.client.get_layer("conv1_1")
    settings = {"points": points, "epsilons": eps_list, "seed": seed, "faces": prof.attack_scale_faces,
                "releases": int(prof.finetune_epochs), "delta": _DELTA, "pretrain": pre.spec.key(),
                "profile": prof.training_settings(), "init_images": _INIT_IMAGES}
    cache = os.path.join(study_dir(results_dir, prof.name, dataset, "attack_scale"),
                         cache_key(settings, modules=SCALE_MODULES) + ".json")
    if not force and os.path.exists(cache):
        with open(cache) as fh:
            saved = json.load(fh)
    else:
        start = time.perf_counter()
        rows: List[Dict[str, Any]] = []
        for side, channels in points:
            members, nonmembers, public = _faces(prof, dataset, side, seed, prof.attack_scale_faces, progress)
            conv1s = {"known": known_conv1_client(side, channels, public, seed=seed)}
            if public_conv.filters == channels:
                conv1s["public"] = known_conv1_client(side, channels, public, kernel=public_conv.get_weights())
            for name, client in conv1s.items():
                for k, eps in enumerate(eps_list):
                    if progress:
                        print(f"attack scale: {side}x{side}x{channels} {name} conv1, epsilon {eps:g}", file=sys.stderr,
                              flush=True)
                    t0 = time.perf_counter()
                    row = membership_at_point(client, members, nonmembers, epsilon=eps, releases=prof.finetune_epochs,
                                              noise_seed=seed + 100 + k)
                    rows.append({"conv1": name, "seconds": time.perf_counter() - t0, **row})
        saved = {"rows": rows, "faces": int(len(members)), "releases": int(prof.finetune_epochs),
                 "seconds": time.perf_counter() - start, "points": [list(p) for p in points]}
        write_json(cache, saved)
    study = ScaleStudy(**saved)
    record_metrics(results_dir, prof.name, dataset, "attack_scale", study.metrics())
    return study


def _shape(row: Dict[str, Any]) -> str:
    return "×".join(str(n) for n in row["shape"])


def scale_table(study: ScaleStudy) -> List[Dict[str, str]]:
    """One short row per (activation, conv1, epsilon) for the chapter."""
    return [{"activation": _shape(r), "conv1": r["conv1"], "ε": f"{r['epsilon']:g}",
             "noise multiplier": f"{r['noise_multiplier']:.4f}", "AUC": f"{r['mia_auc']:.2f}",
             "TPR ≥ / FPR ≤": f"{r['mia_tpr_lower']:.2f} / {r['mia_fpr_upper']:.2f}",
             "ε ≥": f"{r['mia_epsilon_lower']:.2f}", "separation": f"{r['separation']:.1f}"}
            for r in study.rows]


def _fmt_sep(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.1f}"


def scale_summary(study: ScaleStudy, *, paper_shape: Sequence[int] = (224, 224, 64)) -> str:
    """Markdown: how the membership test's leakage grows with the activation's size, computed from the rows."""
    from dpact_tf import audit

    known = [r for r in study.rows if r["conv1"] == "known"]
    if not known:
        return "No point of the scale study used the known conv1."
    eps_list = sorted({r["epsilon"] for r in known})
    by_size = sorted({tuple(r["shape"]) for r in known}, key=lambda s: math.prod(s))
    row = {(tuple(r["shape"]), r["epsilon"]): r for r in known}
    small, large = by_size[0], by_size[-1]
    e0 = eps_list[0]
    first, last = row[(small, e0)], row[(large, e0)]
    held = first["mia_heldout"]
    ceiling = audit.largest_epsilon_lower(held, confidence=first["mia_confidence"], delta=first["mia_delta"])
    grows = all(row[(a, e)]["separation"] < row[(b, e)]["separation"]
                for e in eps_list for a, b in zip(by_size, by_size[1:]))
    leaks = [_shape(row[(s, e0)]) for s in by_size if row[(s, e0)]["mia_advantage_lower"] > 0]
    capped = sum(r["mia_epsilon_lower"] >= ceiling - 1e-9 for r in known)
    text = [f"**At larger activations.** The server received {study.releases} releases of each of {study.faces} "
            f"training faces and tests them and {study.faces} held-out test faces (half of each to choose the "
            f"threshold, {held} of each to measure it with {first['mia_confidence']:.0%} Clopper–Pearson bounds: "
            f"the ε bound can show at most {ceiling:.2f}; it does at "
            f"{capped} of the {len(known)} settings with the known conv1). With {study.faces} received faces a "
            "non-member's nearest received face is farther than among the chapter's whole training split, so the "
            "test is easier here than in the chapter's membership rows: compare these rows with each other. At "
            f"ε = {e0:g}, from {_shape(first)} to {_shape(last)} the per-image noise multiplier falls from "
            f"{first['noise_multiplier']:.4f} to {last['noise_multiplier']:.4f}, the test's AUC is "
            f"{first['mia_auc']:.2f} and {last['mia_auc']:.2f}, and the separation of member and non-member scores "
            f"grows from {_fmt_sep(first['separation'])} to {_fmt_sep(last['separation'])} standard deviations; "
            "its advantage bound is above 0 at " + (", ".join(leaks) if leaks else "no size measured") + "."]
    public = [r for r in study.rows if r["conv1"] == "public"]
    if public:
        p = next((r for r in public if r["epsilon"] == e0), public[0])
        k = row[(tuple(p["shape"]), p["epsilon"])]
        ratio = k["separation"] / p["separation"] if p["separation"] > 0 else math.inf
        if abs(ratio - 1) <= 0.1:
            verdict = ("within 10 % of each other: the test's power follows how the activations spread across faces, "
                       "which the data-dependent scale sets, more than the training of the filters.")
        elif ratio < 1:
            verdict = ("the untrained conv1 is the weaker, so the larger points understate what a trained conv1 "
                       "releases.")
        else:
            verdict = (f"the untrained conv1 separates the two {ratio:.1f}× as far as the trained one, so the larger "
                       "points may overstate a trained conv1's leakage by about that factor.")
        text.append(f"At {_shape(p)} and ε = {p['epsilon']:g} the public model's trained conv1 gives AUC "
                    f"{p['mia_auc']:.2f} (separation {_fmt_sep(p['separation'])}) and the known, untrained conv1 "
                    f"{k['mia_auc']:.2f} ({_fmt_sep(k['separation'])}): " + verdict)
    coords = math.prod(large)
    paper = math.prod(paper_shape)
    if grows and coords < paper:
        text.append(f"Every step up in size raised the separation at every ε measured. The paper's "
                    f"{'×'.join(map(str, paper_shape))} activation has {paper / coords:.0f}× the coordinates of the "
                    f"largest measured here and a noise multiplier of "
                    f"{accounting.image_noise_multiplier(e0, first['mia_delta'] or _DELTA, paper_shape):.4f} at "
                    f"ε = {e0:g}: on this trend, measurements at smaller activations understate the leakage at the "
                    "paper's size.")
    elif grows:
        text.append("Every step up in size raised the separation at every ε measured, up to the paper's activation.")
    else:
        text.append("The separation did not grow at every step in size and ε measured: the rows above show where.")
    text.append(f"Computing these rows took {study.seconds / 60:.1f} minutes on the machine that built this book.")
    return " ".join(text[:-1]) + "\n\n" + text[-1]
