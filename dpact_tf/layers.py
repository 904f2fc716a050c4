"""``DPActivation``: the paper's Eq. (1) normalization followed by Gaussian noise, as a Keras layer.

Mao et al. (2018), Sec. IV: after the cut layer's ReLU the client

1. clips the activations to [0, 1] -- the paper assumes this range for its sensitivity bound;
   clipping makes the bound hold by construction, whatever the weights;
2. applies local response normalization, Eq. (1), with window u = 5 (``depth_radius=2``),
   alpha = 1, beta = 0.5, gamma = 2 (``bias``):  f_i = a_i / (gamma + alpha * sum_window a_j^2)^beta;
3. releases every coordinate on a grid with discrete Gaussian noise (:mod:`dpact_tf.grid`): the grid step is
   the paper's noise std S_f sigma (:func:`dpact_tf.privacy.noise_std`) over K, the coordinate is rounded with a
   dither to an integer level in [0, D], and integer noise of std K steps is added.  The layer outputs the
   released level times the step -- a function of the released integer alone (the server could compute it), so
   no float rounding of the clean activation reaches the output.  Its gradient is the identity on the clean
   activation (straight-through), as the split protocol back-propagates it.  Exactly (epsilon, delta)-DP per
   coordinate as implemented (``layer.spec.delta`` is the delta achieved, <= the delta asked for).

Unlike dropout, the noise is added in training **and** in inference: every activation that leaves
the device must be perturbed, whatever Keras' ``training`` flag says.

Seeds: ``seed=<int>`` makes the noise reproducible (same seed -> same noise sequence), which is what
experiments want; a release path that sends to a server (:class:`dpact_tf.split.SplitClient`) refuses such a
layer unless told it is a test.  A deployed client must use ``seed=None``: a server that knows the seed -- and the
server holds the model file -- can regenerate and subtract the noise.  With ``seed=None`` nothing about
the noise is stored in the layer or in any graph traced from it (SavedModel, ``.keras``).  Every release
draws a fresh key for its uniform 64-bit words (one per coordinate): from the OS CSPRNG (``secrets``) when the layer
runs eagerly; inside a traced graph
(``tf.function``, the compiled :class:`dpact_tf.split.SplitClient`, SavedModel, ``.keras``) from an
unseeded TensorFlow kernel, which TensorFlow seeds from OS entropy in every process.  The kernel's seed
attributes are set to 0 explicitly, so a global seed (``tf.keras.utils.set_random_seed``) cannot leak into
it.  See SECURITY.md for what this does not give (the noise itself comes from Philox, not a CSPRNG).

The layer refuses configurations that would under-noise (:func:`dpact_tf.privacy.check_calibration`): an
epsilon outside (0, MAX_EPSILON] (``None``/``inf`` is the explicit no-noise baseline), a ``sensitivity``
below the true range of the normalized coordinate (:func:`dpact_tf.privacy.lrn_output_bound` of the LRN
constants), and the classic calibration above the epsilon where it stops being (epsilon, delta)-DP.
"""
from __future__ import annotations

import secrets
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf

from dpact_tf import grid, grid_tf, privacy

__all__ = ["DPActivation", "normalize_activations", "LRN_DEFAULTS"]

# Eq. (1) constants of the paper: u = 5 -> depth_radius = 2, alpha = 1, beta = 0.5, gamma = 2.
LRN_DEFAULTS: Dict[str, float] = {"depth_radius": 2, "bias": 2.0, "alpha": 1.0, "beta": 0.5}


def normalize_activations(x: tf.Tensor, *, depth_radius: int = 2, bias: float = 2.0,
                          alpha: float = 1.0, beta: float = 0.5) -> tf.Tensor:
    """Clip to [0, 1] then apply Eq. (1) across channels (the noise-free part of the layer).

    The same function as ``tf.nn.local_response_normalization``, written as square -> 1x1 convolution with a
    banded 0/1 kernel (the window sums) -> power -> multiply: on a CPU its backward is about twice as fast as
    TensorFlow's LRNGrad kernel at 64 channels (tests compare the two).
    """
    x = tf.clip_by_value(x, 0.0, 1.0)
    channels = x.shape[-1]
    if channels is None:
        raise ValueError("normalize_activations needs a known number of channels (the last axis)")
    idx = np.arange(int(channels))
    band = (np.abs(idx[:, None] - idx[None, :]) <= int(depth_radius)).astype(x.dtype.as_numpy_dtype)
    window = tf.nn.conv2d(tf.square(x), tf.constant(band[None, None]), 1, "VALID")
    scale = bias + alpha * window
    return x * (tf.math.rsqrt(scale) if beta == 0.5 else tf.pow(scale, -beta))


@tf.custom_gradient
def _straight_through(clean: tf.Tensor, released: tf.Tensor):
    """Outputs ``released`` exactly; the gradient flows to ``clean`` as if the release were the identity."""
    return tf.identity(released), lambda dy: (dy, tf.zeros_like(released))


class _GraphEntropy(tf.Module):
    """Holds the graph-entropy variable of a :class:`DPActivation` (a checkpoint dependency, not a Keras weight)."""

    def __init__(self, variable: tf.Variable) -> None:
        super().__init__(name="graph_entropy")
        self.variable = variable


@tf.keras.utils.register_keras_serializable(package="dpact")
class DPActivation(tf.keras.layers.Layer):
    """Clip -> LRN (Eq. 1) -> a grid release with discrete Gaussian noise of std ``noise_std(epsilon, delta,
    sensitivity)`` (:mod:`dpact_tf.grid`).

    Args:
      epsilon: per-coordinate privacy level; ``None`` (or ``inf``) is the no-noise baseline.
      delta: the delta of (epsilon, delta)-DP, in (0, 1).
      sensitivity: L2 sensitivity of one normalized coordinate (the paper's S_f = 1/sqrt(2)).
      method: "classic" (the paper's sigma) or "analytic" (Balle & Wang 2018).
      seed: integer for reproducible noise (experiments), ``None`` for noise fresh per call and per process
        (deployment).
      steps_per_std: grid steps per noise std (K); ``None`` picks the coarsest power of two >= 16 whose release
        is (epsilon, delta)-DP as implemented (:func:`dpact_tf.grid.choose_steps_per_std`).
      depth_radius, bias, alpha, beta: the LRN constants of Eq. (1) (paper defaults).

    The noise is added whenever the layer is called, in training and in inference.
    """

    def __init__(self, *, epsilon: Optional[float], delta: float = 1e-5,
                 sensitivity: float = privacy.PAPER_SENSITIVITY, method: str = "classic",
                 seed: Optional[int] = None, steps_per_std: Optional[int] = None, depth_radius: int = 2,
                 bias: float = 2.0, alpha: float = 1.0, beta: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.true_range = privacy.lrn_output_bound(bias=bias, alpha=alpha, beta=beta)
        epsilon = privacy.check_calibration(epsilon, delta, sensitivity=sensitivity, true_range=self.true_range,
                                            method=method)
        # The grid of the release, checked: (epsilon, delta)-DP as implemented, or a ValueError.
        self.spec: Optional[grid.GridSpec] = grid.check_release(
            epsilon, delta, sensitivity=sensitivity, true_range=self.true_range, method=method,
            steps_per_std=steps_per_std)
        self.stddev = 0.0 if epsilon is None else privacy.noise_std(epsilon, delta, sensitivity=sensitivity,
                                                                     method=method)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None (got {seed!r})")
        if int(depth_radius) != depth_radius or depth_radius < 0:
            raise ValueError(f"depth_radius must be a non-negative integer (got {depth_radius})")
        self.epsilon = epsilon
        self.delta = float(delta)
        self.sensitivity = float(sensitivity)
        self.method = method
        self.seed = seed
        self.steps_per_std = None if self.spec is None else self.spec.steps_per_std
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    @property
    def adds_noise(self) -> bool:
        return self.epsilon is not None

    def build(self, input_shape: tf.TensorShape) -> None:
        # Counts releases.  With an integer seed the noise key is (seed, counter), so each release gets
        # fresh but reproducible noise; the counter is saved with the layer's weights.
        self.noise_counter = self.add_weight(name="noise_counter", shape=(), dtype=tf.int64,
                                             initializer="zeros", trainable=False)
        with tf.init_scope():
            holder = _GraphEntropy(tf.Variable(tf.zeros([2], tf.int64), trainable=False, name="graph_entropy"))
        # A checkpoint dependency (a SavedModel of a traced release can capture it), kept out of Keras' lists of
        # sublayers and weights (assigned without Layer.__setattr__).
        object.__setattr__(self, "_graph_entropy", holder)
        self._track_trackable(holder, name="graph_entropy", overwrite=True)
        super().build(input_shape)

    def refresh_graph_entropy(self) -> None:
        """Fill the key that a traced graph's next releases derive from with 128 bits from the OS CSPRNG.

        A traced graph cannot call Python's ``secrets``; without this, its key comes from TensorFlow's stateful
        kernel, which a process seeds from 32 bits, and the clock.  Callers of compiled releases
        (:class:`~dpact_tf.split.SplitClient`, :class:`~dpact_tf.split.SplitTrainer`) refresh it before every
        call.  A no-op for a seeded or noise-free layer."""
        if self.adds_noise and self.seed is None:
            if not self.built:
                raise ValueError("build the layer (call it once) before refreshing its graph entropy")
            self._graph_entropy.variable.assign([secrets.randbits(64) - 2 ** 63 for _ in range(2)])

    def normalize(self, inputs: tf.Tensor) -> tf.Tensor:
        """The noise-free activation (clip + Eq. 1): what the noise is added to."""
        return normalize_activations(inputs, depth_radius=self.depth_radius, bias=self.bias,
                                     alpha=self.alpha, beta=self.beta)

    def release_levels(self, clean: tf.Tensor) -> tf.Tensor:
        """The released integers (int32) of the clean activation ``clean`` (draws fresh noise: one release)."""
        if not self.adds_noise:
            raise ValueError("a no-noise layer (epsilon=None) releases the clean activation, not grid levels")
        if not self.built:
            self.build(clean.shape)
        words = grid_tf.random_words(tf.shape(clean), self._noise_key())
        release = grid_tf.compiled_release_levels(grid.noise_table(self.spec.steps_per_std))
        return release(clean, words, tf.constant(self.spec.scale, tf.float32),
                       tf.constant(self.spec.max_level, tf.int32))

    def levels_to_values(self, levels: tf.Tensor) -> tf.Tensor:
        """What the server reads: level / scale (float32), a function of the released integers alone."""
        return tf.cast(levels, tf.float32) / tf.constant(self.spec.scale, tf.float32)

    def call(self, inputs: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        # `training` is ignored on purpose: the noise applies in training and in inference.
        clean = self.normalize(inputs)
        if not self.adds_noise:
            return clean
        released = self.levels_to_values(self.release_levels(clean))
        return _straight_through(clean, tf.cast(released, clean.dtype))

    def _noise_key(self) -> tf.Tensor:
        """The int64[2] key of this release's words: (seed, counter), or fresh per call and per process."""
        counter = self.noise_counter.read_value()
        self.noise_counter.assign_add(1)
        if self.seed is not None:
            return tf.stack([tf.constant(self.seed, dtype=tf.int64), counter])
        if tf.executing_eagerly():  # eager calls: 128 bits from the OS CSPRNG for every release
            return tf.constant([secrets.randbits(64) - 2 ** 63 for _ in range(2)], dtype=tf.int64)
        # A traced graph (tf.function, SavedModel, .keras): the 128 bits that refresh_graph_entropy() put in the
        # key variable before this call, mixed with an unseeded stateful kernel (seed = seed2 = 0, so that a global
        # seed cannot become its seed: TensorFlow seeds it from OS entropy, 32 bits a process, and it advances on
        # every call) and the clock, so that a caller who never refreshes still gets a fresh key (SECURITY.md).
        draw = tf.raw_ops.RandomUniformInt(shape=[2], minval=tf.constant(tf.int64.min, tf.int64),
                                           maxval=tf.constant(tf.int64.max, tf.int64), seed=0, seed2=0)
        clock = tf.bitcast(tf.timestamp(), tf.int64)
        mixed = tf.bitwise.bitwise_xor(draw, tf.stack([tf.zeros_like(clock), clock]))
        return tf.bitwise.bitwise_xor(mixed, self._graph_entropy.variable.read_value())

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return input_shape

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update({"epsilon": self.epsilon, "delta": self.delta, "sensitivity": self.sensitivity,
                       "method": self.method, "seed": self.seed, "steps_per_std": self.steps_per_std,
                       "depth_radius": self.depth_radius,
                       "bias": self.bias, "alpha": self.alpha, "beta": self.beta})
        return config
