"""DP-SGD (Abadi et al. 2016, Algorithm 1) on the whole network, as the data holder would train it.

The baseline the paper's method is compared with: no split and no noisy activation -- the data holder trains
the whole network image -> logits (:meth:`dpact_tf.vggface.SplitModel.monolithic` of a split built with
``epsilon=None``: clip + LRN stay, no activation noise) and protects the *training set* instead.  Every step
clips each example's gradient to L2 norm ``l2_norm_clip`` (C), sums, adds N(0, (z C)^2) to every coordinate and
divides by the batch size B, then takes an SGD-momentum step:

    g~ = (1/B) (sum_i g_i / max(1, ||g_i|| / C) + N(0, z^2 C^2 I)).

The clipping and noise are TF Privacy's: its Keras ``DPModel`` by default, or its ``DPKerasSGDOptimizer``
(:data:`IMPLEMENTATIONS`); the epoch loop, history and callbacks are :class:`dpact_tf.training.EpochTrainer`'s,
the optimizer and schedule the split protocol's (:func:`dpact_tf.split.make_optimizer`: SGD momentum,
``lr * rate ** (step / decay_steps)``).  TF Privacy 0.9.0's fast gradient clipping (``DPModel`` with a layer
registry) covers Dense and Embedding layers only, not Conv2D, so ``DPModel`` computes each example's gradient
exactly, by ``tf.vectorized_map`` -- ~20x faster here than the optimizer's Jacobian through the whole batch
(``benchmarks/dpsgd_cost.py``).

Sampling: fed a shuffled ``tf.data`` pipeline, the trainer takes fixed-size batches and divides each noisy sum by
the batch's size, which the accounting below treats as Poisson sampling (its caveat).  Fed
:class:`dpact_tf.baselines.poisson.PoissonBatches` with ``expected_batch_size`` set, it samples as accounted:
each noisy sum is divided by the fixed expected batch size, and an empty batch is a noise-only step.

The epsilon of a run (:func:`dpsgd_epsilon`, :func:`calibrate_noise_multiplier`) is per *training example*
(add-or-remove-one adjacency, all checkpoints released), by dp-accounting's RDP accountant (plain Python, no
TensorFlow op).  It is not comparable term for term with the DP-activation epsilon, which is per released
activation (:mod:`dpact_tf.accounting`).
"""
from __future__ import annotations

import collections
import contextlib
import functools
import math
from typing import Iterator, List, NamedTuple, Optional, Sequence

import dp_accounting
import tensorflow as tf
from dp_accounting import rdp

from dpact_tf.split import TrainingConfig, make_optimizer
from dpact_tf.training import (EpochTrainer, correct_count as _correct, float_images as _float_images,
                               images_ok as _images_ok, int_labels as _int_labels,
                               raise_for_images as _raise_for_images)
from dpact_tf.baselines.whole_model import evaluate_batch

__all__ = ["DPSGDTrainer", "StepResult", "IMPLEMENTATIONS", "dpsgd_epsilon", "calibrate_noise_multiplier",
           "composed_epsilon", "RunShape", "DPSGD_RDP_ORDERS", "MIN_NOISE_MULTIPLIER"]

# RDP orders of the accountant: dp-accounting's defaults (so no epsilon here exceeds its default accountant's), plus
# orders close to 1, where the optimum lies for small noise multipliers (large epsilons).
DPSGD_RDP_ORDERS: List[float] = sorted(set(rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS) |
                                       {1 + x for x in (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.05)})

# The smallest noise multiplier the accounting runs at.  Below ~0.05 the RDP bound approaches the un-subsampled
# one (steps x order / (2 z^2), as if every example were in every batch): valid but loose; at 1e-3 it is ~1e8.
MIN_NOISE_MULTIPLIER = 1e-3


class StepResult(NamedTuple):
    """What :meth:`DPSGDTrainer.train_step` returns (the fields :class:`EpochTrainer` reads)."""

    loss: tf.Tensor     # scalar: mean cross-entropy of the batch (before the update)
    correct: tf.Tensor  # scalar: number of correctly classified examples of the batch


#: how per-example gradients are computed: TF Privacy's ``DPModel`` (``tf.vectorized_map`` of each example's
#: gradient, default) or its ``DPKerasSGDOptimizer`` (a Jacobian of the per-example losses through the whole batch:
#: ~20x slower on the small profile's network, 103 vs 4.9 s per epoch of 1,000 faces, benchmarks/dpsgd_cost.py).
#: Both clip each example's gradient to C over all weights and add N(0, (z C)^2) to the sum: the same update.
IMPLEMENTATIONS = ("model", "optimizer")


@contextlib.contextmanager
def _quiet_tf_logging() -> Iterator[None]:
    """Silences TensorFlow's Python warnings while a step is traced (tf.vectorized_map warns once per op it
    cannot vectorize, e.g. "Conv2DBackpropFilter uses a while_loop": correct, only slower)."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


class DPSGDTrainer(EpochTrainer):
    """DP-SGD on ``model`` (image -> logits) with TF Privacy, SGD momentum and the paper's exponential decay.

    Args:
      model: the whole network, image in [0, 1] -> logits (e.g. ``build_split_vggface(..., epsilon=None)
        .monolithic()``).  Its weights are trained in place.
      l2_norm_clip: C, the L2 norm each example's gradient (over all weights) is clipped to.
      noise_multiplier: z, the noise std over C (0 switches the noise off: clipped SGD, no privacy).
      learning_rate, momentum, lr_decay_rate: SGD momentum with ``lr * lr_decay_rate ** (step / decay_steps)``
        (the defaults are the paper's, as in :class:`dpact_tf.split.TrainingConfig`).
      num_microbatches: None (default) clips every example on its own, which :func:`dpsgd_epsilon` assumes.  A
        number k groups each batch into k microbatches (every batch size must be a multiple of k) and clips their
        mean gradients; an example then changes a clipped sum by up to 2C, so the epsilon is that of a noise
        multiplier z / 2 (TF Privacy's ``used_microbatching``).
      total_steps: the decay's length in steps; by default inferred by :meth:`fit` (epochs x batches per epoch).
      implementation: one of :data:`IMPLEMENTATIONS` (TF Privacy's ``DPModel`` or ``DPKerasSGDOptimizer``).
      expected_batch_size: None (default) divides each noisy sum by the batch's size.  B, for Poisson-sampled
        batches (:class:`dpact_tf.baselines.poisson.PoissonBatches`): divides it by B whatever the batch holds,
        ``(sum_i clip(g_i) + N(0, z^2 C^2 I)) / B`` (Abadi et al.), and takes an empty batch as a noise-only step;
        ``implementation="model"`` and ``num_microbatches=None`` only.

    Images are checked as the split protocol checks them (float, finite, in [0, 1]): a refused batch raises a
    ``ValueError`` and changes nothing.  The noise is TF Privacy's ``tf.random.normal``: under a global seed
    (``tf.keras.utils.set_random_seed``) it is reproducible -- right for an experiment, not for a model released
    with a DP-SGD guarantee, whose noise must be secret.
    """

    def __init__(self, model: tf.keras.Model, *, l2_norm_clip: float, noise_multiplier: float,
                 learning_rate: float = 0.01, momentum: float = 0.9, lr_decay_rate: float = 0.1,
                 num_microbatches: Optional[int] = None, total_steps: Optional[int] = None,
                 implementation: str = "model", expected_batch_size: Optional[int] = None) -> None:
        if not (math.isfinite(l2_norm_clip) and l2_norm_clip > 0):
            raise ValueError(f"l2_norm_clip must be a finite number > 0 (got {l2_norm_clip})")
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be a finite number >= 0 (got {noise_multiplier}); "
                             "use calibrate_noise_multiplier() to get it from a target epsilon")
        if num_microbatches is not None and (int(num_microbatches) != num_microbatches or num_microbatches < 1):
            raise ValueError(f"num_microbatches must be a positive integer or None (got {num_microbatches}); "
                             "None clips every example on its own")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS} (got {implementation!r})")
        if expected_batch_size is not None:
            if int(expected_batch_size) != expected_batch_size or expected_batch_size < 1:
                raise ValueError(f"expected_batch_size must be a positive integer or None (got {expected_batch_size})")
            if implementation != "model" or num_microbatches is not None:
                raise ValueError("expected_batch_size needs implementation='model' and num_microbatches=None (got "
                                 f"{implementation!r}, {num_microbatches}); Poisson batches are clipped per example")
        self.expected_batch_size = None if expected_batch_size is None else int(expected_batch_size)
        self.model = model
        self.config = TrainingConfig(learning_rate=learning_rate, momentum=momentum, lr_decay_rate=lr_decay_rate)
        self.l2_norm_clip = float(l2_norm_clip)
        self.noise_multiplier = float(noise_multiplier)
        self.num_microbatches = None if num_microbatches is None else int(num_microbatches)
        self.implementation = implementation
        self.optimizer: Optional[tf.keras.optimizers.Optimizer] = None
        self.decay_steps: Optional[int] = None
        if total_steps is not None:
            self._build(int(total_steps))

    def _build(self, decay_steps: int) -> None:
        import tensorflow_privacy

        if decay_steps < 1:
            raise ValueError(f"total_steps must be >= 1 (got {decay_steps})")
        self.decay_steps = int(decay_steps)
        cfg = self.config
        # The schedule of dpact_tf.split.make_optimizer: lr * rate ** (step / decay_steps).
        self._schedule = tf.keras.optimizers.schedules.ExponentialDecay(
            cfg.learning_rate, decay_steps=self.decay_steps, decay_rate=cfg.lr_decay_rate)
        variables = self.model.trainable_variables
        if self.implementation == "model":
            self.optimizer = make_optimizer(cfg, self.decay_steps)
            cls = tensorflow_privacy.DPModel if self.expected_batch_size is None else _fixed_denominator_model(
                self.expected_batch_size)
            self._dp_model = cls(
                l2_norm_clip=self.l2_norm_clip, noise_multiplier=self.noise_multiplier,
                num_microbatches=self.num_microbatches, use_xla=False,  # XLA: slower on CPU
                inputs=self.model.inputs, outputs=self.model.outputs, name=f"{self.model.name}_dpsgd")
            self._dp_model.compile(optimizer=self.optimizer, metrics=["accuracy"],
                                   loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            self.optimizer.build(variables)
            self._build_dp_model_metrics()
            step_fn = self._model_step
        else:
            self.optimizer = tensorflow_privacy.DPKerasSGDOptimizer(
                l2_norm_clip=self.l2_norm_clip, noise_multiplier=self.noise_multiplier,
                num_microbatches=self.num_microbatches, learning_rate=self._schedule, momentum=cfg.momentum)
            self.optimizer._create_all_weights(variables)  # slots exist before the step is traced
            step_fn = self._optimizer_step
        image_spec = tf.TensorSpec([None, *self.model.input_shape[1:]], tf.float32)
        label_spec = tf.TensorSpec([None], tf.int32)
        self._step_fn = step_fn
        self._step = tf.function(self._checked_step, input_signature=[image_spec, label_spec])
        self._noise_step = tf.function(self._noise_only_step)
        self._evaluate = tf.function(self._evaluate_step, input_signature=[image_spec, label_spec])
        self._traced = False
        self.built = True

    def _build_dp_model_metrics(self) -> None:
        """Create the variables ``DPModel.train_step`` would create on its first call (its loss and accuracy
        metrics, and TF Privacy's clipping-loss container), so the step is traced once: a ``tf.function`` whose
        first trace creates variables is traced a second time without them."""
        dp = self._dp_model
        y_pred = tf.zeros([1, *self.model.output_shape[1:]], tf.float32)
        dp.compiled_loss.build(y_pred)
        dp.compiled_metrics.build(y_pred, tf.zeros([1], tf.int32))
        if getattr(dp, "_clipping_loss", None) is None and hasattr(dp, "_make_clipping_loss"):
            dp._make_clipping_loss()  # TF Privacy 0.9's private builder of the privatized loss's container

    def train_step(self, images: tf.Tensor, labels: tf.Tensor) -> StepResult:
        """One DP-SGD step on a batch (one compiled call)."""
        self._require_built()
        images = _float_images(images)
        labels = _int_labels(labels)
        k = self.num_microbatches
        if k is not None and int(labels.shape[0]) % k:
            raise ValueError(f"a batch of {labels.shape[0]} examples does not split into num_microbatches={k}; "
                             "use a batch size (and a dataset size) that is a multiple of it, or None")
        if int(labels.shape[0]) == 0:
            if self.expected_batch_size is None:
                raise ValueError("an empty batch: only Poisson-sampled training (expected_batch_size=...) takes one")
            self._noise_step()
            return StepResult(loss=tf.constant(0.0), correct=tf.constant(0.0))
        if self._traced:
            ok, loss, correct = self._step(images, labels)
        else:
            with _quiet_tf_logging():
                ok, loss, correct = self._step(images, labels)
            self._traced = True
        if not ok:
            _raise_for_images(images)
        return StepResult(loss=loss, correct=correct)

    def _checked_step(self, images: tf.Tensor, labels: tf.Tensor):
        """(verdict, mean loss, correct): the image check, then the step only on a batch it passed."""
        ok = _images_ok(images)
        loss, correct = tf.cond(ok, lambda: self._step_fn(images, labels),
                                lambda: (tf.constant(0.0), tf.constant(0.0)))
        return ok, loss, correct

    def _model_step(self, images: tf.Tensor, labels: tf.Tensor):
        """TF Privacy's ``DPModel.train_step``: per-example clipped gradients by ``tf.vectorized_map``, noise,
        the optimizer's update.  Its metrics are reset first, so they are this batch's (the loss and accuracy of
        the forward pass before the update)."""
        for metric in self._dp_model.metrics:
            metric.reset_state()
        logs = self._dp_model.train_step((images, labels))
        n = tf.cast(tf.shape(labels)[0], tf.float32)
        return logs["loss"], tf.round(logs["accuracy"] * n)

    def _noise_only_step(self) -> None:
        """The step of an empty Poisson batch: the sum of no clipped gradients plus the noise, over B."""
        std = self.l2_norm_clip * self.noise_multiplier
        variables = self.model.trainable_variables
        grads = [tf.random.normal(tf.shape(v), stddev=std) / self.expected_batch_size for v in variables]
        self.optimizer.apply_gradients(zip(grads, variables))

    def _optimizer_step(self, images: tf.Tensor, labels: tf.Tensor):
        """TF Privacy's ``DPKerasSGDOptimizer``: it takes the vector loss (one entry per example) and the tape."""
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            per_example = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        self.optimizer.minimize(per_example, self.model.trainable_variables, tape=tape)
        return tf.reduce_mean(per_example), _correct(logits, labels)

    # evaluate (EpochTrainer.evaluate): the model's loss and accuracy, no noise (the model is what is released).

    def _evaluate_step(self, images: tf.Tensor, labels: tf.Tensor):
        return evaluate_batch(self.model, images, labels)

    def current_learning_rate(self) -> float:
        """The rate of the last step taken, as :class:`dpact_tf.split.SplitTrainer` reports it."""
        self._require_built()
        return float(self._schedule(max(int(self.optimizer.iterations) - 1, 0)))


def _fixed_denominator_model(denominator: int):
    """TF Privacy's ``DPModel`` whose noisy sum of clipped gradients is divided by ``denominator`` (the expected
    batch size of Poisson sampling) instead of the batch's size: its own clipping and noise, rescaled."""
    import tensorflow_privacy

    class PoissonDPModel(tensorflow_privacy.DPModel):
        def _reduce_per_example_grads(self, stacked_grads):
            mean = super()._reduce_per_example_grads(stacked_grads)  # (sum + noise) / batch size
            return mean * tf.cast(tf.shape(stacked_grads)[0], mean.dtype) / denominator

    return PoissonDPModel


def _check_run(*, batch_size: int, num_examples: int, epochs: int, delta: float) -> None:
    if int(num_examples) != num_examples or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer (got {num_examples})")
    if int(batch_size) != batch_size or not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size must be an integer in [1, num_examples={num_examples}] (got {batch_size})")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer (got {epochs})")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1) (got {delta}); 1/num_examples or less is usual")


def _dpsgd_event(noise_multiplier: float, *, batch_size: int, num_examples: int,
                 epochs: int) -> dp_accounting.DpEvent:
    steps = int(epochs) * math.ceil(num_examples / batch_size)
    step = dp_accounting.PoissonSampledDpEvent(batch_size / num_examples,
                                               dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, steps)


@functools.lru_cache(maxsize=1024)  # pure; calibrations of one run share their brackets
def _rdp_epsilon(noise_multiplier: float, delta: float, **run: int) -> float:
    accountant = rdp.RdpAccountant(DPSGD_RDP_ORDERS)
    return float(accountant.compose(_dpsgd_event(noise_multiplier, **run)).get_epsilon(delta))


def dpsgd_epsilon(noise_multiplier: float, *, batch_size: int, num_examples: int, epochs: int,
                  delta: float) -> float:
    """Per-example epsilon at ``delta`` of ``epochs`` epochs of DP-SGD (RDP accountant, Mironov et al. 2019).

    Each step is a Poisson-subsampled Gaussian mechanism with sampling rate q = batch_size / num_examples and
    noise multiplier z; there are ``epochs * ceil(num_examples / batch_size)`` steps (the batches of
    :class:`DPSGDTrainer`'s epochs, the last one smaller).  Add-or-remove-one adjacency, every checkpoint
    released, one example per microbatch (``num_microbatches=None``).  The same computation as TF Privacy's
    ``compute_dp_sgd_privacy_statement(..., used_microbatching=False)`` ("assuming Poisson sampling"), which
    counts ``ceil(epochs / q)`` steps instead.

    Caveat, the usual one (TF Privacy's statement says the same), unless the trainer is fed Poisson batches
    (:class:`dpact_tf.baselines.poisson.PoissonBatches`, ``expected_batch_size``): a shuffled pipeline gives
    fixed-size batches each epoch, not Poisson samples.  The Poisson analysis is the one practice
    reports, but it is not a proof for shuffled batches (for an arbitrary order of the data the bound is far
    larger, e.g. 57 instead of 2.6 for TF Privacy's MNIST example).

    Raises ``ValueError`` for ``noise_multiplier`` below :data:`MIN_NOISE_MULTIPLIER`, invalid sizes, or
    ``delta`` outside (0, 1).
    """
    _check_run(batch_size=batch_size, num_examples=num_examples, epochs=epochs, delta=delta)
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= MIN_NOISE_MULTIPLIER):
        raise ValueError(f"noise_multiplier must be >= {MIN_NOISE_MULTIPLIER:g} (got {noise_multiplier}); "
                         "noise_multiplier=0 means no privacy at all")
    return _rdp_epsilon(noise_multiplier, delta, batch_size=batch_size, num_examples=num_examples, epochs=epochs)


class RunShape(NamedTuple):
    """One DP-SGD run as the accountant sees it (the arguments of :func:`dpsgd_epsilon` but delta)."""

    noise_multiplier: float  # z
    batch_size: int          # B (expected, for Poisson sampling)
    num_examples: int        # n: the sampling rate is B / n
    epochs: int              # epochs x ceil(n / B) steps


def composed_epsilon(runs: Sequence[RunShape], *, delta: float) -> float:
    """Per-example epsilon at ``delta`` of several DP-SGD runs on the same examples (RDP composition of all their
    steps, the accountant of :func:`dpsgd_epsilon`): what a hyper-parameter search costs when every candidate is
    trained on the private data and only the chosen one is released, counted as if all were (Papernot & Steinke,
    ICLR 2022, give tighter bounds for a randomized number of candidates).  One run gives :func:`dpsgd_epsilon`."""
    if not runs:
        raise ValueError("composed_epsilon needs at least one run")
    for r in runs:
        _check_run(batch_size=r.batch_size, num_examples=r.num_examples, epochs=r.epochs, delta=delta)
        if not (math.isfinite(r.noise_multiplier) and r.noise_multiplier >= MIN_NOISE_MULTIPLIER):
            raise ValueError(f"every noise_multiplier must be >= {MIN_NOISE_MULTIPLIER:g} (got {r.noise_multiplier})")
    # identical runs compose as one self-composed event: the same RDP sum, each run's RDP computed once
    counts = collections.Counter(RunShape(float(r.noise_multiplier), int(r.batch_size), int(r.num_examples),
                                          int(r.epochs)) for r in runs)
    event = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(_dpsgd_event(r.noise_multiplier, batch_size=r.batch_size,
                                                       num_examples=r.num_examples, epochs=r.epochs), n)
        for r, n in counts.items()])
    return float(rdp.RdpAccountant(DPSGD_RDP_ORDERS).compose(event).get_epsilon(delta))


@functools.lru_cache(maxsize=256)  # pure; the candidates of a search that share a run shape calibrate it once
def calibrate_noise_multiplier(target_epsilon: float, *, batch_size: int, num_examples: int, epochs: int,
                               delta: float, tolerance: float = 1e-4) -> float:
    """The smallest noise multiplier z whose :func:`dpsgd_epsilon` is at most ``target_epsilon``, up to a
    relative ``tolerance`` on z (dp-accounting's ``calibrate_dp_mechanism``, Brent's method): the returned z
    meets the target, and z (1 - tolerance) may not.

    Large targets are met by small multipliers: the per-image epsilons of the DP-activation runs (tens of
    thousands) give z of a few hundredths, where the RDP bound is the loose un-subsampled one (see
    :data:`MIN_NOISE_MULTIPLIER`), so the z returned is larger than a tighter accountant would need.  A target
    above the epsilon of :data:`MIN_NOISE_MULTIPLIER` raises a ``ValueError`` (nothing is clamped silently).
    The same caveat as :func:`dpsgd_epsilon` applies (sound for Poisson batches, an assumption for shuffled ones).
    """
    _check_run(batch_size=batch_size, num_examples=num_examples, epochs=epochs, delta=delta)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be a finite number > 0 (got {target_epsilon})")
    if not (math.isfinite(tolerance) and 0 < tolerance <= 0.01):
        raise ValueError(f"tolerance must be in (0, 0.01] (a relative error on the noise multiplier; got {tolerance})")
    run = dict(batch_size=batch_size, num_examples=num_examples, epochs=epochs)
    floor_epsilon = _rdp_epsilon(MIN_NOISE_MULTIPLIER, delta, **run)
    if floor_epsilon <= target_epsilon:
        raise ValueError(f"target_epsilon={target_epsilon:g} is beyond what the accounting represents for this run: "
                         f"even noise_multiplier={MIN_NOISE_MULTIPLIER:g} (its smallest) gives epsilon "
                         f"{floor_epsilon:.4g}; a target this large means no meaningful DP-SGD guarantee")
    # Bracket the root, lo < z* <= hi with hi <= 2 lo, by doubling or halving from 1 (epsilon decreases in z).
    eps = lambda z: _rdp_epsilon(z, delta, **run)  # noqa: E731
    hi = 1.0
    if eps(hi) > target_epsilon:
        while eps(hi) > target_epsilon:
            hi *= 2
            if hi > 1e6:
                raise ValueError(f"target_epsilon={target_epsilon:g} needs a noise multiplier above 1e6 for this run")
        lo = hi / 2
    else:
        lo = hi
        while eps(lo) <= target_epsilon:  # ends: eps(MIN_NOISE_MULTIPLIER) > target_epsilon
            hi, lo = lo, max(lo / 2, MIN_NOISE_MULTIPLIER)
    z = dp_accounting.calibrate_dp_mechanism(
        lambda: rdp.RdpAccountant(DPSGD_RDP_ORDERS), lambda z: _dpsgd_event(z, **run), target_epsilon, delta,
        dp_accounting.ExplicitBracketInterval(lo, hi), tol=tolerance * lo)
    return float(z)
