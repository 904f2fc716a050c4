"""(d) of the frontier chapter: DP-SGD on the whole network, from scratch, tuned on the validation split.

The data holder trains the paper's network (``build_split_vggface(..., epsilon=None).monolithic()`` at the
profile's shape: no split, no activation noise) with DP-SGD (:class:`dpact_tf.baselines.dpsgd.DPSGDTrainer`: TF
Privacy's per-example clipping and Gaussian noise, SGD momentum 0.9, the learning rate decayed by a factor 10 over
the run), **Poisson-sampled as accounted** (:class:`dpact_tf.baselines.poisson.PoissonBatches`, the noisy sum
divided by the expected batch size).  For each target per-image epsilon, every candidate (clip C, learning rate,
expected batch size, epochs) of the schedule's grid

1. gets the smallest noise multiplier whose run on the fit images meets the target (RDP accountant, add or remove
   one example, its label covered: :func:`dpact_tf.baselines.dpsgd.calibrate_noise_multiplier`);
2. trains from the same initial weights on the fit images (the training images minus the validation split);
3. is scored on the validation images (and on the test images, recorded, never used for a choice).

:func:`pick` takes the candidate with the highest final validation accuracy; the point reports *its* test
accuracy (no retraining).  ``image_epsilon`` is the picked run's epsilon; ``epsilon_with_tuning`` is the RDP
composition of every candidate's run (:func:`dpact_tf.baselines.dpsgd.composed_epsilon`): each candidate trained on
the fit images, so the search counts as if all were released (Papernot & Steinke, ICLR 2022, tighten this for a
random number of candidates).  The validation images enter no training run; they only decide which candidate wins
(a plain argmax over a few accuracies), which this accounting leaves out, as (e)'s does.

Every candidate run is cached on its own, keyed by its configuration, the split and :data:`SCRATCH_MODULES`: a long
``medium`` sweep resumes where it stopped, and editing the frontier chapter's prose retrains nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpact_tf.jsonio import write_json
from dpact_tf.repro.results import TRAINING_MODULES, cache_key

__all__ = ["Candidate", "pick", "train_candidate", "scratch_dpsgd_points", "estimated_seconds", "SCRATCH_MODULES",
           "SECONDS_PER_EPOCH_SMALL_LFW"]

SCRATCH_MODULES = (*TRAINING_MODULES, "dpact_tf.baselines.dpsgd", "dpact_tf.baselines.poisson",
                   "dpact_tf.baselines.whole_model", "dpact_tf.repro.frontier_scratch")

#: Wall seconds of one DP-SGD epoch over the LFW fit images (about 3,100 faces) at the small profile's shape (64x64,
#: width 1/8, fc 256), expected batch 256, validation scored: 10.5-11 s per epoch after the first (16 s, tracing
#: included) of :func:`train_candidate` on the 2-core CPU beside one other low-priority job.  Medium runs at the same
#: shape.  Only estimates use it: the chapter reports the measured seconds of the runs it made.
SECONDS_PER_EPOCH_SMALL_LFW = 11.0


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One DP-SGD configuration of the tuning grid."""

    clip: float           # C: each example's gradient is clipped to this L2 norm
    learning_rate: float  # initial rate of SGD momentum 0.9, decayed by 10 over the run
    batch_size: int       # expected batch size B of Poisson sampling (rate B / n)
    epochs: int           # epochs of ceil(n / B) steps

    def __post_init__(self) -> None:
        if not (self.clip > 0 and self.learning_rate > 0):
            raise ValueError(f"clip and learning_rate must be > 0 (got {self.clip}, {self.learning_rate})")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1 or int(self.epochs) != self.epochs \
                or self.epochs < 1:
            raise ValueError(f"batch_size and epochs must be positive integers (got {self.batch_size}, {self.epochs})")

    def label(self) -> str:
        return f"clip {self.clip:g}, lr {self.learning_rate:g}, batch {self.batch_size}, {self.epochs} epochs"


def pick(validation_accuracies: Sequence[float]) -> int:
    """The index of the highest validation accuracy (the first on a tie; NaN never wins unless all are NaN)."""
    if not len(validation_accuracies):
        raise ValueError("pick needs at least one candidate")
    acc = np.nan_to_num(np.asarray(validation_accuracies, np.float64), nan=-np.inf)
    return int(np.argmax(acc))


def train_candidate(data, fit: np.ndarray, val: np.ndarray, candidate: Candidate, *, target_epsilon: float,
                    delta: float, model_kwargs: Dict[str, Any], seed: int) -> Dict[str, Any]:
    """Calibrate, train on ``data``'s fit images and score one candidate (not cached; see
    :func:`scratch_dpsgd_points`).  Returns its noise multiplier, epsilon, validation and test accuracy, history."""
    import tensorflow as tf

    from dpact_tf.baselines.dpsgd import DPSGDTrainer, calibrate_noise_multiplier, dpsgd_epsilon
    from dpact_tf.baselines.poisson import PoissonBatches
    from dpact_tf.data import make_dataset
    from dpact_tf.vggface import build_split_vggface

    n = len(fit)
    run = dict(batch_size=min(candidate.batch_size, n), num_examples=n, epochs=candidate.epochs)
    z = calibrate_noise_multiplier(target_epsilon, delta=delta, **run)
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)  # the same initial weights for every candidate
    model = build_split_vggface(num_classes=data.num_classes, epsilon=None, **model_kwargs).monolithic()
    trainer = DPSGDTrainer(model, l2_norm_clip=candidate.clip, noise_multiplier=z,
                           learning_rate=candidate.learning_rate, momentum=0.9, lr_decay_rate=0.1,
                           expected_batch_size=run["batch_size"])
    batches = PoissonBatches(data.train_images[fit], data.train_labels[fit], expected_batch_size=run["batch_size"],
                             seed=1000 * seed + 53)
    monitor = make_dataset(data.train_images[val], data.train_labels[val], batch_size=256)
    start = time.perf_counter()
    history = trainer.fit(batches, candidate.epochs, monitor_data=monitor)
    seconds = time.perf_counter() - start
    test = trainer.evaluate(make_dataset(data.test_images, data.test_labels, batch_size=256))
    return {"candidate": dataclasses.asdict(candidate), "noise_multiplier": z, **run,
            "epsilon": dpsgd_epsilon(z, delta=delta, **run), "validation_accuracy": history["validation_accuracy"][-1],
            "test_accuracy": test["accuracy"], "seconds": seconds,
            "history": {k: history[k] for k in ("loss", "train_accuracy", "validation_accuracy", "seconds")}}


def _split_fingerprint(data, fit: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (data.train_labels, data.test_labels, fit):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update("\n".join((*data.train_files, *data.test_files)).encode())
    return h.hexdigest()[:16]


def scratch_dpsgd_points(data, fit: np.ndarray, val: np.ndarray, *, epsilons: Sequence[float],
                         grid: Sequence[Candidate], delta: float, model_kwargs: Dict[str, Any], seed: int,
                         cache_dir: str, force: bool = False, progress: bool = True
                         ) -> Tuple[List[Dict[str, Any]], float]:
    """(the ``scratch_dpsgd`` points, one per epsilon as :class:`dpact_tf.repro.frontier.FrontierPoint` fields;
    the wall seconds of the candidates' training, cached or not).  Each candidate run is read from ``cache_dir``
    when there (unless ``force``), else trained and written there."""
    from dpact_tf.baselines.dpsgd import RunShape, composed_epsilon

    if not grid:
        raise ValueError("the (d) grid is empty: give at least one Candidate, or no epsilons to leave (d) out")
    split = _split_fingerprint(data, fit)
    points, seconds = [], 0.0
    for eps in epsilons:
        runs = []
        for i, cand in enumerate(grid):
            key = cache_key({"target": float(eps), "candidate": dataclasses.asdict(cand), "delta": delta,
                             "seed": seed, "model": model_kwargs, "split": split}, modules=SCRATCH_MODULES)
            path = os.path.join(cache_dir, f"{key}.json")
            if force or not os.path.exists(path):
                if progress:
                    print(f"frontier: (d) DP-SGD from scratch at ε = {eps:g}, candidate {i + 1}/{len(grid)}: "
                          f"{cand.label()}", file=sys.stderr, flush=True)
                write_json(path, train_candidate(data, fit, val, cand, target_epsilon=eps, delta=delta,
                                                 model_kwargs=model_kwargs, seed=seed))
            with open(path) as fh:
                runs.append(json.load(fh))
        best = runs[pick([r["validation_accuracy"] for r in runs])]
        total = composed_epsilon([RunShape(r["noise_multiplier"], r["batch_size"], r["num_examples"], r["epochs"])
                                  for r in runs], delta=delta)
        seconds += sum(r["seconds"] for r in runs)
        points.append(dict(
            method="scratch_dpsgd", image_epsilon=best["epsilon"], epsilon_with_tuning=total,
            accuracies=[best["test_accuracy"]], configs=[Candidate(**best["candidate"]).label()],
            detail={"noise_multiplier": best["noise_multiplier"], "sampling": "Poisson", "n_fit": len(fit),
                    "candidates": [{"config": Candidate(**r["candidate"]).label(), "epsilon": r["epsilon"],
                                    "noise_multiplier": r["noise_multiplier"],
                                    "validation_accuracy": r["validation_accuracy"]} for r in runs]}))
    return points, seconds


def estimated_seconds(epsilons: Sequence[float], grid: Sequence[Candidate],
                      seconds_per_epoch: Optional[float] = None) -> float:
    """Wall seconds (estimated) of a (d) sweep on LFW at the small shape: every candidate's epochs at every
    epsilon, at ``seconds_per_epoch`` (default :data:`SECONDS_PER_EPOCH_SMALL_LFW`)."""
    per_epoch = SECONDS_PER_EPOCH_SMALL_LFW if seconds_per_epoch is None else seconds_per_epoch
    return float(len(epsilons) * sum(c.epochs for c in grid) * per_epoch)
