"""Public feature extractors: what the frontier chapter's (b), (c) and (e) and the attack chapters' identity
oracle compute from a face without spending privacy.

:class:`FeatureExtractor` is a callable images -> features with a name and a key; :func:`dlib_extractor` is dlib's
public face ResNet (:mod:`dpact_tf.dlib_faces`); :func:`cached_features` computes features once per cache path.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from typing import Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from dpact_tf.repro.profiles import get_profile

__all__ = ["FeatureExtractor", "dlib_extractor", "cached_features"]


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A public feature extractor: ``features(images)`` maps float images in [0, 1] to [n, d] features.

    ``head`` / ``tail`` (optional) split it at the activation the paper releases (``features = tail(head(x))``):
    (b) needs them; an extractor without them runs (c) and (e) only."""

    name: str                                           # legend name, e.g. "stand-in fc7"
    key: str                                            # identifies the weights (part of the feature cache key)
    features: Callable[[np.ndarray], np.ndarray]
    head: Optional[Callable[[np.ndarray], np.ndarray]] = None
    tail: Optional[Callable[[np.ndarray], np.ndarray]] = None
    activation_shape: Optional[Tuple[int, int, int]] = None
    method_suffix: str = ""                             # appended to the method keys of its points ("" or "_dlib")


@functools.lru_cache(maxsize=4)
def _file_digest(path: str, size: int, mtime: float) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def dlib_extractor(profile: str) -> FeatureExtractor:
    """dlib's public face ResNet (:mod:`dpact_tf.dlib_faces`: 128-d descriptors of a crop of the profile's images;
    trained by its author on ~3 million faces of 7,485 identities chosen to avoid LFW's): a strong public feature
    extractor.  Its key holds the sha256 of the model file found.  ``FileNotFoundError`` with the command that
    fetches it when the model is absent."""
    from dpact_tf import dlib_faces, dlib_resnet

    path = dlib_resnet.find_model_file()
    stat = os.stat(path)
    digest = _file_digest(os.path.abspath(path), stat.st_size, stat.st_mtime)
    prof = get_profile(profile)
    embed = dlib_faces.face_extractor(source_crop_fraction=prof.crop_fraction)
    return FeatureExtractor(name="dlib face ResNet (public), 128-d",
                            key=f"dlib-{digest[:16]}-{dlib_faces.LFW_CROP}-{prof.crop_fraction}",
                            features=lambda x: embed(np.asarray(x, np.float32) * 255.0), method_suffix="_dlib")


def cached_features(extractor: FeatureExtractor, images: Mapping[str, np.ndarray], path: str) -> Dict[str, np.ndarray]:
    """``{name: extractor.features(uint8 images / 255)}``, computed once and kept at ``path`` (``.npz``; the caller's
    key must cover the extractor and the images)."""
    if not os.path.exists(path):
        feats = {name: np.asarray(extractor.features(imgs.astype(np.float32) / 255.0), np.float32)
                 for name, imgs in images.items()}
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npz"
        np.savez_compressed(tmp, **feats)
        os.replace(tmp, path)
    with np.load(path) as f:
        return {k: f[k] for k in f.files}
