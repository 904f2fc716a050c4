"""Training runs of the experiments, cached on disk by a hash of their configuration.

A :class:`RunSpec` names everything that determines a run (task, profile, dataset, epsilon, cut, epochs,
seed, ...).  :func:`run_training` trains it with :class:`SplitTrainer` unless
``<results_dir>/<profile>/<dataset>/<task>/<hash>.json`` already holds a complete run, so re-rendering the
book does not retrain (``force=True`` does).  Weights are saved beside the JSON (client and server
separately, HDF5, loadable by layer name).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from dpact_tf.repro.profiles import Profile, get_profile
from dpact_tf.repro.results import PRETRAIN_MODULES, REPO, TRAINING_MODULES, cache_key, resolve_results_dir
from dpact_tf.callbacks import Callback, EarlyStopping, ProgressBar
from dpact_tf.data import FaceSplit
from dpact_tf.jsonio import write_json

__all__ = ["RunSpec", "RunResult", "load_faces", "lfw_root", "run_paths", "load_cached", "run_training",
           "HistoryWriter", "TASKS"]

TASKS = ("scratch", "finetune", "pretrain", "frozen_head", "dpsgd", "dssgd")
#: the baselines chapter's tasks: no noise on the activation (their privacy comes from elsewhere)
BASELINE_TASKS = ("frozen_head", "dpsgd", "dssgd")
#: the options each baseline task needs (``RunSpec.options``)
TASK_OPTIONS = {"dpsgd": ("l2_norm_clip", "noise_multiplier"),
                "dssgd": ("participants", "theta_upload", "theta_download", "standalone", "momentum_at")}
#: the code a baseline's runs depend on beyond TRAINING_MODULES (part of their cache key only)
TASK_MODULES = {"dpsgd": ("dpact_tf.baselines.dpsgd", "dpact_tf.baselines.whole_model"),
                "dssgd": ("dpact_tf.baselines.dssgd", "dpact_tf.baselines.whole_model")}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that determines one training run."""

    task: str                        # "scratch" (Fig 3), "finetune" (Fig 4), "pretrain" (public identities), or a
                                     # baseline: "frozen_head" (PrivyNet-style), "dpsgd", "dssgd"
    profile: str                     # profile name ("tiny", "small", "medium", "paper")
    dataset: str                     # "lfw" or "synthetic"
    epsilon: Optional[float]         # per-coordinate epsilon; None = no noise
    epochs: int                      # training epochs
    cut: str = "conv1_1"             # last client layer
    seed: int = 0                    # seeds weights, shuffling and noise
    delta: float = 1e-5              # delta of (epsilon, delta)-DP
    method: str = "classic"          # sigma calibration ("classic" = the paper's)
    init: Optional[str] = None       # key of the run whose weights initialize this one (fine-tuning)
    weights_sha256: Optional[str] = None  # pretrain only: taken from this public weights file, not trained
    patience: Optional[int] = None   # early stopping: end after this many epochs without a better validation accuracy
    min_delta: float = 0.0           # early stopping: "better" = more than this above the best so far
    start_from_epoch: int = 0        # early stopping: epochs not monitored at the start
    conv1_channels: Optional[int] = None  # conv1_1's output channels (None: the profile's width); the scale ladder
    image_size: Optional[int] = None      # input side in pixels (None: the profile's); the scale ladder
    options: Tuple[Tuple[str, Any], ...] = ()  # a baseline's settings, as sorted (name, value) pairs (TASK_OPTIONS)
    validation_fraction: Optional[float] = None  # per person, this fraction of the training images is held out
                                                 # (dpact_tf.data.validation_split) and is what early stopping watches

    #: fields left out of the cache key while they have their default (so adding them kept earlier keys)
    _KEY_DEFAULTS = {"patience": None, "min_delta": 0.0, "start_from_epoch": 0, "conv1_channels": None,
                     "image_size": None, "options": (), "validation_fraction": None}

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS} (got {self.task!r})")
        if self.dataset not in ("lfw", "synthetic"):
            raise ValueError(f"dataset must be 'lfw' or 'synthetic' (got {self.dataset!r})")
        if self.task in ("finetune", "frozen_head") and self.init is None:
            raise ValueError(f"a {self.task} run needs init=<key of the pretrain run>")
        if self.task in BASELINE_TASKS and self.epsilon is not None:
            raise ValueError(f"a {self.task} run adds no noise to the activation (epsilon=None; got {self.epsilon}); "
                             "its privacy comes from its own mechanism")
        names = [k for k, _ in self.options]
        if names != sorted(set(names)):
            raise ValueError(f"options must be (name, value) pairs sorted by unique name (got {names})")
        missing = set(TASK_OPTIONS.get(self.task, ())) - set(names)
        extra = set(names) - set(TASK_OPTIONS.get(self.task, ()))
        if missing or extra:
            raise ValueError(f"a {self.task} run takes the options {TASK_OPTIONS.get(self.task, ())}; "
                             f"missing {sorted(missing)}, unknown {sorted(extra)}")
        get_profile(self.profile)
        if self.patience is not None and (int(self.patience) != self.patience or self.patience < 1):
            raise ValueError(f"patience must be a positive number of epochs or None (got {self.patience})")
        if self.validation_fraction is not None and not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1) or None (got {self.validation_fraction})")
        if self.patience is not None and self.validation_fraction is None:
            raise ValueError("early stopping watches a validation split carved from the training images, never the "
                             "test images: give validation_fraction (e.g. 0.1) with patience")
        if self.validation_fraction is not None and self.task not in ("scratch", "finetune", "frozen_head",
                                                                      "dpsgd"):
            raise ValueError(f"a {self.task} run takes no validation_fraction (its batches are its participants')")
        if self.conv1_channels is not None and (int(self.conv1_channels) != self.conv1_channels
                                                or self.conv1_channels < 1):
            raise ValueError(f"conv1_channels must be a positive integer or None (got {self.conv1_channels})")
        if self.image_size is not None and (self.image_size < 32 or self.image_size % 32):
            raise ValueError(f"image_size must be a positive multiple of 32 or None (got {self.image_size})")

    def option(self, name: str) -> Any:
        """The value of option ``name`` (``KeyError`` when the run has none)."""
        return dict(self.options)[name]

    def profile_obj(self) -> Profile:
        """The profile, with this run's input size when it overrides it."""
        prof = get_profile(self.profile)
        return prof if self.image_size is None else dataclasses.replace(prof, image_size=self.image_size)

    def model_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :func:`build_split_vggface` for this run's shapes."""
        kwargs = self.profile_obj().model_kwargs()
        if self.conv1_channels is not None:
            kwargs["channels"] = {"conv1_1": int(self.conv1_channels)}
        return kwargs

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def key(self) -> str:
        # The profile's training settings and the code that trains are part of the key: editing either
        # invalidates the cached runs.  A trained public model's key also holds its recipe (and its code).
        prof = get_profile(self.profile)
        spec = {k: v for k, v in self.to_dict().items()
                if not (k in self._KEY_DEFAULTS and v == self._KEY_DEFAULTS[k])}
        config = {**spec, "profile_settings": prof.training_settings()}
        modules = (*TRAINING_MODULES, *TASK_MODULES.get(self.task, ()))
        if self.task == "pretrain" and self.weights_sha256 is None:
            config["pretrain_recipe"] = prof.pretrain.to_dict()
            modules = PRETRAIN_MODULES
        return cache_key(config, modules=modules)

    def label(self) -> str:
        if self.task in BASELINE_TASKS:
            opts = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.options)
            return self.task + (f" ({opts})" if opts else "")
        return "no noise" if self.epsilon is None else f"ε = {self.epsilon:g}"

    def activation_size(self) -> int:
        """Coordinates the client releases per image (conv1_1's output: H x W x channels)."""
        from dpact_tf.vggface import layer_plan

        prof = self.profile_obj()
        plan = layer_plan(prof.width, {"conv1_1": self.conv1_channels} if self.conv1_channels else None)
        return prof.image_size ** 2 * {name: ch for name, _, ch in plan}["conv1_1"]


@dataclasses.dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    history: Dict[str, Any]     # per-epoch loss / train_accuracy / test_accuracy / ...
    info: Dict[str, Any]        # data summary, noise std, model sizes, wall time
    path: str                   # the JSON file
    client_weights: str         # HDF5 weights of the client
    server_weights: str         # HDF5 weights of the server
    cached: bool                # True when loaded from disk

    def load_split(self, *, epsilon: Optional[float] = "same", noise_seed: Optional[int] = None):
        """Rebuild the trained :class:`SplitModel` (weights loaded) -- with this run's epsilon by default."""
        from dpact_tf.vggface import build_split_vggface

        eps = self.spec.epsilon if epsilon == "same" else epsilon
        split = build_split_vggface(num_classes=self.info["num_classes"], cut=self.spec.cut, epsilon=eps,
                                    delta=self.spec.delta, method=self.spec.method, noise_seed=noise_seed,
                                    **self.spec.model_kwargs())
        split.client.load_weights(self.client_weights, by_name=True)
        split.server.load_weights(self.server_weights, by_name=True)
        return split


def lfw_root() -> Optional[str]:
    """``$DPACT_LFW_DIR``, else ``data/lfw`` at the repository root when it exists (so a notebook opened from
    ``notebooks/`` finds the same LFW as ``make book``), else None (the library's own search and error)."""
    if os.environ.get("DPACT_LFW_DIR"):
        return os.environ["DPACT_LFW_DIR"]
    candidate = os.path.join(REPO, "data", "lfw")
    return candidate if os.path.isdir(candidate) else None


def load_faces(profile: Profile, dataset: str, *, public: bool = False, seed: int = 0,
               progress: bool = True) -> FaceSplit:
    """The evaluation set (or, with ``public=True``, the disjoint pre-training set) at ``profile``'s size."""
    if dataset == "lfw":
        from dpact_tf.data import load_lfw, load_lfw_public

        common = dict(root=lfw_root(), image_size=profile.image_size, crop_fraction=profile.crop_fraction, seed=seed,
                      progress=progress)
        if public:
            return load_lfw_public(min_images_per_person=profile.pretrain.min_images, **common)
        return load_lfw(**common)
    if dataset == "synthetic":
        from dpact_tf.synthetic import synthetic_faces

        n_img = profile.synthetic_images_per_identity
        return synthetic_faces(profile.synthetic_identities, n_img if not public else max(2, n_img // 2),
                               profile.image_size, seed=seed + (7919 if public else 0),
                               prefix="synthetic_public" if public else "synthetic")
    raise ValueError(f"dataset must be 'lfw' or 'synthetic' (got {dataset!r})")


class HistoryWriter(Callback):
    """Writes the run's JSON (marked incomplete) after every epoch, so a killed run shows how far it got."""

    def __init__(self, path: str, metadata: Dict[str, Any]) -> None:
        self.path, self.metadata = path, metadata

    def on_epoch_end(self, epoch: int, history: Dict[str, List[Any]]) -> None:
        write_json(self.path, {**self.metadata, "history": history})


def run_paths(spec: RunSpec, results_dir: Optional[str] = None):
    base = os.path.join(resolve_results_dir(results_dir), spec.profile, spec.dataset, spec.task, spec.key())
    return base + ".json", base + ".client.h5", base + ".server.h5"


def load_cached(spec: RunSpec, results_dir: Optional[str] = None) -> Optional[RunResult]:
    """The complete cached result of ``spec`` (JSON and both weight files), or None."""
    path, cpath, spath = run_paths(spec, results_dir)
    if not (os.path.exists(path) and os.path.exists(cpath) and os.path.exists(spath)):
        return None
    with open(path) as fh:
        saved = json.load(fh)
    if not saved.get("complete"):
        return None
    return RunResult(spec, saved["history"], saved["info"], path, cpath, spath, cached=True)


def run_training(spec: RunSpec, *, results_dir: Optional[str] = None, force: bool = False, progress: bool = True,
                 data: Optional[FaceSplit] = None) -> RunResult:
    """Train ``spec`` (or load its cached result). ``data`` may be passed to avoid reloading images."""
    if spec.task == "pretrain":
        raise ValueError("the public model is trained by dpact_tf.repro.pretrain.pretrain (its own recipe), "
                         "not by run_training")
    cached = None if force else load_cached(spec, results_dir)
    if cached is not None:
        return cached
    path, cpath, spath = run_paths(spec, results_dir)

    import tensorflow as tf

    from dpact_tf.data import make_dataset
    from dpact_tf.split import TrainingConfig
    from dpact_tf.vggface import build_split_vggface

    prof = spec.profile_obj()
    if data is None:
        data = load_faces(prof, spec.dataset, seed=spec.seed, progress=progress)
    if tuple(data.train_images.shape[1:3]) != (prof.image_size, prof.image_size):
        raise ValueError(f"the run needs {prof.image_size}x{prof.image_size} images but data holds "
                         f"{data.train_images.shape[1]}x{data.train_images.shape[2]}; load them with "
                         "load_faces(spec.profile_obj(), ...)")
    tf.keras.utils.set_random_seed(spec.seed)
    split = build_split_vggface(num_classes=data.num_classes, cut=spec.cut, epsilon=spec.epsilon, delta=spec.delta,
                                method=spec.method, noise_seed=spec.seed + 1, **spec.model_kwargs())
    config = TrainingConfig(learning_rate=prof.learning_rate, momentum=prof.momentum,
                            lr_decay_rate=prof.lr_decay_rate)
    if spec.task in ("finetune", "frozen_head"):
        init_dir = os.path.join(resolve_results_dir(results_dir), spec.profile, spec.dataset, "pretrain", spec.init)
        if not os.path.exists(init_dir + ".client.h5"):
            raise FileNotFoundError(f"the pre-trained weights {init_dir}.*.h5 are missing; run the pretrain task first")
        if spec.task == "finetune":
            split.client.load_weights(init_dir + ".client.h5", by_name=True)
            split.server.load_weights(init_dir + ".server.h5", by_name=True, skip_mismatch=True)
            config = dataclasses.replace(config, train_client=False, server_trainable="output")
        else:
            # PrivyNet-style: the client is the public model's layers up to the cut (the public model was trained
            # with its split at conv1_1: its layers after conv1_1 are in the server's file), frozen; the server
            # trains the rest from its fresh initialization.
            split.client.load_weights(init_dir + ".client.h5", by_name=True, skip_mismatch=True)
            split.client.load_weights(init_dir + ".server.h5", by_name=True, skip_mismatch=True)
            config = dataclasses.replace(config, train_client=False)
    train_images, train_labels, monitor = data.train_images, data.train_labels, None
    if spec.validation_fraction is not None:
        from dpact_tf.data import validation_split

        fit_idx, val_idx = validation_split(data.train_labels, spec.validation_fraction, seed=spec.seed)
        monitor = make_dataset(data.train_images[val_idx], data.train_labels[val_idx],
                               batch_size=max(256, prof.batch_size))
        train_images, train_labels = data.train_images[fit_idx], data.train_labels[fit_idx]
    train = make_dataset(train_images, train_labels, batch_size=prof.batch_size, shuffle=True, seed=spec.seed)
    test = make_dataset(data.test_images, data.test_labels, batch_size=max(256, prof.batch_size))
    trainer, train = _trainer(spec, split, config, data, train)
    info = {"data": data.summary(), "synthetic": data.is_synthetic, "noise_std": float(split.dp_layer.stddev),
            "activation_shape": list(split.activation_shape), "client_flops": split.client_flops,
            "client_params": split.client_params, "num_classes": data.num_classes,
            "majority_class_test_accuracy": data.majority_class_rate,
            "profile": prof.to_dict()}
    meta = {"spec": spec.to_dict(), "key": spec.key(), "info": info, "complete": False}
    desc = f"{spec.task} {spec.label()}" + (f" cut {spec.cut}" if spec.cut != "conv1_1" else "")
    callbacks: List[Callback] = [HistoryWriter(path, meta)]
    if spec.patience is not None:
        callbacks.append(EarlyStopping(monitor="validation_accuracy", patience=spec.patience, min_delta=spec.min_delta,
                                       start_from_epoch=spec.start_from_epoch))
    if progress:
        callbacks.append(ProgressBar(desc))
    start = time.perf_counter()
    history = trainer.fit(train, spec.epochs, validation_data=test, monitor_data=monitor, callbacks=callbacks)
    info["wall_seconds"] = time.perf_counter() - start
    info.update(_trainer_info(trainer, prof.batch_size))
    split.client.save_weights(cpath)
    split.server.save_weights(spath)
    write_json(path, {**meta, "info": info, "history": history, "complete": True})
    return RunResult(spec, history, info, path, cpath, spath, cached=False)


def _trainer(spec: RunSpec, split, config, data: FaceSplit, train):
    """The trainer of ``spec``'s task and the training batches it takes (the same loop, ``EpochTrainer.fit``)."""
    from dpact_tf.split import SplitTrainer

    if spec.task in ("scratch", "finetune", "frozen_head"):
        return SplitTrainer(split, config), train
    if spec.task == "dpsgd":
        from dpact_tf.baselines.dpsgd import DPSGDTrainer

        return DPSGDTrainer(split.monolithic(), l2_norm_clip=spec.option("l2_norm_clip"),
                            noise_multiplier=spec.option("noise_multiplier"), learning_rate=config.learning_rate,
                            momentum=config.momentum, lr_decay_rate=config.lr_decay_rate), train
    if spec.task == "dssgd":
        import numpy as np

        from dpact_tf.baselines.dssgd import DSSGDTrainer, interleave_shards, participant_shards

        k, standalone = int(spec.option("participants")), bool(spec.option("standalone"))
        shards = participant_shards(data.train_labels, k, seed=spec.seed)
        batches = interleave_shards(data.train_images.astype(np.float32) / 255.0, data.train_labels,
                                    shards[:1] if standalone else shards, spec.profile_obj().batch_size,
                                    seed=spec.seed)
        # The model shares its weights with ``split``: after fit, it holds the evaluated (global) model, saved as
        # the run's client and server weights.
        trainer = DSSGDTrainer(split.monolithic, participants=k, theta_upload=spec.option("theta_upload"),
                               theta_download=spec.option("theta_download"), learning_rate=config.learning_rate,
                               momentum=config.momentum, lr_decay_rate=config.lr_decay_rate, standalone=standalone,
                               momentum_at=spec.option("momentum_at"), seed=spec.seed)
        return trainer, batches
    raise ValueError(f"no trainer for task {spec.task!r}")


def _trainer_info(trainer, batch_size: int) -> Dict[str, Any]:
    """What a baseline's trainer reports beyond the history (bytes exchanged), for the run's JSON."""
    if hasattr(trainer, "upload_bytes_per_turn"):  # DSSGD: one batch per participant turn
        return {"trainer": {"participants": trainer.participants, "num_parameters": trainer.num_parameters,
                            "upload_bytes_per_turn": trainer.upload_bytes_per_turn,
                            "download_bytes_per_turn": trainer.download_bytes_per_turn,
                            "upload_bytes_per_image": trainer.upload_bytes_per_turn / batch_size,
                            "download_bytes_per_image": trainer.download_bytes_per_turn / batch_size,
                            **trainer.history_extras()}}
    return {}
