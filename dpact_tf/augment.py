"""Training-time augmentation of face images: random mirror, crop and colour jitter, as a ``tf.data`` map.

Why: the public pre-training set has 2 to 9 images per person (:func:`dpact_tf.data.load_lfw_public`); a network
shown the same few faces every epoch memorizes them.  Showing each face slightly changed every epoch -- mirrored,
shifted and zoomed, brighter, paler or more contrasted -- is the standard remedy (VGG-Face itself was trained with
random crops and flips, Parkhi et al. 2015, Sec. 4.3).

Where: training pipelines only.  :func:`dpact_tf.data.make_dataset` applies it when given ``augment=``; the
evaluation pipelines are built without it, so held-out accuracy is measured on the images as they are.

Guarantees: every transform keeps the batch's shape and float pixels in [0, 1] (the client refuses anything else,
:func:`dpact_tf.split.check_images`).  The random draws are stateless and keyed by one seed per batch, so a given
seed gives the same augmented batches on any number of threads, and a different seed different ones.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import tensorflow as tf

__all__ = ["Augmentation", "augment_batch"]

# ITU-R BT.601 luma weights: the grey image that saturation jitter blends with (as tf.image.rgb_to_grayscale).
_LUMA = (0.2989, 0.5870, 0.1140)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What :func:`augment_batch` draws, independently for every image of a batch."""

    flip: bool = True          # mirror left-right with probability 1/2 (faces are roughly symmetric)
    min_crop: float = 0.85     # crop a square of side in [min_crop, 1] x the image's, anywhere, resized back (1: off)
    brightness: float = 0.1    # add a uniform delta in [-brightness, brightness] to every pixel (pixels in [0, 1])
    contrast: float = 0.2      # scale each channel's deviation from its image mean by a factor in [1 -/+ contrast]
    saturation: float = 0.2    # scale the deviation from the image's grey version by a factor in [1 -/+ saturation]

    def __post_init__(self) -> None:
        if not 0.0 < self.min_crop <= 1.0:
            raise ValueError(f"min_crop must be in (0, 1] (got {self.min_crop}); 1 switches cropping off")
        for name in ("brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1) (got {value}); 0 switches it off")

    def to_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def _uniform(seed: tf.Tensor, n: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
    return tf.random.stateless_uniform([n], seed=seed, minval=lo, maxval=hi)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, config: Augmentation = Augmentation()) -> tf.Tensor:
    """A randomly mirrored, cropped and colour-jittered copy of ``images`` (float [N, H, W, 3] in [0, 1]).

    ``seed``: int32/int64 [2], the key of this batch's draws (e.g. from ``tf.data.Dataset.random``).
    The result has the input's shape and pixels in [0, 1].
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape.rank != 4 or images.shape[-1] != 3 or None in images.shape[1:3]:
        raise ValueError(f"images must be a batch [N, H, W, 3] with known H and W (got shape {images.shape})")
    n = tf.shape(images)[0]
    flip_seed, crop_seed, bright_seed, contrast_seed, sat_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5))
    x = images
    if config.flip:
        mirror = tf.random.stateless_uniform([n], seed=flip_seed) < 0.5
        x = tf.where(mirror[:, None, None, None], tf.reverse(x, axis=[2]), x)
    if config.min_crop < 1.0:
        side_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(crop_seed, num=2))
        side = _uniform(side_seed, n, config.min_crop, 1.0)     # the crop's side, as a fraction of the image's
        h, w = images.shape[1], images.shape[2]
        # The crop's top-left corner in pixels, anywhere the crop fits inside the image.
        offset = tf.random.stateless_uniform([n, 2], seed=offset_seed) * (1.0 - side[:, None]) * [h - 1.0, w - 1.0]
        zero = tf.zeros_like(side)
        # Output pixel (row, col) samples input (top + side * row, left + side * col): a crop resized back to
        # h x w, bilinear (the op behind keras' RandomZoom; every sample lies inside the image, so no fill).
        transforms = tf.stack([side, zero, offset[:, 1], zero, side, offset[:, 0], zero, zero], axis=1)
        x = tf.raw_ops.ImageProjectiveTransformV3(images=x, transforms=transforms, output_shape=[h, w],
                                                  fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    if config.brightness:
        x = x + _uniform(bright_seed, n, -config.brightness, config.brightness)[:, None, None, None]
    if config.contrast:
        factor = _uniform(contrast_seed, n, 1.0 - config.contrast, 1.0 + config.contrast)[:, None, None, None]
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = mean + factor * (x - mean)
    if config.saturation:
        factor = _uniform(sat_seed, n, 1.0 - config.saturation, 1.0 + config.saturation)[:, None, None, None]
        grey = tf.reduce_sum(x * tf.constant(_LUMA, x.dtype), axis=-1, keepdims=True)
        x = grey + factor * (x - grey)
    # Brightness and contrast can leave [0, 1]; clipping (as tf.image's jitter does) keeps the client's contract.
    return tf.clip_by_value(x, 0.0, 1.0)
