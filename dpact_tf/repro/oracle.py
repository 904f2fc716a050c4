"""The evaluation oracle of the attack chapters: does an image show the person it should?

An attack's identity score means something only if its judge recognizes the true faces about as well as the book's
best non-private model.  The oracle is a **public face model's features plus a softmax trained on the clean
training split** (:func:`feature_oracle`; dlib's face ResNet by default, :func:`evaluation_oracle`); the chapters
set its test accuracy beside the book's non-private models (:mod:`dpact_tf.repro.oracle_text`).  It is an
evaluator, not an attacker: it sees the private training images without noise.

When dlib's model is not on this machine, :func:`evaluation_oracle` uses the no-noise network the fidelity chapter
trains to convergence (:func:`network_oracle`) and says so in the oracle's ``fallback``, which the chapters print.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Callable, Dict, Optional, Tuple

import numpy as np

__all__ = ["IdentityOracle", "ORACLE_GRID", "ORACLE_MODULES", "feature_oracle", "network_oracle",
           "evaluation_oracle", "evaluation_oracle_key"]

# (learning rate, epochs) of the oracle's softmax, chosen on a validation split of the training images.
ORACLE_GRID: Tuple[Tuple[float, int], ...] = ((0.1, 30), (0.5, 30), (0.5, 100))
_VALIDATION_FRACTION = 0.2
# The code an oracle runs (in the cache keys of the studies that use it).
ORACLE_MODULES = ("dpact_tf.repro.oracle", "dpact_tf.repro.extractors", "dpact_tf.baselines.linear_dpsgd",
                  "dpact_tf.dlib_faces", "dpact_tf.dlib_resnet", "dpact_tf.dlib_keras", "dpact_tf.face_verification")
_FALLBACK = "dlib's face ResNet was not found (`python data_scripts/fetch_dlib_model.py` fetches it)"


@dataclasses.dataclass
class IdentityOracle:
    """``predict(images in [0, 1]) -> identities``; ``test_accuracy`` on every test image of the split."""

    description: str
    key: str                                   # what identifies it (part of the attack studies' cache keys)
    predict: Callable[[np.ndarray], np.ndarray]
    test_accuracy: float = float("nan")
    fallback: Optional[str] = None             # why the preferred oracle is not used (None: it is)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """The share of ``images`` named as ``labels``."""
        images, labels = np.asarray(images, np.float32), np.asarray(labels)
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        return float(np.mean(self.predict(images) == labels))

    def for_labels(self, labels: np.ndarray) -> Callable[[np.ndarray], float]:
        """images -> the share named as ``labels`` (the form the attack studies score with)."""
        return lambda images: self.accuracy(images, labels)

    def summary(self) -> Dict[str, object]:
        """What the studies record: description, key, test accuracy, fallback."""
        return {"description": self.description, "key": self.key, "test_accuracy": self.test_accuracy,
                "fallback": self.fallback}


def feature_oracle(extractor, data, *, features: Optional[Dict[str, np.ndarray]] = None, seed: int = 0,
                   grid: Tuple[Tuple[float, int], ...] = ORACLE_GRID,
                   validation_fraction: float = _VALIDATION_FRACTION) -> IdentityOracle:
    """A softmax on ``extractor``'s features of the clean training images (standardized with their mean and
    standard deviation), its (learning rate, epochs) chosen from ``grid`` on a validation split of the training
    images, then retrained on all of them; the test images are only scored.  ``extractor`` is a
    :class:`dpact_tf.repro.extractors.FeatureExtractor`; ``features`` (``train``, ``test``) are its features of
    ``data``'s images when already computed."""
    from dpact_tf.baselines import linear_dpsgd
    from dpact_tf.data import validation_split

    if not grid:
        raise ValueError("grid must hold at least one (learning rate, epochs)")
    if features is None:
        features = {name: extractor.features(imgs.astype(np.float32) / 255.0)
                    for name, imgs in (("train", data.train_images), ("test", data.test_images))}
    train = np.asarray(features["train"], np.float64)
    center, scale = train.mean(axis=0), train.std(axis=0) + 1e-8
    norm = lambda f: (np.asarray(f, np.float64) - center) / scale  # noqa: E731
    x, y = norm(train), np.asarray(data.train_labels)
    classes = int(data.num_classes)
    fit, val = validation_split(y, validation_fraction, seed=seed)
    fit_model = lambda idx, lr, epochs: linear_dpsgd.train_softmax(  # noqa: E731
        x[idx], y[idx], num_classes=classes, epochs=epochs, batch_size=64, learning_rate=lr, seed=seed)
    scores = [fit_model(fit, lr, epochs).accuracy(x[val], y[val]) for lr, epochs in grid]
    lr, epochs = grid[int(np.argmax(scores))]
    model = fit_model(np.arange(len(y)), lr, epochs)
    predict = lambda images: np.argmax(model.logits(norm(extractor.features(images))), -1)  # noqa: E731
    test_accuracy = float(np.mean(np.argmax(model.logits(norm(features["test"])), -1) == np.asarray(data.test_labels)))
    return IdentityOracle(
        description=f"{extractor.name} features with a softmax trained on the clean training split (lr {lr:g}, "
                    f"{epochs} epochs, chosen on a validation split of it)",
        key=_feature_key(extractor, grid, validation_fraction, seed), predict=predict, test_accuracy=test_accuracy)


def network_oracle(run, *, fallback: Optional[str] = None) -> IdentityOracle:
    """The trained classifier of ``run`` (a :class:`dpact_tf.repro.runs.TrainedRun` without noise) on clean
    pixels."""
    import tensorflow as tf

    split = run.load_split(epsilon=None)
    clean = split.clean_client()
    model = tf.keras.Model(clean.input, split.server(clean.output))
    predict = lambda images: np.argmax(model.predict(images, batch_size=256, verbose=0), -1)  # noqa: E731
    return IdentityOracle(description="the no-noise network trained to convergence on the clean training split",
                          key=f"network:{run.spec.key()}", predict=predict,
                          test_accuracy=float(run.history["test_accuracy"][-1]), fallback=fallback)


def _feature_key(extractor, grid, validation_fraction: float, seed: int) -> str:
    return f"features:{extractor.key}:{list(grid)}:{validation_fraction}:{seed}"


def _preferred(profile: str):
    """(dlib's extractor, None), or (None, why it is not used)."""
    from dpact_tf.repro.extractors import dlib_extractor

    try:
        return dlib_extractor(profile), None
    except FileNotFoundError as err:
        print(f"oracle: {err}", file=sys.stderr, flush=True)
        return None, _FALLBACK


def _network_spec(profile: str, dataset: str, seed: int):
    from dpact_tf.repro.fidelity import convergence_spec
    from dpact_tf.repro.profiles import get_profile

    return convergence_spec(get_profile(profile), dataset, None, seed=seed)


def evaluation_oracle_key(profile: str, dataset: str, *, seed: int = 0) -> str:
    """The key of the oracle :func:`evaluation_oracle` would build, without building it."""
    extractor, _ = _preferred(profile)
    if extractor is None:
        return f"network:{_network_spec(profile, dataset, seed).key()}"
    return _feature_key(extractor, ORACLE_GRID, _VALIDATION_FRACTION, seed)


def evaluation_oracle(profile: str, dataset: str, data, *, results_dir: Optional[str] = None, seed: int = 0,
                      progress: bool = True) -> IdentityOracle:
    """dlib's face ResNet + softmax (:func:`feature_oracle`, its features cached under ``oracle/`` of the
    results); without dlib's model, the no-noise network trained to convergence (:func:`network_oracle`), with
    ``fallback`` saying why."""
    from dpact_tf.repro.extractors import cached_features
    from dpact_tf.repro.results import cache_key, study_dir
    from dpact_tf.repro.runs import run_training

    extractor, reason = _preferred(profile)
    if extractor is None:
        run = run_training(_network_spec(profile, dataset, seed), results_dir=results_dir, progress=progress,
                           data=data)
        return network_oracle(run, fallback=reason)
    key = cache_key({"extractor": extractor.key, "train_files": list(data.train_files),
                     "test_files": list(data.test_files)}, modules=ORACLE_MODULES)
    if progress:
        print(f"oracle: {extractor.name} features of the training and test images", file=sys.stderr, flush=True)
    features = cached_features(extractor, {"train": data.train_images, "test": data.test_images},
                               os.path.join(study_dir(results_dir, profile, dataset, "oracle"), f"features_{key}.npz"))
    return feature_oracle(extractor, data, features=features, seed=seed)
