"""DSSGD: distributed selective SGD (Shokri & Shmatikov, "Privacy-Preserving Deep Learning", CCS 2015, Sec. 5).

K participants each hold a disjoint shard of the training set and never share it; a parameter server holds the
global parameters ``w`` and a counter ``stat`` of how many uploads changed each of them (their Fig. 2).  A
participant's turn (their Algorithm 1, in the round-robin schedule of Sec. 5.1):

1. download the fraction ``theta_download`` of the global parameters into its local model -- the most updated
   ones (largest ``stat``; ties: the lower index), or all of them when ``theta_download == 1``;
2. one local SGD step on a batch of its own shard;
3. upload the fraction ``theta_upload`` of the local parameter change ``dw`` (the step's update) with the largest
   magnitude, selected over *all* parameters of the network at once (Algorithm 1's "largest values" criterion,
   not per layer); the server adds it to ``w`` and adds one to ``stat`` at the uploaded indices.

Momentum lives where ``momentum_at`` says.  ``"participant"`` (the default: local training, as in the paper):
each participant keeps its own velocity and uploads its momentum step, so with K participants every upload
carries a velocity that has not seen the other K - 1 participants' steps (stale by up to K turns), which
penalizes full sharing.  ``"server"``: the participant's step is plain SGD, and the server keeps one velocity over
the global parameters, ``v = momentum * v + uploaded`` and ``w += v`` -- with ``theta = 1`` this is SGD with
momentum on the round-robin batches, so full sharing is centralized training.  A standalone participant keeps
its own velocity either way.

The paper's optional Laplace noise on the uploaded values (its DP variant) is not applied: this is the
no-noise DSSGD whose privacy comes from sharing a small fraction of the update.

One Keras model does the computing; the parameter server's ``w`` and each participant's weights and velocity
are flat float32 vectors (``(1 + 2K) x n`` floats; n = 0.4 M at the small profile), loaded into the model at the
start of each turn -- a copy of n floats, small next to a forward and backward pass -- so K participants cost
one traced graph and one set of layers.  Batches come from :func:`interleave_shards`: batch ``i`` of the run is
participant ``i % K``'s, and the trainer counts its steps to know whose turn it is.

Traffic: a sparse message (a fraction < 1) costs 4 bytes per value (float32) + 4 per index (int32); a dense one
(fraction 1: all parameters, in order) 4 bytes per value, without indices.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from dpact_tf.callbacks import Callback
from dpact_tf.data import without_autotune
from dpact_tf.split import GradientMessage
from dpact_tf.training import (EpochTrainer, correct_count as _correct, float_images as _float_images,
                               images_ok as _images_ok, int_labels as _int_labels,
                               raise_for_images as _raise_for_images)
from dpact_tf.baselines.whole_model import evaluate_batch

__all__ = ["DSSGDTrainer", "participant_shards", "interleave_shards", "selected_count", "largest_magnitude"]

BYTES_PER_VALUE = 4  # float32
BYTES_PER_INDEX = 4  # int32


def selected_count(fraction: float, n: int) -> int:
    """``ceil(fraction * n)``, the number of parameters a fraction selects (rounded to 9 decimals first, so that
    0.7 x 10 is 7, not 8)."""
    return int(math.ceil(round(fraction * n, 9)))


# largest_magnitude's pre-selection: every SAMPLE_STRIDE-th entry estimates a threshold below the count-th largest
SAMPLE_STRIDE = 17
SAMPLE_MARGIN = 1.2  # take that many times the sample's share of ``count`` above the threshold


def largest_magnitude(values: tf.Tensor, count: int) -> tf.Tensor:
    """Indices (int32, in no particular order) of the ``count`` entries of the 1-D ``values`` with the largest
    ``|value|``; which of several equal magnitudes at the threshold is taken is the kernel's choice.

    Exact, and three times faster than one ``top_k`` over all entries (5 vs 16 ms CPU for 40 k of 0.4 M): a
    strided sample gives a threshold that about ``SAMPLE_MARGIN x count`` entries exceed; ``top_k`` then runs on
    those candidates only -- the whole vector when the sample has overestimated and fewer than ``count`` remain.
    """
    n = int(values.shape[0])
    if not 1 <= count <= n:
        raise ValueError(f"count must be in [1, {n}] (got {count})")
    magnitude = tf.abs(values)
    sample = magnitude[::SAMPLE_STRIDE]
    per_sample = min(int(sample.shape[0]), int(math.ceil(count / SAMPLE_STRIDE * SAMPLE_MARGIN)) + 16)
    threshold = tf.reduce_min(tf.math.top_k(sample, per_sample, sorted=False).values)
    candidates = tf.where(magnitude >= threshold)[:, 0]

    def among_candidates():
        chosen = tf.math.top_k(tf.gather(magnitude, candidates), count, sorted=False).indices
        return tf.cast(tf.gather(candidates, chosen), tf.int32)

    return tf.cond(tf.size(candidates) >= count, among_candidates,
                   lambda: tf.math.top_k(magnitude, count, sorted=False).indices)


def _check_fraction(name: str, value: float) -> float:
    if not (isinstance(value, (int, float, np.floating, np.integer)) and 0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a fraction of the parameters in [0, 1] (got {value!r}); the paper uses "
                         "0.01 to 1 (1: share everything)")
    return float(value)


def participant_shards(labels: Sequence[int], participants: int, seed: int = 0) -> List[np.ndarray]:
    """Disjoint shards of the training set, one per participant, covering it, stratified per identity.

    The images of each identity are shuffled and dealt in turn to the participants, continuing where the
    previous identity stopped: an identity with m images reaches min(m, K) participants, and the shards' sizes
    differ by at most one.  Returns K sorted int64 index arrays into ``labels``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (got shape {labels.shape})")
    if int(participants) != participants or participants < 1:
        raise ValueError(f"participants must be a positive integer (got {participants!r})")
    participants = int(participants)
    if len(labels) < participants:
        raise ValueError(f"{len(labels)} images cannot give each of {participants} participants a non-empty shard")
    rng = np.random.default_rng(seed)
    owners = np.empty(len(labels), np.int64)
    dealt = 0
    for identity in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == identity))
        owners[members] = (dealt + np.arange(len(members))) % participants
        dealt += len(members)
    return [np.flatnonzero(owners == k) for k in range(participants)]


def interleave_shards(images: np.ndarray, labels: np.ndarray, shards: Sequence[np.ndarray], batch_size: int,
                      seed: int = 0) -> tf.data.Dataset:
    """(images, labels) batches in round-robin order over the participants: batch ``i`` is from shard ``i % K``.

    Every epoch each shard is reshuffled (deterministically from ``seed``) and gives the same number of batches,
    ``ceil(s / batch_size)`` with ``s`` the smallest shard's size: a larger shard leaves out its last
    (shuffled) images that epoch -- at most one per shard for :func:`participant_shards`' balanced shards.  The
    dataset's cardinality is known (K x that number), as :meth:`DSSGDTrainer.fit` needs.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be float pixels in [0, 1] (got dtype {images.dtype}); divide uint8 images "
                         "by 255")
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length ({len(images)} vs {len(labels)})")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (got {batch_size!r})")
    shards = [np.asarray(s, np.int64) for s in shards]
    if not shards or any(len(s) == 0 for s in shards):
        raise ValueError("every participant needs a non-empty shard (see participant_shards)")
    if any(s.min() < 0 or s.max() >= len(labels) for s in shards):
        raise ValueError(f"shard indices must lie in [0, {len(labels)})")
    per_shard = min(len(s) for s in shards)
    batches = math.ceil(per_shard / batch_size)
    streams = [tf.data.Dataset.from_tensor_slices(s).shuffle(len(s), seed=seed * 1_000_003 + k,
                                                             reshuffle_each_iteration=True)
               .take(per_shard).batch(int(batch_size)) for k, s in enumerate(shards)]
    order = tf.data.Dataset.range(len(shards)).repeat(batches)
    images_t, labels_t = tf.constant(images), tf.constant(labels)
    ds = tf.data.Dataset.choose_from_datasets(streams, order)
    ds = ds.map(lambda idx: (tf.gather(images_t, idx), tf.gather(labels_t, idx)))
    return without_autotune(ds.apply(tf.data.experimental.assert_cardinality(len(shards) * batches)).prefetch(2))


class _EpochTraffic(Callback):
    """Records the trainer's cumulative traffic at each epoch's end (for :meth:`DSSGDTrainer.history_extras`) and
    checks that an epoch is whole rounds of the K participants."""

    def __init__(self, trainer: "DSSGDTrainer") -> None:
        self.trainer = trainer
        self.marks: List[tuple] = []

    def on_train_begin(self, *, epochs: int, steps_per_epoch: Optional[int]) -> None:
        k = self.trainer.active_participants
        if steps_per_epoch is not None and steps_per_epoch % k:
            raise ValueError(f"an epoch has {steps_per_epoch} batches, not a multiple of the {k} participants: batch "
                             "i must be participant i % K's in every epoch; build the dataset with interleave_shards")
        t = self.trainer
        self.marks = [(t.turns, int(t.bytes_uploaded.sum()), int(t.bytes_downloaded.sum()))]

    def on_epoch_end(self, epoch: int, history: Dict[str, List[Any]]) -> None:
        t = self.trainer
        self.marks.append((t.turns, int(t.bytes_uploaded.sum()), int(t.bytes_downloaded.sum())))


class DSSGDTrainer(EpochTrainer):
    """DSSGD over :func:`interleave_shards` batches, by the shared epoch loop; evaluates the global model.

    Args:
      model_fn: builds the whole network, image -> logits (e.g. ``build_split_vggface(..., epsilon=None)
        .monolithic()``); called once, after ``tf.keras.utils.set_random_seed(seed)``, for the initial global
        weights, which every participant also starts from.
      participants: K, the number of data holders (batch ``i`` is participant ``i % K``'s).
      theta_upload: fraction of the parameters whose local change is uploaded per turn, in [0, 1]
        (0: nothing is shared).
      theta_download: fraction of the global parameters downloaded before each turn, in [0, 1] (1: all).
      learning_rate, momentum, lr_decay_rate: the SGD: ``lr * lr_decay_rate ** (t / total_steps)`` at the run's
        t-th turn (the paper's schedule, as :class:`dpact_tf.split.SplitTrainer`).
      momentum_at: ``"server"`` (one velocity over the global parameters, fed by the uploads) or
        ``"participant"`` (each participant's own velocity; see the module's docstring).
      standalone: only participant 0 trains, on its shard alone, and nothing is shared (the thetas are ignored,
        no traffic); every batch is then participant 0's (pass ``interleave_shards(..., shards[:1], ...)``) and
        evaluation uses its model.
      seed: seeds the initial weights.
      total_steps: length of the learning-rate schedule; by default inferred by :meth:`fit`.
    """

    def __init__(self, model_fn: Callable[[], tf.keras.Model], *, participants: int, theta_upload: float,
                 theta_download: float = 1.0, learning_rate: float = 0.01, momentum: float = 0.9,
                 lr_decay_rate: float = 0.1, standalone: bool = False, seed: int = 0,
                 momentum_at: str = "participant", total_steps: Optional[int] = None) -> None:
        if isinstance(participants, bool) or int(participants) != participants or participants < 1:
            raise ValueError(f"participants must be a positive integer (got {participants!r})")
        self.theta_upload = _check_fraction("theta_upload", theta_upload)
        self.theta_download = _check_fraction("theta_download", theta_download)
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0 (got {learning_rate})")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) (got {momentum})")
        if not 0 < lr_decay_rate <= 1:
            raise ValueError(f"lr_decay_rate must be in (0, 1] (got {lr_decay_rate})")
        if momentum_at not in ("server", "participant"):
            raise ValueError(f"momentum_at must be 'server' or 'participant' (got {momentum_at!r})")
        self.momentum_at = "participant" if standalone else momentum_at
        self.participants = int(participants)
        self.standalone = bool(standalone)
        self.learning_rate, self.momentum, self.lr_decay_rate = float(learning_rate), float(momentum), float(lr_decay_rate)
        tf.keras.utils.set_random_seed(seed)
        self.model = model_fn()
        self._vars = list(self.model.trainable_variables)
        self._shapes = [v.shape for v in self._vars]
        self._sizes = [int(s.num_elements()) for s in self._shapes]
        self.num_parameters = n = sum(self._sizes)
        init = tf.concat([tf.reshape(v, [-1]) for v in self._vars], 0)
        k = self.active_participants
        self._global = tf.Variable(init, trainable=False, name="dssgd_global")
        self._stat = tf.Variable(tf.zeros([n], tf.int32), trainable=False, name="dssgd_stat")
        self._local = tf.Variable(tf.tile(init[None], [k, 1]), trainable=False, name="dssgd_local")
        self._velocity = tf.Variable(tf.zeros([k if self.momentum_at == "participant" else 1, n]), trainable=False,
                                     name="dssgd_velocity")  # per participant, or the server's one
        self._turn_var = tf.Variable(0, dtype=tf.int64, trainable=False)  # turns taken: the schedule's step
        self.upload_count = 0 if standalone else selected_count(self.theta_upload, n)
        self.download_count = 0 if standalone else selected_count(self.theta_download, n)
        #: bytes a participant sends / receives per turn (values + indices; dense messages without indices)
        self.upload_bytes_per_turn = self._message_bytes(self.upload_count)
        self.download_bytes_per_turn = self._message_bytes(self.download_count)
        self.bytes_uploaded = np.zeros(k, np.int64)    # per participant, since construction
        self.bytes_downloaded = np.zeros(k, np.int64)
        self.turns = 0
        self._traffic = _EpochTraffic(self)
        self.decay_steps: Optional[int] = None
        if total_steps is not None:
            self._build(int(total_steps))

    @property
    def active_participants(self) -> int:
        """Participants that train: K, or 1 when standalone."""
        return 1 if self.standalone else self.participants

    def _message_bytes(self, count: int) -> int:
        if count == self.num_parameters:
            return count * BYTES_PER_VALUE
        return count * (BYTES_PER_VALUE + BYTES_PER_INDEX)

    def _build(self, decay_steps: int) -> None:
        if decay_steps < 1:
            raise ValueError(f"total_steps must be >= 1 (got {decay_steps})")
        self.decay_steps = int(decay_steps)
        self.built = True
        image_spec = tf.TensorSpec([None, *self.model.input_shape[1:]], tf.float32)
        label_spec = tf.TensorSpec([None], tf.int32)
        self._step = tf.function(self._turn, input_signature=[image_spec, label_spec, tf.TensorSpec([], tf.int32)])
        self._evaluate = tf.function(self._evaluate_step, input_signature=[image_spec, label_spec])

    # -- one participant's turn ---------------------------------------------------------------------------------
    def _load(self, flat: tf.Tensor) -> None:
        """Puts a flat weight vector into the model's variables."""
        for v, piece, shape in zip(self._vars, tf.split(flat, self._sizes), self._shapes):
            v.assign(tf.reshape(piece, shape))

    def _turn(self, images: tf.Tensor, labels: tf.Tensor, owner: tf.Tensor):
        n = self.num_parameters

        def step():
            w = tf.gather(self._local, owner)
            if self.download_count == n:  # 1. download
                w = tf.identity(self._global)
            elif self.download_count > 0:
                # sorted top_k: among equal counts (common) the lower index is taken, as documented
                idx = tf.math.top_k(self._stat, k=self.download_count).indices
                w = tf.tensor_scatter_nd_update(w, idx[:, None], tf.gather(self._global, idx))
            self._load(w)
            with tf.GradientTape() as tape:  # 2. local SGD-momentum step (Keras' SGD update, in its order of ops)
                logits = self.model(images, training=True)
                loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                                      from_logits=True))
            grads = tape.gradient(loss, self._vars)
            g = tf.concat([tf.reshape(gr, [-1]) for gr in grads], 0)
            step_f = tf.cast(self._turn_var, tf.float32)
            lr = self.learning_rate * tf.pow(tf.constant(self.lr_decay_rate, tf.float32),
                                             step_f / float(self.decay_steps))
            if self.momentum_at == "participant":
                delta = -g * lr + tf.gather(self._velocity, owner) * self.momentum
                self._velocity.scatter_update(tf.IndexedSlices(delta[None], owner[None]))
            else:
                delta = -g * lr
            self._local.scatter_update(tf.IndexedSlices((w + delta)[None], owner[None]))
            if self.upload_count == n:  # 3. upload
                self._upload(delta)
                self._stat.assign_add(tf.ones([n], tf.int32))
            elif self.upload_count > 0:
                idx = largest_magnitude(delta, self.upload_count)
                self._upload(tf.scatter_nd(idx[:, None], tf.gather(delta, idx), [n])
                             if self.momentum_at == "server" else tf.IndexedSlices(tf.gather(delta, idx), idx))
                self._stat.scatter_add(tf.IndexedSlices(tf.ones_like(idx), idx))
            return loss, _correct(logits, labels), tf.constant(True)

        def refused():
            return tf.constant(0.0), tf.constant(0.0), tf.constant(False)

        loss, correct, ok = tf.cond(_images_ok(images), step, refused)
        self._turn_var.assign_add(1)
        return loss, correct, ok

    def _upload(self, update) -> None:
        """The server's side of an upload: a dense vector, or (participant momentum) sparse slices of the update."""
        if self.momentum_at == "server":
            self._velocity.assign(self._velocity * self.momentum + update[None])
            self._global.assign_add(self._velocity[0])
        else:
            self._global.assign_add(update) if isinstance(update, tf.Tensor) else self._global.scatter_add(update)

    def train_step(self, images: tf.Tensor, labels: tf.Tensor) -> GradientMessage:
        """The turn of participant ``turns % K`` (0 when standalone) on this batch of its shard.  A batch the image
        check refuses (non-finite or outside [0, 1]) raises ``ValueError``; it still uses up that turn and
        changes no weight."""
        self._require_built()
        images = _float_images(images)
        owner = self.turns % self.active_participants
        loss, correct, ok = self._step(images, _int_labels(labels), tf.constant(owner, tf.int32))
        self.turns += 1
        if not bool(ok):
            _raise_for_images(images)
        self.bytes_uploaded[owner] += self.upload_bytes_per_turn
        self.bytes_downloaded[owner] += self.download_bytes_per_turn
        return GradientMessage(grad_activations=tf.zeros([0]), loss=loss, correct=correct)

    # -- the epoch loop, evaluation, state ----------------------------------------------------------------------
    def fit(self, train: Iterable, epochs: int, *, validation_data: Optional[Iterable] = None,
            monitor_data: Optional[Iterable] = None, callbacks: Sequence[Callback] = ()) -> Dict[str, List[float]]:
        """:meth:`EpochTrainer.fit`, recording each epoch's traffic for :meth:`history_extras`; an epoch must be
        whole rounds (a multiple of K batches)."""
        return super().fit(train, epochs, validation_data=validation_data, monitor_data=monitor_data,
                           callbacks=[self._traffic, *callbacks])

    def history_extras(self) -> Dict[str, List[int]]:
        """Per epoch of the last :meth:`fit`: ``turns``, ``upload_bytes`` and ``download_bytes`` (summed over the
        participants; per participant and turn they are ``upload_bytes_per_turn``, ``download_bytes_per_turn``)."""
        marks = self._traffic.marks
        pairs = list(zip(marks, marks[1:]))
        return {"turns": [b[0] - a[0] for a, b in pairs], "upload_bytes": [b[1] - a[1] for a, b in pairs],
                "download_bytes": [b[2] - a[2] for a, b in pairs]}

    def evaluated_weights(self) -> tf.Tensor:
        """The flat weights :meth:`evaluate` uses: the global model's, or participant 0's when standalone."""
        return tf.gather(self._local, 0) if self.standalone else tf.identity(self._global)

    def _before_evaluate(self) -> None:
        """:meth:`evaluate` (the shared loop) scores the global model, or participant 0's when standalone."""
        self._load(self.evaluated_weights())

    def _evaluate_step(self, images: tf.Tensor, labels: tf.Tensor):
        return evaluate_batch(self.model, images, labels)

    def current_learning_rate(self) -> float:
        """The rate of the last turn taken (as Keras and :class:`dpact_tf.split.SplitTrainer` report it)."""
        self._require_built()
        return self.learning_rate * self.lr_decay_rate ** (max(self.turns - 1, 0) / self.decay_steps)

    def _unflatten(self, flat: tf.Tensor) -> List[np.ndarray]:
        return [tf.reshape(p, s).numpy() for p, s in zip(tf.split(flat, self._sizes), self._shapes)]

    def global_weights(self) -> List[np.ndarray]:
        """The parameter server's weights, shaped as ``model.trainable_variables``."""
        return self._unflatten(self._global)

    def participant_weights(self, k: int) -> List[np.ndarray]:
        """Participant ``k``'s local weights (after its last step), shaped as ``model.trainable_variables``."""
        if not 0 <= k < self.active_participants:
            raise ValueError(f"participant must be in [0, {self.active_participants}) (got {k})")
        return self._unflatten(tf.gather(self._local, k))
