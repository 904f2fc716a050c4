"""The client head's computation as small pure functions of TensorFlow builtin ops (what TFLite runs).

* :func:`features` -- the image scaled to [0, 1], the client's conv (+ ReLU) and pool layers, the clip to [0, 1]
  and Eq. (1): what the release adds noise to;
* :func:`normalize` -- Eq. (1), f_i = c_i / (bias + alpha * window sum of c_j^2)^beta, as square -> 1x1 conv with a
  banded 0/1 kernel -> rsqrt -> multiply (ops XNNPACK accelerates), or TFLite's LRN kernel;
* :func:`conv1_weight_gradient` -- the client's backward pass, derived by hand because TFLite has no builtin
  kernels for TensorFlow's gradient ops (LRNGrad, Conv2DBackpropFilter, ReluGrad): Eq. (1), the clip and ReLU
  backward, and the conv1_1 weight gradient as an im2col matrix product;
* :func:`sgd_momentum` -- Keras' SGD-with-momentum update, applied only if everything stays finite.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

__all__ = ["LRN_KINDS", "Layer", "band_matrix", "normalize", "features", "conv1_weight_gradient", "all_finite",
           "sgd_momentum"]

LRN_KINDS = ("builtin_ops", "lrn_kernel")
# Float32's largest finite value: a squared gradient norm or a weight above it is non-finite.
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: (name, "conv" | "pool", kernel, bias) of one client layer before the DP activation
Layer = Tuple[str, str, Optional[np.ndarray], Optional[np.ndarray]]


def band_matrix(channels: int, depth_radius: int) -> np.ndarray:
    """band[j, i] = 1 when channel j is in the LRN window of channel i: window sums are a matmul (builtin)."""
    return (np.abs(np.subtract.outer(np.arange(channels), np.arange(channels))) <= depth_radius).astype(np.float32)


def normalize(c: tf.Tensor, lrn: Mapping[str, float], band_kernel: tf.Tensor, kind: str = "builtin_ops") -> tf.Tensor:
    """Eq. (1) on the clipped activation ``c``: c / (bias + alpha * window sum of c^2)^beta.  ``band_kernel`` is
    :func:`band_matrix` as a 1x1 convolution kernel ([1, 1, C, C])."""
    if kind == "lrn_kernel":
        return tf.nn.local_response_normalization(c, **lrn)
    a, beta, bias = lrn["alpha"], lrn["beta"], lrn["bias"]
    d = bias + a * tf.nn.conv2d(c * c, band_kernel, 1, "VALID")
    return c * (tf.math.rsqrt(d) if beta == 0.5 else tf.pow(d, -beta))


def features(image: tf.Tensor, kinds: Sequence[str], kernels: Sequence[tf.Tensor], biases: Sequence[tf.Tensor],
             normalize_fn, halo_rows: int = 0) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(Eq. (1) output, the clipped activation, the last conv's pre-activation) of a uint8 ``image``.

    ``kinds``: "conv" or "pool" per layer; ``kernels``/``biases``: the conv layers' weights in order;
    ``normalize_fn(c)``: Eq. (1).  ``halo_rows=1`` (a conv1_1 head's strip): the first and last image rows are the
    neighbours' and give no output row."""
    # The ReLU of the scaled image changes nothing (it is >= 0) but keeps the converter from folding the 1/255
    # into constant conv weights: the .tflite stores the client's own kernel, which weights_hash checks.
    x = tf.nn.relu(tf.cast(image, tf.float32) / 255.0)
    pre = x
    ci = 0
    for kind in kinds:
        if kind == "conv":
            padding = [[0, 0], [0, 0], [1, 1], [0, 0]] if halo_rows else "SAME"
            pre = tf.nn.conv2d(x, kernels[ci], 1, padding) + biases[ci]
            x = tf.nn.relu(pre)
            ci += 1
        else:
            x = tf.nn.max_pool2d(x, 2, 2, "VALID")
    c = tf.minimum(x, 1.0)  # x >= 0 after ReLU: the clip to [0, 1] of the Keras layer
    return normalize_fn(c), c, pre


def conv1_weight_gradient(image: tf.Tensor, grad_activation: tf.Tensor, features_fn, lrn: Mapping[str, float],
                          band: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """dL/d(conv1_1 kernel, bias) from the server's dL/d(activation), summed over the batch.

    ``features_fn(image)``: :func:`features` of the head; ``band``: :func:`band_matrix`.  Eq. (1) backward:
    f_i = c_i D_i^-beta, D_i = bias + alpha * sum_{j in W(i)} c_j^2, so
    dL/dc_k = g_k D_k^-beta - 2 alpha beta c_k sum_{i in W(k)} g_i c_i D_i^(-beta-1)."""
    x = tf.cast(image, tf.float32) / 255.0
    _, c, z = features_fn(image)
    a, beta, bias = lrn["alpha"], lrn["beta"], lrn["bias"]
    g = grad_activation
    d = bias + a * tf.tensordot(c * c, band, 1)
    t = g * c * tf.pow(d, -beta - 1.0)
    gc = g * tf.pow(d, -beta) - 2.0 * a * beta * c * tf.tensordot(t, band, 1)
    # clip to [0, 1] after ReLU: the gradient passes where 0 < z <= 1 (as TF's clip and ReLU gradients)
    gz = gc * tf.cast(tf.logical_and(z > 0.0, z <= 1.0), tf.float32)
    # conv1_1 weight gradient: im2col patches (kh, kw, c_in) x gz, summed over N, H, W
    h, w = int(image.shape[1]), int(image.shape[2])
    xp = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    patches = tf.concat([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    cout = int(band.shape[0])
    gk = tf.matmul(tf.reshape(patches, [-1, 27]), tf.reshape(gz, [-1, cout]), transpose_a=True)
    return tf.reshape(gk, [3, 3, 3, cout]), tf.reduce_sum(tf.reshape(gz, [-1, cout]), axis=0)


def all_finite(*tensors: tf.Tensor) -> tf.Tensor:
    """True iff every entry is finite and its square does not overflow.

    TFLite's float ADD / ADD_N / SUM / DIV kernels clamp their result to [-FLT_MAX, FLT_MAX] (an inf becomes
    3.4e38), so "<= FLT_MAX" would let an overflow through: each sum of squares is compared *strictly*, on its
    own (NaN fails every comparison), and the results are combined with logical ops only.
    """
    ok = [tf.reduce_sum(t * t) < FLOAT32_MAX for t in tensors]
    out = ok[0]
    for o in ok[1:]:
        out = tf.logical_and(out, o)
    return out


def sgd_momentum(variables: Sequence[tf.Variable], velocities: Sequence[tf.Variable], grads: Sequence[tf.Tensor],
                 learning_rate: tf.Tensor, momentum: float) -> Dict[str, tf.Tensor]:
    """Keras SGD with momentum (v <- m v - lr g; w <- w + v), applied only if the learning rate is in (0, FLT_MAX)
    and every gradient, velocity and weight stays finite; ``{"grad_norm", "applied"}``."""
    norm2 = tf.reduce_sum(grads[0] * grads[0])
    for g in grads[1:]:
        norm2 = norm2 + tf.reduce_sum(g * g)
    updates = [(var, vel, momentum * vel - learning_rate * grad) for var, vel, grad in zip(variables, velocities, grads)]
    updates = [(var, vel, new_vel, var + new_vel) for var, vel, new_vel in updates]
    ok = tf.logical_and(tf.logical_and(learning_rate > 0.0, learning_rate < FLOAT32_MAX),
                        all_finite(*grads, *[t for _, _, nv, nw in updates for t in (nv, nw)]))
    for var, vel, new_vel, new_var in updates:
        vel.assign(tf.where(ok, new_vel, vel))
        var.assign(tf.where(ok, new_var, var))
    return {"grad_norm": tf.sqrt(norm2), "applied": tf.cast(ok, tf.int32)}
