"""The client head as a phone-ready TensorFlow Lite model (builtin ops only).

Signatures of the exported model:

* ``infer(image: uint8 [N, H, W, 3], epsilon: float32 []) -> activation: float32``: scales the raw RGB
  image to [0, 1], runs the client's layers, clips, applies Eq. (1) and adds Gaussian noise with
  std = S_f * sqrt(2 ln(1.25/delta)) / epsilon computed in-graph (``epsilon=+inf`` -> no noise).  The
  constant sqrt(2 ln(1.25/delta)) comes from :func:`dpact_tf.privacy.gaussian_sigma` (one formula in the code
  base); delta and S_f are fixed at conversion and recorded in the JSON sidecar.
* ``train(image, grad_activation, learning_rate) -> loss_proxy``: the client's half of a training step
  -- back-propagates the server's dL/d(activation) into conv1_1 and applies SGD with momentum (the Keras
  SGD update).  Written with builtin ops only (a hand-derived backward pass of ReLU, clip and Eq. (1),
  and the conv1_1 weight gradient as an im2col matrix product), because TFLite has no builtin kernels for
  TensorFlow's gradient ops (LRNGrad, Conv2DBackpropFilter, ReluGrad).  Available when the cut is conv1_1.

LRN has a float32 kernel only, so a full-int8 head is not a goal.  Quantizing the *already-noisy* output
(float16, uint8) is post-processing and keeps the DP guarantee.
"""
from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from dpact_tf import __version__, privacy
from dpact_tf.jsonio import write_json
from dpact_tf.layers import DPActivation, normalize_activations

__all__ = ["ClientHead", "convert_client_head", "head_layers", "weights_hash", "ConversionError"]


class ConversionError(RuntimeError):
    """The head would need ops outside the TFLite builtin set (Select-TF / Flex)."""


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


class ClientHead(tf.Module):
    """conv layers -> clip -> Eq. (1) -> noise, as a tf.Module with ``infer`` and (cut conv1_1) ``train``."""

    def __init__(self, client: tf.keras.Model, *, momentum: float = 0.9) -> None:
        super().__init__(name="client_head")
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
        self.momentum = float(momentum)
        self.kernels, self.biases = [], []
        for name, kind, kernel, bias in self.layers:
            if kind == "conv":
                self.kernels.append(tf.Variable(kernel, name=f"{name}_kernel"))
                self.biases.append(tf.Variable(bias, name=f"{name}_bias"))
        self.trainable_head = [kind for _, kind, _, _ in self.layers] == ["conv"]
        if self.trainable_head:
            self.velocity = [tf.Variable(tf.zeros_like(v), name=v.name.split(":")[0] + "_velocity")
                             for v in (self.kernels[0], self.biases[0])]
        n = self.output_channels
        r = self.lrn["depth_radius"]
        # band[j, i] = 1 when channel j is in the window of channel i: window sums are a matmul (builtin).
        self.band = tf.constant(np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= r, tf.float32)
        h, w, _ = self.image_shape
        spec = tf.TensorSpec([None, h, w, 3], tf.uint8, name="image")
        # Named functions: TFLite takes the signature keys from the function names.
        def infer(image, epsilon):
            return self._infer(image, epsilon)

        def train(image, grad_activation, learning_rate):
            return self._train(image, grad_activation, learning_rate)

        self.infer = tf.function(infer, input_signature=[spec, tf.TensorSpec([], tf.float32, name="epsilon")])
        if self.trainable_head:
            self.train = tf.function(train, input_signature=[
                spec, tf.TensorSpec([None, h, w, n], tf.float32, name="grad_activation"),
                tf.TensorSpec([], tf.float32, name="learning_rate")])

    @property
    def output_channels(self) -> int:
        return int([k for _, kind, k, _ in self.layers if kind == "conv"][-1].shape[-1])

    def _features(self, image: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
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
        # the same clip + Eq. (1) as the Keras layer; the clipped value is kept for the hand-written backward
        return normalize_activations(x, **self.lrn), tf.clip_by_value(x, 0.0, 1.0), pre

    def _infer(self, image: tf.Tensor, epsilon: tf.Tensor) -> Dict[str, tf.Tensor]:
        clean, _, _ = self._features(image)
        std = self.noise_scale / epsilon  # +inf -> 0: the no-noise baseline
        return {"activation": clean + tf.random.normal(tf.shape(clean)) * std}

    def _train(self, image: tf.Tensor, grad_activation: tf.Tensor, learning_rate: tf.Tensor) -> Dict[str, tf.Tensor]:
        x = tf.cast(image, tf.float32) / 255.0
        f, c, z = self._features(image)
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
        gk = tf.reshape(gk, [3, 3, 3, cout])
        gb = tf.reduce_sum(tf.reshape(gz, [-1, cout]), axis=0)
        # Keras SGD with momentum: v <- m v - lr g ; w <- w + v
        for var, vel, grad in ((self.kernels[0], self.velocity[0], gk), (self.biases[0], self.velocity[1], gb)):
            vel.assign(self.momentum * vel - learning_rate * grad)
            var.assign_add(vel)
        return {"grad_norm": tf.sqrt(tf.reduce_sum(gk * gk) + tf.reduce_sum(gb * gb))}


def _convert(head: tf.Module, signatures: Dict[str, Any], precision: str, resource_variables: bool) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # Through a SavedModel so that the TFLite signature keys are ours ("infer", "train").
        tf.saved_model.save(head, tmp, signatures={k: fn.get_concrete_function() for k, fn in signatures.items()})
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
                        with_train: bool = True, momentum: float = 0.9) -> Dict[str, Any]:
    """Write ``out_path`` (.tflite) and its JSON sidecar (same name, .json); returns the sidecar dict.

    ``precision="float16"`` stores the weights as float16 (inference only: variables cannot be float16).
    """
    if precision not in ("float32", "float16"):
        raise ValueError(f"precision must be 'float32' or 'float16' (got {precision!r})")
    head = ClientHead(client, momentum=momentum)
    train = with_train and head.trainable_head and precision == "float32"
    signatures = {"infer": head.infer}
    if train:
        signatures["train"] = head.train
    model = _convert(head, signatures, precision, resource_variables=train)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)) or ".", exist_ok=True)
    with open(out_path, "wb") as fh:
        fh.write(model)
    dp = client.get_layer("dp_activation")
    h, w, _ = head.image_shape
    probe = head.infer(tf.zeros([1, h, w, 3], tf.uint8), tf.constant(math.inf))["activation"]
    sidecar = {
        "tflite": os.path.basename(out_path), "precision": precision, "bytes": len(model),
        "input": {"name": "image", "shape": [None, h, w, 3], "dtype": "uint8", "range": "0..255 RGB"},
        "epsilon_input": {"name": "epsilon", "dtype": "float32", "no_noise": "inf"},
        "output": {"name": "activation", "shape": [None] + list(probe.shape[1:]), "dtype": "float32"},
        "cut": [n for n, _, _, _ in head.layers][-1], "layers": [n for n, _, _, _ in head.layers],
        "delta": head.delta, "sensitivity": head.sensitivity, "method": dp.method,
        "noise_std_times_epsilon": head.noise_scale, "lrn": dict(head.lrn),
        "signatures": sorted(signatures), "train_optimizer": {"type": "SGD", "momentum": head.momentum} if train else None,
        "dpact_version": __version__, "weights_sha256": weights_hash(head.layers),
    }
    write_json(os.path.splitext(out_path)[0] + ".json", sidecar)
    return sidecar


def client_for_export(*, image_size: int, cut: str = "conv1_1", width: float = 1.0, seed: Optional[int] = 0,
                      weights: Optional[str] = None, delta: float = 1e-5,
                      sensitivity: float = privacy.PAPER_SENSITIVITY) -> tf.keras.Model:
    """A client model to export: a trained one (``weights``: .keras model or .h5 weights by layer name) or,
    without ``weights``, freshly initialized from ``seed``."""
    from dpact_tf.vggface import build_split_vggface

    if weights and (weights.endswith(".keras") or os.path.isdir(weights)):  # a saved model (.keras or SavedModel)
        client = tf.keras.models.load_model(weights)
        if "dp_activation" not in [layer.name for layer in client.layers]:
            raise ValueError(f"{weights} is not a dpact client (it has no 'dp_activation' layer)")
        return client
    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    split = build_split_vggface((image_size, image_size, 3), 2, width=width, fc_units=2, cut=cut,
                                epsilon=None, delta=delta, sensitivity=sensitivity)
    if weights:
        if not os.path.exists(weights):
            raise FileNotFoundError(f"{weights} not found")
        split.client.load_weights(weights, by_name=True)
    return split.client
