"""Face descriptors of LFW images from dlib's face ResNet (:mod:`dpact_tf.dlib_resnet`), without dlib's aligner.

dlib feeds its network a 150x150 chip cut around five landmarks (``get_face_chip_details(shape, 150, 0.25)``).
LFW's deep-funneled images are already aligned, so a fixed square box of the 250x250 image stands in for the
landmark chip: :data:`LFW_CROP`, chosen on the public LFW people only (2..9 images each, disjoint from the 158
evaluation identities) by ``data_scripts/dlib_lfw_check.py``.

Images the project resized (a profile's ``image_size`` after a centre crop of ``crop_fraction`` of the 250-pixel
side) are mapped back to the 250x250 frame, so the same box is cut whatever the stored resolution; parts of the box
outside the stored image read as black, as in dlib's chip extraction.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import numpy as np

__all__ = ["FaceCrop", "LFW_CROP", "face_embeddings", "face_extractor", "crop_boxes"]


@dataclasses.dataclass(frozen=True)
class FaceCrop:
    """A square box of the 250x250 LFW frame, in fractions of its side."""

    side: float              # side of the box / 250
    center_y: float = 0.5    # row of the box centre / 250 (0 top, 1 bottom)
    center_x: float = 0.5    # column of the box centre / 250

    def __post_init__(self):
        if not 0.0 < self.side <= 2.0:
            raise ValueError(f"side must be in (0, 2] of the 250-pixel frame (got {self.side})")
        if not (0.0 <= self.center_y <= 1.0 and 0.0 <= self.center_x <= 1.0):
            raise ValueError(f"the centre must lie in the frame (got {self.center_y}, {self.center_x})")


# Chosen by data_scripts/dlib_lfw_check.py on the public people with 5..9 images (see its output).
LFW_CROP = FaceCrop(side=0.48, center_y=0.54)


def crop_boxes(crop: FaceCrop, *, source_crop_fraction: float = 1.0, out_size: int = 150) -> np.ndarray:
    """``tf.image.crop_and_resize`` box ``[y1, x1, y2, x2]`` cutting ``crop`` from an image that holds the centre
    ``source_crop_fraction`` of the 250x250 frame, so that output pixel ``i`` samples the box at ``(i + 0.5) / out``
    (pixel-centre sampling, independent of the stored resolution)."""
    if not 0.0 < source_crop_fraction <= 1.0:
        raise ValueError(f"source_crop_fraction must be in (0, 1] (got {source_crop_fraction}); it is the "
                         f"profile's crop_fraction of the images given")
    box = []
    for centre in (crop.center_y, crop.center_x):
        # frame fraction -> fraction of the stored image
        a = (centre - crop.side / 2 - (1 - source_crop_fraction) / 2) / source_crop_fraction
        b = (centre + crop.side / 2 - (1 - source_crop_fraction) / 2) / source_crop_fraction
        box.append((a, b))
    (ya, yb), (xa, xb) = box
    # crop_and_resize samples y1 * (H - 1) + i * (y2 - y1) * (H - 1) / (out - 1) in pixel-centre units; a pixel
    # centre at fraction f of the image is f * H - 0.5.  Both are solved below per image size in the caller.
    return np.array([ya, xa, yb, xb], dtype=np.float64)


def _tf_boxes(frac_box: np.ndarray, size: int, out_size: int) -> np.ndarray:
    ya, xa, yb, xb = frac_box

    def ends(a, b):
        first = (a + 0.5 * (b - a) / out_size) * size - 0.5
        last = (a + (out_size - 0.5) * (b - a) / out_size) * size - 0.5
        return first / (size - 1), last / (size - 1)
    y1, y2 = ends(ya, yb)
    x1, x2 = ends(xa, xb)
    return np.array([[y1, x1, y2, x2]], dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _default_model():
    from dpact_tf.dlib_resnet import load_face_resnet

    return load_face_resnet()


def face_embeddings(images: np.ndarray, model=None, *, crop: FaceCrop = LFW_CROP, source_crop_fraction: float = 1.0,
                    batch_size: int = 128, normalize: bool = True) -> np.ndarray:
    """128-d descriptors of square RGB face images (uint8 or float in [0, 255], ``[N, S, S, 3]``).

    ``model``: :func:`dpact_tf.dlib_resnet.load_face_resnet` (loaded once if ``None``); ``source_crop_fraction``:
    the part of the 250x250 LFW frame the images show (the ``crop_fraction`` they were loaded with).
    ``normalize=True`` returns unit-length rows; ``False`` dlib's raw descriptors, whose Euclidean distance dlib
    thresholds at 0.6.
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be [N, S, S, 3] RGB (got shape {images.shape})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    model = model if model is not None else _default_model()
    out_size = int(model.input_shape[1])
    box = _tf_boxes(crop_boxes(crop, source_crop_fraction=source_crop_fraction), images.shape[1], out_size)

    @tf.function(reduce_retracing=True)
    def embed(batch):
        n = tf.shape(batch)[0]
        chips = tf.image.crop_and_resize(tf.cast(batch, tf.float32), tf.repeat(box, n, axis=0),
                                         tf.range(n), (out_size, out_size), extrapolation_value=0.0)
        return model(chips, training=False)

    out = np.empty((len(images), int(model.output_shape[-1])), np.float32)
    for start in range(0, len(images), batch_size):
        out[start:start + batch_size] = embed(tf.constant(images[start:start + batch_size])).numpy()
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def face_extractor(model=None, *, crop: FaceCrop = LFW_CROP, source_crop_fraction: float = 1.0,
                   normalize: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """A callable ``images -> [N, 128] features`` with the model and geometry bound (for studies that take a
    feature extractor)."""
    model = model if model is not None else _default_model()
    crop_boxes(crop, source_crop_fraction=source_crop_fraction)  # validate now
    return functools.partial(face_embeddings, model=model, crop=crop, source_crop_fraction=source_crop_fraction,
                             normalize=normalize)
