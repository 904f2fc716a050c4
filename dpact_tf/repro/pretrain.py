"""The public model that the fine-tuning experiment (Fig. 4) starts from.

* :func:`pretrain` -- offline stand-in: the VGG-Face network of the profile, pre-trained on the public LFW people
  (disjoint from the 158 evaluation identities) the way a publisher trains a public model -- whole, without
  noise or split (Keras ``fit`` on :meth:`SplitModel.monolithic`, the reference the split protocol is tested
  against), with the profile's :class:`~dpact_tf.repro.profiles.PretrainRecipe`: augmentation
  (:mod:`dpact_tf.augment`), data-dependent initialization, Adam with warm-up and cosine decay, label smoothing,
  dropout.  Cached like every run, keyed by the recipe and its code.
* :func:`vggface_init` -- on a connected machine, the real public VGG-Face weights (the Keras file that
  ``data_scripts/fetch_vggface_weights.py`` downloads), loaded with :func:`dpact_tf.weights.load_vggface_weights`
  (``fc8`` is replaced by the fine-tuning's own output layer); keyed by the file's sha256.

The held-out accuracy of the stand-in is measured on one image per person that training never sees
(:func:`heldout_accuracies`); the recipe was chosen on a split of the *training* images (``dev_split``,
``benchmarks/pretrain_recipe.py``), so that held-out accuracy is not selected on.

    python -m dpact_tf.repro.pretrain --profile small --dataset lfw
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpact_tf.callbacks import Callback, ProgressBar
from dpact_tf.data import FaceSplit
from dpact_tf.jsonio import write_json
from dpact_tf.repro.profiles import PretrainRecipe, get_profile
from dpact_tf.repro.runs import HistoryWriter, RunResult, RunSpec, load_cached, load_faces, run_paths

__all__ = ["pretrain_spec", "pretrain", "train_public_model", "heldout_accuracies", "dev_split", "vggface_init",
           "describe_recipe", "public_model_info", "main"]

VGGFACE_SOURCE = {"people": 2622, "images": 2_600_000,
                  "description": "VGG-Face (Parkhi et al. 2015): 2,622 identities, 2.6 M images"}
INIT_IMAGES = 512  # training images the data-dependent initialization looks at


def pretrain_spec(profile: str, dataset: str, *, seed: int = 0) -> RunSpec:
    prof = get_profile(profile)
    return RunSpec(task="pretrain", profile=prof.name, dataset=dataset, epsilon=None, epochs=prof.pretrain.epochs,
                   seed=seed)


def _schedule(recipe: PretrainRecipe, steps_per_epoch: int):
    import tensorflow as tf

    total = recipe.epochs * steps_per_epoch
    warmup = recipe.warmup_epochs * steps_per_epoch
    if not warmup:
        return tf.keras.optimizers.schedules.CosineDecay(recipe.learning_rate, total)
    return tf.keras.optimizers.schedules.CosineDecay(0.0, total - warmup, warmup_target=recipe.learning_rate,
                                                     warmup_steps=warmup)


def _optimizer(recipe: PretrainRecipe, steps_per_epoch: int):
    import tensorflow as tf

    lr = _schedule(recipe, steps_per_epoch)
    if recipe.optimizer == "sgd":
        return tf.keras.optimizers.SGD(lr, momentum=0.9, weight_decay=recipe.weight_decay or None)
    if recipe.weight_decay:
        return tf.keras.optimizers.AdamW(lr, weight_decay=recipe.weight_decay)
    return tf.keras.optimizers.Adam(lr)


def _loss(num_classes: int, label_smoothing: float):
    import tensorflow as tf

    cross_entropy = tf.keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)

    def loss(labels, logits):  # integer labels -> one-hot (the sparse loss has no label smoothing)
        return cross_entropy(tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), num_classes), logits)

    return loss


def _keras_report(callbacks: Sequence[Callback], epochs: int, steps_per_epoch: int, history: Dict[str, List[Any]]):
    """A Keras callback that fills ``history`` with the keys of :meth:`SplitTrainer.fit` and calls ``callbacks``."""
    import tensorflow as tf

    batch_logs = any(cb.wants_batch_logs for cb in callbacks)

    class Report(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            for cb in callbacks:
                cb.on_train_begin(epochs=epochs, steps_per_epoch=steps_per_epoch)

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()
            for cb in callbacks:
                cb.on_epoch_begin(epoch + 1)

        def on_train_batch_end(self, batch, logs=None):
            if batch_logs:
                for cb in callbacks:
                    cb.on_batch_end(batch, {"loss": float(logs["loss"]), "accuracy": float(logs["accuracy"])})

        def on_epoch_end(self, epoch, logs=None):
            history["epoch"].append(epoch + 1)
            history["loss"].append(float(logs["loss"]))  # the training objective (with label smoothing)
            history["train_accuracy"].append(float(logs["accuracy"]))  # on augmented images, dropout on
            history["test_accuracy"].append(float(logs["val_accuracy"]))
            history["test_loss"].append(float(logs["val_cross_entropy"]))  # plain cross-entropy
            history["learning_rate"].append(float(self.model.optimizer.learning_rate))
            history["seconds"].append(time.perf_counter() - self.start)
            for cb in callbacks:
                cb.on_epoch_end(epoch + 1, history)

    return Report()


def train_public_model(data: FaceSplit, *, profile: str, recipe: Optional[PretrainRecipe] = None, seed: int = 0,
                       callbacks: Sequence[Callback] = ()) -> Tuple[Any, Dict[str, List[Any]]]:
    """Pre-train ``profile``'s network on ``data`` with ``recipe`` (default: the profile's); no files written.

    Returns ``(split, history)``: the :class:`~dpact_tf.vggface.SplitModel` without noise (dropout layers, if the
    recipe has them, carry no weights) and per-epoch ``loss``, ``train_accuracy``, ``test_accuracy`` on
    ``data``'s test images, ``test_loss``, ``learning_rate``, ``seconds``.
    """
    import tensorflow as tf

    from dpact_tf.augment import Augmentation
    from dpact_tf.data import make_dataset
    from dpact_tf.vggface import build_split_vggface, initialize_from_data

    prof = get_profile(profile)
    recipe = recipe or prof.pretrain
    tf.keras.utils.set_random_seed(seed)
    split = build_split_vggface(num_classes=data.num_classes, dropout=recipe.dropout, **prof.model_kwargs())
    if recipe.data_init:
        pick = np.random.default_rng(seed).permutation(len(data.train_images))[:INIT_IMAGES]
        initialize_from_data(split, data.train_images[np.sort(pick)].astype(np.float32) / 255.0)
    model = split.monolithic()
    train = make_dataset(data.train_images, data.train_labels, batch_size=prof.batch_size, shuffle=True, seed=seed,
                         augment=Augmentation() if recipe.augment else None)
    test = make_dataset(data.test_images, data.test_labels, batch_size=max(256, prof.batch_size))
    steps = int(train.cardinality())
    model.compile(optimizer=_optimizer(recipe, steps), loss=_loss(data.num_classes, recipe.label_smoothing),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                           tf.keras.metrics.SparseCategoricalCrossentropy(name="cross_entropy", from_logits=True)])
    history: Dict[str, List[Any]] = {"epoch": [], "loss": [], "train_accuracy": [], "test_accuracy": [],
                                     "test_loss": [], "learning_rate": [], "seconds": []}
    model.fit(train, epochs=recipe.epochs, validation_data=test, verbose=0,
              callbacks=[_keras_report(callbacks, recipe.epochs, steps, history)])
    for cb in callbacks:
        cb.on_train_end(history)
    return split, history


def heldout_accuracies(split, data: FaceSplit) -> Dict[str, Any]:
    """Accuracy on ``data``'s held-out images, for all people and for those with at least k images (k = 2..9).

    Row k is scored among the people with >= k images only (the others' logits are left out), so it is directly
    comparable with a model pre-trained on exactly those people: k = 5 is the 265-people model's held-out set.
    """
    counts = np.bincount(np.concatenate([data.train_labels, data.test_labels]), minlength=data.num_classes)
    logits = split.monolithic().predict(data.test_images.astype(np.float32) / 255.0, batch_size=256, verbose=0)
    overall = float(np.mean(np.argmax(logits, axis=1) == data.test_labels))
    rows = []
    for k in range(int(counts.min()), int(counts.max()) + 1):
        people = np.flatnonzero(counts >= k)
        images = np.isin(data.test_labels, people)
        if not images.any():
            continue
        predicted = people[np.argmax(logits[images][:, people], axis=1)]
        rows.append({"min_images": k, "people": int(len(people)), "heldout_images": int(images.sum()),
                     "accuracy": float(np.mean(predicted == data.test_labels[images])), "chance": 1.0 / len(people)})
    return {"accuracy": overall, "by_min_images": rows}


def dev_split(data: FaceSplit, *, seed: int = 0) -> FaceSplit:
    """A split of ``data``'s *training* images for choosing a recipe: one training image of every person with
    at least two becomes the "test" image.  The real held-out images are dropped, so they stay unseen."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(data.train_labels), bool)
    for label in range(data.num_classes):
        idx = np.flatnonzero(data.train_labels == label)
        if len(idx) >= 2:
            held[rng.choice(idx)] = True
    files = np.array(data.train_files)
    return dataclasses.replace(
        data, train_images=data.train_images[~held], train_labels=data.train_labels[~held],
        test_images=data.train_images[held], test_labels=data.train_labels[held],
        train_files=tuple(files[~held]), test_files=tuple(files[held]),
        description=f"{data.description}; dev split: 1 training image per person with >= 2 held out (seed {seed})")


def pretrain(profile: str, dataset: str, *, results_dir: Optional[str] = None, seed: int = 0, force: bool = False,
             progress: bool = True) -> RunResult:
    """Train (or load from the cache) the public pre-trained model."""
    spec = pretrain_spec(profile, dataset, seed=seed)
    cached = None if force else load_cached(spec, results_dir)
    if cached is not None:
        return cached
    prof = get_profile(profile)
    data = load_faces(prof, dataset, public=True, seed=seed, progress=progress)
    path, cpath, spath = run_paths(spec, results_dir)
    info: Dict[str, Any] = {"data": data.summary(), "synthetic": data.is_synthetic, "noise_std": 0.0,
                            "num_classes": data.num_classes, "majority_class_test_accuracy": data.majority_class_rate,
                            "recipe": prof.pretrain.to_dict(), "profile": prof.to_dict()}
    meta = {"spec": spec.to_dict(), "key": spec.key(), "info": info, "complete": False}
    callbacks: List[Callback] = [HistoryWriter(path, meta)]
    if progress:
        callbacks.append(ProgressBar(f"pretrain ({data.num_classes} public people)"))
    wall, cpu = time.perf_counter(), time.process_time()
    split, history = train_public_model(data, profile=prof.name, seed=seed, callbacks=callbacks)
    info["wall_seconds"], info["cpu_seconds"] = time.perf_counter() - wall, time.process_time() - cpu
    info["heldout"] = heldout_accuracies(split, data)
    info.update(activation_shape=list(split.activation_shape), client_flops=split.client_flops,
                client_params=split.client_params)
    split.client.save_weights(cpath)
    split.server.save_weights(spath)
    write_json(path, {**meta, "info": info, "history": history, "complete": True})
    return RunResult(spec, history, info, path, cpath, spath, cached=False)


def vggface_init(profile: str, dataset: str, weights_path: str, *, num_classes: int,
                 results_dir: Optional[str] = None, force: bool = False) -> RunResult:
    """The public VGG-Face weights as a cached "pretrain" run of ``profile``'s network.

    The network must have VGG-Face's shapes (the ``paper`` profile: 224x224, width 1, fc 4096); any other shape
    is refused with the layer named.  ``num_classes`` sizes the new ``fc8`` (left at its initialization).
    """
    from dpact_tf.fetch import sha256_file
    from dpact_tf.vggface import build_split_vggface
    from dpact_tf.weights import load_vggface_weights

    if not os.path.exists(weights_path):
        raise FileNotFoundError(f"{weights_path} not found; on a connected machine run "
                                "`python data_scripts/fetch_vggface_weights.py` to download it")
    prof = get_profile(profile)
    digest = sha256_file(weights_path)
    spec = RunSpec(task="pretrain", profile=prof.name, dataset=dataset, epsilon=None, epochs=0,
                   weights_sha256=digest)
    cached = None if force else load_cached(spec, results_dir)
    if cached is not None:
        return cached
    path, cpath, spath = run_paths(spec, results_dir)
    split = build_split_vggface(num_classes=num_classes, **prof.model_kwargs())
    report = load_vggface_weights(split, weights_path)
    os.makedirs(os.path.dirname(cpath), exist_ok=True)
    split.client.save_weights(cpath)
    split.server.save_weights(spath)
    info = {"data": dict(VGGFACE_SOURCE), "weights_sha256": digest, "loaded_layers": report["loaded"],
            "skipped_layers": report["skipped"], "num_classes": num_classes}
    history = {"epoch": [], "loss": [], "train_accuracy": [], "test_accuracy": []}
    write_json(path, {"spec": spec.to_dict(), "key": spec.key(), "info": info, "history": history, "complete": True})
    return RunResult(spec, history, info, path, cpath, spath, cached=False)


def describe_recipe(recipe: Dict[str, Any]) -> str:
    """One sentence saying how the stand-in was trained (from a :class:`PretrainRecipe` as a dict)."""
    parts = [f"{recipe['epochs']} epochs",
             "random flips, crops and colour jitter" if recipe["augment"] else "no augmentation",
             "data-dependent initialization" if recipe["data_init"] else "random initialization",
             f"{'Adam' if recipe['optimizer'] == 'adam' else 'SGD with momentum 0.9'} at learning rate "
             f"{recipe['learning_rate']:g}" + (f" after {recipe['warmup_epochs']} warm-up epoch(s)"
                                               if recipe["warmup_epochs"] else "") + ", cosine decay"]
    for key, label in (("weight_decay", "weight decay"), ("label_smoothing", "label smoothing"),
                       ("dropout", "dropout after fc6 and fc7")):
        if recipe[key]:
            parts.append(f"{label} {recipe[key]:g}")
    return ", ".join(parts)


def public_model_info(pre: RunResult) -> Dict[str, Any]:
    """What the fine-tuning chapter says about its public model (stand-in or real VGG-Face)."""
    if pre.spec.weights_sha256:
        return {"source": "vggface", "people": VGGFACE_SOURCE["people"], "images": VGGFACE_SOURCE["images"],
                "description": VGGFACE_SOURCE["description"], "weights_sha256": pre.spec.weights_sha256}
    h, data, recipe = pre.history, pre.info["data"], pre.info["recipe"]
    return {"source": "stand-in", "people": data["people"], "images": data["images"],
            "train_images": data["train_images"], "heldout_images": data["test_images"],
            "min_images": recipe["min_images"], "augmentation": recipe["augment"], "recipe": recipe,
            "recipe_text": describe_recipe(recipe),
            "epochs": len(h["epoch"]), "final_train_accuracy": h["train_accuracy"][-1],
            "final_heldout_accuracy": h["test_accuracy"][-1], "heldout_chance": 1.0 / data["people"],
            "heldout_by_min_images": pre.info["heldout"]["by_min_images"],
            "wall_seconds": pre.info["wall_seconds"], "cpu_seconds": pre.info["cpu_seconds"],
            "description": (f"{data['people']} synthetic public identities (SYNTHETIC data, not LFW)"
                            if pre.info["synthetic"] else f"the {data['people']:,} public LFW people with "
                            f"{recipe['min_images']}–9 images, disjoint from the evaluation set")}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpact_tf.repro.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="small")
    parser.add_argument("--dataset", default="lfw", choices=["lfw", "synthetic"])
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    result = pretrain(args.profile, args.dataset, results_dir=args.results_dir, seed=args.seed, force=args.force)
    info = public_model_info(result)
    print(f"pre-trained on {info['people']} public identities ({'cached' if result.cached else 'trained'}, "
          f"{info['wall_seconds']:.0f} s wall, {info['cpu_seconds']:.0f} s CPU): final train acc "
          f"{info['final_train_accuracy']:.3f}, held-out acc {info['final_heldout_accuracy']:.3f} "
          f"(chance {info['heldout_chance']:.4f}); weights {result.client_weights}, {result.server_weights}")
    print(json.dumps(info["heldout_by_min_images"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
