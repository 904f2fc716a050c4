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

__all__ = ["EpochTrainer", "batches_per_epoch", "HISTORY_KEYS"]

#: the per-epoch lists :meth:`EpochTrainer.fit` returns
HISTORY_KEYS = ("epoch", "loss", "train_accuracy", "test_accuracy", "test_loss", "learning_rate", "seconds")


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

    def evaluate(self, dataset: Iterable) -> Dict[str, float]:
        """``{"loss", "accuracy"}`` over ``dataset``."""
        raise NotImplementedError

    def current_learning_rate(self) -> float:
        """The learning rate of the last step taken (reported per epoch, as Keras does)."""
        raise NotImplementedError

    def fit(self, train: Iterable, epochs: int, *, validation_data: Optional[Iterable] = None,
            callbacks: Sequence[Callback] = ()) -> Dict[str, List[float]]:
        """Train for ``epochs``; returns ``{"epoch", "loss", "train_accuracy", "test_accuracy", ...}``.

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
            history["seconds"].append(time.perf_counter() - start)
            for cb in callbacks:
                cb.on_epoch_end(epoch, history)
            if any(cb.stop_training for cb in callbacks):
                break
        for cb in callbacks:
            cb.on_train_end(history)
        return history
