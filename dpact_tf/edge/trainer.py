"""The client half driving split training over the network: Keras head or the phone's LiteRT head.

A training step is the in-process step of :class:`dpact_tf.split.SplitTrainer` with the server across a
socket: the head releases the noisy activation -- the integer levels of :mod:`dpact_tf.grid` and their step
(the no-noise baseline: a float activation) --, :class:`~dpact_tf.edge.client.EdgeClient` uploads it with the
labels and gets dL/d(activation) back, the head applies it to its own weights.

* :class:`KerasHead` -- the client model in Keras, trained by :class:`dpact_tf.split.SplitClient` (imports
  TensorFlow).
* :class:`LiteRTHead` -- the exported ``head.tflite`` in the LiteRT interpreter, through
  :class:`dpact_tf.deploy.runtime.HeadRunner`'s ``release`` (``clean`` without noise) and ``train``: the phone's path, no
  TensorFlow.  Its learning rate follows the same exponential decay as the Keras optimizer.

With a :class:`~dpact_tf.ledger.PrivacyLedger`, :class:`RemoteTrainer` records every batch (training and
evaluation) before it is released, and the ledger refuses a batch that would take an image beyond its budget.
With a :class:`~dpact_tf.edge.resume.RunState`, it persists every request before sending it and resumes a run
after a restart: batches already applied are skipped and an in-flight request is resent byte for byte, so a
restart never releases an image afresh.

Images arrive as uint8 RGB batches; the Keras head scales them to [0, 1] as :func:`dpact_tf.data.make_dataset`
does, the LiteRT head does it in its graph.  Progress is reported through callbacks, nothing is printed.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge.client import EdgeClient, EdgeError, Release
from dpact_tf.edge.wire import from_proto
from dpact_tf.ledger import PrivacyLedger, image_hash

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
    """The client model in Keras; ``client`` ends in :class:`dpact_tf.DPActivation` (whose epsilon it releases
    with: grid levels from :meth:`dpact_tf.split.SplitClient.release_levels`, or a float activation without
    noise).  A client with replayable (seeded) noise is refused unless ``allow_replayable_noise=True`` (tests
    only)."""

    def __init__(self, client: Any, config: Any, decay_steps: int, *, allow_replayable_noise: bool = False) -> None:
        import tensorflow as tf

        from dpact_tf.layers import DPActivation
        from dpact_tf.split import SplitClient, make_optimizer

        self._tf = tf
        optimizer = make_optimizer(config, decay_steps) if config.train_client else None
        self.split_client = SplitClient(client, optimizer, trainable=config.train_client,
                                        allow_replayable_noise=allow_replayable_noise)
        self.trains_conv1 = bool(config.train_client)
        dp = [layer for layer in client.layers if isinstance(layer, DPActivation)]
        self._dp = dp[0] if dp else None
        self.epsilon = None if self._dp is None else self._dp.epsilon
        self._checkpoint = tf.train.Checkpoint(model=client, optimizer=optimizer) if optimizer else \
            tf.train.Checkpoint(model=client)

    def _scale(self, images: np.ndarray):
        return self._tf.constant(images.astype(np.float32) / np.float32(255.0))

    def _set_pending(self, x, activation: np.ndarray) -> None:
        self.split_client.hold_for_backward(x, self._tf.constant(activation, self._tf.float32))

    def forward(self, images: np.ndarray, labels: np.ndarray) -> Release:
        x = self._scale(images)
        if self.epsilon is None:
            return np.asarray(self.split_client.forward(x, self._tf.constant(labels)).activations)
        levels, step = self.split_client.release_levels(x)
        if self.trains_conv1:
            self._set_pending(x, (levels.astype(np.float64) * step).astype(np.float32))
        return levels, step

    def resume(self, images: np.ndarray, activation: np.ndarray) -> None:
        """Prepare :meth:`backward` for a batch released before a restart (its request is being resent)."""
        if self.trains_conv1:
            self._set_pending(self._scale(images), activation)

    def backward(self, grad: np.ndarray, step: int) -> None:
        from dpact_tf.split import GradientMessage

        zero = self._tf.constant(0.0)
        self.split_client.backward(GradientMessage(grad_activations=self._tf.constant(grad), loss=zero,
                                                   correct=zero))

    def release(self, images: np.ndarray) -> Release:
        x = self._scale(images)
        if self.epsilon is None:
            return np.asarray(self.split_client.release(x))
        return self.split_client.release_levels(x)

    def save(self, prefix: str) -> str:
        """Write the head's weights (and optimizer state) to ``prefix``."""
        return self._checkpoint.write(prefix)

    def restore(self, prefix: str) -> None:
        self._checkpoint.read(prefix).assert_existing_objects_matched()


class LiteRTHead:
    """The phone's head: a ``HeadRunner`` (``release(image_uint8, epsilon)`` -- uploaded as the grid's integer
    levels --, ``clean(image_uint8)`` for epsilon None, ``train(image, grad, lr)``).  Its weights live in the
    interpreter: a resumed run continues from the exported ones (there is no :meth:`save`)."""

    def __init__(self, runner: Any, *, epsilon: Optional[float], learning_rate: float, decay_rate: float,
                 decay_steps: int, train: bool = True) -> None:
        self.runner, self.train = runner, train
        self.trains_conv1 = bool(train)
        self.epsilon = None if epsilon is None or math.isinf(epsilon) else float(epsilon)
        self.schedule = (float(learning_rate), float(decay_rate), int(decay_steps))
        self._images: Optional[np.ndarray] = None

    def forward(self, images: np.ndarray, labels: np.ndarray) -> Release:
        self._images = images
        return self.release(images)

    def resume(self, images: np.ndarray, activation: np.ndarray) -> None:
        """Prepare :meth:`backward` for a batch released before a restart."""
        self._images = images

    def backward(self, grad: np.ndarray, step: int) -> None:
        if not self.train:
            return
        if self._images is None:
            raise RuntimeError("backward() called without a preceding forward()")
        images, self._images = self._images, None
        self.runner.train(images, grad, decayed_learning_rate(*self.schedule, step))

    def release(self, images: np.ndarray) -> Release:
        if self.epsilon is None:
            return np.asarray(self.runner.clean(images), np.float32)
        out = self.runner.release(images, self.epsilon)
        return np.asarray(out.levels, np.int32), 1.0 / float(out.scale)


class RemoteTrainer:
    """``fit``/``evaluate`` like :class:`dpact_tf.split.SplitTrainer`, with the server over gRPC.

    Args:
      head: a :class:`KerasHead` or :class:`LiteRTHead`.
      client: an :class:`EdgeClient` (connected on first use).
      callbacks: objects with optional ``on_step_end(step, logs)``, ``on_epoch_end(epoch, logs)`` and
        ``on_resume(logs)``.
      ledger: records every batch before its release and refuses one beyond the budget
        (:class:`~dpact_tf.ledger.BudgetExceeded`, raised before anything is released or sent).
      state: the run's durable state (:class:`~dpact_tf.edge.resume.RunState`); ``client.client_id`` must be its
        id.  With it the trainer resumes where the run stopped.
    """

    def __init__(self, head: Any, client: EdgeClient, *, callbacks: Sequence[Any] = (),
                 ledger: Optional[PrivacyLedger] = None, state: Any = None) -> None:
        self.head, self.client, self.callbacks = head, client, list(callbacks)
        self.ledger, self.state = ledger, state
        self.step = 0  # last step whose reply the head applied
        if state is not None:
            if state.client_id != client.client_id:
                raise ValueError(f"the run state belongs to client {state.client_id!r}, the client is "
                                 f"{client.client_id!r}")
            self.step = state.step
            restored = False
            if state.head_checkpoint is not None and hasattr(head, "restore"):
                head.restore(state.head_checkpoint)
                restored = True
            if state.resumed:
                self._notify("on_resume", {"step": self.step, "evaluated_epoch": state.evaluated_epoch,
                                           "head_restored": restored or self.step == 0})

    def _notify(self, method: str, *args) -> None:
        for cb in self.callbacks:
            fn: Optional[Callable] = getattr(cb, method, None)
            if fn is not None:
                fn(*args)

    def connect(self) -> None:
        hello = self.client.connect(wait=self.client.reconnect_timeout)
        in_flight = self.state is not None and self.state.pending(f"train-{self.step + 1:08d}") is not None
        if hello.last_step != self.step and not (in_flight and hello.last_step == self.step + 1):
            raise EdgeError(f"the server has applied {hello.last_step} steps of client {self.client.client_id!r} "
                            f"but this client is at step {self.step}"
                            f"{' with step ' + str(self.step + 1) + ' in flight' if in_flight else ''}; "
                            "nothing is released again for a server that lost or invented steps: start a new run")

    def _request(self, name: Optional[str], images: np.ndarray, kind: str, build: Callable[[], Any],
                 message: type) -> Tuple[Any, Optional[np.ndarray]]:
        """The request of one batch: the persisted one if a restart interrupted it (and the activation it
        carries), else a fresh release -- recorded in the ledger first, persisted before it is sent."""
        hashes = [image_hash(im) for im in images]
        if self.state is not None and name is not None:
            pending = self.state.pending(name)
            if pending is not None:
                if pending[0] != hashes:
                    raise ValueError(f"the persisted request {name} was released from other images than this "
                                     "batch: the data or its order changed since; resume with the run's settings")
                request = message.FromString(pending[1])
                return request, from_proto(request.activation)
        if self.ledger is not None:
            self.ledger.record(hashes, epsilon=self.client.epsilon, delta=self.client.delta,
                               activation_shape=self.client.activation_shape, train_conv1=self.head.trains_conv1,
                               run=self.client.client_id, kind=kind)
        request = build()
        if self.state is not None and name is not None:
            self.state.put(name, hashes, request.SerializeToString())
        return request, None

    def train_step(self, images: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
        if self.client.session is None:
            self.connect()
        step = self.step + 1
        request, resent = self._request(
            f"train-{step:08d}", images, "train",
            lambda: self.client.train_request(step, self.head.forward(images, labels), labels), pb.TrainStepRequest)
        if resent is not None:
            self.head.resume(images, resent)
        grad, loss, correct, replayed = self.client.send_train_step(request)
        self.head.backward(grad, step)
        self.step = step
        if self.state is not None:
            prefix = self.state.head_prefix(step) if hasattr(self.head, "save") else None
            if prefix is not None:
                self.head.save(prefix)
            self.state.acknowledge(step, prefix)
        logs = {"loss": loss, "correct": correct, "size": len(labels), "replayed": replayed,
                "resent": resent is not None}
        self._notify("on_step_end", self.step, logs)
        return logs

    def evaluate(self, data: Iterable[Batch], *, epoch: Optional[int] = None) -> Dict[str, float]:
        """Accuracy and loss with the noise on (the activation leaves the device at test time too).  With a run
        state, ``epoch`` names the evaluation so that a restart resends its requests."""
        if self.client.session is None:
            self.connect()
        loss_sum, correct, total = 0.0, 0, 0
        for index, (images, labels) in enumerate(data):
            name = None if epoch is None else f"eval-{epoch:04d}-{index:06d}"
            request, _ = self._request(name, images, "evaluate",
                                       lambda: self.client.evaluate_request(self.head.release(images), labels),
                                       pb.EvaluateRequest)
            l, c, n = self.client.send_evaluate(request)
            loss_sum, correct, total = loss_sum + l, correct + c, total + n
        if total == 0:
            raise ValueError("evaluate() got an empty dataset")
        if self.state is not None and epoch is not None:
            self.state.evaluated(epoch)
        return {"loss": loss_sum / total, "accuracy": correct / total}

    def fit(self, train: Callable[[int], Iterable[Batch]], epochs: int, *,
            validation_data: Optional[Callable[[], Iterable[Batch]]] = None) -> Dict[str, List[float]]:
        """``train(epoch)`` yields the epoch's (uint8 images, labels) batches; returns the per-epoch history of
        the epochs this call trained or evaluated (a resumed run skips the steps already applied and the
        evaluations already finished: their batches are not released again).  Marks the run state finished."""
        if int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs must be a positive integer (got {epochs})")
        history: Dict[str, List[float]] = {"epoch": [], "loss": [], "train_accuracy": [], "test_accuracy": [],
                                           "test_loss": [], "seconds": [], "bytes_up": [], "bytes_down": []}
        if self.state is not None and self.state.finished:
            raise ValueError("the run state is finished; a new run needs a new RunState (and client id)")
        done = self.step if self.state is not None else 0  # steps applied before a restart
        evaluated = self.state.evaluated_epoch if self.state is not None else 0
        index = 0
        for epoch in range(1, int(epochs) + 1):
            start, up, down = time.perf_counter(), self.client.bytes_up, self.client.bytes_down
            loss_sum, correct, seen, batches_seen = 0.0, 0, 0, 0
            for images, labels in train(epoch):
                index, batches_seen = index + 1, batches_seen + 1
                if index <= done:
                    continue  # applied before a restart: not released again
                logs = self.train_step(images, labels)
                loss_sum += logs["loss"] * logs["size"]
                correct += logs["correct"]
                seen += logs["size"]
            if batches_seen == 0:
                raise ValueError("the training data yielded no batches")
            evaluate = validation_data is not None and epoch > evaluated
            if seen == 0 and not evaluate:
                continue  # trained and evaluated before a restart
            history["epoch"].append(epoch)
            history["loss"].append(loss_sum / seen if seen else math.nan)
            history["train_accuracy"].append(correct / seen if seen else math.nan)
            history["bytes_up"].append(self.client.bytes_up - up)
            history["bytes_down"].append(self.client.bytes_down - down)
            if evaluate:
                ev = self.evaluate(validation_data(), epoch=epoch if self.state is not None else None)
                history["test_accuracy"].append(ev["accuracy"])
                history["test_loss"].append(ev["loss"])
            history["seconds"].append(time.perf_counter() - start)
            self._notify("on_epoch_end", epoch, {k: v[-1] for k, v in history.items() if v})
        if self.state is not None:
            self.state.finish()  # the next run starts under a new client id
        return history
