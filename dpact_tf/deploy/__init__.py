"""The deployable client head: what a phone runs.

* :mod:`dpact_tf.deploy.graph` -- the head's computation as small pure functions of builtin ops (features,
  Eq. (1), the hand-derived backward pass, SGD);
* :mod:`dpact_tf.deploy.entropy` -- the graph's checks of the app's entropy (shape, spread, not the last call's);
* :mod:`dpact_tf.deploy.lite_release` -- the grid release in the TFLite kernels' cheapest ops (bit-identical);
* :mod:`dpact_tf.deploy.head` -- :class:`ClientHead`, the tf.Module whose signatures are the .tflite's
  (``release``, ``clean``, ``train``, ``gradient``, ``apply_gradient``);
* :mod:`dpact_tf.deploy.convert` -- :func:`convert_client_head`: the checked .tflite and its JSON sidecar;
* :mod:`dpact_tf.deploy.tflite_inspect` -- what a written .tflite contains (ops, random ops, signatures, weights);
* :mod:`dpact_tf.deploy.runtime` -- :class:`HeadRunner`, the head in LiteRT without TensorFlow, with the app's
  AES-CTR entropy.

The security story of the head (threat model, what the graph refuses, what the app must do) is one page:
SECURITY.md in the repository.  Nothing here is imported until used: the runtime loads without TensorFlow.
"""
from __future__ import annotations

from dpact_tf._lazy import lazy_getattr

_LAZY = {
    "ClientHead": "dpact_tf.deploy.head",
    "convert_client_head": "dpact_tf.deploy.convert",
    "client_for_export": "dpact_tf.deploy.convert",
    "weights_hash": "dpact_tf.deploy.convert",
    "ConversionError": "dpact_tf.deploy.convert",
    "HeadRunner": "dpact_tf.deploy.runtime",
    "Release": "dpact_tf.deploy.runtime",
    "EntropyStream": "dpact_tf.deploy.runtime",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr("dpact_tf.deploy", _LAZY)
