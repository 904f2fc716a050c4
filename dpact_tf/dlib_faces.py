"""Face descriptors of LFW images from dlib's face ResNet (:mod:`dpact_tf.dlib_resnet`), without dlib's aligner.

dlib feeds its network a 150x150 chip cut around five landmarks (``get_face_chip_details(shape, 150, 0.25)``).
LFW's deep-funneled images are already aligned, so a fixed square box of the 250x250 image stands in for the
landmark chip: :data:`LFW_CROP`, chosen by ``data_scripts/dlib_lfw_check.py`` on public LFW people only (those with
5..9 images; the 158 evaluation identities have >= 10) and checked there on the people with 2..4 images.

Images the project resized (a profile's ``image_size`` after a centre crop of ``crop_fraction`` of the 250-pixel
side) are mapped back to the 250x250 frame, so the same box is cut whatever the stored resolution; parts of the box
outside the stored image read as black, as in dlib's chip extraction.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, List, Sequence

import numpy as np

from dpact_tf.face_verification import VerificationResult, verification_pairs, verify_pairs

__all__ = ["FaceCrop", "LFW_CROP", "CROP_GRID", "CropScore", "face_embeddings", "face_extractor", "crop_box",
           "score_crops"]


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


# The boxes data_scripts/dlib_lfw_check.py scores on the public people with 5..9 images, and the best of them
# (verification accuracy at dlib's threshold 0.6; the script fails if this is no longer the best).
CROP_GRID = tuple(FaceCrop(side, cy) for side in (0.40, 0.44, 0.48) for cy in (0.50, 0.53, 0.56, 0.59))
LFW_CROP = FaceCrop(side=0.44, center_y=0.53)


def crop_box(crop: FaceCrop, *, image_size: int, source_crop_fraction: float = 1.0, out_size: int = 150,
             ) -> np.ndarray:
    """The ``tf.image.crop_and_resize`` box ``[[y1, x1, y2, x2]]`` that cuts ``crop`` out of an ``image_size``
    image showing the centre ``source_crop_fraction`` of the 250x250 frame.

    Output pixel ``i`` (of ``out_size``) samples the box at ``(i + 0.5) / out_size`` of its side, whatever the
    stored resolution; crop_and_resize samples ``y1 * (S - 1) + i * (y2 - y1) * (S - 1) / (out_size - 1)`` in
    pixel-centre units, where the point at fraction ``f`` of the image is ``f * S - 0.5``.
    """
    if not 0.0 < source_crop_fraction <= 1.0:
        raise ValueError(f"source_crop_fraction must be in (0, 1] (got {source_crop_fraction}); it is the "
                         f"crop_fraction the images were loaded with")
    if image_size < 2 or out_size < 2:
        raise ValueError(f"image_size and out_size must be >= 2 (got {image_size}, {out_size})")
    box = []
    for centre in (crop.center_y, crop.center_x):
        lo = (centre - crop.side / 2 - (1 - source_crop_fraction) / 2) / source_crop_fraction  # image fractions
        hi = lo + crop.side / source_crop_fraction
        first = (lo + 0.5 * (hi - lo) / out_size) * image_size - 0.5
        last = (lo + (out_size - 0.5) * (hi - lo) / out_size) * image_size - 0.5
        box.append((first / (image_size - 1), last / (image_size - 1)))
    (y1, y2), (x1, x2) = box
    return np.array([[y1, x1, y2, x2]], dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _default_model():
    from dpact_tf.dlib_keras import load_face_resnet

    return load_face_resnet()


def face_embeddings(images: np.ndarray, model=None, *, crop: FaceCrop = LFW_CROP, source_crop_fraction: float = 1.0,
                    batch_size: int = 128, normalize: bool = True, mirror: bool = False) -> np.ndarray:
    """128-d descriptors of square RGB face images (uint8 or float in [0, 255], ``[N, S, S, 3]``).

    ``model``: :func:`dpact_tf.dlib_keras.load_face_resnet` (loaded once if ``None``); ``source_crop_fraction``:
    the part of the 250x250 LFW frame the images show (the ``crop_fraction`` they were loaded with).
    ``normalize=True`` returns unit-length rows; ``False`` dlib's raw descriptors, whose Euclidean distance dlib
    thresholds at 0.6.  ``mirror=True`` averages each descriptor with that of the left-right mirrored chip (the
    mirroring half of dlib's jittering; twice the cost).
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be [N, S, S, 3] RGB (got shape {images.shape})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    model = model if model is not None else _default_model()
    box = crop_box(crop, image_size=images.shape[1], source_crop_fraction=source_crop_fraction,
                   out_size=int(model.input_shape[1]))

    size = int(model.input_shape[1])
    out = np.empty((len(images), int(model.output_shape[-1])), np.float32)
    for start in range(0, len(images), batch_size):
        batch = tf.constant(images[start:start + batch_size], tf.float32)
        n = int(batch.shape[0])
        chips = tf.image.crop_and_resize(batch, np.repeat(box, n, axis=0), tf.range(n), (size, size),
                                         extrapolation_value=0.0)
        desc = model(chips, training=False)
        if mirror:
            desc = (desc + model(tf.reverse(chips, axis=[2]), training=False)) / 2
        out[start:start + n] = desc.numpy()
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def face_extractor(model=None, *, crop: FaceCrop = LFW_CROP, source_crop_fraction: float = 1.0,
                   normalize: bool = True, mirror: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A callable ``images -> [N, 128] features`` with the model and geometry bound (for studies that take a
    feature extractor)."""
    model = model if model is not None else _default_model()
    crop_box(crop, image_size=250, source_crop_fraction=source_crop_fraction)  # validate now
    return functools.partial(face_embeddings, model=model, crop=crop, source_crop_fraction=source_crop_fraction,
                             normalize=normalize, mirror=mirror)


@dataclasses.dataclass(frozen=True)
class CropScore:
    """How well one crop box lets the descriptors verify pairs of a labelled set."""

    crop: FaceCrop                    # the box scored
    verification: VerificationResult  # same/different accuracy on all same pairs + as many different pairs


def score_crops(images: np.ndarray, labels: np.ndarray, model=None, crops: Sequence[FaceCrop] = CROP_GRID, *,
                threshold: float = 0.6, source_crop_fraction: float = 1.0, seed: int = 0) -> List[CropScore]:
    """Verification accuracy at ``threshold`` (dlib's raw descriptors) for each crop box, in the order given.

    Tune only on people outside the evaluation identities (the public LFW people)."""
    same, different = verification_pairs(labels, seed=seed)
    return [CropScore(crop, verify_pairs(face_embeddings(images, model, crop=crop, normalize=False,
                                                         source_crop_fraction=source_crop_fraction),
                                         same, different, threshold=threshold))
            for crop in crops]
