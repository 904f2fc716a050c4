"""Run profiles: one frozen config class, four instances (``tiny``, ``small``, ``medium``, ``paper``).

* ``tiny``  -- seconds; for tests and notebook smoke runs (32x32 faces, 1/8 of VGG-Face's channels).
* ``small`` -- the default; the whole book on a 2-core CPU (64x64 faces, 1/8 of VGG-Face's channels).
* ``medium`` -- small with the fidelity chapter's budgets (60-epoch convergence runs, a scale ladder to 64 conv1
  channels and 96x96 inputs); every other study as small; hours on a 2-core CPU, not needed by the default book.
* ``paper`` -- the paper's settings: 224x224 inputs, full VGG-Face (width 1, fc 4096), batch 64,
  SGD momentum 0.9, lr 0.01 decayed by 0.1; for GPU users.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

__all__ = ["Profile", "PretrainRecipe", "BaselineSchedule", "PROFILES", "MEDIUM_FIELDS", "get_profile",
           "DEFAULT_EPSILONS"]

# The paper's sweep (Figs 2-4): epsilon from 1 to 20; None is the no-noise baseline.
DEFAULT_EPSILONS: Tuple[Optional[float], ...] = (None, 1.0, 2.0, 3.0, 5.0, 10.0, 14.0, 20.0)


@dataclasses.dataclass(frozen=True)
class PretrainRecipe:
    """How the public model of the fine-tuning experiment (the offline stand-in for VGG-Face) is trained.

    The publisher of a public model trains it whole, without noise and without a split, with the usual tools:
    augmentation, a warmed-up learning rate, weight decay, label smoothing, dropout (VGG-Face: random crops and
    flips, dropout 0.5 after fc6 and fc7).  None of it changes the network's weights' shapes, so the fine-tuning
    network (no dropout) loads them by name.  See :mod:`dpact_tf.repro.pretrain`.
    """

    min_images: int           # the public LFW people with at least this many images (2..9; 2 = all 1,522 people)
    epochs: int               # passes over the public training images
    augment: bool             # random flips, crops and colour jitter in training (dpact_tf.augment.Augmentation())
    optimizer: str            # "adam" or "sgd" (momentum 0.9)
    learning_rate: float      # peak learning rate, reached after the warm-up, then cosine decay to 0
    warmup_epochs: int        # epochs of linear warm-up from 0
    weight_decay: float       # decoupled weight decay per step, times the learning rate (0: none)
    label_smoothing: float    # mass of the one-hot target spread uniformly over the classes (0: none)
    dropout: float            # dropout after fc6 and fc7 during pre-training only (0: none)
    data_init: bool           # data-dependent initialization (dpact_tf.vggface.initialize_from_data)

    def __post_init__(self) -> None:
        if not 2 <= self.min_images <= 9:
            raise ValueError(f"min_images must be in 2..9 (got {self.min_images}); people with >= 10 images are "
                             "the evaluation identities")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 (got {self.epochs})")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd' (got {self.optimizer!r})")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0 (got {self.learning_rate})")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs) (got {self.warmup_epochs} of {self.epochs})")
        for name in ("weight_decay", "label_smoothing", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1) (got {getattr(self, name)})")

    def to_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class BaselineSchedule:
    """What the baselines chapter (:mod:`dpact_tf.repro.baselines`) trains, per profile.

    Every baseline run has the same budget (``epochs``) as the paper's method from scratch has in Fig. 3 at this
    profile, the same network and data; the alternatives are compared at equal training, not tuned separately.
    """

    epochs: int                                   # epochs of every baseline run
    cuts: Tuple[str, ...]                         # PrivyNet-style: the cut layers of the frozen public head
    dpsgd_epsilons: Tuple[float, ...]             # DP-SGD: per-example epsilons over the whole run (nominal)
    dpsgd_matched_epsilons: Tuple[float, ...]     # DP-SGD: per-coordinate epsilons of the DP-activation runs whose
                                                  # per-image, per-run epsilon DP-SGD is also trained at
    dpsgd_clip: float                             # DP-SGD: per-example L2 clip of the gradient
    dssgd_participants: Tuple[int, ...]           # DSSGD: numbers of participants K
    dssgd_thetas: Tuple[float, ...]               # DSSGD: fractions of the gradient uploaded per turn
    attack_epochs: int                            # epochs of the reconstruction decoder (the attacks chapter's)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.attack_epochs < 1:
            raise ValueError(f"epochs and attack_epochs must be >= 1 (got {self.epochs}, {self.attack_epochs})")
        if any(not e > 0 for e in (*self.dpsgd_epsilons, *self.dpsgd_matched_epsilons)):
            raise ValueError("DP-SGD epsilons must be > 0")
        if not self.dpsgd_clip > 0:
            raise ValueError(f"dpsgd_clip must be > 0 (got {self.dpsgd_clip})")
        if any(k < 1 for k in self.dssgd_participants):
            raise ValueError(f"dssgd_participants must be >= 1 (got {self.dssgd_participants})")
        if any(not 0 < t <= 1 for t in self.dssgd_thetas):
            raise ValueError(f"dssgd_thetas must be in (0, 1] (got {self.dssgd_thetas})")

    def to_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes and schedules of one reproduction profile."""

    name: str
    image_size: int                 # side of the square network input, pixels
    crop_fraction: float            # centre crop of the 250x250 LFW image (fraction of its side) before resizing
    width: float                    # channel multiplier of VGG-Face's conv layers (1 = paper)
    fc_units: int                   # units of fc6 and fc7 (4096 = paper)
    batch_size: int                 # minibatch size (64 = paper)
    learning_rate: float            # initial SGD learning rate (0.01 = paper)
    momentum: float                 # SGD momentum (0.9 = paper)
    lr_decay_rate: float            # the learning rate decays by this factor over the run (0.1 = paper)
    epochs: int                     # epochs of training from scratch (Fig 3)
    finetune_epochs: int            # epochs of output-layer fine-tuning (Fig 4)
    pretrain: PretrainRecipe        # how the public model (disjoint identities) is pre-trained
    partition_epochs: int           # epochs per run of the partition-position study
    partition_cuts: Tuple[str, ...]                 # cut layers compared in the partition study
    partition_epsilons: Tuple[Optional[float], ...]  # epsilons of the partition study (None = no noise)
    synthetic_identities: int       # identities of the synthetic stand-in (dataset="synthetic")
    synthetic_images_per_identity: int  # images per synthetic identity
    benchmark_repeats: int          # timed repetitions in the mobile-cost benchmark
    # "Why (not) reproduced" (dpact_tf.repro.fidelity)
    convergence_max_epochs: int     # budget of the convergence study's runs (the learning rate decays over it)
    convergence_patience: int       # early stopping: epochs without a better test accuracy before a run ends
    convergence_min_delta: float    # early stopping: "better" = more than this above the best so far
    convergence_epsilons: Tuple[Optional[float], ...]  # epsilons of the convergence study (None = no noise)
    ladder_points: Tuple[Tuple[int, int], ...]         # scale ladder: (input side, conv1_1 channels) per point
    ladder_epsilons: Tuple[Optional[float], ...]       # scale ladder: epsilons at every point (None = no noise)
    baselines: BaselineSchedule     # the baselines chapter (DP-SGD, PrivyNet-style, DSSGD, SPNN-style)
    # the attacks chapter's epsilons when none are given (None: the paper's sweep, DEFAULT_EPSILONS)
    attack_epsilons: Optional[Tuple[Optional[float], ...]] = None
    # scale ladder: seeds of its largest point (every other point trains one); every ladder run trains with the
    # convergence study's early stopping and budget, so a point stops when it no longer improves
    ladder_largest_seeds: int = 1
    # the attacks chapter's scale study (dpact_tf.repro.attack_scale): the server's membership test at these
    # (input side, conv1_1 channels) activations, with this many received faces and as many non-member candidates
    attack_scale_points: Tuple[Tuple[int, int], ...] = ()
    attack_scale_faces: int = 100

    def __post_init__(self) -> None:
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (got {self.image_size})")
        for side, channels in self.attack_scale_points:
            if side < 32 or side % 32 or channels < 1:
                raise ValueError(f"attack_scale_points must be (side, channels) with side a positive multiple of 32 "
                                 f"and channels >= 1 (got {(side, channels)})")
        if self.attack_scale_faces < 8:
            raise ValueError(f"attack_scale_faces must be >= 8 (got {self.attack_scale_faces}): the membership audit "
                             "holds out half of each class")
        for field in ("epochs", "finetune_epochs", "partition_epochs", "batch_size",
                      "convergence_max_epochs", "convergence_patience", "ladder_largest_seeds"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1 (got {getattr(self, field)})")

    def model_kwargs(self) -> Dict[str, object]:
        """Keyword arguments of :func:`dpact_tf.build_split_vggface` for this profile."""
        return {"input_shape": (self.image_size, self.image_size, 3), "width": self.width,
                "fc_units": self.fc_units}

    def to_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)

    def training_settings(self) -> Dict[str, object]:
        """The fields that change what a training run computes (the cache key of a run includes them).

        Schedules of the studies (how many epochs, which cuts or epsilons to sweep) are part of each run's
        own spec instead, so editing a sweep does not invalidate the runs it shares with other studies; the
        pre-training recipe is part of the pre-trained model's key only (and so of the runs that start from it).
        """
        keys = ("image_size", "crop_fraction", "width", "fc_units", "batch_size", "learning_rate", "momentum",
                "lr_decay_rate", "synthetic_identities", "synthetic_images_per_identity")
        return {k: getattr(self, k) for k in keys}


_PARTITION_CUTS = ("conv1_1", "conv1_2", "pool1", "conv2_2", "pool2")
# small trains three of them for Fig. 3's 15 epochs, so its conv1_1 runs are the Fig. 3 sweep's (cached, not retrained)
# and the book fits 90 minutes on 2 cores; paper trains all five.
_SMALL_PARTITION_CUTS = ("conv1_1", "pool1", "pool2")
# tiny (the tests' smoke runs): a cut of each kind -- the paper's, a pooling layer, a deeper convolution -- at two
# epsilons (None and 5) for 2 epochs, so its conv1_1 runs are the baselines chapter's references (its budget and
# matched epsilon, BaselineSchedule), cached, not retrained.
_TINY_PARTITION_CUTS = ("conv1_1", "pool1", "conv2_2")

# The attacks (inversions, a decoder with its null twin, the identity oracle and the server-side membership test per
# epsilon) at six of the sweep's eight epsilons, to keep the book within its time budget on 2 cores; tiny and paper
# attack the whole sweep.
_SMALL_ATTACK_EPSILONS = (None, 1.0, 3.0, 5.0, 10.0, 20.0)

# The public model's recipe (chosen on a dev split of the public training images, benchmarks/pretrain_recipe.py):
# all 1,522 public people, augmented, data-dependent init, Adam with warm-up and cosine decay.
_PRETRAIN = PretrainRecipe(min_images=2, epochs=50, augment=True, optimizer="adam", learning_rate=1e-3,
                           warmup_epochs=1, weight_decay=0.0, label_smoothing=0.0, dropout=0.0, data_init=True)

# The baselines at the small profile: Fig. 3's budget (15 epochs); DP-SGD (~3x an epoch of the split protocol) at one
# of the paper's nominal epsilons and matched to one DP-activation run, to keep the book within 90 minutes on 2 cores
# (the paper profile adds epsilons and numbers of DSSGD participants).
_BASELINES = BaselineSchedule(epochs=15, cuts=("conv1_1", "pool1", "pool2"), dpsgd_epsilons=(1.0,),
                              dpsgd_matched_epsilons=(3.0,), dpsgd_clip=1.0, dssgd_participants=(4,),
                              dssgd_thetas=(0.01, 0.1, 1.0), attack_epochs=3)

_SMALL = Profile(name="small", image_size=64, crop_fraction=0.6, width=1 / 8, fc_units=256, batch_size=64,
                 learning_rate=0.01, momentum=0.9, lr_decay_rate=0.1, epochs=15, finetune_epochs=10,
                 pretrain=_PRETRAIN, partition_epochs=15, partition_cuts=_SMALL_PARTITION_CUTS,
                 partition_epsilons=(None, 10.0), synthetic_identities=40,
                 synthetic_images_per_identity=30, benchmark_repeats=10, convergence_max_epochs=30,
                 convergence_patience=8, convergence_min_delta=0.005, convergence_epsilons=(None, 3.0, 5.0, 10.0),
                 ladder_points=((64, 4), (64, 8), (64, 16)), ladder_epsilons=(None, 10.0),
                 baselines=_BASELINES, attack_epsilons=_SMALL_ATTACK_EPSILONS,
                 attack_scale_points=((64, 8), (64, 64)), attack_scale_faces=100)

# medium: small's book with larger budgets where small cannot decide -- convergence runs twice as long, a scale ladder
# at epsilon 5 and 10 to the paper's 64 conv1 channels and 96x96 inputs (two seeds at 64x64x64), and the attacks'
# scale study adds 128x128x64 activations.  The paper's 224x224x64 is left to larger machines: its membership test
# holds every face's releases at once, more than 24 GiB.  Every
# other field is small's
# (tests/test_fidelity.py checks it); the frontier chapter's schedule at medium runs (d), DP-SGD from scratch,
# with longer candidates and seeds of (b) (dpact_tf.repro.frontier.SCHEDULES).  So `make book PROFILE=medium` costs
# small's chapters plus those studies (README).  Larger ladder points are left to a GPU: the fidelity chapter
# estimates their cost from the ladder's timed runs (dpact_tf.repro.fidelity.LEFT_OUT).
MEDIUM_FIELDS: Tuple[str, ...] = ("convergence_max_epochs", "convergence_patience", "convergence_min_delta",
                                  "convergence_epsilons", "ladder_points", "ladder_epsilons", "ladder_largest_seeds",
                                  "attack_scale_points")
_MEDIUM = dataclasses.replace(_SMALL, name="medium", convergence_max_epochs=60, convergence_patience=10,
                              ladder_points=((64, 4), (64, 8), (64, 16), (64, 32), (64, 64), (96, 8)),
                              ladder_epsilons=(None, 5.0, 10.0), ladder_largest_seeds=2,
                              attack_scale_points=((64, 8), (64, 64), (128, 64)))

PROFILES: Dict[str, Profile] = {
    "tiny": Profile(name="tiny", image_size=32, crop_fraction=0.6, width=1 / 8, fc_units=64, batch_size=32,
                    learning_rate=0.01, momentum=0.9, lr_decay_rate=0.1, epochs=8, finetune_epochs=4,
                    pretrain=dataclasses.replace(_PRETRAIN, epochs=6), partition_epochs=2, partition_cuts=_TINY_PARTITION_CUTS,
                    partition_epsilons=(None, 5.0), synthetic_identities=8, synthetic_images_per_identity=30,
                    benchmark_repeats=3, convergence_max_epochs=6, convergence_patience=2,
                    convergence_min_delta=0.0, convergence_epsilons=(None, 3.0),
                    ladder_points=((32, 4), (32, 8)), ladder_epsilons=(None, 3.0), ladder_largest_seeds=2,
                    attack_scale_points=((32, 8), (32, 32)), attack_scale_faces=24,
                    baselines=BaselineSchedule(epochs=2, cuts=("conv1_1", "pool1"), dpsgd_epsilons=(3.0,),
                                               dpsgd_matched_epsilons=(5.0,), dpsgd_clip=1.0,
                                               dssgd_participants=(2,), dssgd_thetas=(0.1,), attack_epochs=1)),
    "small": _SMALL,
    "medium": _MEDIUM,
    "paper": Profile(name="paper", image_size=224, crop_fraction=224 / 250, width=1.0, fc_units=4096,
                     batch_size=64, learning_rate=0.01, momentum=0.9, lr_decay_rate=0.1, epochs=30,
                     finetune_epochs=10, pretrain=dataclasses.replace(_PRETRAIN, epochs=30), partition_epochs=30,
                     partition_cuts=_PARTITION_CUTS,
                     partition_epsilons=(None, 1.0, 3.0, 5.0, 10.0, 20.0), synthetic_identities=158,
                     synthetic_images_per_identity=27, benchmark_repeats=20, convergence_max_epochs=100,
                     convergence_patience=10, convergence_min_delta=0.005,
                     convergence_epsilons=(None, 2.0, 3.0, 5.0, 10.0, 20.0),
                     ladder_points=((224, 8), (224, 16), (224, 32), (224, 64)), ladder_epsilons=(None, 3.0, 5.0, 10.0),
                     ladder_largest_seeds=2, attack_scale_points=((128, 64), (224, 64)), attack_scale_faces=200,
                     baselines=dataclasses.replace(_BASELINES, epochs=30, dpsgd_epsilons=(1.0, 2.0, 3.0, 5.0, 10.0, 20.0),
                                                   dpsgd_matched_epsilons=(3.0, 10.0), dssgd_participants=(2, 4, 8),
                                                   attack_epochs=5)),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name`` ("tiny", "small", "medium" or "paper")."""
    if isinstance(name, Profile):
        return name
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
