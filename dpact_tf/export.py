"""The client head as a phone-ready TensorFlow Lite model (builtin ops only) whose release is on an integer grid.

Signatures of the exported model:

* ``release(image: uint8 [N, R + 2h, W, 3], epsilon: float32 [], entropy: int64 [N, R', W', C]) -> levels: int32
  [N, R', W', C], scale: float32 [], valid: int32 []``: what a deployed app calls.  The head scales the raw RGB
  image to [0, 1], runs the client's layers, clips to [0, 1], applies Eq. (1) and releases every coordinate f as
  the integer ``n = min(floor(max(f, 0) * scale + (j + 1/2) / 256), D) + Z`` of :func:`dpact_tf.grid.release`
  (dithered rounding to a grid of K steps per noise std, then discrete Gaussian noise), computed from ONE uniform
  int64 word of ``entropy`` per coordinate by :func:`dpact_tf.grid_tf.release_levels` (``sampler="lookup"``, or
  ``"tree"`` for a K whose table the lookup's buckets cannot separate: builtin ops only).  ``entropy`` is the noise's only source: the head has no random op.  The server reads
  ``levels / scale``.  In the graph, all in float32 as :func:`dpact_tf.grid.grid_scale` and
  :func:`dpact_tf.grid.max_shift` compute it: ``scale = epsilon * float32(K / (S_f sqrt(2 ln(1.25/delta))))``
  and ``D = ceil(float32(R) * scale)``, with K, delta, S_f and the true range R fixed at conversion and recorded
  in the JSON sidecar.
  ``valid = 1`` iff epsilon lies in the head's certified interval (:func:`dpact_tf.grid.certified_epsilons`: every
  epsilon in it releases with the delta asked for as implemented; NaN, inf and <= 0 lie outside) and the entropy
  passes its checks: the activation's shape (LiteRT would broadcast a [1, 1, 1, C] buffer), a plausible spread --
  the words below 0 and those in [-2^62, 2^62) each half of the buffer within :data:`ENTROPY_TOLERANCE_SE`
  standard errors (a zero-filled or constant buffer, 63-bit words that are never negative, or 32-bit values
  sign-extended to 64 bits, which would give no noise at all, fail) -- and not the last accepted call's: the head
  keeps the first :data:`FINGERPRINT_SIZE` words of the buffer's first row and the last of its last row in a
  resource variable, and refuses a call whose entropy matches either end (LiteRT keeps an input tensor between
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

The converter reads the written flatbuffer back (:mod:`dpact_tf.tflite_inspect`): no custom (Flex) op, no random
op, and a ``release`` whose inputs and outputs are those of the grid release; and it records the hash of the conv
weights stored in the file (:func:`weights_hash`), which ``HeadRunner(trusted_weights_sha256=...)`` checks.
Quantizing the released integers further (:mod:`dpact_tf.encoding`) is post-processing and keeps the guarantee.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from dpact_tf import __version__, grid, grid_tf, privacy, tflite_inspect
from dpact_tf.jsonio import write_json
from dpact_tf.layers import DPActivation

__all__ = ["ClientHead", "convert_client_head", "head_layers", "weights_hash", "client_for_export", "ConversionError",
           "FINGERPRINT_SIZE", "ENTROPY_TOLERANCE_SE", "LRN_KINDS"]

# Words at each end of ``release``'s entropy kept in the head's fingerprint of the last accepted call.
FINGERPRINT_SIZE = 8
# The entropy's plausibility checks allow this many standard errors (a fair buffer fails with probability ~1e-23).
ENTROPY_TOLERANCE_SE = 10.0
LRN_KINDS = ("builtin_ops", "lrn_kernel")
# Float32's largest finite value: a squared gradient norm or a weight above it is non-finite.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class ConversionError(RuntimeError):
    """The head cannot be deployed: it needs ops outside the TFLite builtin set (Select-TF / Flex), or the written
    model is not the grid release (a random op, another release signature)."""


def head_layers(client: tf.keras.Model) -> List[Tuple[str, str, Optional[np.ndarray], Optional[np.ndarray]]]:
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


def weights_hash(client: tf.keras.Model) -> str:
    """The SHA-256 of the client's conv weights as a head exported from it stores them: the value to pass as
    ``HeadRunner(path, trusted_weights_sha256=...)``, which hashes the weights read from the .tflite itself
    (:func:`dpact_tf.tflite_inspect.weights_sha256` defines the bytes hashed)."""
    return tflite_inspect.weights_sha256([(kernel, bias) for _, kind, kernel, bias in head_layers(client)
                                          if kind == "conv"])


def _all_finite(*tensors: tf.Tensor) -> tf.Tensor:
    """True iff every entry is finite and its square does not overflow.

    TFLite's float ADD / ADD_N / SUM / DIV kernels clamp their result to [-FLT_MAX, FLT_MAX] (an inf becomes
    3.4e38), so "<= FLT_MAX" would let an overflow through: each sum of squares is compared *strictly*, on its
    own (NaN fails every comparison), and the results are combined with logical ops only.
    """
    ok = [tf.reduce_sum(t * t) < _FLOAT32_MAX for t in tensors]
    out = ok[0]
    for o in ok[1:]:
        out = tf.logical_and(out, o)
    return out


def _float32_inside(lo: float, hi: float) -> Tuple[float, float]:
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
        if lrn not in LRN_KINDS:
            raise ValueError(f"lrn must be one of {LRN_KINDS} (got {lrn!r})")
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
        self.certified_epsilons = _float32_inside(*grid.certified_epsilons(
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
        r = self.lrn["depth_radius"]
        # band[j, i] = 1 when channel j is in the window of channel i: window sums are a matmul (builtin).
        band = (np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= r).astype(np.float32)
        self.band = tf.constant(band)
        self.band_kernel = tf.constant(band[None, None])  # the same as a 1x1 convolution kernel
        h, w, _ = self.image_shape
        self.batch = batch
        # `release` of a conv1_1 head takes strips of rows with one halo row above and below; other cuts (whose
        # strips would need more) take whole images.
        self.halo_rows = 1 if [kind for _, kind, _, _ in self.layers] == ["conv"] else 0
        # The first and last FINGERPRINT_SIZE words of the last accepted release's entropy (0: none yet).
        self.entropy_fingerprint = tf.Variable(tf.zeros([2 * FINGERPRINT_SIZE], tf.int64), trainable=False,
                                               name="entropy_fingerprint")
        spec = tf.TensorSpec([batch, h, w, 3], tf.uint8, name="image")
        act_w = int(client.output_shape[2])

        # Named functions: TFLite takes the signature keys from the function names.
        def release(image, epsilon, entropy):
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
        """Eq. (1) on the clipped activation ``c``: c / (bias + alpha * window sum of c^2)^beta."""
        if self.lrn_kind == "lrn_kernel":
            return tf.nn.local_response_normalization(c, **self.lrn)
        a, beta, bias = self.lrn["alpha"], self.lrn["beta"], self.lrn["bias"]
        d = bias + a * tf.nn.conv2d(c * c, self.band_kernel, 1, "VALID")
        return c * (tf.math.rsqrt(d) if beta == 0.5 else tf.pow(d, -beta))

    def _features(self, image: tf.Tensor, halo_rows: int = 0) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(Eq. (1) output, the clipped activation, the last conv's pre-activation).  ``halo_rows=1`` (a conv1_1
        head's strip): the first and last image rows are the neighbours' and give no output row."""
        # The ReLU of the scaled image changes nothing (it is >= 0) but keeps the converter from folding the 1/255
        # into constant conv weights: the .tflite stores the client's own kernel, which weights_hash checks.
        x = tf.nn.relu(tf.cast(image, tf.float32) / 255.0)
        pre = x
        ci = 0
        for _, kind, _, _ in self.layers:
            if kind == "conv":
                padding = [[0, 0], [0, 0], [1, 1], [0, 0]] if halo_rows else "SAME"
                pre = tf.nn.conv2d(x, self.kernels[ci], 1, padding) + self.biases[ci]
                x = tf.nn.relu(pre)
                ci += 1
            else:
                x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        c = tf.minimum(x, 1.0)  # x >= 0 after ReLU: the clip to [0, 1] of the Keras layer
        return self._normalize(c), c, pre

    def _entropy_ok(self, entropy: tf.Tensor, act_shape: tf.Tensor) -> tf.Tensor:
        """True iff ``entropy`` has the activation's shape and a plausible spread: the words below 0 and those in
        [-2^62, 2^62) are each n/2 within ENTROPY_TOLERANCE_SE standard errors (sqrt(n)/2) of a fair count."""
        shape_ok = tf.reduce_all(tf.equal(tf.shape(entropy), act_shape))
        # The same ops as grid_tf.release_levels' first lines, so that the converter computes them once: v < 2^62
        # exactly when the word is in [-2^62, 2^62).
        negative = entropy < 0
        v = tf.where(negative, -(entropy + 1), entropy)
        middle = v < tf.constant(1 << 62, tf.int64)
        n = tf.cast(tf.size(entropy), tf.float32)
        tolerance = ENTROPY_TOLERANCE_SE * 0.5 * tf.sqrt(n)
        ok = shape_ok
        for bits in (negative, middle):
            count = tf.cast(tf.reduce_sum(tf.cast(bits, tf.int32)), tf.float32)
            ok = tf.logical_and(ok, tf.abs(count - 0.5 * n) < tolerance)
        return ok

    def _fresh(self, entropy: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
        """``valid`` and not the last accepted call's entropy; remembers this call's if it is accepted."""
        # The first FINGERPRINT_SIZE words of the first row and the last of the last row (zero-padded when a row is
        # shorter; sliced before reshaping: no full-size copy).  EITHER end matching refuses: a stale buffer that
        # was resized (LiteRT keeps a tensor's contents when it shrinks) or refilled at one end keeps the other.
        head_row = tf.reshape(entropy[:1, :1], [-1])[:FINGERPRINT_SIZE]
        tail_row = tf.reshape(entropy[-1:, -1:], [-1])[-FINGERPRINT_SIZE:]
        pad = tf.zeros([FINGERPRINT_SIZE], tf.int64)
        fingerprint = tf.concat([tf.concat([head_row, pad], 0)[:FINGERPRINT_SIZE],
                                 tf.concat([pad, tail_row], 0)[-FINGERPRINT_SIZE:]], 0)
        same = tf.equal(fingerprint, self.entropy_fingerprint)
        repeated = tf.logical_or(tf.reduce_all(same[:FINGERPRINT_SIZE]), tf.reduce_all(same[FINGERPRINT_SIZE:]))
        valid = tf.logical_and(valid, tf.logical_not(repeated))
        self.entropy_fingerprint.assign(tf.where(valid, fingerprint, self.entropy_fingerprint))
        return valid

    def _release(self, image: tf.Tensor, epsilon: tf.Tensor, entropy: tf.Tensor) -> Dict[str, tf.Tensor]:
        lo, hi = self.certified_epsilons
        valid = tf.logical_and(epsilon >= lo, epsilon <= hi)  # NaN fails both
        clean, _, _ = self._features(image, self.halo_rows)
        valid = tf.logical_and(valid, self._entropy_ok(entropy, tf.shape(clean)))
        valid = self._fresh(entropy, valid)
        # grid.grid_scale and grid.max_shift in float32; an invalid call quantizes with scale 0 (nothing of the
        # image) and is zeroed at the end.
        scale = tf.where(valid, epsilon * np.float32(self.scale_per_epsilon), 0.0)
        max_level = tf.maximum(tf.cast(tf.math.ceil(np.float32(self.true_range) * scale), tf.int32), 1)
        levels = grid_tf.release_levels(clean, entropy, scale, max_level, self.table, sampler=self.sampler)
        return {"levels": tf.where(valid, levels, 0), "scale": scale, "valid": tf.cast(valid, tf.int32)}

    def _weight_gradient(self, image: tf.Tensor, grad_activation: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        """dL/d(conv1_1 kernel, bias) from the server's dL/d(activation), summed over the batch."""
        x = tf.cast(image, tf.float32) / 255.0
        _, c, z = self._features(image)
        a, beta, bias = self.lrn["alpha"], self.lrn["beta"], self.lrn["bias"]
        g = grad_activation
        # Eq. (1) backward: f_i = c_i D_i^-beta, D_i = bias + alpha * sum_{j in W(i)} c_j^2
        #   dL/dc_k = g_k D_k^-beta - 2 alpha beta c_k sum_{i in W(k)} g_i c_i D_i^(-beta-1)
        d = bias + a * tf.tensordot(c * c, self.band, 1)
        t = g * c * tf.pow(d, -beta - 1.0)
        gc = g * tf.pow(d, -beta) - 2.0 * a * beta * c * tf.tensordot(t, self.band, 1)
        # clip to [0, 1] after ReLU: the gradient passes where 0 < z <= 1 (as TF's clip and ReLU gradients)
        gz = gc * tf.cast(tf.logical_and(z > 0.0, z <= 1.0), tf.float32)
        # conv1_1 weight gradient: im2col patches (kh, kw, c_in) x gz, summed over N, H, W
        h, w, _ = self.image_shape
        xp = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        patches = tf.concat([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
        cout = self.output_channels
        gk = tf.matmul(tf.reshape(patches, [-1, 27]), tf.reshape(gz, [-1, cout]), transpose_a=True)
        return tf.reshape(gk, [3, 3, 3, cout]), tf.reduce_sum(tf.reshape(gz, [-1, cout]), axis=0)

    def _apply(self, gk: tf.Tensor, gb: tf.Tensor, learning_rate: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Keras SGD with momentum (v <- m v - lr g; w <- w + v), applied only if everything stays finite."""
        norm2 = tf.reduce_sum(gk * gk) + tf.reduce_sum(gb * gb)
        pairs = ((self.kernels[0], self.velocity[0], gk), (self.biases[0], self.velocity[1], gb))
        updates = [(var, vel, self.momentum * vel - learning_rate * grad) for var, vel, grad in pairs]
        updates = [(var, vel, new_vel, var + new_vel) for var, vel, new_vel in updates]
        ok = tf.logical_and(tf.logical_and(learning_rate > 0.0, learning_rate < _FLOAT32_MAX),
                            _all_finite(gk, gb, *[t for _, _, nv, nw in updates for t in (nv, nw)]))
        for var, vel, new_vel, new_var in updates:
            vel.assign(tf.where(ok, new_vel, vel))
            var.assign(tf.where(ok, new_var, var))
        return {"grad_norm": tf.sqrt(norm2), "applied": tf.cast(ok, tf.int32)}

    def _train(self, image: tf.Tensor, grad_activation: tf.Tensor, learning_rate: tf.Tensor) -> Dict[str, tf.Tensor]:
        gk, gb = self._weight_gradient(image, grad_activation)
        return self._apply(gk, gb, learning_rate)



def _convert(head: tf.Module, signatures: Dict[str, Any]) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # Through a SavedModel so that the TFLite signature keys are ours ("release", "clean", "train").
        logger = tf.get_logger()  # the library prints nothing: not even "Assets written to <tmp path>"
        level = logger.level
        logger.setLevel("WARNING")
        try:
            tf.saved_model.save(head, tmp, signatures={k: fn.get_concrete_function() for k, fn in signatures.items()})
        finally:
            logger.setLevel(level)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(signatures))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Select-TF / Flex ops
        # resource variables: the weights `train` updates and `release`'s fingerprint of the last accepted entropy
        converter.experimental_enable_resource_variables = True
        try:
            return converter.convert()
        except Exception as err:  # the converter raises ConverterError on ops outside the builtin set
            raise ConversionError(f"the client head needs ops outside the TFLite builtins (Flex): {err}") from err


def convert_client_head(client: tf.keras.Model, out_path: str, *, with_train: bool = True, momentum: float = 0.9,
                        lrn: str = "builtin_ops", batch: Optional[int] = None,
                        steps_per_std: int = grid.STEPS_PER_STD) -> Dict[str, Any]:
    """Write ``out_path`` (.tflite) and its JSON sidecar (same name, .json); returns the sidecar dict.

    The head is float32 throughout: the release's constants (the grid scale per epsilon, the certified interval's
    ends, the true range) must be the float32 values :mod:`dpact_tf.grid` computes with, which a float16 model
    (whose converter rounds every constant) would change.  ``with_train=False`` writes an inference-only head:
    its weights are constants, which XNNPACK runs faster and in less memory than the variables the ``train``
    signature updates.  The written flatbuffer is read back and
    refused (:class:`ConversionError`, nothing written) unless it has builtin ops only, no random op and the grid
    release (:func:`dpact_tf.tflite_inspect.check_grid_release`).  See :class:`ClientHead` for ``lrn`` and
    ``steps_per_std``.
    """
    head = ClientHead(client, momentum=momentum, lrn=lrn, batch=batch, steps_per_std=steps_per_std,
                      with_train=with_train)
    signatures = head.signatures
    model = _convert(head, signatures)
    # Check the bytes that will be deployed, not the Python object.
    try:
        tflite_inspect.check_builtin_only(model)
        tflite_inspect.check_grid_release(model)
    except ValueError as err:
        raise ConversionError(f"refusing to write a head that cannot be deployed: {err}") from err
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    with open(out_path, "wb") as fh:
        fh.write(model)
    dp = client.get_layer("dp_activation")
    h, w, _ = head.image_shape
    act_shape = list(head.clean(tf.zeros([head.batch or 1, h, w, 3], tf.uint8))["activation"].shape[1:])
    lo, hi = head.certified_epsilons
    halo = head.halo_rows
    sidecar = {
        "tflite": os.path.basename(out_path), "bytes": len(model),
        "input": {"name": "image", "shape": [head.batch, h, w, 3], "dtype": "uint8", "range": "0..255 RGB"},
        "activation_shape": [head.batch] + act_shape,
        "release": {
            "inputs": {"image": f"uint8 [N, R + {2 * halo}, {w}, 3]: " + (
                           "R image rows with one row of their neighbours above and below (zero rows outside the "
                           "image); R = the image height with a zero row above and below releases a whole image"
                           if halo else f"whole images (R = {h})"),
                       "epsilon": f"float32 []: released iff {lo!r} <= epsilon <= {hi!r}",
                       "entropy": f"int64 [N, R', {act_shape[1]}, {act_shape[2]}]: one uniform 64-bit word per "
                                  "coordinate from the app's cryptographic generator (AES-CTR keystream), fresh for "
                                  "every call: the noise's only source"},
            "outputs": {"levels": "int32: the released integers n = min(floor(f * scale + (j + 1/2) / 256), "
                                  "max_level) + Z; the server reads levels / scale",
                        "scale": "float32 []: grid steps per activation unit, epsilon * scale_per_epsilon",
                        "valid": "int32 []: 1 = released; 0 = refused (epsilon outside certified_epsilons, or "
                                 "entropy of another shape, implausible, or the last accepted call's): levels all "
                                 "zero, send nothing"},
            "halo_rows": halo, "steps_per_std": head.steps_per_std, "sampler": head.sampler,
            "certified_epsilons": [lo, hi],
            "scale_per_epsilon": head.scale_per_epsilon, "true_range": head.true_range,
            "max_level": "ceil(float32(true_range) * scale), in float32",
            "noise": f"discrete Gaussian N_Z(0, {head.steps_per_std}^2) from a {grid.MAGNITUDE_BITS}-bit table "
                     f"(dpact_tf.grid.noise_table), sampled with builtin ops (dpact_tf.grid_tf, sampler "
                     f"{head.sampler!r})",
            "delta_as_implemented": "dpact_tf.grid.grid_spec(epsilon, delta, steps_per_std=steps_per_std, "
                                    "sensitivity=sensitivity, true_range=true_range).delta: at most delta for "
                                    "every epsilon in certified_epsilons",
            "entropy_fingerprint_words": FINGERPRINT_SIZE},
        "clean": {"output": "activation", "dtype": "float32", "meaning": "the activation WITHOUT noise (tests, "
                  "benchmarks, the no-noise baseline): never send it"},
        "noise_source": "the app's entropy only: the head has no random op",
        "lrn_implementation": head.lrn_kind,
        "cut": [n for n, _, _, _ in head.layers][-1], "layers": [n for n, _, _, _ in head.layers],
        "delta": head.delta, "sensitivity": head.sensitivity, "method": dp.method, "lrn": dict(head.lrn),
        "signatures": sorted(signatures),
        "train_optimizer": {"type": "SGD", "momentum": head.momentum} if head.trainable_head else None,
        "train_outputs": {"grad_norm": "float32", "applied": "int32: 1 = weights updated; 0 = refused (non-finite "
                          "gradient or learning rate, or learning_rate <= 0), weights unchanged"}
        if head.trainable_head else None,
        "dpact_version": __version__,
        "weights_sha256": tflite_inspect.weights_sha256(tflite_inspect.stored_conv_weights(model)),
    }
    write_json(os.path.splitext(out_path)[0] + ".json", sidecar)
    return sidecar


def client_for_export(*, image_size: int, cut: str = "conv1_1", width: float = 1.0, seed: Optional[int] = 0,
                      weights: Optional[str] = None, delta: float = 1e-5,
                      sensitivity: float = privacy.PAPER_SENSITIVITY) -> tf.keras.Model:
    """A client model to export: a trained one (``weights``: .keras model or .h5 weights by layer name) or,
    without ``weights``, freshly initialized (Glorot uniform) from ``seed``.  The seed sets the weights only,
    never the noise."""
    from dpact_tf.vggface import build_split_vggface

    if weights and (weights.endswith(".keras") or os.path.isdir(weights)):  # a saved model (.keras or SavedModel)
        client = tf.keras.models.load_model(weights)
        if "dp_activation" not in [layer.name for layer in client.layers]:
            raise ValueError(f"{weights} is not a dpact client (it has no 'dp_activation' layer)")
        return client
    split = build_split_vggface((image_size, image_size, 3), 2, width=width, fc_units=2, cut=cut,
                                epsilon=None, delta=delta, sensitivity=sensitivity)
    if seed is not None:
        # Seeded weights from a private generator: a global tf.keras.utils.set_random_seed here would also fix the
        # seeds of every random op the calling process creates later.
        rng = np.random.default_rng(seed)
        for layer in split.client.layers:
            if isinstance(layer, tf.keras.layers.Conv2D):
                kernel, bias = layer.get_weights()
                fan_in, fan_out = np.prod(kernel.shape[:-1]), np.prod(kernel.shape[:-2]) * kernel.shape[-1]
                limit = math.sqrt(6.0 / (fan_in + fan_out))  # Glorot uniform, Keras' default for Conv2D
                layer.set_weights([rng.uniform(-limit, limit, kernel.shape).astype(np.float32), np.zeros_like(bias)])
    if weights:
        if not os.path.exists(weights):
            raise FileNotFoundError(f"{weights} not found")
        split.client.load_weights(weights, by_name=True)
    return split.client
