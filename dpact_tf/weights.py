"""Load the public Keras VGG-Face weights (keras-vggface, ``rcmalli_vggface_tf_vgg16.h5``) by layer name.

The public model (Parkhi et al. 2015, converted to Keras by keras-vggface) expects 0..255 BGR images
minus the mean colour (93.5940, 104.7624, 129.1863) in BGR order.  Our client takes [0, 1] RGB, so the
loader folds the scaling, the channel order and the mean into ``conv1_1``:

    conv(W, BGR(255 x) - m) + b = conv(255 W[:, :, ::-1, :], x) + (b - sum_{k,c} W[k, c, :] m_c)

This is exact everywhere except in the 1-pixel border, where the original zero-pads the *mean-subtracted*
image (i.e. pads with the mean colour) and ours pads the raw image with black.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

__all__ = ["VGGFACE_MEAN_BGR", "VGGFACE_LAYERS", "read_keras_h5_weights", "fold_preprocessing",
           "vggface_preprocess", "load_vggface_weights", "write_keras_h5_weights"]

VGGFACE_MEAN_BGR: Tuple[float, float, float] = (93.5940, 104.7624, 129.1863)
VGGFACE_LAYERS: Tuple[str, ...] = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                                   "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3",
                                   "fc6", "fc7", "fc8")


def _decode(name: Union[bytes, str]) -> str:
    return name.decode("utf8") if isinstance(name, bytes) else str(name)


def read_keras_h5_weights(path: str) -> Dict[str, List[np.ndarray]]:
    """Layer name -> [kernel, bias] from a Keras ``save_weights`` HDF5 file (the keras-vggface layout).

    Layout: root attribute ``layer_names``; one group per layer with attribute ``weight_names``
    (e.g. ``conv1_1/kernel:0``, ``conv1_1/bias:0``) naming datasets inside the group.
    """
    import h5py

    out: Dict[str, List[np.ndarray]] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f  # full-model files nest the weights
        if "layer_names" not in root.attrs:
            raise ValueError(f"{path} is not a Keras HDF5 weights file (no 'layer_names' attribute)")
        for lname in (_decode(n) for n in root.attrs["layer_names"]):
            group = root[lname]
            wnames = [_decode(n) for n in group.attrs.get("weight_names", [])]
            if wnames:
                out[lname] = [np.asarray(group[w]) for w in wnames]
    return out


def write_keras_h5_weights(path: str, weights: Dict[str, Sequence[np.ndarray]]) -> None:
    """Write ``{layer: [kernel, bias]}`` in the same layout (used by tests to make a small weights file)."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode("utf8") for n in weights]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for lname, arrays in weights.items():
            group = f.create_group(lname)
            wnames = [f"{lname}/{k}:0" for k in ("kernel", "bias")][: len(arrays)]
            group.attrs["weight_names"] = [w.encode("utf8") for w in wnames]
            for w, a in zip(wnames, arrays):
                group.create_dataset(w, data=np.asarray(a, np.float32))


def vggface_preprocess(x_rgb01: np.ndarray) -> np.ndarray:
    """The original VGG-Face input: [0, 1] RGB -> 0..255 BGR minus the mean (what the public weights expect)."""
    return np.asarray(x_rgb01, np.float32)[..., ::-1] * 255.0 - np.asarray(VGGFACE_MEAN_BGR, np.float32)


def fold_preprocessing(kernel: np.ndarray, bias: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Fold x -> BGR(255 x) - mean into conv1_1's (3, 3, 3, C) kernel and (C,) bias."""
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise ValueError(f"conv1_1 kernel must have shape (kh, kw, 3, C) (got {kernel.shape})")
    mean = np.asarray(VGGFACE_MEAN_BGR, np.float64)
    new_bias = np.asarray(bias, np.float64) - np.einsum("hwco,c->o", kernel, mean)
    new_kernel = 255.0 * kernel[:, :, ::-1, :]
    return new_kernel.astype(np.float32), new_bias.astype(np.float32)


def load_vggface_weights(split_or_models, path: str, *, fold: bool = True) -> Dict[str, List[str]]:
    """Load the public VGG-Face weights into a :class:`SplitModel` (or a list of Keras models) by layer name.

    ``fc8`` is skipped when its shape differs (another number of classes); every other shape mismatch is
    an error naming the layer (e.g. a ``width`` other than 1, or an input size other than 224 for fc6).
    Returns ``{"loaded": [...], "skipped": [...]}``.
    """
    models = [split_or_models.client, split_or_models.server] if hasattr(split_or_models, "client") else list(split_or_models)
    stored = read_keras_h5_weights(path)
    layers = {l.name: l for m in models for l in m.layers}
    loaded, skipped = [], []
    for name in VGGFACE_LAYERS:
        if name not in layers:
            continue
        if name not in stored:
            raise ValueError(f"{path} has no weights for layer {name!r} (it has: {', '.join(stored)})")
        arrays = [np.asarray(a) for a in stored[name]]
        if fold and name == "conv1_1":
            arrays = list(fold_preprocessing(*arrays))
        expected = [tuple(w.shape) for w in layers[name].weights]
        found = [a.shape for a in arrays]
        if expected != found:
            if name == "fc8":
                skipped.append(name)
                continue
            raise ValueError(f"layer {name}: the model expects weights of shapes {expected}, the file has {found}; "
                             "the public VGG-Face weights need width=1, fc_units=4096 and 224x224 inputs")
        layers[name].set_weights(arrays)
        loaded.append(name)
    return {"loaded": loaded, "skipped": skipped}
