"""The two-party split-training protocol of Mao et al. (2018), Sec. V (Fig. 1).

One step:

1. client: forward pass to the DP activation (noisy), under a gradient tape;
2. client -> server: :class:`ActivationMessage` (noisy activations + labels, nothing else);
3. server: forward, loss, backward, update of its own weights;
4. server -> client: :class:`GradientMessage` (dL/d activation);
5. client: ``tape.gradient(activation, client_vars, output_gradients=dL/da)`` and update.

The noise is additive, so d(noisy activation)/d(client weights) equals the clean derivative and the
client's update is exact.  Each side owns its optimizer; the defaults are the paper's: SGD with momentum
0.9, learning rate 0.01 decayed exponentially by a factor 0.1, batch 64.

Two ways to run a step.  With the parties apart (the gRPC edge, :mod:`dpact_tf.edge`), each message is one
compiled call: :meth:`SplitClient.forward`, :meth:`EdgeServer.step`, :meth:`SplitClient.backward` (which
recomputes the clean first layer, :func:`noise_free_path`, instead of keeping a tape between messages).
With both in one process, :meth:`SplitTrainer.train_step` runs the same step -- the same server step on
the activation and labels only, the same checks and rollback on the client -- as one compiled call, so the
protocol costs what Keras' own ``fit`` does (``benchmarks/split_overhead.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from dpact_tf.layers import DPActivation
from dpact_tf.training import (PIXEL_TOLERANCE, EpochTrainer, all_finite, batches_per_epoch, check_images,
                               correct_count, float_images, images_ok, int_labels, raise_for_images)
from dpact_tf.vggface import SplitModel

__all__ = ["ActivationMessage", "GradientMessage", "TrainingConfig", "SplitClient", "EdgeServer",
           "SplitTrainer", "make_optimizer", "batches_per_epoch", "noise_free_path", "check_images",
           "PIXEL_TOLERANCE"]


@dataclasses.dataclass(frozen=True)
class ActivationMessage:
    """Client -> server. The only data that leaves the phone."""

    activations: tf.Tensor  # float32 [N, H, W, C]: noisy DP activations
    labels: tf.Tensor       # int [N]: identity labels

    @property
    def nbytes(self) -> int:
        return int(self.activations.shape.num_elements() * 4 + self.labels.shape.num_elements() * 4)


@dataclasses.dataclass(frozen=True)
class GradientMessage:
    """Server -> client: the gradient of the mean batch loss w.r.t. the activations."""

    grad_activations: tf.Tensor  # float32 [N, H, W, C]
    loss: tf.Tensor              # scalar: mean cross-entropy of the batch
    correct: tf.Tensor           # scalar: number of correctly classified examples (for metrics)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimizer and schedule of both parties (defaults: the paper's)."""

    learning_rate: float = 0.01      # initial learning rate of SGD
    momentum: float = 0.9            # SGD momentum
    lr_decay_rate: float = 0.1       # multiplicative decay of the learning rate ...
    lr_decay_steps: Optional[int] = None  # ... every this many steps (None: over the whole run)
    train_client: bool = True        # False freezes conv1 (fine-tuning a public first layer)
    server_trainable: str = "all"    # "all" or "output" (only the output layer: the paper's fine-tuning case)

    def __post_init__(self) -> None:
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0 (got {self.learning_rate})")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) (got {self.momentum})")
        if not 0 < self.lr_decay_rate <= 1:
            raise ValueError(f"lr_decay_rate must be in (0, 1] (got {self.lr_decay_rate})")
        if self.lr_decay_steps is not None and self.lr_decay_steps < 1:
            raise ValueError(f"lr_decay_steps must be >= 1 or None (got {self.lr_decay_steps})")
        if self.server_trainable not in ("all", "output"):
            raise ValueError(f"server_trainable must be 'all' or 'output' (got {self.server_trainable!r})")


def make_optimizer(config: TrainingConfig, decay_steps: int) -> tf.keras.optimizers.Optimizer:
    """SGD with momentum and exponential decay ``lr * decay_rate ** (step / decay_steps)``."""
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(
        config.learning_rate, decay_steps=max(1, int(decay_steps)), decay_rate=config.lr_decay_rate)
    return tf.keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)


# The batch checks every trainer shares live in dpact_tf.training (names kept here for the protocol's code).
_images_ok, _all_finite, _correct = images_ok, all_finite, correct_count
_int_labels, _float_images, _raise_for_images = int_labels, float_images, raise_for_images


def noise_free_path(model: tf.keras.Model) -> tf.keras.Model:
    """The client model up to (not including) the noise of its :class:`DPActivation`, sharing its weights.

    The noise is additive and independent of the weights, so d(noisy activation)/d(weights) equals
    d(clean activation)/d(weights): :meth:`SplitClient.backward` recomputes the clean activation (the first
    layer only) instead of keeping a tape across messages, which lets both halves of the client's step run
    as compiled graphs.
    """
    dp = [layer for layer in model.layers if isinstance(layer, DPActivation)]
    if not dp:
        return model  # no DP layer: no noise to leave out
    if len(dp) > 1:
        raise ValueError(f"the client has {len(dp)} DPActivation layers; expected one, at the cut")
    return tf.keras.Model(model.inputs, dp[0].normalize(dp[0].input), name=f"{model.name}_noise_free")


class SplitClient:
    """The phone: owns the client model and its optimizer; never sees the server's weights.

    Its inputs are checked: images (:func:`check_images`) before anything is released, and the server's
    :class:`GradientMessage` before it touches a weight -- a message with the wrong shape or a non-finite
    value is refused with a ``ValueError`` and the weights stay as they were.

    A model whose noise is replayable (a :class:`~dpact_tf.layers.DPActivation` with an integer ``seed``: whoever
    knows the seed regenerates the noise) is refused unless ``allow_replayable_noise=True``, which is for
    experiments and tests that keep both parties in one process (:class:`SplitTrainer`).
    """

    def __init__(self, model: tf.keras.Model, optimizer: Optional[tf.keras.optimizers.Optimizer],
                 trainable: bool = True, *, allow_replayable_noise: bool = False) -> None:
        dp = [layer for layer in model.layers if isinstance(layer, DPActivation)]
        if not dp:
            raise ValueError(f"model {model.name!r} has no DPActivation layer: it would release clean activations")
        self.dp_layer: DPActivation = dp[-1]
        if self.dp_layer.adds_noise and self.dp_layer.seed is not None and not allow_replayable_noise:
            raise ValueError(f"the model's DPActivation has seed={self.dp_layer.seed}: its noise is replayable by "
                             "anyone who knows the seed; build it with seed=None to release, or pass "
                             "allow_replayable_noise=True for an in-process experiment or a test")
        self.model = model
        self.optimizer = optimizer
        self.trainable = trainable
        self._pending: Optional[Tuple[tf.Tensor, tf.Tensor]] = None  # (images, activation) of the last forward
        self._clean = noise_free_path(model)
        if trainable and optimizer is not None:
            optimizer.build(model.trainable_variables)  # its slots exist before the first (checked) update
        # One trace each, whatever the batch size (the last batch of an epoch is smaller).
        image_spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        act_spec = tf.TensorSpec([None, *model.output_shape[1:]], tf.float32)
        self._forward = tf.function(self._forward_step, input_signature=[image_spec])
        self._release = tf.function(self._release_step, input_signature=[image_spec])
        self._levels = tf.function(self._levels_step, input_signature=[image_spec])
        self._backward = tf.function(self._backward_step, input_signature=[image_spec, act_spec])

    def forward(self, images: tf.Tensor, labels: tf.Tensor) -> ActivationMessage:
        """Compute the noisy activations to send; keeps the batch for :meth:`backward`."""
        images = _float_images(images)
        self.dp_layer.refresh_graph_entropy()
        ok, act = self._forward(images) if self.trainable else self._release(images)
        if not ok:
            _raise_for_images(images)
        if self.trainable:
            self._pending = (images, act)
        return ActivationMessage(activations=act, labels=tf.convert_to_tensor(labels))

    def _checked_call(self, images: tf.Tensor, training: bool):
        """(verdict, activation): the image check and the forward pass as one compiled call.  The forward runs
        only on a batch the check passed, so a refused batch draws no noise and releases nothing."""
        ok = _images_ok(images)
        act = tf.cond(ok, lambda: self.model(images, training=training),
                      lambda: tf.zeros([tf.shape(images)[0], *self.model.output_shape[1:]]))
        return ok, act

    def _forward_step(self, images: tf.Tensor):
        return self._checked_call(images, training=True)

    def _release_step(self, images: tf.Tensor):
        return self._checked_call(images, training=False)

    def _levels_step(self, images: tf.Tensor):
        """(verdict, released integers): the grid release of a checked batch (nothing is drawn for a refused one)."""
        ok = _images_ok(images)
        levels = tf.cond(ok, lambda: self.dp_layer.release_levels(self._clean(images, training=False)),
                         lambda: tf.zeros([tf.shape(images)[0], *self.model.output_shape[1:]], tf.int32))
        return ok, levels

    def _backward_step(self, images: tf.Tensor, grad_activations: tf.Tensor):
        """Returns (weight gradients, status): see :meth:`_apply_checked`."""
        with tf.GradientTape() as tape:
            clean = self._clean(images, training=True)
        grads = tape.gradient(clean, self.model.trainable_variables, output_gradients=grad_activations)
        return grads, self._apply_checked(grads, _all_finite(grad_activations))

    def _apply_checked(self, grads: List[tf.Tensor], grad_ok: tf.Tensor) -> tf.Tensor:
        """Applies ``grads`` and returns the status: 0 applied, 1 refused (dL/da was not finite), 2 refused (the
        update overflows).  A refused step leaves every weight and optimizer slot exactly as it was."""
        variables = self.model.trainable_variables
        # A finite but huge gradient can still overflow the update (3e38 * lr * ... = inf): apply, check every
        # weight and optimizer slot, and roll all of them back if one is no longer finite (or dL/da was not).
        state = list(variables) + [v for v in self.optimizer.variables if v.dtype.is_floating or v.dtype.is_integer]
        before = [tf.identity(v) for v in state]
        self.optimizer.apply_gradients(zip(grads, variables))
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in state if v.dtype.is_floating])
        if not tf.logical_and(grad_ok, finite):
            for v, b in zip(state, before):
                v.assign(b)
        return tf.where(grad_ok, tf.where(finite, 0, 2), 1)

    def backward(self, message: GradientMessage) -> None:
        """Back-propagate the server's dL/da into the client's weights."""
        if not self.trainable:
            return
        if self._pending is None:
            raise RuntimeError("backward() called without a preceding forward()")
        (images, act), self._pending = self._pending, None  # a refused message aborts the step
        grad_act = self._check_gradient(message.grad_activations, act)
        grads, status = self._backward(images, grad_act)
        self._raise_for_status(int(status))
        self.last_gradients = grads

    @staticmethod
    def _raise_for_status(status: int) -> None:
        if status == 1:
            raise ValueError("GradientMessage.grad_activations contains NaN or inf; refused, client weights "
                             "unchanged")
        if status == 2:
            raise ValueError("the update from this GradientMessage overflows the client's weights (a finite but huge "
                             "gradient); refused, client weights and optimizer state restored")

    @staticmethod
    def _check_gradient(grad: Any, act: tf.Tensor) -> tf.Tensor:
        """The server's dL/da must have the activation's shape and be finite, or it is refused."""
        try:
            grad = tf.convert_to_tensor(grad)
        except (TypeError, ValueError) as err:
            raise ValueError(f"GradientMessage.grad_activations is not a tensor ({err}); refused, "
                             "client weights unchanged") from None
        if not grad.dtype.is_floating:
            raise ValueError(f"GradientMessage.grad_activations is not a float tensor (dtype {grad.dtype.name}); "
                             "refused, client weights unchanged")
        if grad.shape != act.shape:
            raise ValueError(f"GradientMessage.grad_activations has shape {tuple(grad.shape)}, expected "
                             f"{tuple(act.shape)} (the activation sent); refused, client weights unchanged")
        # cast before the (compiled) finiteness check of backward(): 1e300 in float64 is inf in float32
        return tf.cast(grad, act.dtype)

    def release_levels(self, images: tf.Tensor) -> Tuple[np.ndarray, float]:
        """One release as it is uploaded: the grid's integers (int32) and the grid step (the server reads
        level * step).  Draws fresh noise: every call is a release of ``images``.  For a training step, keep the
        batch with :meth:`hold_for_backward` so that :meth:`backward` can apply the server's gradient."""
        if not self.dp_layer.adds_noise:
            raise ValueError("the model releases without noise (epsilon=None): there are no grid levels; "
                             "use release() for the clean activation")
        images = _float_images(images)
        self.dp_layer.refresh_graph_entropy()
        ok, levels = self._levels(images)
        if not ok:
            _raise_for_images(images)
        return levels.numpy(), float(self.dp_layer.spec.step)

    def hold_for_backward(self, images: tf.Tensor, activation: tf.Tensor) -> None:
        """Keep ``images`` and the activation released for them (level * step) for the next :meth:`backward`, as
        :meth:`forward` does: for a release made by :meth:`release_levels`, or one resent after a restart."""
        if self.trainable:
            self._pending = (_float_images(images), tf.convert_to_tensor(activation, tf.float32))

    def release(self, images: tf.Tensor) -> tf.Tensor:
        """Inference: the noisy activation that would be sent to the server."""
        images = _float_images(images)
        self.dp_layer.refresh_graph_entropy()
        ok, act = self._release(images)
        if not ok:
            _raise_for_images(images)
        return act


class EdgeServer:
    """The untrusted edge server: owns the rest of the network and its optimizer."""

    def __init__(self, model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer,
                 trainable: str = "all") -> None:
        self.model = model
        self.optimizer = optimizer
        if trainable == "output":  # only the output layer: the last layer that has weights
            output_layer = [layer for layer in model.layers if layer.weights][-1]
            for layer in model.layers:
                layer.trainable = layer is output_layer
        self.loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        act_spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        self._step = tf.function(self._train_step, input_signature=[act_spec, tf.TensorSpec([None], tf.int32)])
        self._predict = tf.function(self._predict_step, input_signature=[act_spec])

    def _predict_step(self, activations: tf.Tensor) -> tf.Tensor:
        return self.model(activations, training=False)

    def _train_step(self, activations: tf.Tensor, labels: tf.Tensor):
        with tf.GradientTape() as tape:
            tape.watch(activations)
            logits = self.model(activations, training=True)
            loss = self.loss_fn(labels, logits)
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, [activations] + variables)
        self.optimizer.apply_gradients(zip(grads[1:], variables))
        return loss, grads[0], _correct(logits, labels), grads[1:]

    def step(self, message: ActivationMessage) -> GradientMessage:
        loss, grad_act, correct, grads = self._step(message.activations, _int_labels(message.labels))
        self.last_gradients = grads
        return GradientMessage(grad_activations=grad_act, loss=loss, correct=correct)

    def predict(self, activations: tf.Tensor) -> tf.Tensor:
        return self._predict(activations)


# Status of SplitTrainer's compiled step for a batch the image check refused (SplitClient's are 0, 1, 2).
_IMAGES_REFUSED = 3


class SplitTrainer(EpochTrainer):
    """Runs the protocol over a dataset: ``fit`` returns the Fig. 3/4 curves per epoch.

    Args:
      split: the :class:`SplitModel` (client ends in DPActivation).
      config: optimizer and schedule of both parties.
      total_steps: steps over which the learning rate decays by ``config.lr_decay_rate`` when
        ``config.lr_decay_steps`` is None; by default inferred by :meth:`fit` from the dataset's cardinality
        (``epochs x batches per epoch``).
    """

    def __init__(self, split: SplitModel, config: TrainingConfig = TrainingConfig(), *,
                 total_steps: Optional[int] = None) -> None:
        self.split = split
        self.config = config
        self.client: Optional[SplitClient] = None
        self.server: Optional[EdgeServer] = None
        self.decay_steps: Optional[int] = None
        decay_steps = config.lr_decay_steps or total_steps
        if decay_steps is not None:
            self._build(int(decay_steps))

    def _build(self, decay_steps: int) -> None:
        if decay_steps < 1:
            raise ValueError(f"total_steps must be >= 1 (got {decay_steps})")
        cfg = self.config
        self.decay_steps = decay_steps
        self.built = True
        self.client = SplitClient(self.split.client, make_optimizer(cfg, decay_steps) if cfg.train_client else None,
                                  trainable=cfg.train_client, allow_replayable_noise=True)  # one process: both parties
        self.server = EdgeServer(self.split.server, make_optimizer(cfg, decay_steps), cfg.server_trainable)
        image_spec = tf.TensorSpec([None, *self.split.client.input_shape[1:]], tf.float32)
        label_spec = tf.TensorSpec([None], tf.int32)
        self._step = tf.function(self._step_in_process, input_signature=[image_spec, label_spec])
        evaluate = tf.function(self._evaluate_step, input_signature=[image_spec, label_spec])

        def fresh_evaluate(images: tf.Tensor, labels: tf.Tensor):  # each test batch is a release too
            self.client.dp_layer.refresh_graph_entropy()
            return evaluate(images, labels)

        self._evaluate = fresh_evaluate

    def train_step(self, images: tf.Tensor, labels: tf.Tensor) -> GradientMessage:
        """One step of the protocol; raises the ``ValueError`` of :class:`SplitClient` on a refused batch or
        gradient (nothing changes then)."""
        self._require_built()
        images = _float_images(images)
        self.client.dp_layer.refresh_graph_entropy()
        loss, grad_act, correct, client_grads, server_grads, status = self._step(images, _int_labels(labels))
        status = int(status)
        if status == _IMAGES_REFUSED:
            _raise_for_images(images)
        self.client._raise_for_status(status)
        self.client.last_gradients, self.server.last_gradients = client_grads, server_grads
        return GradientMessage(grad_activations=grad_act, loss=loss, correct=correct)

    def _step_in_process(self, images: tf.Tensor, labels: tf.Tensor):
        """One step of the protocol with both parties in this process, as one compiled call.

        The same step as ``client.forward`` -> ``server.step`` -> ``client.backward`` (the gRPC edge runs those),
        at the cost of Keras' own ``fit``: one call instead of three, and the client's gradient from the tape of
        its forward pass instead of a recomputed forward.  The parties stay apart: the server's step
        (:meth:`EdgeServer._train_step`) gets only the activation -- cut from the client's tape -- and the
        labels, and returns dL/da; the client applies it with the checks of :meth:`SplitClient.backward`.  A
        batch refused by the image check computes and releases nothing (status ``_IMAGES_REFUSED``).
        """
        client, server = self.client, self.server
        client_vars = client.model.trainable_variables if client.trainable else []
        server_vars = server.model.trainable_variables

        def step():
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(client_vars)
                act = client.model(images, training=client.trainable)
            to_server = ActivationMessage(activations=tf.stop_gradient(act), labels=labels)  # cut from the tape
            loss, grad_act, correct, server_grads = server._train_step(to_server.activations, to_server.labels)
            if not client.trainable:
                return loss, grad_act, correct, [], server_grads, tf.constant(0)
            # the noise is additive: d(noisy activation)/d(weights) is the clean derivative (noise_free_path)
            client_grads = tape.gradient(act, client_vars, output_gradients=grad_act)
            status = client._apply_checked(client_grads, _all_finite(grad_act))
            return loss, grad_act, correct, client_grads, server_grads, status

        def refused():
            zeros = lambda variables: [tf.zeros(v.shape, v.dtype) for v in variables]  # noqa: E731
            act_shape = [tf.shape(images)[0], *client.model.output_shape[1:]]
            return (tf.constant(0.0), tf.zeros(act_shape), tf.constant(0.0), zeros(client_vars), zeros(server_vars),
                    tf.constant(_IMAGES_REFUSED))

        return tf.cond(_images_ok(images), step, refused)

    # evaluate (EpochTrainer.evaluate): accuracy and loss with the noise on -- the activation leaves the device at
    # test time too -- one compiled ``_evaluate`` call per batch.

    def _evaluate_step(self, images: tf.Tensor, labels: tf.Tensor):
        """(verdict, summed loss, correct) of a batch: ``client.release`` -> ``server.predict``."""
        ok = _images_ok(images)

        def run():
            logits = self.server.model(self.client.model(images, training=False), training=False)
            loss_sum = tf.reduce_sum(tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
            return loss_sum, _correct(logits, labels)

        return (ok,) + tuple(tf.cond(ok, run, lambda: (tf.constant(0.0), tf.constant(0.0))))

    def current_learning_rate(self) -> float:
        # Keras reports the rate of the last step taken (lr * decay ** ((steps - 1) / decay_steps)).
        return float(self.server.optimizer.learning_rate)
