"""Write the client head as a .tflite and its JSON sidecar, checked before anything is written.

The converter reads the written flatbuffer back (:mod:`dpact_tf.deploy.tflite_inspect`): no custom (Flex) op, no random
op, and a ``release`` whose inputs and outputs are those of the grid release; and it records the hash of the conv
weights stored in the file (:func:`weights_hash`), which ``HeadRunner(trusted_weights_sha256=...)`` checks.
Quantizing the released integers further (:mod:`dpact_tf.encoding`) is post-processing and keeps the guarantee.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional

import numpy as np
import tensorflow as tf

from dpact_tf import __version__, grid, privacy
from dpact_tf.deploy import entropy, tflite_inspect
from dpact_tf.deploy.head import ClientHead, head_layers
from dpact_tf.jsonio import write_json

__all__ = ["convert_client_head", "client_for_export", "weights_hash", "ConversionError"]


class ConversionError(RuntimeError):
    """The head cannot be deployed: it needs ops outside the TFLite builtin set (Select-TF / Flex), or the written
    model is not the grid release (a random op, another release signature)."""


def weights_hash(client: tf.keras.Model) -> str:
    """The SHA-256 of the client's conv weights as a head exported from it stores them: the value to pass as
    ``HeadRunner(path, trusted_weights_sha256=...)``, which hashes the weights read from the .tflite itself
    (:func:`dpact_tf.deploy.tflite_inspect.weights_sha256` defines the bytes hashed)."""
    return tflite_inspect.weights_sha256([(kernel, bias) for _, kind, kernel, bias in head_layers(client)
                                          if kind == "conv"])


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
                                 "entropy of another shape, implausible, or the last accepted call's, or a non-finite "
                                 "activation): levels all zero, send nothing"},
            "halo_rows": halo, "steps_per_std": head.steps_per_std, "sampler": head.sampler,
            "certified_epsilons": [lo, hi],
            "scale_per_epsilon": head.scale_per_epsilon, "true_range": head.true_range,
            "max_level": "ceil(float32(true_range) * scale), in float32",
            "noise": f"discrete Gaussian N_Z(0, {head.steps_per_std}^2) from a {grid.MAGNITUDE_BITS}-bit table "
                     f"(dpact_tf.grid.noise_table), sampled with builtin ops (sampler {head.sampler!r}: "
                     + ("dpact_tf.deploy.lite_release" if head.sampler == "lookup" else "dpact_tf.grid_tf") + ")",
            "delta_as_implemented": "dpact_tf.grid.grid_spec(epsilon, delta, steps_per_std=steps_per_std, "
                                    "sensitivity=sensitivity, true_range=true_range).delta: at most delta for "
                                    "every epsilon in certified_epsilons",
            "entropy_fingerprint_words": entropy.FINGERPRINT_SIZE},
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
