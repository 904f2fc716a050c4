"""The frontier chapter: test accuracy against the per-image epsilon a person gets, every method on the same faces.

Every method trains on the training images of the same 158-identity LFW split and is scored on its test
images; each is tuned on a **validation split carved from the training images** (:func:`validation_split`),
never on the test images, and the tuning's privacy cost is stated (Papernot & Steinke, ICLR 2022):

* ``release`` (c) -- a public model's feature vector, centred and clipped, released once per image with
  Gaussian noise for (1 - ``selection_share``) of a per-image epsilon (:mod:`dpact_tf.baselines.feature_release`);
  the server trains candidate classifiers on the releases of the fit images (a softmax grid and the class means,
  :func:`class_means`), and the data holder chooses one by its count of clean validation images named correctly,
  privately (:func:`noisy_max` at ``selection_share`` of the epsilon; the test images are classified from clean
  features, which noisy validation releases do not resemble).
* ``activations_once`` (b) -- the paper's mechanism, released once per image: the public model's conv1 (frozen)
  on the client, each training image's activation released once on the exact grid (:mod:`dpact_tf.grid`) at a
  per-coordinate epsilon chosen so that one release has the per-image epsilon asked for
  (:func:`coordinate_epsilon_for_image`); the server passes the releases through the rest of the public model
  and trains candidate classifiers on them, one chosen privately as in (c).
* ``last_layer_dpsgd`` (e) -- DP-SGD on a softmax over the public features, Poisson-sampled as accounted
  (:mod:`dpact_tf.baselines.linear_dpsgd`); every candidate of the tuning grid is a DP-SGD run on the private
  images, so the tuning's epsilon composes them all (:func:`dpact_tf.baselines.linear_dpsgd.composed_epsilon`)
  and adds the private choice among them (:func:`noisy_max` at ``selection_share`` of the target, on top of it).
* ``scratch_dpsgd`` (d) -- DP-SGD on the whole network from scratch, Poisson-sampled as accounted, tuned over a grid
  of (clip, learning rate, batch, epochs); the tuning's epsilon composes every candidate
  (:mod:`dpact_tf.repro.frontier_scratch`, each candidate run cached on its own).  ``small`` leaves it out.
* ``paper_scratch`` / ``paper_finetune`` (a) -- the paper's own runs (Figs 3 and 4), read from the metrics of the
  from-scratch and fine-tuning chapters, at their per-image epsilon over the run (:mod:`dpact_tf.accounting`).

The feature extractor is a parameter (:class:`dpact_tf.repro.extractors.FeatureExtractor`: a callable images ->
features with a name for the legend); the default is the public stand-in's ``fc7`` (:func:`standin_extractor`).  Features are cached.
:mod:`dpact_tf.repro.frontier_text` says, from the recorded numbers, which method to choose at which per-image
epsilon.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpact_tf.baselines import feature_release, linear_dpsgd
from dpact_tf.data import validation_split
from dpact_tf.jsonio import write_json
from dpact_tf.repro import frontier_scratch, plots
from dpact_tf.repro.extractors import FeatureExtractor, cached_features, dlib_extractor
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.results import (PRETRAIN_MODULES, cache_key, load_metrics, no_noise_final, record_metrics,
                                    resolve_results_dir, study_dir)

__all__ = ["FrontierSchedule", "SCHEDULES", "FeatureExtractor", "standin_extractor", "dlib_extractor", "validation_split",
           "coordinate_epsilon_for_image", "FrontierPoint", "FrontierStudy", "frontier_study", "METHODS",
           "FRONTIER_MODULES"]

# The extractors' code (dlib's network and crop among them), in the features' and the study's keys.
_EXTRACTOR_MODULES = ("dpact_tf.repro.extractors", "dpact_tf.dlib_faces", "dpact_tf.dlib_resnet", "dpact_tf.dlib_keras")
FRONTIER_MODULES = (*PRETRAIN_MODULES, "dpact_tf.accounting", "dpact_tf.sensitivity",
                    "dpact_tf.baselines.feature_release", "dpact_tf.baselines.linear_dpsgd", "dpact_tf.repro.frontier",
                    *_EXTRACTOR_MODULES)

# The from-scratch chapter's no-noise run among the figure's references (read from its metrics, not computed here).
SCRATCH_REFERENCE = "the paper's network from scratch (one run)"

#: method key -> legend label
METHODS: Dict[str, str] = {
    "release": "(c) features released once per image",
    "activations_once": "(b) DP activations (conv1) released once per image",
    "scratch_dpsgd": "(d) DP-SGD on the whole network, from scratch, tuned",
    "last_layer_dpsgd": "(e) DP-SGD on the last layer over public features",
    "release_dlib": "(c) features released once per image, dlib's face ResNet",
    "last_layer_dpsgd_dlib": "(e) DP-SGD on the last layer over dlib's face ResNet",
    "paper_scratch": "(a) DP activations as the paper trains them, from scratch",
    "paper_finetune": "(a) DP activations as the paper trains them, fine-tuning",
}


@dataclasses.dataclass(frozen=True)
class FrontierSchedule:
    """What the frontier chapter runs at one profile."""

    image_epsilons: Tuple[float, ...]                    # per-image epsilons of (b), (c), (e)
    seeds: int                                           # repetitions per point (noise, sampling, training order)
    validation_fraction: float                           # of each person's training images, held out for tuning
    server_grid: Tuple[Tuple[float, int], ...]           # (learning rate, epochs) of a softmax on releases
    dpsgd_grid: Tuple[Tuple[float, float, int], ...]     # (clip, learning rate, epochs) of last-layer DP-SGD
    batch_size: int                                      # (expected) batch size of every softmax training
    activation_seeds: int                                # repetitions of (b) (its release is the costly part)
    activation_epsilons: Tuple[float, ...]               # per-image epsilons of (b)
    projection_dims: int                                 # features projected on the top principal components of
                                                         # the public images' features (learned on public data)
    label_feature_epsilon: Optional[float]               # (f): RR labels on (c) at this per-image feature
                                                         # epsilon (None: clean features, the labels' cost alone)
    label_epsilons: Tuple[float, ...]                    # (f): label epsilons of randomized response with a prior
    selection_share: float = 0.1                         # share of the per-image epsilon spent on the private
                                                         # choice among candidates: (b), (c) within it, (e) on top
    scratch_dpsgd_epsilons: Tuple[float, ...] = ()       # (d): per-image epsilons (empty: (d) left out)
    scratch_dpsgd_grid: Tuple[Tuple[float, float, int, int], ...] = ()  # (d): (clip, learning rate, expected
                                                         # batch size, epochs) candidates, one seed each

    def __post_init__(self) -> None:
        if any(not e > 0 for e in (*self.image_epsilons, *self.activation_epsilons, *self.label_epsilons,
                                   *self.scratch_dpsgd_epsilons)):
            raise ValueError("every epsilon of a schedule must be > 0")
        if self.scratch_dpsgd_epsilons and not self.scratch_dpsgd_grid:
            raise ValueError("scratch_dpsgd_epsilons needs a scratch_dpsgd_grid of (clip, lr, batch, epochs)")
        self.scratch_candidates()  # each candidate checked
        if self.seeds < 1 or self.activation_seeds < 0 or self.projection_dims < 1:
            raise ValueError(f"seeds and projection_dims must be >= 1 and activation_seeds >= 0 (got {self.seeds}, "
                             f"{self.projection_dims}, {self.activation_seeds})")
        if not 0 < self.selection_share < 1:
            raise ValueError(f"selection_share must be in (0, 1) (got {self.selection_share})")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1) (got {self.validation_fraction})")

    def scratch_candidates(self) -> Tuple["frontier_scratch.Candidate", ...]:
        """(d)'s grid as :class:`dpact_tf.repro.frontier_scratch.Candidate` s."""
        return tuple(frontier_scratch.Candidate(*c) for c in self.scratch_dpsgd_grid)


_GRID = ((0.1, 10), (0.5, 10), (0.5, 30))
_DPSGD_GRID = ((0.1, 2.0, 10), (0.1, 4.0, 30), (1.0, 0.5, 30))
SCHEDULES: Dict[str, FrontierSchedule] = {
    "tiny": FrontierSchedule(image_epsilons=(2.0, 16.0), seeds=2, validation_fraction=0.2,
                             server_grid=((0.5, 10),), dpsgd_grid=((1.0, 1.0, 10), (0.1, 4.0, 10)), batch_size=64,
                             activation_seeds=1, activation_epsilons=(16.0,), projection_dims=8,
                             label_feature_epsilon=None, label_epsilons=(2.0,), scratch_dpsgd_epsilons=(16.0,),
                             scratch_dpsgd_grid=((1.0, 0.5, 32, 2), (0.1, 2.0, 32, 2))),
    "small": FrontierSchedule(image_epsilons=(1.0, 2.0, 4.0, 8.0, 16.0), seeds=3, validation_fraction=0.2,
                              server_grid=_GRID, dpsgd_grid=_DPSGD_GRID, batch_size=256, activation_seeds=1,
                              activation_epsilons=(1.0, 16.0), projection_dims=32,
                              label_feature_epsilon=None, label_epsilons=(1.0, 4.0), scratch_dpsgd_epsilons=(1.0, 4.0, 16.0),
                              scratch_dpsgd_grid=((0.1, 2.0, 256, 10), (1.0, 0.5, 256, 10))),
}
# (d): a small clip with a large rate (Tramer & Boneh, ICLR 2021) beside clip 1; one seed.  small: two candidates of 10
# epochs (a candidate costs ~2 min, frontier_scratch.SECONDS_PER_EPOCH_SMALL_LFW); medium: longer runs, batch 512 too.
_SCRATCH_GRID = ((0.1, 2.0, 256, 15), (1.0, 0.5, 256, 15), (0.1, 4.0, 512, 30), (1.0, 1.0, 512, 30))
SCHEDULES["medium"] = dataclasses.replace(SCHEDULES["small"], activation_seeds=3,
                                          activation_epsilons=(1.0, 2.0, 4.0, 8.0, 16.0),
                                          label_epsilons=(1.0, 2.0, 4.0, 8.0), scratch_dpsgd_epsilons=(1.0, 4.0, 16.0),
                                          scratch_dpsgd_grid=_SCRATCH_GRID)
SCHEDULES["paper"] = SCHEDULES["medium"]


def standin_extractor(pretrained) -> FeatureExtractor:
    """The public stand-in (:func:`dpact_tf.repro.pretrain.pretrain`'s run): conv1 (clean, normalized) as the head,
    the rest of the network up to ``fc7`` as the tail."""
    import tensorflow as tf

    split = pretrained.load_split(epsilon=None)
    head_model = split.clean_client()
    tail_model = tf.keras.Model(split.server.input, split.server.get_layer("fc7").output)

    def head(x):
        return head_model.predict(np.asarray(x, np.float32), batch_size=128, verbose=0)

    def tail(a):
        return tail_model.predict(np.asarray(a, np.float32), batch_size=128, verbose=0)

    return FeatureExtractor(name="public stand-in, fc7", key=f"standin-{pretrained.spec.key()}",
                            features=lambda x: tail(head(x)), head=head, tail=tail,
                            activation_shape=tuple(int(n) for n in split.activation_shape))


def coordinate_epsilon_for_image(image_epsilon: float, activation_shape: Sequence[int], *,
                                 delta: float = 1e-5, candidates: int = 241) -> Tuple[float, float]:
    """(per-coordinate epsilon, its per-image epsilon): among ``candidates`` log-spaced per-coordinate epsilons in
    [1e-3, 20], the one whose single grid release of an activation of ``activation_shape`` has the largest
    per-image epsilon at most ``image_epsilon`` (:func:`dpact_tf.accounting.image_noise_multiplier` with the
    grid's rounding and the proven sensitivity).  A scan, not a bisection: the grid's steps per standard
    deviation jump with epsilon, so the per-image epsilon is not monotone in it."""
    from dpact_tf import accounting

    best = None
    for eps in np.geomspace(1e-3, 20.0, candidates):
        try:
            z = accounting.image_noise_multiplier(float(eps), delta, activation_shape, grid_rounding=True)
        except ValueError:  # no grid releases this epsilon with the asked delta as implemented
            continue
        per_image = accounting.image_epsilon(z, delta)
        if per_image <= image_epsilon and (best is None or per_image > best[1]):
            best = (float(eps), float(per_image))
    if best is None:
        raise ValueError(f"no per-coordinate epsilon in [1e-3, 20] gives a per-image epsilon <= {image_epsilon:g}")
    return best


@dataclasses.dataclass(frozen=True)
class FrontierPoint:
    """One method at one privacy level: test accuracy per seed at a per-image epsilon."""

    method: str                          # a key of METHODS
    image_epsilon: float                 # per-image epsilon at delta of what the point's model saw (x coordinate)
    epsilon_with_tuning: float           # ... including the tuning's runs on the private images
    accuracies: Tuple[float, ...]        # final test accuracy, one per seed
    configs: Tuple[str, ...]             # the configuration the validation split chose, per seed
    detail: Dict[str, Any]               # per-coordinate epsilon, noise multiplier, ... (method-specific)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def spread(self) -> float:
        """Sample standard deviation over seeds (NaN for one seed)."""
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else float("nan")


@dataclasses.dataclass(frozen=True)
class FrontierStudy:
    points: List[FrontierPoint]
    references: Dict[str, List[float]]   # non-private accuracy per setting (per seed)
    labels: List[Dict[str, Any]]         # (f): RR-with-prior labels on (c)
    chance: float                        # the majority class's test accuracy
    counts: Dict[str, int]               # n_fit, n_validation, n_train, n_test, classes, feature dimensions
    extractor: str
    delta: float
    seconds: Dict[str, float]            # wall time per method (of the computation, not of a cache read)
    figures: Dict[str, Any]              # MyST name -> figure

    def to_json(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "figures"}
        out["points"] = [{**dataclasses.asdict(p), "mean": p.mean, "spread": p.spread} for p in self.points]
        return out


# --- the methods ----------------------------------------------------------------------------------------------
def _fit(x, y, *, classes: int, batch: int, seed: int, **kw) -> linear_dpsgd.SoftmaxModel:
    return linear_dpsgd.train_softmax(x, y, num_classes=classes, batch_size=batch, seed=seed, **kw)


# The server's candidate besides its softmax grid: the class means of what it received.  For (c) the release's
# Gaussian noise averages out of each mean, which a softmax trained on a few noisy examples per person need not do.
CLASS_MEANS = "class means"
_NO_EXAMPLES_LOGIT = -1e30


def class_means(x: np.ndarray, y: np.ndarray, *, classes: int) -> linear_dpsgd.SoftmaxModel:
    """The nearest-class-mean classifier of (x, y) as a linear model whose logits are the Gaussian posterior's
    under one isotropic within-class variance s^2 pooled over the classes: (x . m_c - |m_c|^2 / 2) / s^2, so their
    softmax is a prior a label release can use (:func:`_label_study`), and their argmax the nearest mean.  A class
    without examples gets a logit far below every other."""
    x, y = np.asarray(x, np.float64), np.asarray(y)
    n, d = x.shape
    counts = np.bincount(y, minlength=classes)
    means = np.zeros((classes, d))
    np.add.at(means, y, x)
    means /= np.maximum(counts, 1)[:, None]
    present = counts > 0
    s2 = max(float(np.sum((x - means[y]) ** 2)) / (d * max(n - int(present.sum()), 1)), 1e-12)
    bias = np.where(present, -0.5 * np.sum(means ** 2, axis=1) / s2, _NO_EXAMPLES_LOGIT)
    return linear_dpsgd.SoftmaxModel(means.T / s2, bias)


def _server_candidates(sched) -> List[Any]:
    return [*sched.server_grid, CLASS_MEANS]


def _server_label(candidate) -> str:
    return CLASS_MEANS if candidate == CLASS_MEANS else f"softmax, lr {candidate[0]:g}, {candidate[1]} epochs"


def _train_server(candidate, x, y, *, sched, classes, seed) -> linear_dpsgd.SoftmaxModel:
    if candidate == CLASS_MEANS:
        return class_means(x, y, classes=classes)
    lr, epochs = candidate
    return _fit(x, y, classes=classes, batch=sched.batch_size, seed=seed, epochs=epochs, learning_rate=lr)


def choose(scores: Sequence[float]) -> Tuple[int, str]:
    """(index of the best validation score, "" or a note that it ties with others and the first is kept)."""
    best = max(scores)
    tied = [i for i, v in enumerate(scores) if v == best]
    note = "" if len(tied) == 1 else f" (tied with {len(tied) - 1} of {len(scores)} candidates on validation; the first is kept)"
    return tied[0], note


def _named(model: linear_dpsgd.SoftmaxModel, x: np.ndarray, y: np.ndarray) -> int:
    """How many of ``x`` the model names as ``y`` (the count a private choice reads: sensitivity 1)."""
    return int(np.sum(np.argmax(model.logits(x), -1) == np.asarray(y)))


def choice_seed(seed: int, epsilon: float, tag: str) -> int:
    """The Gumbel noise's seed of one private choice: its own per (seed, epsilon, method), so the choices of
    different points are independent."""
    return int(np.random.SeedSequence([seed, int(round(epsilon * 1e6)), *tag.encode()]).generate_state(1)[0])


def noisy_max(counts: Sequence[int], *, epsilon: float, seed: int) -> int:
    """Report-noisy-max (the exponential mechanism for counts of sensitivity 1, by the Gumbel trick): the index of
    the largest ``count + Gumbel(2 / epsilon)``, epsilon-DP in the images the counts are taken over."""
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0 (got {epsilon})")
    rng = np.random.default_rng(seed)
    return int(np.argmax(np.asarray(counts, np.float64) + rng.gumbel(scale=2.0 / epsilon, size=len(counts))))


def _server_tuned(train_x, train_y, fit, val, clean_val_x, test_x, test_y, *, sched, classes, seed,
                  select_epsilon: Optional[float], tag: str = "") -> Tuple[float, str, Any]:
    """Train each of the server's classifiers (its softmax grid and the class means) on the fit images' part of
    ``train_x`` (what the server received), count how many validation images each names correctly from their
    *clean* features ``clean_val_x`` (the test condition, computed by the data holder), choose by
    :func:`noisy_max` at ``select_epsilon`` (None: the plain argmax, for data without privacy), retrain the chosen
    one on all of ``train_x`` and score it on the test set: (accuracy, what was chosen, the candidate)."""
    candidates = _server_candidates(sched)
    counts = [_named(_train_server(c, train_x[fit], train_y[fit], sched=sched, classes=classes, seed=seed),
                     clean_val_x, train_y[val]) for c in candidates]
    if select_epsilon is None:
        i, note = choose(counts)
    else:
        i = noisy_max(counts, epsilon=select_epsilon, seed=choice_seed(seed, select_epsilon, tag))
        note = f" (report-noisy-max at ε {select_epsilon:.3g})"
    m = _train_server(candidates[i], train_x, train_y, sched=sched, classes=classes, seed=seed)
    return m.accuracy(test_x, test_y), _server_label(candidates[i]) + note, candidates[i]


def _dpsgd_tuned(x, y, fit, val, test_x, test_y, *, target, sched, classes, delta, seed, tag: str = ""):
    """(e): every candidate of the DP-SGD grid trained on the fit images at ``target``, one chosen by
    :func:`noisy_max` on its count of validation images named at ``selection_share * target`` (spent on top of the
    target: the composed epsilon adds it), retrained on all images; (accuracy, choice, final run's epsilon,
    composed epsilon, noise multiplier, the choice's epsilon)."""
    runs, scores, z_of = [], [], {}
    for clip, lr, epochs in sched.dpsgd_grid:
        q, steps = min(1.0, sched.batch_size / len(fit)), linear_dpsgd.steps_for(len(fit), sched.batch_size, epochs)
        z = linear_dpsgd.calibrate_noise_multiplier(target, sampling_rate=q, steps=steps, delta=delta)
        runs.append((z, q, steps))
        m = _fit(x[fit], y[fit], classes=classes, batch=sched.batch_size, seed=seed, epochs=epochs,
                 learning_rate=lr, clip=clip, noise_multiplier=z)
        scores.append(_named(m, x[val], y[val]))
    select_eps = sched.selection_share * target
    best = noisy_max(scores, epsilon=select_eps, seed=choice_seed(seed, select_eps, tag))
    note = f" (report-noisy-max at ε {select_eps:.3g})"
    clip, lr, epochs = sched.dpsgd_grid[best]
    q, steps = min(1.0, sched.batch_size / len(x)), linear_dpsgd.steps_for(len(x), sched.batch_size, epochs)
    z = linear_dpsgd.calibrate_noise_multiplier(target, sampling_rate=q, steps=steps, delta=delta)
    m = _fit(x, y, classes=classes, batch=sched.batch_size, seed=seed, epochs=epochs, learning_rate=lr, clip=clip,
             noise_multiplier=z)
    final = linear_dpsgd.epsilon(z, sampling_rate=q, steps=steps, delta=delta)
    total = linear_dpsgd.composed_epsilon([*runs, (z, q, steps)], delta=delta) + select_eps
    return m.accuracy(test_x, test_y), f"clip {clip:g}, lr {lr:g}, {epochs} epochs{note}", final, total, z, select_eps


def _grid_release_features(extractor: FeatureExtractor, images: np.ndarray, coord_eps: float, *, delta: float,
                           seed: int, chunk: int = 256) -> np.ndarray:
    """What the server computes from one grid release of each image's conv1 activation: tail(levels * step)."""
    from dpact_tf import grid

    spec = grid.grid_spec(coord_eps, delta)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(0, len(images), chunk):
        act = extractor.head(images[i:i + chunk].astype(np.float32) / 255.0)
        words = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=act.shape, dtype=np.int64,
                             endpoint=True)
        levels = grid.release(act, words, spec)
        out.append(extractor.tail(levels.astype(np.float32) * np.float32(spec.step)))
    return np.concatenate(out)


def _features(extractor: FeatureExtractor, data, public, *, cache: str) -> Dict[str, np.ndarray]:
    return cached_features(extractor, {"train": data.train_images, "test": data.test_images,
                                       "public": public.train_images}, cache)


def _paper_points(results_dir, prof, dataset: str, *, delta: float) -> List[FrontierPoint]:
    """(a): the from-scratch and fine-tuning chapters' runs at their per-image epsilon over the run."""
    from dpact_tf import accounting
    from dpact_tf.repro.privacy_studies import split_counts
    from dpact_tf.vggface import layer_plan

    points = []
    for method, study, tag in (("paper_scratch", "scratch", "trained"), ("paper_finetune", "finetune", "frozen")):
        m = load_metrics(results_dir, prof.name, dataset, study)
        if m is None:
            raise ValueError(f"the {study!r} chapter has not been run at profile {prof.name!r} on {dataset!r}; run "
                             "it first (its runs are read, not retrained)")
        rows = [r for r in m["table"] if r["epsilon"] is not None]
        if not rows:
            continue
        epochs = rows[0]["epochs"]
        counts = split_counts(prof, dataset)
        shape = (prof.image_size, prof.image_size, layer_plan(prof.width)[0][2])
        table = {r["epsilon_per_coordinate"]: r for r in accounting.accounting_table(
            [r["epsilon"] for r in rows], delta=delta, activation_shape=shape, epochs=epochs,
            finetune_epochs=epochs, n_train=counts["n_train"], n_test=counts["n_test"], batch_size=prof.batch_size)}
        for r in rows:
            eps = table[r["epsilon"]][f"{tag}_epsilon_exact"]
            points.append(FrontierPoint(method=method, image_epsilon=eps, epsilon_with_tuning=eps,
                                        accuracies=(r["final_test_accuracy"],), configs=("the paper's recipe",),
                                        detail={"epsilon_per_coordinate": r["epsilon"],
                                                "releases_per_image": table[r["epsilon"]][f"{tag}_releases"],
                                                "run": r["run"]}))
    return points


# --- the study ------------------------------------------------------------------------------------------------
def frontier_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, seed: int = 0,
                   extractor: Optional[FeatureExtractor] = None, more_extractors: Sequence[FeatureExtractor] = (),
                   delta: float = 1e-5, force: bool = False, progress: bool = True) -> FrontierStudy:
    """Run (or read from the cache) every method of the chapter; record metrics and the figure
    ``fig-frontier``.  ``more_extractors`` (e.g. :func:`dlib_extractor`) add their (c) and (e) points, each
    method key with the extractor's ``method_suffix``, and their no-noise references."""
    from dpact_tf.repro.pretrain import pretrain
    from dpact_tf.repro.runs import load_faces

    prof = get_profile(profile)
    sched = SCHEDULES[prof.name]
    if extractor is None:
        extractor = standin_extractor(pretrain(prof.name, dataset, results_dir=results_dir, seed=seed,
                                               progress=progress))
    data = load_faces(prof, dataset, seed=seed, progress=progress)
    base = os.path.join(resolve_results_dir(results_dir), prof.name, dataset, "frontier")
    settings = {"schedule": {k: v for k, v in dataclasses.asdict(sched).items() if not k.startswith("scratch_")},
                "extractor": extractor.key, "seed": seed, "delta": delta,
                "split": hashlib.sha256("\n".join((*data.train_files, "", *data.test_files)).encode()).hexdigest()}
    public = None
    runs = []
    for ex in [extractor, *more_extractors]:
        cache = os.path.join(base, f"study_{cache_key({**settings, 'extractor': ex.key}, modules=FRONTIER_MODULES)}.json")
        if force or not os.path.exists(cache):
            if public is None:
                public = load_faces(prof, dataset, public=True, seed=seed, progress=progress)
            files = {"train": list(data.train_files), "test": list(data.test_files),
                     "public": list(public.train_files)}
            feats = _features(ex, data, public, cache=os.path.join(base, "features_" + cache_key(
                {"extractor": ex.key, **files}, modules=(*PRETRAIN_MODULES, *_EXTRACTOR_MODULES)) + ".npz"))
            write_json(cache, _compute(ex, data, feats, prof=prof, sched=sched, delta=delta, seed=seed,
                                       progress=progress))
        with open(cache) as fh:
            runs.append(json.load(fh))
    saved = runs[0]
    raw = [p for run in runs for p in run["points"]]
    seconds = {}
    if sched.scratch_dpsgd_epsilons:  # (d): its candidate runs cached one by one
        fit, val = validation_split(data.train_labels, sched.validation_fraction, seed=seed)
        d_points, seconds["scratch_dpsgd"] = frontier_scratch.scratch_dpsgd_points(
            data, fit, val, epsilons=sched.scratch_dpsgd_epsilons, grid=sched.scratch_candidates(), delta=delta,
            model_kwargs=prof.model_kwargs(), seed=seed, cache_dir=os.path.join(base, "scratch_dpsgd"),
            force=force, progress=progress)
        raw += d_points
    points = [FrontierPoint(**{**p, "accuracies": tuple(p["accuracies"]), "configs": tuple(p["configs"])})
              for p in raw] + _paper_points(results_dir, prof, dataset, delta=delta)
    references = {k: v for run in runs for k, v in run["references"].items()}
    seconds.update({f"{k}{'' if i == 0 else ' (' + ex.name + ')'}": v
                    for i, (ex, run) in enumerate(zip([extractor, *more_extractors], runs))
                    for k, v in run["seconds"].items()})
    scratch = no_noise_final(results_dir, prof.name, dataset, "scratch")
    if scratch is not None:
        references[SCRATCH_REFERENCE] = [scratch]
    chance = float(data.majority_class_rate)
    fig = plots.frontier_plot([{**dataclasses.asdict(p), "label": METHODS[p.method], "mean": p.mean,
                                "spread": p.spread} for p in points],
                              {k: float(np.mean(v)) for k, v in references.items()}, chance=chance, dataset=dataset)
    study = FrontierStudy(points=points, references=references, labels=[row for run in runs for row in run["labels"]],
                          chance=chance, counts=saved["counts"],
                          extractor=", ".join(ex.name for ex in [extractor, *more_extractors]), delta=delta,
                          seconds=seconds,
                          figures={"fig-frontier": fig})
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), "frontier", study.to_json())
    record_metrics(results_dir, prof.name, dataset, "frontier", study.to_json())
    return study


def _compute(extractor, data, feats, *, prof, sched, delta, seed, progress) -> Dict[str, Any]:
    def say(msg):
        if progress:
            print(f"frontier: {msg}", file=sys.stderr, flush=True)

    classes = int(data.num_classes)
    # centre, principal directions and clipping norm from the public images' features: no privacy cost
    center = feats["public"].mean(axis=0, dtype=np.float64)
    directions = np.linalg.svd(feats["public"] - center, full_matrices=False)[2][:sched.projection_dims].T
    scale = float(np.median(np.linalg.norm((feats["public"] - center) @ directions, axis=1)))
    project = lambda f: (np.asarray(f, np.float64) - center) @ directions / scale  # noqa: E731
    unit = lambda f: feature_release.clip_rows(project(f), 1.0)  # noqa: E731
    y, test_y = np.asarray(data.train_labels), np.asarray(data.test_labels)
    fit, val = validation_split(y, sched.validation_fraction, seed=seed)
    x, test_x = unit(feats["train"]), unit(feats["test"])
    seeds = [seed + s for s in range(sched.seeds)]
    points, seconds, refs = [], {}, {}

    t0 = time.perf_counter()
    clean = [_server_tuned(x, y, fit, val, x[val], test_x, test_y, sched=sched, classes=classes, seed=s,
                           select_epsilon=None) for s in seeds]
    refs[f"{extractor.name} + the server's classifier"] = [acc for acc, _, _ in clean]
    seconds["no noise"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("(c) features released once per image")
    for eps in sched.image_epsilons:
        release_eps, select_eps = (1 - sched.selection_share) * eps, sched.selection_share * eps
        accs, cfgs = [], []
        for s in seeds:
            r = feature_release.release_features(project(feats["train"]), epsilon=release_eps, delta=delta,
                                                 clip=1.0, seed=1000 * s + 17)
            acc, cfg, _ = _server_tuned(r, y, fit, val, x[val], test_x, test_y, sched=sched, classes=classes,
                                        seed=s, select_epsilon=select_eps, tag="release" + extractor.method_suffix)
            accs.append(acc), cfgs.append(cfg)
        points.append(dict(method="release" + extractor.method_suffix, image_epsilon=release_eps,
                           epsilon_with_tuning=release_eps + select_eps, accuracies=accs, configs=cfgs,
                           detail={"clip": 1.0, "noise_std": feature_release.release_std(
                               epsilon=release_eps, delta=delta, clip=1.0), "clip_in_feature_units": scale,
                               "dimensions": int(x.shape[1]), "selection_epsilon": select_eps}))
    seconds["release"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("(e) DP-SGD on the last layer")
    for eps in sched.image_epsilons:
        accs, cfgs, finals, totals, zs = [], [], [], [], []
        for s in seeds:
            acc, cfg, final, total, z, select_eps = _dpsgd_tuned(
                x, y, fit, val, test_x, test_y, target=eps, sched=sched, classes=classes, delta=delta, seed=s,
                tag="last_layer_dpsgd" + extractor.method_suffix)
            accs.append(acc), cfgs.append(cfg), finals.append(final), totals.append(total), zs.append(z)
        points.append(dict(method="last_layer_dpsgd" + extractor.method_suffix, image_epsilon=max(finals), epsilon_with_tuning=max(totals),
                           accuracies=accs, configs=cfgs,
                           detail={"noise_multipliers": zs, "candidates": len(sched.dpsgd_grid),
                                   "selection_epsilon": select_eps}))
    seconds["last_layer_dpsgd"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if extractor.head is not None and sched.activation_seeds:
        for eps in sched.activation_epsilons:
            select_eps = sched.selection_share * eps
            coord, per_image = coordinate_epsilon_for_image(eps - select_eps, extractor.activation_shape, delta=delta)
            say(f"(b) conv1 released once at ε = {coord:.3g} per coordinate ({per_image:.3g} per image)")
            accs, cfgs = [], []
            for s in seeds[:sched.activation_seeds]:
                r = unit(_grid_release_features(extractor, data.train_images, coord, delta=delta, seed=1000 * s + 29))
                acc, cfg, _ = _server_tuned(r, y, fit, val, x[val], test_x, test_y, sched=sched, classes=classes,
                                            seed=s, select_epsilon=select_eps, tag="activations_once")
                accs.append(acc), cfgs.append(cfg)
            points.append(dict(method="activations_once", image_epsilon=per_image,
                               epsilon_with_tuning=per_image + select_eps, accuracies=accs, configs=cfgs,
                               detail={"epsilon_per_coordinate": coord, "selection_epsilon": select_eps}))
    seconds["activations_once"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("(f) labels by randomized response with a prior")
    labels = [{"features": extractor.name, **row} for row in _label_study(
        project(feats["train"]), y, test_x, test_y, sched=sched, classes=classes, delta=delta, seeds=seeds)]
    seconds["labels"] = time.perf_counter() - t0
    counts = {"n_fit": int(len(fit)), "n_validation": int(len(val)), "n_train": int(len(y)),
              "n_test": int(len(test_y)), "classes": classes, "feature_dimensions": int(x.shape[1])}
    return {"points": points, "references": refs, "labels": labels, "counts": counts, "seconds": seconds}


def _label_study(projected, y, test_x, test_y, *, sched, classes, delta, seeds):
    """(f): labels by RR with a prior, two stages (Ghazi et al. 2021), on (c) at ``label_feature_epsilon`` (None:
    the clean projected features, so the cost is the labels' alone): half the images' labels by plain randomized
    response (a uniform prior); the class means (:func:`class_means`, fixed in advance: a classifier chosen on the
    true labels would leak them) trained on them give the prior of the other half from its features (the softmax of
    their posterior logits); the class means are then trained on all noisy labels."""
    eps_f = sched.label_feature_epsilon
    rows = []
    for eps_l in sched.label_epsilons:
        accs, kept = [], []
        for s in seeds:
            r = feature_release.release_features(projected, epsilon=eps_f, delta=delta, clip=1.0,
                                                 seed=1000 * s + 17)
            rng = np.random.default_rng(1000 * s + 41)
            first = rng.random(len(y)) < 0.5
            noisy = np.empty_like(y)
            noisy[first] = feature_release.rr_with_prior(y[first], np.full((first.sum(), classes), 1.0 / classes),
                                                         epsilon=eps_l, seed=1000 * s + 43)
            candidate = CLASS_MEANS
            stage1 = _train_server(candidate, r[first], noisy[first], sched=sched, classes=classes, seed=s)
            logits = stage1.logits(r[~first])
            prior = np.exp(logits - logits.max(axis=1, keepdims=True))
            prior /= prior.sum(axis=1, keepdims=True)
            noisy[~first] = feature_release.rr_with_prior(y[~first], prior, epsilon=eps_l, seed=1000 * s + 47)
            kept.append(float(np.mean(noisy == y)))
            m = _train_server(candidate, r, noisy, sched=sched, classes=classes, seed=s)
            accs.append(m.accuracy(test_x, test_y))
        rows.append({"label_epsilon": eps_l, "feature_epsilon": eps_f, "accuracies": accs,
                     "mean": float(np.mean(accs)), "labels_correct": float(np.mean(kept))})
    return rows
