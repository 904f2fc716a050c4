"""The VGG-Face network (Parkhi et al. 2015), split after a chosen layer into client and server.

Mao et al. (2018), Sec. V: the client runs the first layer(s) plus the DP activation
(:class:`dpact_tf.DPActivation`) on the phone; the edge server runs the rest.  Layer names follow
the public Keras VGG-Face weights (``conv1_1`` ... ``conv5_3``, ``pool1`` ... ``pool5``, ``fc6``,
``fc7``, ``fc8``) so that those weights load by name (:mod:`dpact_tf.weights`).

``width`` scales every conv layer's channel count and ``fc_units`` the two hidden dense layers,
so the same topology runs at CPU-friendly sizes (the ``small`` profile) and at the paper's
(``width=1``, ``fc_units=4096``, 224x224 inputs).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

from dpact_tf import privacy
from dpact_tf.layers import DPActivation

__all__ = ["SplitModel", "build_split_vggface", "initialize_from_data", "VGG_BLOCKS", "CUT_CHOICES", "layer_plan"]

# (block, number of convs, channels at width 1) of VGG-16 / VGG-Face.
VGG_BLOCKS: Tuple[Tuple[int, int, int], ...] = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


def layer_plan(width: float = 1.0, channels: Optional[Mapping[str, int]] = None) -> List[Tuple[str, str, int]]:
    """The feature layers in order: (name, kind "conv"|"pool", output channels).

    ``width`` scales every conv layer; ``channels`` overrides named conv layers (e.g. ``{"conv1_1": 64}``:
    the paper's first layer under a narrow server -- how the released activation's size is varied alone).
    """
    channels = dict(channels or {})
    unknown = sorted(set(channels) - {f"conv{b}_{i}" for b, n, _ in VGG_BLOCKS for i in range(1, n + 1)})
    if unknown:
        raise ValueError(f"channels names unknown conv layers {unknown}; use conv1_1 ... conv5_3")
    bad = {k: v for k, v in channels.items() if int(v) != v or v < 1}
    if bad:
        raise ValueError(f"channel counts must be positive integers (got {bad})")
    plan = []
    for block, n_conv, base in VGG_BLOCKS:
        c = max(1, int(round(base * width)))
        for i in range(1, n_conv + 1):
            name = f"conv{block}_{i}"
            c_i = int(channels.get(name, c))
            plan.append((name, "conv", c_i))
        plan.append((f"pool{block}", "pool", c_i))
    return plan


CUT_CHOICES: Tuple[str, ...] = tuple(name for name, _, _ in layer_plan())


@dataclasses.dataclass(frozen=True)
class SplitModel:
    """The two halves of the network and the client's cost figures."""

    client: tf.keras.Model          # image in [0, 1] RGB -> noisy activation (ends in DPActivation)
    server: tf.keras.Model          # activation -> logits (no softmax)
    cut: str                        # name of the last client layer before the DP activation
    activation_shape: Tuple[int, int, int]  # (H, W, C) of the released activation per image
    client_flops: int               # floating-point operations of one client forward pass, per image
    client_params: int              # number of client parameters

    @property
    def dp_layer(self) -> DPActivation:
        return self.client.get_layer("dp_activation")

    @property
    def activation_bytes(self) -> int:
        """Bytes uploaded per image when the activation is sent as float32."""
        h, w, c = self.activation_shape
        return 4 * h * w * c

    def clean_client(self) -> tf.keras.Model:
        """A model sharing the client's weights that returns the activation *before* noise."""
        dp = self.dp_layer
        inputs = self.client.input
        x = dp.normalize(self.client.get_layer(self.cut).output)
        return tf.keras.Model(inputs, x, name="client_clean")

    def monolithic(self) -> tf.keras.Model:
        """The whole network as one ``keras.Model`` (shares weights with client and server)."""
        inputs = tf.keras.Input(shape=self.client.input_shape[1:], name="image")
        return tf.keras.Model(inputs, self.server(self.client(inputs)), name="vggface")


def build_split_vggface(input_shape: Sequence[int] = (224, 224, 3), num_classes: int = 2622, *,
                        width: float = 1.0, fc_units: int = 4096, cut: str = "conv1_1",
                        epsilon: Optional[float] = None, delta: float = 1e-5,
                        sensitivity: float = privacy.PAPER_SENSITIVITY, method: str = "classic",
                        noise_seed: Optional[int] = None, dropout: float = 0.0,
                        kernel_initializer: str = "he_normal",
                        channels: Optional[Mapping[str, int]] = None) -> SplitModel:
    """Build VGG-Face split after ``cut`` with a :class:`DPActivation` at the end of the client.

    Args:
      input_shape: (H, W, 3); 224x224x3 in the paper. H and W must be divisible by 32 (five pools).
      num_classes: classes of ``fc8`` (2622 for the public VGG-Face weights, 158 for the LFW protocol).
      width: channel multiplier for every conv layer (1.0 = VGG-Face).
      fc_units: units of fc6 and fc7 (4096 in VGG-Face).
      cut: the last client layer, any of :data:`CUT_CHOICES` (default ``conv1_1`` as in the paper).
      epsilon, delta, sensitivity, method, noise_seed: passed to :class:`DPActivation`.
      dropout: dropout rate after fc6 and fc7 (VGG-Face used 0.5; 0 keeps training deterministic).
      kernel_initializer: initializer of conv and dense kernels.
      channels: output channels of named conv layers, overriding ``width`` for them (e.g. ``{"conv1_1": 64}``).
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ValueError(f"input_shape must be (H, W, 3) for RGB images (got {input_shape})")
    h, w, _ = input_shape
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise ValueError(f"input height and width must be positive multiples of 32 (five 2x2 pools); "
                         f"got {h}x{w}. Use 224 for the paper, 64 or 32 for CPU profiles")
    if cut not in CUT_CHOICES:
        raise ValueError(f"unknown cut {cut!r}; valid cut layers are: {', '.join(CUT_CHOICES)}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (got {num_classes})")
    if not width > 0:
        raise ValueError(f"width must be > 0 (got {width}); 1.0 is VGG-Face, 0.25 the small profile")
    if int(fc_units) != fc_units or fc_units < 1:
        raise ValueError(f"fc_units must be a positive integer (got {fc_units})")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1) (got {dropout})")

    plan = layer_plan(width, channels)
    cut_index = [name for name, _, _ in plan].index(cut)

    def make(name: str, kind: str, channels: int) -> tf.keras.layers.Layer:
        if kind == "conv":
            return tf.keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name=name,
                                          kernel_initializer=kernel_initializer)
        return tf.keras.layers.MaxPooling2D(2, strides=2, name=name)

    # Client: image -> layers up to and including the cut -> DP activation.
    image = tf.keras.Input(shape=input_shape, name="image")
    x = image
    flops, params = 0, 0
    cur_h, cur_w, cur_c = h, w, 3
    for name, kind, channels in plan[: cut_index + 1]:
        x = make(name, kind, channels)(x)
        if kind == "conv":
            # 2 FLOPs per multiply-add of the 3x3 kernel, + bias + ReLU per output.
            flops += cur_h * cur_w * channels * (2 * 9 * cur_c + 2)
            params += 9 * cur_c * channels + channels
            cur_c = channels
        else:
            cur_h, cur_w = cur_h // 2, cur_w // 2
            flops += cur_h * cur_w * cur_c * 3  # three comparisons per 2x2 window
    dp = DPActivation(epsilon=epsilon, delta=delta, sensitivity=sensitivity, method=method,
                      seed=noise_seed, name="dp_activation")
    # Clip (1 op), LRN (window of 5 squares and adds, bias, power, divide ~ 14 ops), noise add (1 op).
    flops += cur_h * cur_w * cur_c * 16
    client = tf.keras.Model(image, dp(x), name="client")
    activation_shape = (cur_h, cur_w, cur_c)

    # Server: activation -> remaining layers -> logits.
    act_in = tf.keras.Input(shape=activation_shape, name="activation")
    y = act_in
    for name, kind, channels in plan[cut_index + 1:]:
        y = make(name, kind, channels)(y)
    y = tf.keras.layers.Flatten(name="flatten")(y)
    for name in ("fc6", "fc7"):
        y = tf.keras.layers.Dense(fc_units, activation="relu", name=name,
                                  kernel_initializer=kernel_initializer)(y)
        if dropout:
            y = tf.keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)
    logits = tf.keras.layers.Dense(int(num_classes), name="fc8")(y)
    server = tf.keras.Model(act_in, logits, name="server")
    return SplitModel(client=client, server=server, cut=cut, activation_shape=activation_shape,
                      client_flops=int(flops), client_params=int(params))


def initialize_from_data(split: SplitModel, images) -> Dict[str, float]:
    """Data-dependent initialization (Kraehenbuehl et al. 2016, Sec. 3): layer by layer, from ``conv1_1`` to ``fc7``,
    rescale the kernel and shift the bias so that every output channel's pre-activation has zero mean and unit
    variance on ``images`` (float [N, H, W, 3] in [0, 1], a few hundred training images).

    VGG-Face has no batch normalization; without it, a deep stack of ReLU layers started from a random init
    passes on mostly what all images share (the spread of ``fc7`` across faces is small next to its mean), and
    training on many identities with few images each stalls at chance for many epochs.  This sets the scales once, before
    training; the network and its weights' shapes are unchanged.  ``fc8`` keeps its initialization.  The noise
    of the DP layer is left out (its clean part is used).  Returns the pre-activation std each layer had.
    """
    import numpy as np

    x = tf.convert_to_tensor(images, tf.float32)
    chain = [layer for model in (split.client, split.server) for layer in model.layers
             if not isinstance(layer, tf.keras.layers.InputLayer)]
    scales: Dict[str, float] = {}
    for layer in chain:
        if isinstance(layer, DPActivation):
            x = layer.normalize(x)
            continue
        if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)) and layer.name != "fc8":
            activation, layer.activation = layer.activation, tf.keras.activations.linear
            try:
                pre = layer(x)
            finally:
                layer.activation = activation
            axes = list(range(pre.shape.rank - 1))
            mean = tf.reduce_mean(pre, axes).numpy()
            std = tf.math.reduce_std(pre, axes).numpy()
            std = np.where(std > 1e-6, std, 1.0)  # a channel constant on these images keeps its scale
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel / std, (bias - mean) / std])
            scales[layer.name] = float(np.mean(std))
        x = layer(x)
    return scales
