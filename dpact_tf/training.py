"""The epoch loop every trainer of the project shares (the split protocol and the baselines).

:class:`EpochTrainer` owns ``fit``: the per-epoch history (the keys of the book's curves), the callbacks
(:mod:`dpact_tf.callbacks`: progress, history files, early stopping) and the learning-rate schedule's length,
inferred from the dataset.  A trainer supplies three things: :meth:`EpochTrainer._build` (create the optimizers
once the number of steps is known), :meth:`EpochTrainer.train_step` (one batch; returns an object with ``loss``
and ``correct``) and :meth:`EpochTrainer.evaluate`.  :class:`dpact_tf.split.SplitTrainer` is one; the baselines
(:mod:`dpact_tf.baselines`) are others, so every method of the baselines chapter is trained by the same loop.
"""
from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

import tensorflow as tf

from dpact_tf.callbacks import Callback

__all__ = ["EpochTrainer", "batches_per_epoch", "HISTORY_KEYS", "check_images", "images_ok", "float_images", "int_labels",
           "raise_for_images", "correct_count", "all_finite", "PIXEL_TOLERANCE"]

#: the per-epoch lists :meth:`EpochTrainer.fit` returns
HISTORY_KEYS = ("epoch", "loss", "train_accuracy", "test_accuracy", "test_loss", "learning_rate", "seconds")


# How far outside [0, 1] a pixel may lie: float rounding of a resize (a few ulps), never a 0..255 image.
PIXEL_TOLERANCE = 1e-5


def check_images(images: Any) -> tf.Tensor:
    """The client's input check: float pixels, all finite, in [0, 1]; returns them as a tensor.

    Refused before anything is computed or released: integer images (uint8 must be divided by 255 first),
    NaN/inf pixels, and values outside [0, 1] (a 0..255 float image would train silently with most of
    conv1's outputs clipped).  Cheap: a sum, a min and a max over the batch.
    """
    images = float_images(images)
    if not bool(images_ok(images)):
        raise_for_images(images)
    return images


def images_ok(images: tf.Tensor) -> tf.Tensor:
    """The verdict of :func:`check_images` as an op (the compiled steps branch on it before they compute or
    release anything): every pixel finite and in [0, 1], up to PIXEL_TOLERANCE.  A sum is finite only if every
    term is (NaN and inf propagate through IEEE addition; to overflow it needs pixels far outside [0, 1])."""
    in_range = tf.logical_and(tf.reduce_min(images) >= -PIXEL_TOLERANCE, tf.reduce_max(images) <= 1.0 + PIXEL_TOLERANCE)
    return tf.logical_and(tf.math.is_finite(tf.reduce_sum(images)), in_range)


def all_finite(x: tf.Tensor) -> tf.Tensor:
    """Every element of ``x`` finite: one sum (finite only if every term is), the elementwise check only when
    the sum is not (a non-finite element, or finite ones large enough to overflow it)."""
    return tf.cond(tf.math.is_finite(tf.reduce_sum(x)), lambda: tf.constant(True),
                   lambda: tf.reduce_all(tf.math.is_finite(x)))


def correct_count(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Number of correctly classified examples, as a float32 scalar."""
    hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(labels, tf.int32))
    return tf.reduce_sum(tf.cast(hits, tf.float32))


def int_labels(labels: Any) -> tf.Tensor:
    labels = tf.convert_to_tensor(labels)
    return labels if labels.dtype == tf.int32 else tf.cast(labels, tf.int32)


def float_images(images: Any) -> tf.Tensor:
    """The static part of :func:`check_images` (the dtype); the values are checked in the compiled steps."""
    images = tf.convert_to_tensor(images)
    if not images.dtype.is_floating:
        raise ValueError(f"images must be float pixels in [0, 1] (got dtype {images.dtype.name}); "
                         "divide uint8 images by 255 (dpact_tf.data.make_dataset does)")
    return tf.cast(images, tf.float32)


def raise_for_images(images: tf.Tensor) -> None:
    """Raises the message for a batch :func:`images_ok` refused (its statistics, computed on refusal only)."""
    if not bool(tf.reduce_all(tf.math.is_finite(images))):
        raise ValueError("images contain NaN or inf pixels; nothing was released")
    lo, hi = float(tf.reduce_min(images)), float(tf.reduce_max(images))
    hint = "; they look like 0..255 values: divide by 255" if hi > 2.0 else ""
    raise ValueError(f"images must be in [0, 1] (got min {lo:g}, max {hi:g}){hint}; nothing was released")


def batches_per_epoch(dataset: Iterable) -> Optional[int]:
    """Number of batches of a finite ``tf.data.Dataset`` (or any sized iterable); None when unknown."""
    if isinstance(dataset, tf.data.Dataset):
        n = int(dataset.cardinality())
        return n if n >= 0 else None
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


class EpochTrainer:
    """Base class of the trainers: ``fit`` over epochs with callbacks.

    Subclasses implement :meth:`_build`, :meth:`train_step`, :meth:`evaluate` and :meth:`current_learning_rate`,
    and set ``self.built`` to True in ``_build``.
    """

    built: bool = False

    def _build(self, decay_steps: int) -> None:
        """Create the optimizers for a run of ``decay_steps`` steps (the learning-rate schedule's length)."""
        raise NotImplementedError

    def train_step(self, images: tf.Tensor, labels: tf.Tensor) -> Any:
        """One training step on a batch; returns an object with ``loss`` (mean over the batch) and ``correct``."""
        raise NotImplementedError

    def _evaluate(self, images: tf.Tensor, labels: tf.Tensor):
        """The compiled evaluation of a batch: (images accepted, summed loss, correct count)."""
        raise NotImplementedError

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError("the optimizers' schedule is not known yet: call fit(), or pass total_steps= "
                               f"to {type(self).__name__} before train_step()/evaluate()")

    def _before_evaluate(self) -> None:
        """Called by :meth:`evaluate` before its first batch (e.g. to load the evaluated weights)."""

    def evaluate(self, dataset: Iterable) -> Dict[str, float]:
        """``{"loss", "accuracy"}`` over ``dataset`` (one compiled :meth:`_evaluate` call per batch)."""
        self._require_built()
        self._before_evaluate()
        losses, corrects, total = [], [], 0
        for images, labels in dataset:
            images = float_images(images)
            ok, loss_sum, correct = self._evaluate(images, int_labels(labels))
            if not ok:
                raise_for_images(images)
            losses.append(loss_sum)
            corrects.append(correct)
            total += int(labels.shape[0])
        if total == 0:
            raise ValueError("evaluate() got an empty dataset")
        return {"loss": sum(float(v) for v in losses) / total, "accuracy": sum(float(v) for v in corrects) / total}

    def current_learning_rate(self) -> float:
        """The learning rate of the last step taken (reported per epoch, as Keras does)."""
        raise NotImplementedError

    def fit(self, train: Iterable, epochs: int, *, validation_data: Optional[Iterable] = None,
            monitor_data: Optional[Iterable] = None, callbacks: Sequence[Callback] = ()) -> Dict[str, List[float]]:
        """Train for ``epochs``; returns ``{"epoch", "loss", "train_accuracy", "test_accuracy", ...}``.

        ``validation_data`` is evaluated after every epoch as ``test_accuracy``/``test_loss`` (the reported
        score); ``monitor_data``, images held out of the training set, as ``validation_accuracy``/
        ``validation_loss`` -- what early stopping should watch, so that no choice is made on the test images.

        ``train`` yields (images, labels) batches and is re-iterated every epoch (a ``tf.data`` pipeline
        reshuffles itself).  Progress and files are the callbacks' business (e.g.
        :class:`dpact_tf.callbacks.ProgressBar`); ``fit`` itself prints and writes nothing.
        """
        if int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs must be a positive integer (got {epochs})")
        epochs = int(epochs)
        steps_per_epoch = batches_per_epoch(train)
        if not self.built:
            if steps_per_epoch is None:
                raise ValueError("cannot infer the learning-rate schedule: the training dataset's number of batches "
                                 f"is unknown (e.g. after filter() or from a generator); pass total_steps= "
                                 f"(epochs x batches per epoch) to {type(self).__name__}, or use "
                                 "dataset.apply(tf.data.experimental.assert_cardinality(n))")
            self._build(epochs * steps_per_epoch)
        batch_logs = any(cb.wants_batch_logs for cb in callbacks)
        history: Dict[str, Any] = {k: [] for k in HISTORY_KEYS}
        if monitor_data is not None:
            history.update(validation_accuracy=[], validation_loss=[])
        for cb in callbacks:
            cb.on_train_begin(epochs=epochs, steps_per_epoch=steps_per_epoch)
        for epoch in range(1, epochs + 1):
            for cb in callbacks:
                cb.on_epoch_begin(epoch)
            start = time.perf_counter()
            # The batch losses stay tensors until the epoch ends (no eager op or read per step), unless a
            # callback asks for running logs.
            losses, corrects, sizes = [], [], []
            loss_sum = correct_sum = 0.0  # running sums, only for batch logs
            for step, (images, labels) in enumerate(train):
                out = self.train_step(images, labels)
                losses.append(out.loss)
                corrects.append(out.correct)
                sizes.append(int(labels.shape[0]))
                if batch_logs:
                    loss_sum += float(out.loss) * sizes[-1]
                    correct_sum += float(out.correct)
                    logs = {"loss": loss_sum / sum(sizes), "accuracy": correct_sum / sum(sizes)}
                    for cb in callbacks:
                        cb.on_batch_end(step, logs)
            seen = sum(sizes)
            if seen == 0:
                raise ValueError("the training dataset yielded no batches")
            history["epoch"].append(epoch)
            losses_np = tf.stack([tf.cast(v, tf.float32) for v in losses]).numpy()
            history["loss"].append(float(sum(float(v) * k for v, k in zip(losses_np, sizes))) / seen)
            history["train_accuracy"].append(float(tf.reduce_sum(tf.stack([tf.cast(c, tf.float32)
                                                                            for c in corrects]))) / seen)
            history["learning_rate"].append(self.current_learning_rate())
            if validation_data is not None:
                ev = self.evaluate(validation_data)
                history["test_accuracy"].append(ev["accuracy"])
                history["test_loss"].append(ev["loss"])
            if monitor_data is not None:
                ev = self.evaluate(monitor_data)
                history["validation_accuracy"].append(ev["accuracy"])
                history["validation_loss"].append(ev["loss"])
            history["seconds"].append(time.perf_counter() - start)
            for cb in callbacks:
                cb.on_epoch_end(epoch, history)
            if any(cb.stop_training for cb in callbacks):
                break
        for cb in callbacks:
            cb.on_train_end(history)
        return history
