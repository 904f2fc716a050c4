"""``DPActivation``: the paper's Eq. (1) normalization followed by Gaussian noise, as a Keras layer.

Mao et al. (2018), Sec. IV: after the cut layer's ReLU the client

1. clips the activations to [0, 1] -- the paper assumes this range for its sensitivity bound;
   clipping makes the bound hold by construction, whatever the weights;
2. applies local response normalization, Eq. (1), with window u = 5 (``depth_radius=2``),
   alpha = 1, beta = 0.5, gamma = 2 (``bias``):  f_i = a_i / (gamma + alpha * sum_window a_j^2)^beta;
3. adds i.i.d. Gaussian noise N(0, (S_f sigma)^2) to every coordinate, with sigma from
   :func:`dpact_tf.privacy.noise_std`.

Unlike dropout, the noise is added in training **and** in inference: every activation that leaves
the device must be perturbed, whatever Keras' ``training`` flag says.

Seeds: ``seed=<int>`` makes the noise reproducible (same seed -> same noise sequence), which is what
experiments want.  A deployed client must use ``seed=None`` (fresh OS entropy): a server that knows the
seed can regenerate and subtract the noise.
"""
from __future__ import annotations

import secrets
from typing import Any, Dict, Optional

import tensorflow as tf

from dpact_tf import privacy

__all__ = ["DPActivation", "normalize_activations", "LRN_DEFAULTS"]

# Eq. (1) constants of the paper: u = 5 -> depth_radius = 2, alpha = 1, beta = 0.5, gamma = 2.
LRN_DEFAULTS: Dict[str, float] = {"depth_radius": 2, "bias": 2.0, "alpha": 1.0, "beta": 0.5}


def normalize_activations(x: tf.Tensor, *, depth_radius: int = 2, bias: float = 2.0,
                          alpha: float = 1.0, beta: float = 0.5) -> tf.Tensor:
    """Clip to [0, 1] then apply Eq. (1) across channels (the noise-free part of the layer)."""
    x = tf.clip_by_value(x, 0.0, 1.0)
    return tf.nn.local_response_normalization(x, depth_radius=depth_radius, bias=bias,
                                              alpha=alpha, beta=beta)


@tf.keras.utils.register_keras_serializable(package="dpact")
class DPActivation(tf.keras.layers.Layer):
    """Clip -> LRN (Eq. 1) -> Gaussian noise of std ``noise_std(epsilon, delta, sensitivity)``.

    Args:
      epsilon: per-coordinate privacy level; ``None`` (or ``inf``) is the no-noise baseline.
      delta: the delta of (epsilon, delta)-DP, in (0, 1).
      sensitivity: L2 sensitivity of one normalized coordinate (the paper's S_f = 1/sqrt(2)).
      method: "classic" (the paper's sigma) or "analytic" (Balle & Wang 2018).
      seed: integer for reproducible noise, ``None`` for fresh OS entropy (deployment).
      depth_radius, bias, alpha, beta: the LRN constants of Eq. (1) (paper defaults).

    The noise is added whenever the layer is called, in training and in inference.
    """

    def __init__(self, *, epsilon: Optional[float], delta: float = 1e-5,
                 sensitivity: float = privacy.PAPER_SENSITIVITY, method: str = "classic",
                 seed: Optional[int] = None, depth_radius: int = 2, bias: float = 2.0,
                 alpha: float = 1.0, beta: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if privacy.is_no_noise(epsilon):
            epsilon = None
            # Validate the other arguments even when they are unused, so configs stay meaningful.
            privacy._check_delta(delta)
            privacy._check_sensitivity(sensitivity)
            privacy._check_method(method)
            self.stddev = 0.0
        else:
            self.stddev = privacy.noise_std(epsilon, delta, sensitivity=sensitivity, method=method)
            epsilon = float(epsilon)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None (got {seed!r})")
        if int(depth_radius) != depth_radius or depth_radius < 0:
            raise ValueError(f"depth_radius must be a non-negative integer (got {depth_radius})")
        self.epsilon = epsilon
        self.delta = float(delta)
        self.sensitivity = float(sensitivity)
        self.method = method
        self.seed = seed
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)

    @property
    def adds_noise(self) -> bool:
        return self.epsilon is not None

    def build(self, input_shape: tf.TensorShape) -> None:
        # Stateless RNG keyed by (seed, counter): the counter advances on every call, so each
        # release gets fresh noise, and it is saved with the layer's weights.
        seed = self.seed if self.seed is not None else secrets.randbits(62)
        self._noise_seed = tf.constant(seed, dtype=tf.int64)
        self.noise_counter = self.add_weight(name="noise_counter", shape=(), dtype=tf.int64,
                                             initializer="zeros", trainable=False)
        super().build(input_shape)

    def normalize(self, inputs: tf.Tensor) -> tf.Tensor:
        """The noise-free activation (clip + Eq. 1): what the noise is added to."""
        return normalize_activations(inputs, depth_radius=self.depth_radius, bias=self.bias,
                                     alpha=self.alpha, beta=self.beta)

    def call(self, inputs: tf.Tensor, training: Optional[bool] = None) -> tf.Tensor:
        # `training` is ignored on purpose: the noise applies in training and in inference.
        clean = self.normalize(inputs)
        if not self.adds_noise:
            return clean
        seed = tf.stack([self._noise_seed, self.noise_counter.read_value()])
        self.noise_counter.assign_add(1)
        noise = tf.random.stateless_normal(tf.shape(clean), seed=seed, stddev=self.stddev,
                                           dtype=clean.dtype)
        return clean + noise

    def compute_output_shape(self, input_shape: tf.TensorShape) -> tf.TensorShape:
        return input_shape

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        config.update({"epsilon": self.epsilon, "delta": self.delta, "sensitivity": self.sensitivity,
                       "method": self.method, "seed": self.seed, "depth_radius": self.depth_radius,
                       "bias": self.bias, "alpha": self.alpha, "beta": self.beta})
        return config
