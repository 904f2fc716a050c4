"""The server's half behind the gRPC front: :class:`dpact_tf.split.EdgeServer`, optionally under tf.distribute.

:class:`ServerHalf` is what the gRPC service calls: NumPy in, NumPy out, one SGD update per training step.
Without a strategy it *is* the in-process :class:`~dpact_tf.split.EdgeServer` (so a step over the network
equals a step of :class:`~dpact_tf.split.SplitTrainer`).  With a ``tf.distribute`` strategy (MirroredStrategy
over the GPUs of one machine, MultiWorkerMirroredStrategy over several) the batch a client uploaded is split
across the replicas; each replica's loss is its sum of per-example losses over the *global* batch size, the
optimizer all-reduces (sums) the weight gradients, and dL/d(activation) is concatenated back in order -- the
same numbers as one device computing the mean loss of the whole batch.

**A step that would damage the shared model is undone.** The server's checks keep every upload within what
the client's declared mechanism can produce, so its values are bounded; behind them, :meth:`ServerHalf.train_step`
keeps the weights and optimizer slots of before the step and restores them -- and raises
:class:`UnsafeStep` -- when the loss, dL/d(activation) or any weight or slot after the update is not finite
(the in-process client does the same with the server's gradient, :meth:`dpact_tf.split.SplitClient.backward`).
``max_grad_norm`` also clips the global norm of the server's weight gradients (Keras' ``global_clipnorm``,
applied after the replicas' gradients are summed), which bounds what one batch can move the model.

The learning rate is a number the caller passes with every step (:mod:`dpact_tf.edge.schedule` computes
it), so that a step replayed from the journal uses exactly the rate it was first applied with.  Without one
the step uses SGD's exponential decay over server steps, ``learning_rate x decay_rate ** (steps /
decay_steps)``: what the in-process trainer's schedule gives.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from dpact_tf.split import ActivationMessage, EdgeServer, GradientMessage, TrainingConfig

__all__ = ["ServerHalf", "UnsafeStep"]


class UnsafeStep(ValueError):
    """The step would have left the loss, dL/d(activation), a weight or an optimizer slot non-finite; it was
    rolled back and nothing changed."""


class _DistributedEdgeServer(EdgeServer):
    """:class:`EdgeServer` whose step runs replica-wise under ``strategy`` (created inside its scope)."""

    def __init__(self, model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer, trainable: str,
                 strategy: tf.distribute.Strategy) -> None:
        super().__init__(model, optimizer, trainable)
        self.strategy = strategy
        self._per_example = tf.keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.NONE)
        self._distributed = tf.function(self._distributed_step, reduce_retracing=True)

    def _replica_step(self, activations: tf.Tensor, labels: tf.Tensor, global_batch: tf.Tensor):
        with tf.GradientTape() as tape:
            tape.watch(activations)
            logits = self.model(activations, training=True)
            loss = tf.reduce_sum(self._per_example(labels, logits)) / global_batch
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, [activations] + variables)
        self.optimizer.apply_gradients(zip(grads[1:], variables))  # all-reduces (sums) across replicas
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(labels, tf.int32)), tf.float32))
        return loss, grads[0], correct

    def _distributed_step(self, activations, labels, global_batch):
        loss, grad, correct = self.strategy.run(self._replica_step, args=(activations, labels, global_batch))
        return (self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                self.strategy.experimental_local_results(grad),
                self.strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

    def step(self, message: ActivationMessage):
        a, y = np.asarray(message.activations), np.asarray(message.labels)
        n = self.strategy.num_replicas_in_sync
        parts_a, parts_y = np.array_split(a, n), np.array_split(y, n)
        dist_a = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts_a[ctx.replica_id_in_sync_group]))
        dist_y = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(parts_y[ctx.replica_id_in_sync_group]))
        loss, grads, correct = self._distributed(dist_a, dist_y, tf.constant(float(len(y))))
        grad = tf.concat([tf.convert_to_tensor(g) for g in grads], axis=0)
        return GradientMessage(grad_activations=grad, loss=loss, correct=correct)


class ServerHalf:
    """The server model, its optimizer and its checkpointable state; NumPy in and out.

    Args:
      model: the server half of a :class:`dpact_tf.vggface.SplitModel` (built inside ``strategy.scope()``
        when a strategy is given).
      config: optimizer settings (the same :class:`TrainingConfig` as in-process).
      decay_steps: server steps over which the default learning rate decays by ``config.lr_decay_rate``.
      strategy: a ``tf.distribute`` strategy, or None for the plain :class:`EdgeServer`.
      max_grad_norm: clip the global norm of the weight gradients of one step to this (None: no clipping).
    """

    def __init__(self, model: tf.keras.Model, config: TrainingConfig, decay_steps: int, *,
                 strategy: Optional[tf.distribute.Strategy] = None, max_grad_norm: Optional[float] = None) -> None:
        if int(decay_steps) < 1:
            raise ValueError(f"decay_steps must be >= 1 (got {decay_steps})")
        if max_grad_norm is not None and not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be finite and > 0, or None for no clipping (got {max_grad_norm})")
        self.model, self.config, self.decay_steps = model, config, int(decay_steps)
        self.strategy = strategy
        with self._scope():
            optimizer = tf.keras.optimizers.SGD(learning_rate=config.learning_rate, momentum=config.momentum,
                                                global_clipnorm=max_grad_norm)
            if strategy is None:
                self.edge = EdgeServer(model, optimizer, config.server_trainable)
            else:
                self.edge = _DistributedEdgeServer(model, optimizer, config.server_trainable, strategy)
            optimizer.build(model.trainable_variables)  # slots exist before a checkpoint is restored into them
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        # everything a step changes: the weights, the momentum slots and the iteration count
        state = list(model.trainable_variables) + [v for v in optimizer.variables
                                                  if v.dtype.is_floating or v.dtype.is_integer]
        floats = [v for v in state if v.dtype.is_floating]
        self._snapshot = tf.function(lambda: [tf.identity(v) for v in state])
        self._finite = tf.function(lambda: tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in floats]))
        self._restore = tf.function(lambda values: [v.assign(b) for v, b in zip(state, values)])

    def _scope(self):
        return self.strategy.scope() if self.strategy is not None else tf.distribute.get_strategy().scope()

    @property
    def steps(self) -> int:
        """Optimizer updates applied to the server model so far (restored with a checkpoint)."""
        return int(self.edge.optimizer.iterations.numpy())

    def default_learning_rate(self, steps: int) -> float:
        """``learning_rate x decay_rate ** (steps / decay_steps)``: the rate of the step after ``steps`` updates."""
        return float(self.config.learning_rate * self.config.lr_decay_rate ** (steps / self.decay_steps))

    def train_step(self, activations: np.ndarray, labels: np.ndarray, *, learning_rate: Optional[float] = None
                   ) -> Tuple[np.ndarray, float, int]:
        """One update at ``learning_rate`` (default: :meth:`default_learning_rate`); returns (dL/d activation
        float32, mean loss, correct count).  Raises :class:`UnsafeStep`, with nothing changed, when the step would
        leave anything non-finite."""
        rate = self.default_learning_rate(self.steps) if learning_rate is None else float(learning_rate)
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0 (got {rate})")
        with self._scope():
            self.edge.optimizer.learning_rate = rate
            before = self._snapshot()
            msg = self.edge.step(ActivationMessage(activations=tf.constant(activations, tf.float32),
                                                   labels=tf.constant(labels, tf.int32)))
            grad, loss = np.asarray(msg.grad_activations, np.float32), float(msg.loss)
            if not (math.isfinite(loss) and np.all(np.isfinite(grad)) and bool(self._finite())):
                self._restore(before)
                raise UnsafeStep(f"this batch would make the server model non-finite (loss {loss:.6g}); the step "
                                 "was rolled back and nothing changed")
        return grad, loss, int(round(float(msg.correct)))

    def evaluate(self, activations: np.ndarray, labels: np.ndarray) -> Tuple[float, int]:
        """(summed cross-entropy, correct count) of the current model; changes nothing."""
        logits = self.edge.predict(tf.constant(activations, tf.float32))
        loss = tf.keras.losses.sparse_categorical_crossentropy(tf.constant(labels, tf.int32), logits,
                                                               from_logits=True)
        correct = np.sum(np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels))
        return float(tf.reduce_sum(loss)), int(correct)
