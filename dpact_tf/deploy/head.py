"""The client head as a tf.Module with the signatures of the exported .tflite (builtin ops only).

Signatures:

* ``release(image: uint8 [N, R + 2h, W, 3], epsilon: float32 [], entropy: int64 [N, R', W', C]) -> levels: int32
  [N, R', W', C], scale: float32 [], valid: int32 []``: what a deployed app calls.  The head scales the raw RGB
  image to [0, 1], runs the client's layers, clips to [0, 1], applies Eq. (1) and releases every coordinate f as
  the integer ``n = min(floor(max(f, 0) * scale + (j + 1/2) / 256), D) + Z`` of :func:`dpact_tf.grid.release`
  (dithered rounding to a grid of K steps per noise std, then discrete Gaussian noise), computed from ONE uniform
  int64 word of ``entropy`` per coordinate by :func:`dpact_tf.deploy.lite_release.release_levels`
  (``sampler="lookup"``, in the TFLite kernels' cheapest ops), or :func:`dpact_tf.grid_tf.release_levels`
  (``"tree"``, for a K whose table the lookup's buckets cannot separate): builtin ops only.  ``entropy`` is the
  noise's only source: the head has no random op.  The server reads ``levels / scale``.  In the graph, all in
  float32 as :func:`dpact_tf.grid.grid_scale` and :func:`dpact_tf.grid.max_shift` compute it:
  ``scale = epsilon * float32(K / (S_f sqrt(2 ln(1.25/delta))))`` and ``D = ceil(float32(R) * scale)``, with K,
  delta, S_f and the true range R fixed at conversion and recorded in the JSON sidecar.
  ``valid = 1`` iff epsilon lies in the head's certified interval (:func:`dpact_tf.grid.certified_epsilons`: every
  epsilon in it releases with the delta asked for as implemented; NaN, inf and <= 0 lie outside) and the entropy
  passes its checks: the activation's shape (LiteRT would broadcast a [1, 1, 1, C] buffer), a plausible spread --
  the words below 0 and those in [-2^62, 2^62) each half of the buffer within :data:`ENTROPY_TOLERANCE_SE`
  standard errors (a zero-filled or constant buffer, 63-bit words that are never negative, or 32-bit values
  sign-extended to 64 bits, which would give no noise at all, fail), the activation is finite (``"lookup"``: its
  levels are clamped in float32) -- and not the last accepted call's: the head keeps the first
  :data:`FINGERPRINT_SIZE` words of the buffer's first row and the last of its last row in a resource variable,
  and refuses a call whose entropy matches either end (LiteRT keeps an input tensor between
  calls, so an app that forgets to refill would release a second image with the first one's noise; a buffer
  resized or refilled at one end only keeps the other).  The fingerprint remembers one call per interpreter:
  the app must still write new words before every call.  An invalid release returns all-zero ``levels`` (and
  ``scale = 0``).
  ``h`` is the sidecar's ``release.halo_rows``: a conv1_1 head (h = 1) takes a strip of R image rows with one
  row of its neighbours above and below (zero rows outside the image: conv1_1's own SAME padding) and releases
  the R rows' activation, so an app releases an image in strips whose tensors stay in the CPU's cache (what
  ``HeadRunner`` does) or whole, padded with a zero row above and below; other cuts (h = 0) take whole images.
* ``clean(image: uint8 [N, H, W, 3]) -> activation: float32``: the activation WITHOUT noise, for tests,
  benchmarks and the no-noise baseline.  Never send it: it is what the release protects.
* ``train(image, grad_activation, learning_rate) -> grad_norm, applied``: the client's half of a training step
  -- back-propagates the server's dL/d(activation) into conv1_1 and applies SGD with momentum (the Keras
  SGD update).  The update is applied only if the gradient, the learning rate (> 0) and the new weights are
  finite (``applied = 1``); otherwise the weights stay unchanged (``applied = 0``): the untrusted server cannot
  poison the phone with NaN/inf.  Written with builtin ops only (a hand-derived backward pass of ReLU, clip
  and Eq. (1), and the conv1_1 weight gradient as an im2col matrix product), because TFLite has no builtin
  kernels for TensorFlow's gradient ops (LRNGrad, Conv2DBackpropFilter, ReluGrad).  Available when the cut is
  conv1_1, with ``gradient`` + ``apply_gradient``, the same step in two calls.

The graph's pieces are :mod:`dpact_tf.deploy.graph` (features, Eq. (1), backward, SGD) and
:mod:`dpact_tf.deploy.entropy` (the entropy's checks); :mod:`dpact_tf.deploy.convert` writes the file.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from dpact_tf import grid, grid_tf
from dpact_tf.deploy import entropy, graph, lite_release
from dpact_tf.layers import DPActivation

__all__ = ["ClientHead", "head_layers", "float32_inside"]


def head_layers(client: tf.keras.Model) -> List[graph.Layer]:
    """The client's layers before the DP activation: (name, "conv"|"pool", kernel, bias)."""
    out = []
    for layer in client.layers:
        if isinstance(layer, tf.keras.layers.InputLayer) or isinstance(layer, DPActivation):
            continue
        if isinstance(layer, tf.keras.layers.Conv2D):
            kernel, bias = layer.get_weights()
            out.append((layer.name, "conv", kernel, bias))
        elif isinstance(layer, tf.keras.layers.MaxPooling2D):
            out.append((layer.name, "pool", None, None))
        else:
            raise ValueError(f"unsupported client layer {layer.name!r} ({type(layer).__name__})")
    return out


def float32_inside(lo: float, hi: float) -> Tuple[float, float]:
    """The float32 interval [lo', hi'] inside [lo, hi]: the graph compares a float32 epsilon with float32 ends."""
    lo32, hi32 = np.float32(lo), np.float32(hi)
    if float(lo32) < lo:
        lo32 = np.nextafter(lo32, np.float32(np.inf))
    if float(hi32) > hi:
        hi32 = np.nextafter(hi32, np.float32(0))
    return float(lo32), float(hi32)


class ClientHead(tf.Module):
    """conv layers -> clip -> Eq. (1) -> the grid release, as a tf.Module with ``release``, ``clean`` and (cut
    conv1_1) ``train``, ``gradient`` and ``apply_gradient``.

    Args:
      client: the Keras client (its ``dp_activation`` layer gives delta, S_f, the true range and the LRN constants).
      momentum: the SGD momentum of the on-device update.
      lrn: ``"builtin_ops"`` writes Eq. (1) as square -> 1x1 conv with a banded 0/1 kernel -> rsqrt -> mul
        (ops XNNPACK accelerates); ``"lrn_kernel"`` uses TFLite's reference LOCAL_RESPONSE_NORMALIZATION.
      batch: a fixed batch size for the signatures (``None``, the default: any batch size).
      with_train: give a conv1_1-only head the ``train``, ``gradient`` and ``apply_gradient`` signatures (its
        weights stay variables).  ``False``: the weights are frozen into constants at conversion.
      steps_per_std: K, the grid steps per noise std of the release (fixed at conversion; the certified
        interval of run-time epsilons depends on it).
    """

    def __init__(self, client: tf.keras.Model, *, momentum: float = 0.9, lrn: str = "builtin_ops",
                 batch: Optional[int] = None, with_train: bool = True,
                 steps_per_std: int = grid.STEPS_PER_STD) -> None:
        super().__init__(name="client_head")
        if lrn not in graph.LRN_KINDS:
            raise ValueError(f"lrn must be one of {graph.LRN_KINDS} (got {lrn!r})")
        dp: DPActivation = client.get_layer("dp_activation")
        if dp.method != "classic":
            raise ValueError("the head's grid scale implements the paper's classic sigma (scale proportional to "
                             f"epsilon); the client uses method={dp.method!r}")
        self.layers = head_layers(client)
        self.image_shape = tuple(int(s) for s in client.input_shape[1:])
        self.delta, self.sensitivity, self.true_range = dp.delta, dp.sensitivity, float(dp.true_range)
        self.lrn = {"depth_radius": dp.depth_radius, "bias": dp.bias, "alpha": dp.alpha, "beta": dp.beta}
        self.momentum = float(momentum)
        self.lrn_kind = lrn
        # The grid: K, the noise table, scale(epsilon) = epsilon * scale_per_epsilon (grid.grid_scale's float32
        # constant) and the float32 interval of epsilons the graph accepts.
        self.table = grid.noise_table(steps_per_std)
        self.steps_per_std = self.table.steps_per_std
        try:  # the same noise as the tree search, ~3x faster in TFLite
            grid_tf.lookup_tables(self.table)
            self.sampler = "lookup"
        except ValueError:
            self.sampler = "tree"
        self.scale_per_epsilon = grid.grid_scale(1.0, self.delta, sensitivity=self.sensitivity,
                                                 steps_per_std=self.steps_per_std)
        self.certified_epsilons = float32_inside(*grid.certified_epsilons(
            self.delta, steps_per_std=self.steps_per_std, sensitivity=self.sensitivity, true_range=self.true_range))
        self.trainable_head = with_train and [kind for _, kind, _, _ in self.layers] == ["conv"]
        # Variables only where `train` updates them: XNNPACK runs constant weights faster and in less memory.
        weight = tf.Variable if self.trainable_head else (lambda value, name: tf.constant(value, name=name))
        self.kernels, self.biases = [], []
        for name, kind, kernel, bias in self.layers:
            if kind == "conv":
                self.kernels.append(weight(kernel, name=f"{name}_kernel"))
                self.biases.append(weight(bias, name=f"{name}_bias"))
        if self.trainable_head:
            self.velocity = [tf.Variable(tf.zeros_like(v), name=v.name.split(":")[0] + "_velocity")
                             for v in (self.kernels[0], self.biases[0])]
        n = self.output_channels
        band = graph.band_matrix(n, self.lrn["depth_radius"])
        self.band = tf.constant(band)
        self.band_kernel = tf.constant(band[None, None])  # the same as a 1x1 convolution kernel
        h, w, _ = self.image_shape
        self.batch = batch
        # `release` of a conv1_1 head takes strips of rows with one halo row above and below; other cuts (whose
        # strips would need more) take whole images.
        self.halo_rows = 1 if [kind for _, kind, _, _ in self.layers] == ["conv"] else 0
        # The first and last FINGERPRINT_SIZE words of the last accepted release's entropy (0: none yet).
        self.entropy_fingerprint = entropy.fingerprint_variable()
        spec = tf.TensorSpec([batch, h, w, 3], tf.uint8, name="image")
        act_w = int(client.output_shape[2])

        # Named functions: TFLite takes the signature keys from the function names.
        def release(image, epsilon, entropy):  # the signature's input names are these arguments' names
            return self._release(image, epsilon, entropy)

        def clean(image):
            return {"activation": self._features(image)[0]}

        def train(image, grad_activation, learning_rate):
            return self._train(image, grad_activation, learning_rate)

        def gradient(image, grad_activation):
            gk, gb = self._weight_gradient(image, grad_activation)
            return {"grad_kernel": gk, "grad_bias": gb}

        def apply_gradient(grad_kernel, grad_bias, learning_rate):
            return self._apply(grad_kernel, grad_bias, learning_rate)

        self.release = tf.function(release, input_signature=[
            tf.TensorSpec([batch, None if self.halo_rows else h, w, 3], tf.uint8, name="image"),
            tf.TensorSpec([], tf.float32, name="epsilon"),
            tf.TensorSpec([batch, None, act_w, n], tf.int64, name="entropy")])
        self.clean = tf.function(clean, input_signature=[spec])
        if self.trainable_head:
            grad_spec = tf.TensorSpec([batch, h, w, n], tf.float32, name="grad_activation")
            lr_spec = tf.TensorSpec([], tf.float32, name="learning_rate")
            self.train = tf.function(train, input_signature=[spec, grad_spec, lr_spec])
            self.gradient = tf.function(gradient, input_signature=[spec, grad_spec])
            self.apply_gradient = tf.function(apply_gradient, input_signature=[
                tf.TensorSpec([3, 3, 3, n], tf.float32, name="grad_kernel"),
                tf.TensorSpec([n], tf.float32, name="grad_bias"), lr_spec])

    @property
    def output_channels(self) -> int:
        return int([k for _, kind, k, _ in self.layers if kind == "conv"][-1].shape[-1])

    @property
    def signatures(self) -> Dict[str, Any]:
        out = {"release": self.release, "clean": self.clean}
        if self.trainable_head:
            out.update(train=self.train, gradient=self.gradient, apply_gradient=self.apply_gradient)
        return out

    def _normalize(self, c: tf.Tensor) -> tf.Tensor:
        return graph.normalize(c, self.lrn, self.band_kernel, self.lrn_kind)

    def _features(self, image: tf.Tensor, halo_rows: int = 0) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return graph.features(image, [kind for _, kind, _, _ in self.layers], self.kernels, self.biases,
                              self._normalize, halo_rows)

    def _release(self, image: tf.Tensor, epsilon: tf.Tensor, words: tf.Tensor) -> Dict[str, tf.Tensor]:
        lo, hi = self.certified_epsilons
        valid = tf.logical_and(epsilon >= lo, epsilon <= hi)  # NaN fails both
        clean, _, _ = self._features(image, self.halo_rows)
        valid = tf.logical_and(valid, entropy.plausible(words, tf.shape(clean)))
        if self.sampler == "lookup":  # its levels are clamped in float32: a NaN activation must not be released
            valid = tf.logical_and(valid, lite_release.finite(clean))
        valid = entropy.fresh(words, valid, self.entropy_fingerprint)
        # grid.grid_scale and grid.max_shift in float32; an invalid call quantizes with scale 0 (nothing of the
        # image) and is zeroed at the end.
        scale = tf.where(valid, epsilon * np.float32(self.scale_per_epsilon), 0.0)
        max_level = tf.maximum(tf.math.ceil(np.float32(self.true_range) * scale), 1.0)  # an integer < 2^24
        if self.sampler == "lookup":
            levels = lite_release.release_levels(clean, words, scale, max_level, self.table)
        else:
            levels = grid_tf.release_levels(clean, words, scale, tf.cast(max_level, tf.int32), self.table,
                                            sampler=self.sampler)
        return {"levels": tf.where(valid, levels, 0), "scale": scale, "valid": tf.cast(valid, tf.int32)}

    def _weight_gradient(self, image: tf.Tensor, grad_activation: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return graph.conv1_weight_gradient(image, grad_activation, self._features, self.lrn, self.band)

    def _apply(self, gk: tf.Tensor, gb: tf.Tensor, learning_rate: tf.Tensor) -> Dict[str, tf.Tensor]:
        return graph.sgd_momentum((self.kernels[0], self.biases[0]), self.velocity, (gk, gb), learning_rate,
                                  self.momentum)

    def _train(self, image: tf.Tensor, grad_activation: tf.Tensor, learning_rate: tf.Tensor) -> Dict[str, tf.Tensor]:
        gk, gb = self._weight_gradient(image, grad_activation)
        return self._apply(gk, gb, learning_rate)
