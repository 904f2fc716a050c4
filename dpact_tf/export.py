"""The client head as a phone-ready TensorFlow Lite model (builtin ops only).

Signatures of the exported model:

* ``infer(image: uint8 [N, H, W, 3], epsilon: float32 []) -> activation: float32, valid: int32``: scales the
  raw RGB image to [0, 1], runs the client's layers, clips, applies Eq. (1) and adds Gaussian noise with
  std = S_f * sqrt(2 ln(1.25/delta)) / epsilon computed in-graph (``epsilon=+inf`` -> no noise).  The
  constant sqrt(2 ln(1.25/delta)) comes from :func:`dpact_tf.privacy.gaussian_sigma` (one formula in the code
  base); delta and S_f are fixed at conversion and recorded in the JSON sidecar.  An epsilon outside
  (0, max_epsilon] and not +inf (NaN, <= 0, -inf, 1e38) gives ``valid = 0`` and an all-zero activation: the raw
  signature never releases less noise than asked, whatever the app passes.  ``max_epsilon`` is
  ``privacy.MAX_EPSILON`` capped where the classic calibration stops being (epsilon, delta)-DP for the
  coordinate's true range (``privacy.classic_valid_max_epsilon``: ~21.9 for the paper's S_f and Eq. (1)).
* ``train(image, grad_activation, learning_rate) -> grad_norm, applied``: the client's half of a training step
  -- back-propagates the server's dL/d(activation) into conv1_1 and applies SGD with momentum (the Keras
  SGD update).  The update is applied only if the gradient, the learning rate (> 0) and the new weights are
  finite (``applied = 1``); otherwise the weights stay unchanged (``applied = 0``): the untrusted server cannot
  poison the phone with NaN/inf.  Written with builtin ops only (a hand-derived backward pass of ReLU, clip
  and Eq. (1), and the conv1_1 weight gradient as an im2col matrix product), because TFLite has no builtin
  kernels for TensorFlow's gradient ops (LRNGrad, Conv2DBackpropFilter, ReluGrad).  Available when the cut is
  conv1_1.

* ``release(image: uint8 [N, R, W, 3], epsilon, entropy: float32 [N, R', W', 2 ceil(C/2)]) -> activation,
  valid``: the deployable path (Box-Muller heads).  The same as ``infer``, but the noise is drawn from the app's
  ``entropy`` alone: 24-bit uniforms (k + 1) / 2^24 in (0, 1] from a cryptographic generator (``HeadRunner``:
  AES-128-CTR keyed with 128 bits from ``secrets``; an Android app: ``javax.crypto`` AES/CTR keyed from
  ``SecureRandom``).  Channel c < C/2 of the noise is r cos(2 pi u2), channel C/2 + c is r sin(2 pi u2), with
  r = std sqrt(-2 ln u1), u1 = entropy[..., c] and u2 = entropy[..., C/2 + c] (Box-Muller: exactly N(0, std^2)
  up to float32, |z| <= 5.77 std as with TensorFlow's own sampler).  ``valid = 0`` and an all-zero activation
  when ``entropy`` has an entry outside [2^-24, 1] (a zero -- an unfilled buffer or a gap in one --, NaN, inf),
  another shape than the activation's, or a mean or variance no 24-bit uniform tensor has (a constant fill), and
  for ``epsilon = +inf`` (a deployed release always adds noise; the no-noise baseline is ``infer``'s).  LiteRT
  keeps an input tensor's contents between calls, so an app that forgets to refill ``entropy`` would release a
  second image with the first one's noise (the difference of the two releases is the difference of the clean
  activations): the head keeps a fingerprint of the last accepted entropy in a resource variable (the first
  :data:`FINGERPRINT_SIZE` uniforms of its first row and the last of its last row) and refuses (``valid = 0``) a
  release whose entropy matches it at either end -- a stale buffer resized or refilled at one end only keeps the
  other (a false match of fresh 24-bit uniforms has probability ~2^-767).  It is per interpreter and remembers
  one call: the app must still write new uniforms before every call (an older buffer, one shared by two
  interpreters, or one refilled at both ends but stale in the middle is not caught).
  ``R`` is any number of rows (``R' = R`` for a conv1_1 head, whose sidecar says ``release_strip_halo_rows:
  1``): an app can release an image in strips of rows, each with one row of its neighbours above and below
  (zero rows at the image's border: conv1_1's own SAME padding) whose outputs it drops -- the same release,
  with tensors small enough to stay in the CPU's cache (what ``HeadRunner`` does).

The head's random op (``infer`` only) carries the seed options (0, 0): each interpreter seeds it from the OS.
The converter reads the seeds back from the written flatbuffer (:mod:`dpact_tf.tflite_inspect`) and refuses a
fixed seed unless ``replayable_noise_for_tests=True``.  Fresh is not secret, though: LiteRT seeds that op from a
per-process ``mt19937_64`` started from 32 bits of ``/dev/urandom``, and an adversarial review recovered the
exact noise of an ``infer`` release by searching those 2^32 seeds (about 40 core-minutes).  ``infer`` is kept
for tests and benchmarks; a deployed app calls ``release``, whose noise depends on the app's secret entropy only.

Quantizing the *already-noisy* output (float16, uint8: :mod:`dpact_tf.encoding`) is post-processing and keeps
the DP guarantee.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from dpact_tf import __version__, privacy
from dpact_tf.jsonio import write_json
from dpact_tf.layers import DPActivation
from dpact_tf.runtime import MAX_BOX_MULLER_STD  # the one bound, shared with HeadRunner

__all__ = ["ClientHead", "convert_client_head", "head_layers", "weights_hash", "ConversionError", "FINGERPRINT_SIZE"]

# Uniforms at each end of ``release``'s entropy kept in the head's fingerprint of the last accepted call.
FINGERPRINT_SIZE = 32


class ConversionError(RuntimeError):
    """The head cannot be deployed: it needs ops outside the TFLite builtin set (Select-TF / Flex), or its
    written random op carries a fixed seed (replayable noise)."""


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


def weights_hash(layers) -> str:
    h = hashlib.sha256()
    for name, kind, kernel, bias in layers:
        h.update(name.encode())
        if kernel is not None:
            h.update(np.ascontiguousarray(kernel, np.float32).tobytes())
            h.update(np.ascontiguousarray(bias, np.float32).tobytes())
    return h.hexdigest()


# Float32's largest finite value: a noise std, a squared gradient norm or a weight above it is non-finite.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_TWO_PI_HI = float(np.float16(2.0 * math.pi))                 # 6.28125, exact in float16
_TWO_PI_LO = float(np.float16(2.0 * math.pi - _TWO_PI_HI))    # 0.001935: 2 pi to ~3e-7 rad in a float16 head



def _head_max_epsilon(delta: float, sensitivity: float, true_range: float) -> float:
    """The largest finite epsilon the head accepts: MAX_EPSILON, and no more than where the classic calibration
    it implements stays (epsilon, delta)-DP for the coordinate's true range (~21.9 for the paper's constants).
    Rounded down to a float16 value, so a float16 head's constant cannot round above it."""
    limit = min(privacy.MAX_EPSILON, privacy.classic_valid_max_epsilon(delta, sensitivity=sensitivity,
                                                                       true_range=true_range))
    half = np.float16(limit)
    if float(half) > limit:
        half = np.nextafter(half, np.float16(0))
    return float(half)


def _is_pos_inf(x: tf.Tensor, finite_max: float) -> tf.Tensor:
    """x == +inf without an inf constant (float16 conversion turns inf and float32's max into 65504).

    Fails closed: if a kernel clamped x * 0.5 to float32's max, +inf would count as invalid, never the reverse.
    """
    return tf.logical_and(x > finite_max, tf.equal(x * 0.5, x))


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


NOISE_KINDS = ("box_muller", "standard_normal")
LRN_KINDS = ("builtin_ops", "lrn_kernel")


class ClientHead(tf.Module):
    """conv layers -> clip -> Eq. (1) -> noise, as a tf.Module with ``infer`` and (cut conv1_1) ``train``.

    Args:
      client: the Keras client (its ``dp_activation`` layer gives delta, S_f and the LRN constants).
      momentum: the SGD momentum of the on-device update.
      replayable_noise_for_tests: write fixed seeds into the random op, so every interpreter replays the same
        noise.  For tests only: whoever holds such a model file can regenerate and subtract the noise.
      noise: ``"box_muller"``: ``infer`` draws N(0, 1) from one ``RANDOM_UNIFORM`` (Box-Muller transform, both
        outputs used) and the head gets ``release`` (Box-Muller of the app's uniforms); ``"standard_normal"``:
        ``infer`` uses ``RANDOM_STANDARD_NORMAL`` and there is no ``release``.  Both are exact N(0, 1) up to
        float32 (|z| <= ~5.7, as TensorFlow's own Box-Muller sampler).
      lrn: ``"builtin_ops"`` writes Eq. (1) as square -> 1x1 conv with a banded 0/1 kernel -> rsqrt -> mul
        (ops XNNPACK accelerates); ``"lrn_kernel"`` uses TFLite's reference LOCAL_RESPONSE_NORMALIZATION.
      batch: a fixed batch size for the signatures (``None``, the default: any batch size).
      with_train: give a conv1_1-only head the ``train``, ``gradient`` and ``apply_gradient`` signatures (its
        weights stay variables).  ``False``: the weights are frozen into constants at conversion.
    """

    def __init__(self, client: tf.keras.Model, *, momentum: float = 0.9, replayable_noise_for_tests: bool = False,
                 noise: str = "box_muller", lrn: str = "builtin_ops", batch: Optional[int] = None,
                 with_train: bool = True) -> None:
        super().__init__(name="client_head")
        if noise not in NOISE_KINDS:
            raise ValueError(f"noise must be one of {NOISE_KINDS} (got {noise!r})")
        if lrn not in LRN_KINDS:
            raise ValueError(f"lrn must be one of {LRN_KINDS} (got {lrn!r})")
        dp: DPActivation = client.get_layer("dp_activation")
        if dp.method != "classic":
            raise ValueError("the in-graph calibration of the head implements the paper's classic sigma; "
                             f"the client uses method={dp.method!r}")
        self.layers = head_layers(client)
        self.image_shape = tuple(int(s) for s in client.input_shape[1:])
        self.delta, self.sensitivity = dp.delta, dp.sensitivity
        self.lrn = {"depth_radius": dp.depth_radius, "bias": dp.bias, "alpha": dp.alpha, "beta": dp.beta}
        # std(eps) = S_f * sigma(1, delta) / eps: sigma is 1/eps-homogeneous in the classic calibration.
        self.noise_scale = float(self.sensitivity * privacy.gaussian_sigma(1.0, self.delta))
        self.noise_scale_hi = float(np.float16(self.noise_scale))
        self.noise_scale_lo = float(np.float16(self.noise_scale - self.noise_scale_hi))
        self.max_epsilon = _head_max_epsilon(self.delta, self.sensitivity, dp.true_range)
        self.momentum = float(momentum)
        self.noise_kind, self.lrn_kind = noise, lrn
        # (0, 0) = TFLite seeds the random op from the OS in every interpreter; anything else replays.
        self.seeds = (20180, 1) if replayable_noise_for_tests else (0, 0)
        self.trainable_head = with_train and [kind for _, kind, _, _ in self.layers] == ["conv"]
        # Variables only where `train` updates them: a head's resource variables (the release fingerprint below)
        # would otherwise keep frozen weights as variables too, which XNNPACK runs slower and in more memory.
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
        spec = tf.TensorSpec([batch, h, w, 3], tf.uint8, name="image")
        # Named functions: TFLite takes the signature keys from the function names.
        def infer(image, epsilon):
            return self._infer(image, epsilon)

        def train(image, grad_activation, learning_rate):
            return self._train(image, grad_activation, learning_rate)

        def gradient(image, grad_activation):
            gk, gb = self._weight_gradient(image, grad_activation)
            return {"grad_kernel": gk, "grad_bias": gb}

        def apply_gradient(grad_kernel, grad_bias, learning_rate):
            return self._apply(grad_kernel, grad_bias, learning_rate)

        eps_spec = tf.TensorSpec([], tf.float32, name="epsilon")
        self.infer = tf.function(infer, input_signature=[spec, eps_spec])
        act_w = int(client.output_shape[2])
        self.entropy_channels = 2 * ((n + 1) // 2)
        self.has_release = noise == "box_muller"
        # `release` takes any number of image rows: a whole image, or (conv1_1 heads) a strip of rows with one row
        # of its neighbours above and below, whose tensors stay in the CPU's cache (HeadRunner streams strips).
        self.strip_halo_rows = 1 if [kind for _, kind, _, _ in self.layers] == ["conv"] else None
        if self.has_release:
            # The first and last FINGERPRINT_SIZE uniforms of the last accepted release's entropy (0: none yet).
            self.entropy_fingerprint = tf.Variable(tf.zeros([2 * FINGERPRINT_SIZE]), trainable=False,
                                                   name="entropy_fingerprint")

            def release(image, epsilon, entropy):
                return self._infer(image, epsilon, entropy)

            self.release = tf.function(release, input_signature=[
                tf.TensorSpec([batch, None, w, 3], tf.uint8, name="image"), eps_spec,
                tf.TensorSpec([batch, None, act_w, self.entropy_channels], tf.float32, name="entropy")])
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

    def _normalize(self, c: tf.Tensor) -> tf.Tensor:
        """Eq. (1) on the clipped activation ``c``: c / (bias + alpha * window sum of c^2)^beta."""
        if self.lrn_kind == "lrn_kernel":
            return tf.nn.local_response_normalization(c, **self.lrn)
        a, beta, bias = self.lrn["alpha"], self.lrn["beta"], self.lrn["bias"]
        d = bias + a * tf.nn.conv2d(c * c, self.band_kernel, 1, "VALID")
        return c * (tf.math.rsqrt(d) if beta == 0.5 else tf.pow(d, -beta))

    def _features(self, image: tf.Tensor, upper: Any = 1.0) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(Eq. (1) output, the clipped activation, the last conv's pre-activation); ``upper`` is the clip's top
        (0 makes the whole output 0)."""
        x = tf.cast(image, tf.float32) / 255.0
        pre = x
        ci = 0
        for _, kind, _, _ in self.layers:
            if kind == "conv":
                pre = tf.nn.conv2d(x, self.kernels[ci], 1, "SAME") + self.biases[ci]
                x = tf.nn.relu(pre)
                ci += 1
            else:
                x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        c = tf.minimum(x, upper)  # x >= 0 after ReLU: the clip to [0, 1] of the Keras layer
        return self._normalize(c), c, pre

    def _box_muller(self, v1: tf.Tensor, u2: tf.Tensor, std: tf.Tensor, two_pi: tf.Tensor) -> tf.Tensor:
        """N(0, std^2) pairs from uniforms: z1 = r cos(2 pi u2), z2 = r sin(2 pi u2), r = std sqrt(-2 ln v1), with
        v1 in (0, 1] and u2 uniform; concatenated along the channels (cos first), cut to the head's channels.
        std enters under the square root (-2 std^2 ln v1): no full-size multiplication by std."""
        r = tf.sqrt(tf.math.log(v1) * (-2.0 * std * std))
        theta = u2 * two_pi
        z = tf.concat([r * tf.cos(theta), r * tf.sin(theta)], axis=-1)
        c = self.output_channels
        return z if z.shape[-1] == c else z[..., :c]

    def _noise(self, shape: tf.Tensor, std: tf.Tensor, two_pi: tf.Tensor) -> tf.Tensor:
        """``infer``'s N(0, std^2) noise of ``shape`` from the head's unseeded (or, for tests, seeded) random op."""
        seed, seed2 = self.seeds
        if self.noise_kind == "standard_normal":
            # raw op: its seed attributes are written verbatim, whatever global seed Python has set
            return tf.raw_ops.RandomStandardNormal(shape=shape, dtype=tf.float32, seed=seed, seed2=seed2) * std
        # Box-Muller from ONE uniform draw (a second op with the same fixed seeds would replay the first);
        # u in [0, 1) -> 1 - u1 in (0, 1].
        half = (self.output_channels + 1) // 2
        u = tf.raw_ops.RandomUniform(shape=tf.concat([[2], shape[:-1], [half]], 0), dtype=tf.float32,
                                     seed=seed, seed2=seed2)
        return self._box_muller(1.0 - u[0], u[1], std, two_pi)

    def _entropy_ok(self, entropy: tf.Tensor, act_shape: tf.Tensor) -> tf.Tensor:
        """True iff ``entropy`` is what ``release`` needs: the whole [N, H', W', 2 ceil(C/2)] tensor of the
        activation's shape ``act_shape`` (LiteRT would broadcast a [1, 1, 1, C] one: C values for a whole image),
        every entry on the 24-bit grid's range [2^-24, 1] (a zero -- an unfilled buffer, or a gap in one --, NaN,
        inf or a negative value fails), and plausibly uniform: mean 1/2 and variance 1/12 within 15 standard errors
        (a constant fill fails), every entry on the grid (k + 1) / 2^24 and half of the k + 1 odd within 15
        standard errors (coarser uniforms -- 8 or 16 bits, or 23 -- are all even: they would leave whole
        coordinates without noise and cut the Gaussian's tail early)."""
        expected = tf.concat([act_shape[:3], [self.entropy_channels]], 0)
        shape_ok = tf.reduce_all(tf.equal(tf.shape(entropy), expected))
        # 2^-24 as 4096^-2: every constant stays exact in a float16 head
        in_range = tf.logical_and(tf.reduce_min(entropy) * 4096.0 * 4096.0 >= 1.0, tf.reduce_max(entropy) <= 1.0)
        mean = tf.reduce_mean(entropy)  # NaN and inf make the mean NaN or inf: not plausible
        var = tf.reduce_mean(entropy * entropy) - mean * mean
        n = tf.cast(tf.size(entropy), tf.float32)
        plausible = tf.logical_and(tf.abs(mean - 0.5) < 15.0 * 0.2887 / tf.sqrt(n) + 1e-3,
                                   tf.abs(var - 1.0 / 12.0) < 15.0 * 0.0745 / tf.sqrt(n) + 1e-3)
        # On the grid, h = entropy * 2^23 = (k + 1) / 2 exactly, so its fractional part f is 0 (k + 1 even) or 1/2
        # (odd): every entry is on the grid iff max |f (1/2 - f)| = 0, and the odd fraction is 2 mean(f).  Cheap
        # element-wise ops XNNPACK runs (a first version's FLOOR_MOD / EQUAL / REDUCE_ALL over the whole tensor
        # made `release` ~10x slower at 224x224x64, found by the cost chapter).  2^23 as 4096 * 2048: float16-exact.
        h = entropy * 4096.0 * 2048.0
        f = h - tf.floor(h)
        on_grid = tf.reduce_max(tf.abs(f * (0.5 - f))) <= 0.0  # NaN entries: caught by the mean above
        odd = 2.0 * tf.reduce_mean(f)
        fine = tf.logical_and(on_grid, tf.abs(odd - 0.5) < 15.0 * 0.5 / tf.sqrt(n) + 1e-3)
        return tf.logical_and(tf.logical_and(shape_ok, in_range), tf.logical_and(plausible, fine))

    def _infer(self, image: tf.Tensor, epsilon: tf.Tensor, entropy: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
        # valid: 0 < epsilon <= max_epsilon, or (infer only) epsilon = +inf (no noise), and a finite std; NaN fails
        # every test.
        # noise scale as a float16-exact high part plus a low part (exact in float32 and in float16 heads)
        std = (self.noise_scale_hi + self.noise_scale_lo) / epsilon  # +inf -> 0: no noise; DIV clamps to FLT_MAX
        eps_ok = epsilon <= self.max_epsilon
        if entropy is None:  # infer: +inf is the no-noise baseline; release (deployed) always adds noise
            eps_ok = tf.logical_or(eps_ok, _is_pos_inf(epsilon, self.max_epsilon))
        valid = tf.logical_and(tf.logical_and(epsilon > 0.0, eps_ok),
                               std < MAX_BOX_MULLER_STD)  # -2 std^2 ln(v) finite for v >= 2^-24: eps > ~1.1e-18
        if entropy is not None:
            clean, _, _ = self._features(image)
            valid = tf.logical_and(valid, self._entropy_ok(entropy, tf.shape(clean)))
            # Refuse the previous accepted call's entropy (an app that did not refill the buffer), then remember
            # this one's if accepted: the first FINGERPRINT_SIZE uniforms of the buffer's first row and the last
            # of its last row (zero-padded when a row is shorter; sliced before reshaping: no full-size copy).
            # EITHER end matching refuses: a stale buffer that was resized (LiteRT keeps a tensor's contents when
            # it shrinks) or refilled at one end only keeps the other end (the adversarial review of F2).
            head_row = tf.reshape(entropy[:1, :1], [-1])[:FINGERPRINT_SIZE]
            tail_row = tf.reshape(entropy[-1:, -1:], [-1])[-FINGERPRINT_SIZE:]
            pad = tf.zeros([FINGERPRINT_SIZE], tf.float32)
            fingerprint = tf.concat([tf.concat([head_row, pad], 0)[:FINGERPRINT_SIZE],
                                     tf.concat([pad, tail_row], 0)[-FINGERPRINT_SIZE:]], 0)
            same = tf.equal(fingerprint, self.entropy_fingerprint)
            repeated = tf.logical_or(tf.reduce_all(same[:FINGERPRINT_SIZE]), tf.reduce_all(same[FINGERPRINT_SIZE:]))
            valid = tf.logical_and(valid, tf.logical_not(repeated))
            self.entropy_fingerprint.assign(tf.where(valid, fingerprint, self.entropy_fingerprint))
        std = tf.where(valid, std, 0.0)
        # 2 pi as a float16-exact high part plus a low part, added at run time (the sum depends on `valid`, so the
        # converter cannot fold it into one constant): a float16 head would otherwise use 6.28125 and never draw
        # an angle in a wedge of 0.002 rad (the re-review: delta > 1e-5).  An invalid release's angle is unused.
        two_pi = _TWO_PI_HI + _TWO_PI_LO * tf.cast(valid, tf.float32)
        if entropy is None:
            # An invalid epsilon clips every activation to [0, 0]: the output is exactly 0, no trace of the image.
            clean, _, _ = self._features(image, upper=tf.cast(valid, tf.float32))
            noisy = clean + self._noise(tf.shape(clean), std, two_pi)
            return {"activation": noisy, "valid": tf.cast(valid, tf.int32)}
        # release: the noise is Box-Muller of the app's uniforms alone -- radius from the first half of the
        # channels, angle from the second.  Invalid entropy may be NaN or out of range: the release is selected
        # to exactly 0 at the end (one select with a scalar condition, instead of sanitizing the whole input).
        half = self.entropy_channels // 2
        noisy = clean + self._box_muller(entropy[..., :half], entropy[..., half:], std, two_pi)
        return {"activation": tf.where(valid, noisy, 0.0), "valid": tf.cast(valid, tf.int32)}

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


def _convert(head: tf.Module, signatures: Dict[str, Any], precision: str, resource_variables: bool) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # Through a SavedModel so that the TFLite signature keys are ours ("infer", "train").
        logger = tf.get_logger()  # the library prints nothing: not even "Assets written to <tmp path>"
        level = logger.level
        logger.setLevel("WARNING")
        try:
            tf.saved_model.save(head, tmp, signatures={k: fn.get_concrete_function() for k, fn in signatures.items()})
        finally:
            logger.setLevel(level)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(signatures))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Select-TF / Flex ops
        converter.experimental_enable_resource_variables = resource_variables
        if precision == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        try:
            return converter.convert()
        except Exception as err:  # the converter raises ConverterError on ops outside the builtin set
            raise ConversionError(f"the client head needs ops outside the TFLite builtins (Flex): {err}") from err


def convert_client_head(client: tf.keras.Model, out_path: str, *, precision: str = "float32",
                        with_train: bool = True, momentum: float = 0.9, replayable_noise_for_tests: bool = False,
                        noise: str = "box_muller", lrn: str = "builtin_ops",
                        batch: Optional[int] = None) -> Dict[str, Any]:
    """Write ``out_path`` (.tflite) and its JSON sidecar (same name, .json); returns the sidecar dict.

    ``precision="float16"`` stores the weights as float16 (inference only: variables cannot be float16); its
    in-graph constants are float16 too, so it also reports epsilon < ~5e-5 (noise std above 65504) invalid.
    ``with_train=False`` writes an inference-only head: its weights are constants, which XNNPACK runs faster and
    in less memory than the variables the ``train`` signature updates.  The written flatbuffer is read back:
    a random op with a fixed seed (noise anyone holding the file can replay) raises :class:`ConversionError`
    unless ``replayable_noise_for_tests=True``, which exists for tests only and is recorded in the sidecar.
    See :class:`ClientHead` for ``noise`` and ``lrn``.
    """
    from dpact_tf import tflite_inspect

    if precision not in ("float32", "float16"):
        raise ValueError(f"precision must be 'float32' or 'float16' (got {precision!r})")
    head = ClientHead(client, momentum=momentum, replayable_noise_for_tests=replayable_noise_for_tests,
                      noise=noise, lrn=lrn, batch=batch, with_train=with_train and precision == "float32")
    train = head.trainable_head
    signatures = {"infer": head.infer}
    if head.has_release:
        signatures["release"] = head.release
    if train:
        signatures.update(train=head.train, gradient=head.gradient, apply_gradient=head.apply_gradient)
    # resource variables: the weights `train` updates, and `release`'s fingerprint of the last accepted entropy
    model = _convert(head, signatures, precision, resource_variables=train or head.has_release)
    # Check the bytes that will be deployed, not the Python object.
    tflite_inspect.check_builtin_only(model)
    rand = tflite_inspect.random_ops(model)
    if not rand:
        raise ConversionError("the converted head has no random op: it would release the clean activation")
    fixed = [op for op in rand if not op.fresh]
    if fixed and not replayable_noise_for_tests:
        raise ConversionError(f"the converted head has random ops with fixed seeds {fixed}: every interpreter "
                              "would replay the same noise; refusing to write a deployable model")
    if replayable_noise_for_tests and len(fixed) != len(rand):
        raise ConversionError(f"replayable_noise_for_tests=True but some random ops are unseeded: {rand}")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    with open(out_path, "wb") as fh:
        fh.write(model)
    dp = client.get_layer("dp_activation")
    h, w, _ = head.image_shape
    probe = head.infer(tf.zeros([head.batch or 1, h, w, 3], tf.uint8), tf.constant(math.inf))["activation"]
    sidecar = {
        "tflite": os.path.basename(out_path), "precision": precision, "bytes": len(model),
        "input": {"name": "image", "shape": [head.batch, h, w, 3], "dtype": "uint8", "range": "0..255 RGB"},
        "epsilon_input": {"name": "epsilon", "dtype": "float32", "no_noise": "inf",
                          "valid": f"0 < epsilon <= {head.max_epsilon:g}, or inf"},
        "output": {"name": "activation", "shape": [head.batch] + list(probe.shape[1:]), "dtype": "float32"},
        "valid_output": {"name": "valid", "dtype": "int32",
                         "meaning": "1 = released with the noise of epsilon; 0 = invalid epsilon (or, in release, "
                                    "invalid entropy), activation is all zeros (nothing of the image) and must not "
                                    "be sent"},
        "noise": "replayable (TEST ONLY)" if replayable_noise_for_tests else "fresh per interpreter",
        "entropy_input": ({"name": "entropy", "signature": "release", "dtype": "float32",
                           "range": "(0, 1]: (k + 1) / 2^24 for k uniform in 0 .. 2^24 - 1",
                           "shape": [head.batch] + list(probe.shape[1:3]) + [head.entropy_channels],
                           "meaning": "24-bit uniforms from the app's cryptographic generator, the only source of "
                                      "release's noise (use release, not infer, in a deployed app); rows: those "
                                      "of the activation of the image rows passed"}
                          if head.has_release else None),
        "release_strip_halo_rows": head.strip_halo_rows if head.has_release else None,
        "random_ops": [dataclasses.asdict(op) for op in rand], "noise_sampler": head.noise_kind,
        "lrn_implementation": head.lrn_kind,
        "cut": [n for n, _, _, _ in head.layers][-1], "layers": [n for n, _, _, _ in head.layers],
        "delta": head.delta, "sensitivity": head.sensitivity, "method": dp.method, "max_epsilon": head.max_epsilon,
        "noise_std_times_epsilon": head.noise_scale, "lrn": dict(head.lrn),
        "signatures": sorted(signatures),
        "train_optimizer": {"type": "SGD", "momentum": head.momentum} if train else None,
        "train_outputs": {"grad_norm": "float32", "applied": "int32: 1 = weights updated; 0 = refused (non-finite "
                          "gradient or learning rate, or learning_rate <= 0), weights unchanged"} if train else None,
        "dpact_version": __version__, "weights_sha256": weights_hash(head.layers),
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
        # Seeded weights from a private generator: a global tf.keras.utils.set_random_seed here would leak into
        # the seeds of the head's random op when it is traced later.
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
