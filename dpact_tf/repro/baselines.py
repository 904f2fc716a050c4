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
from typing import Any, Dict, List, Optional

import numpy as np

from dpact_tf.repro import plots
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.results import TRAINING_MODULES, cache_key, record_metrics, resolve_results_dir, study_dir
from dpact_tf.repro.runs import RunSpec, load_faces, run_training
from dpact_tf.jsonio import write_json

__all__ = ["privynet_study", "reconstruction_scores", "client_step_flops"]

#: the code behind the baselines' cached attack scores (their cache key includes its source)
BASELINE_MODULES = (*TRAINING_MODULES, "dpact_tf.attacks", "dpact_tf.repro.baselines", "dpact_tf.repro.pretrain",
                    "dpact_tf.repro.privacy_studies")


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
    """(pre-trained public model, public images, faces attacked, their identity oracle)."""
    from dpact_tf.repro.pretrain import pretrain
    from dpact_tf.repro.privacy_studies import identity_oracle

    pre = pretrain(prof.name, dataset, results_dir=results_dir, seed=seed, force=force, progress=progress)
    public = load_faces(prof, dataset, public=True, seed=seed, progress=progress)
    face_idx = data.distinct_people_test_indices(n_faces)
    faces = data.test_images[face_idx].astype(np.float32) / 255.0
    identity = identity_oracle(pre.load_split(epsilon=None), data, data.test_labels[face_idx])
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
        "runs": [r.spec.key() for r in runs], "n_faces": n_faces, "attack_epochs": sched.attack_epochs, "seed": seed})
    if force or not (os.path.exists(cache + ".json") and os.path.exists(cache + ".npz")):
        rows, shown = [], {}
        for run in runs:
            split = run.load_split()
            if progress:
                print(f"baselines: decoder against the frozen head cut at {run.spec.cut}", flush=True)
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
        write_json(cache + ".json", {"rows": rows})
        np.savez_compressed(cache + ".npz", **{cut: rec for cut, rec in shown.items()})
    with open(cache + ".json") as fh:
        rows = json.load(fh)["rows"]
    arrays = np.load(cache + ".npz")
    shown = {cut: arrays[cut] for cut in arrays.files}
    result = {"rows": rows, "faces": faces[:4], "shown": shown,
              "majority_class_test_accuracy": data.majority_class_rate, "pretrain": pre.spec.key()}
    record_metrics(results_dir, prof.name, dataset, "baseline_privynet",
                   {"rows": rows, "majority_class_test_accuracy": data.majority_class_rate})
    return result
