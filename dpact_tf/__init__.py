"""dpact_tf: learning from differentially private neural activations (Mao et al., SEC 2018) in Keras.

Public API (one module per concept):

* :mod:`dpact_tf.privacy`  -- sigma from (epsilon, delta) and back; pure NumPy/SciPy.
* :class:`DPActivation`    -- clip -> Eq. (1) LRN -> Gaussian noise, a Keras layer.
* :func:`build_split_vggface` -- VGG-Face split into client and server.
* :class:`SplitTrainer`    -- the two-party training protocol.
* :mod:`dpact_tf.data`     -- LFW with the paper's protocol; :mod:`dpact_tf.synthetic` the offline stand-in;
  :mod:`dpact_tf.augment` random flips, crops and colour jitter for training pipelines.
* :mod:`dpact_tf.sensitivity`, :mod:`dpact_tf.accounting`, :mod:`dpact_tf.attacks` -- what the noise guarantees
  (the tight per-pixel sensitivity, composition), what a server recovers; :mod:`dpact_tf.membership` -- the
  server's membership test on its releases; :mod:`dpact_tf.audit` -- the confidence bounds of an attack's
  measured success; :mod:`dpact_tf.ledger` -- the client's per-image privacy ledger and budget.
* :mod:`dpact_tf.deploy` -- the phone's head: its graph, conversion to a checked .tflite, and the TF-free runtime;
  :mod:`dpact_tf.encoding` -- the upload's encodings.

The reproduction of the paper (profiles, cached runs, studies, claims, plots, the book) is the sub-package
:mod:`dpact_tf.repro`; nothing in the library imports it.

TensorFlow (and SciPy) are imported lazily: ``import dpact_tf.privacy`` does not load TensorFlow, so the maths can
be used where TensorFlow is absent, and ``import dpact_tf.deploy.runtime`` loads neither (the phone's side).
"""
from __future__ import annotations

from dpact_tf._lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "PAPER_SENSITIVITY": "dpact_tf.privacy",
    "epsilon_for_sigma": "dpact_tf.privacy",
    "gaussian_sigma": "dpact_tf.privacy",
    "noise_std": "dpact_tf.privacy",
    "DPActivation": "dpact_tf.layers",
    "SplitModel": "dpact_tf.vggface",
    "build_split_vggface": "dpact_tf.vggface",
    "ActivationMessage": "dpact_tf.split",
    "GradientMessage": "dpact_tf.split",
    "SplitTrainer": "dpact_tf.split",
    "TrainingConfig": "dpact_tf.split",
}

__all__ = [*_LAZY]


__getattr__ = lazy_getattr("dpact_tf", _LAZY)
