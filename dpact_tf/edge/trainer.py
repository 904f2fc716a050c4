"""The client half driving split training over the network: Keras head or the phone's LiteRT head.

A training step is the in-process step of :class:`dpact_tf.split.SplitTrainer` with the server across a
socket: the head releases the noisy activation, :class:`~dpact_tf.edge.client.EdgeClient` uploads it
(encoded) with the labels and gets dL/d(activation) back, the head applies it to its own weights.

* :class:`KerasHead` -- the client model in Keras, trained by :class:`dpact_tf.split.SplitClient` (imports
  TensorFlow).
* :class:`LiteRTHead` -- the exported ``head.tflite`` in the LiteRT interpreter, through
  :class:`dpact_tf.runtime.HeadRunner`'s ``release`` (``clean`` without noise) and ``train``: the phone's path, no
  TensorFlow.  Its learning rate follows the same exponential decay as the Keras optimizer.

Images arrive as uint8 RGB batches; the Keras head scales them to [0, 1] as :func:`dpact_tf.data.make_dataset`
does, the LiteRT head does it in its graph.  Progress is reported through callbacks, nothing is printed.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from dpact_tf.edge.client import EdgeClient

__all__ = ["KerasHead", "LiteRTHead", "RemoteTrainer", "batches", "decayed_learning_rate"]

Batch = Tuple[np.ndarray, np.ndarray]


def decayed_learning_rate(learning_rate: float, decay_rate: float, decay_steps: int, step: int) -> float:
    """Keras' ``ExponentialDecay`` at the optimizer's iteration count before step ``step`` (1-based)."""
    return float(learning_rate * decay_rate ** ((step - 1) / decay_steps))


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0,
            epoch: int = 1) -> Iterator[Batch]:
    """uint8 image batches in order (or shuffled by ``seed`` and ``epoch``)."""
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 RGB (got {images.dtype})")
    order = np.random.default_rng([seed, epoch]).permutation(len(images)) if shuffle else np.arange(len(images))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], labels[idx]


class KerasHead:
    """The client model in Keras; ``client`` ends in :class:`dpact_tf.DPActivation` (which adds the noise)."""

    def __init__(self, client: Any, config: Any, decay_steps: int) -> None:
        import tensorflow as tf

        from dpact_tf.split import SplitClient, make_optimizer

        self._tf = tf
        optimizer = make_optimizer(config, decay_steps) if config.train_client else None
        self.split_client = SplitClient(client, optimizer, trainable=config.train_client)

    def _scale(self, images: np.ndarray):
        return self._tf.constant(images.astype(np.float32) / np.float32(255.0))

    def forward(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return np.asarray(self.split_client.forward(self._scale(images), self._tf.constant(labels)).activations)

    def backward(self, grad: np.ndarray, step: int) -> None:
        from dpact_tf.split import GradientMessage

        zero = self._tf.constant(0.0)
        self.split_client.backward(GradientMessage(grad_activations=self._tf.constant(grad), loss=zero,
                                                   correct=zero))

    def release(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.split_client.release(self._scale(images)))


class LiteRTHead:
    """The phone's head: a ``HeadRunner`` (``release(image_uint8, epsilon)`` -- uploaded as levels / scale --,
    ``clean(image_uint8)`` for epsilon None, ``train(image, grad, lr)``)."""

    def __init__(self, runner: Any, *, epsilon: Optional[float], learning_rate: float, decay_rate: float,
                 decay_steps: int, train: bool = True) -> None:
        self.runner, self.train = runner, train
        self.epsilon = math.inf if epsilon is None else float(epsilon)
        self.schedule = (float(learning_rate), float(decay_rate), int(decay_steps))
        self._images: Optional[np.ndarray] = None

    def forward(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        self._images = images
        return self.release(images)

    def backward(self, grad: np.ndarray, step: int) -> None:
        if not self.train:
            return
        if self._images is None:
            raise RuntimeError("backward() called without a preceding forward()")
        images, self._images = self._images, None
        self.runner.train(images, grad, decayed_learning_rate(*self.schedule, step))

    def release(self, images: np.ndarray) -> np.ndarray:
        if math.isinf(self.epsilon):
            return np.asarray(self.runner.clean(images), np.float32)
        return self.runner.release(images, self.epsilon).activation()


class RemoteTrainer:
    """``fit``/``evaluate`` like :class:`dpact_tf.split.SplitTrainer`, with the server over gRPC.

    Args:
      head: a :class:`KerasHead` or :class:`LiteRTHead`.
      client: an :class:`EdgeClient` (connected on first use).
      callbacks: objects with optional ``on_step_end(step, logs)`` and ``on_epoch_end(epoch, logs)``.
    """

    def __init__(self, head: Any, client: EdgeClient, *, callbacks: Sequence[Any] = ()) -> None:
        self.head, self.client, self.callbacks = head, client, list(callbacks)
        self.step = 0  # last acknowledged step id

    def _notify(self, method: str, *args) -> None:
        for cb in self.callbacks:
            fn: Optional[Callable] = getattr(cb, method, None)
            if fn is not None:
                fn(*args)

    def connect(self) -> None:
        hello = self.client.connect(wait=self.client.reconnect_timeout)
        if hello.last_step != self.step:
            raise ValueError(f"the server has applied {hello.last_step} steps of client {self.client.client_id!r} "
                             f"but this trainer is at step {self.step}; use a new client id for a new run")

    def train_step(self, images: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
        if self.client.session is None:
            self.connect()
        activation = self.head.forward(images, labels)
        grad, loss, correct, replayed = self.client.train_step(self.step + 1, activation, labels)
        self.head.backward(grad, self.step + 1)
        self.step += 1
        logs = {"loss": loss, "correct": correct, "size": len(labels), "replayed": replayed}
        self._notify("on_step_end", self.step, logs)
        return logs

    def evaluate(self, data: Iterable[Batch]) -> Dict[str, float]:
        """Accuracy and loss with the noise on (the activation leaves the device at test time too)."""
        if self.client.session is None:
            self.connect()
        loss_sum, correct, total = 0.0, 0, 0
        for images, labels in data:
            l, c, n = self.client.evaluate(self.head.release(images), labels)
            loss_sum, correct, total = loss_sum + l, correct + c, total + n
        if total == 0:
            raise ValueError("evaluate() got an empty dataset")
        return {"loss": loss_sum / total, "accuracy": correct / total}

    def fit(self, train: Callable[[int], Iterable[Batch]], epochs: int, *,
            validation_data: Optional[Callable[[], Iterable[Batch]]] = None) -> Dict[str, List[float]]:
        """``train(epoch)`` yields the epoch's (uint8 images, labels) batches; returns the per-epoch history."""
        if int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs must be a positive integer (got {epochs})")
        history: Dict[str, List[float]] = {"epoch": [], "loss": [], "train_accuracy": [], "test_accuracy": [],
                                           "test_loss": [], "seconds": [], "bytes_up": [], "bytes_down": []}
        for epoch in range(1, int(epochs) + 1):
            start, up, down = time.perf_counter(), self.client.bytes_up, self.client.bytes_down
            loss_sum, correct, seen = 0.0, 0, 0
            for images, labels in train(epoch):
                logs = self.train_step(images, labels)
                loss_sum += logs["loss"] * logs["size"]
                correct += logs["correct"]
                seen += logs["size"]
            if seen == 0:
                raise ValueError("the training data yielded no batches")
            history["epoch"].append(epoch)
            history["loss"].append(loss_sum / seen)
            history["train_accuracy"].append(correct / seen)
            history["bytes_up"].append(self.client.bytes_up - up)
            history["bytes_down"].append(self.client.bytes_down - down)
            if validation_data is not None:
                ev = self.evaluate(validation_data())
                history["test_accuracy"].append(ev["accuracy"])
                history["test_loss"].append(ev["loss"])
            history["seconds"].append(time.perf_counter() - start)
            self._notify("on_epoch_end", epoch, {k: v[-1] for k, v in history.items() if v})
        return history
