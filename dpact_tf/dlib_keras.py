"""dlib's face ResNet rebuilt as a ``tf.keras.Model`` from the layers :mod:`dpact_tf.dlib_resnet` reads.

Each dlib layer maps to one Keras layer: ``con`` -> ``ZeroPadding2D`` + ``Conv2D`` (dlib pads ``padding`` zeros on
each side; filters ``(F, C, kh, kw)`` -> ``(kh, kw, C, F)``, both cross-correlations), ``affine`` ->
:class:`ChannelAffine` (dlib's frozen batch norm ``x * gamma + beta``), ``relu``, ``max_pool``/``avg_pool``
(window 0: the whole image), ``add_prev`` -> :class:`PaddedAdd` (dlib's ``tt::add`` zero-extends the smaller
tensor), ``fc`` -> ``Dense`` after flattening in dlib's NCHW order; the input layer ``(pixel - avg) / 256`` ->
``Normalization``.  Tags and skips only route tensors.
"""
from __future__ import annotations

from typing import Dict, Optional

import tensorflow as tf

from dpact_tf.dlib_resnet import FACE_RESNET_PLAN, DlibNetwork, find_model_file, read_dlib_network

__all__ = ["ChannelAffine", "PaddedAdd", "build_keras_model", "load_face_resnet"]


@tf.keras.utils.register_keras_serializable(package="dpact_dlib")
class ChannelAffine(tf.keras.layers.Layer):
    """dlib's ``affine`` layer: ``x * gamma + beta`` per channel (last axis); weights are not trainable."""

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer="ones", trainable=False)
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros", trainable=False)
        super().build(input_shape)

    def call(self, x):
        return x * self.gamma + self.beta


@tf.keras.utils.register_keras_serializable(package="dpact_dlib")
class PaddedAdd(tf.keras.layers.Layer):
    """dlib's ``add_prev``: the sum of two NHWC tensors, each zero-extended (bottom, right, last channels) to the
    larger rows, columns and channels."""

    def call(self, inputs):
        a, b = inputs
        target = [max(int(a.shape[i]), int(b.shape[i])) for i in (1, 2, 3)]

        def grow(t):
            pad = [[0, 0]] + [[0, n - int(t.shape[i + 1])] for i, n in enumerate(target)]
            return tf.pad(t, pad) if any(p[1] for p in pad) else t
        return grow(a) + grow(b)

    def compute_output_shape(self, input_shapes):
        a, b = input_shapes
        return (a[0],) + tuple(max(int(a[i]), int(b[i])) for i in (1, 2, 3))


def build_keras_model(net: DlibNetwork, name: str = "dlib_resnet") -> tf.keras.Model:
    """The equivalent Keras model: RGB pixels in [0, 255], NHWC ``(batch, rows, cols, 3)`` -> dlib's descriptor
    (not normalised).  Weights are frozen (``trainable=False``)."""
    inputs = tf.keras.Input(shape=(*net.input_size, 3), name="rgb_0_255")
    x = tf.keras.layers.Normalization(mean=list(net.channel_means), variance=[256.0 ** 2] * 3,
                                      name="dlib_input")(inputs)
    tags: Dict[int, tf.Tensor] = {}
    counts: Dict[str, int] = {}
    for layer in net.layers:
        i = counts[layer.kind] = counts.get(layer.kind, -1) + 1
        lname = f"{layer.kind}_{i}"
        if layer.kind == "tag":
            tags[layer.tag] = x
            continue
        if layer.kind in ("skip", "add_prev") and layer.tag not in tags:
            raise ValueError(f"{lname} refers to tag{layer.tag}, which no layer below it defines")
        if layer.kind == "skip":
            x = tags[layer.tag]
        elif layer.kind == "add_prev":
            x = PaddedAdd(name=lname)([x, tags[layer.tag]])
        elif layer.kind == "relu":
            x = tf.keras.layers.ReLU(name=lname)(x)
        elif layer.kind == "affine":
            op = ChannelAffine(name=lname)
            x = op(x)
            op.set_weights(list(layer.weights))
        elif layer.kind == "con":
            w, b = layer.weights
            if any(layer.padding):
                x = tf.keras.layers.ZeroPadding2D(layer.padding, name=f"{lname}_pad")(x)
            op = tf.keras.layers.Conv2D(w.shape[0], layer.window, strides=layer.stride, padding="valid", name=lname)
            x = op(x)
            op.set_weights([w.transpose(2, 3, 1, 0), b])
        elif layer.kind in ("max_pool", "avg_pool"):
            if any(layer.padding):
                raise ValueError(f"{lname}: pooling with padding {layer.padding} is not supported (this network "
                                 f"pools without padding)")
            if layer.window == (0, 0):
                pool = tf.keras.layers.GlobalMaxPool2D if layer.kind == "max_pool" else tf.keras.layers.GlobalAvgPool2D
                x = pool(keepdims=True, name=lname)(x)
            else:
                pool = tf.keras.layers.MaxPool2D if layer.kind == "max_pool" else tf.keras.layers.AvgPool2D
                x = pool(layer.window, strides=layer.stride, padding="valid", name=lname)(x)
        elif layer.kind == "fc":
            x = tf.keras.layers.Permute((3, 1, 2), name=f"{lname}_nchw")(x)
            x = tf.keras.layers.Flatten(name=f"{lname}_flatten")(x)
            op = tf.keras.layers.Dense(layer.weights[0].shape[1], use_bias=len(layer.weights) == 2, name=lname)
            x = op(x)
            op.set_weights(list(layer.weights))
        else:
            raise ValueError(f"cannot build layer kind {layer.kind!r}")
    model = tf.keras.Model(inputs, x, name=name)
    model.trainable = False
    return model


def load_face_resnet(path: Optional[str] = None) -> tf.keras.Model:
    """dlib's face ResNet as a Keras model (150x150 RGB in [0, 255] -> 128-d descriptor); ``path`` defaults to
    :func:`find_model_file`.  Checks the file is that network (``ValueError`` otherwise)."""
    net = read_dlib_network(path or find_model_file(), FACE_RESNET_PLAN)
    fc = net.layers[-1]
    if net.input_size != (150, 150) or fc.weights[0].shape[1] != 128 or len(fc.weights) != 1:
        raise ValueError(f"expected dlib's 150x150 -> 128-d face network, found {net.input_size} -> "
                         f"{fc.weights[0].shape[1]} (bias: {len(fc.weights) == 2})")
    return build_keras_model(net, name="dlib_face_resnet_v1")
