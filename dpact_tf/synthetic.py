"""A deterministic stand-in for LFW: identity-structured synthetic "faces" for tests and offline runs.

Each identity has its own face shape, skin/hair/background colours, eye spacing and mouth width; each
image of it jitters pose (shift, scale), lighting and pixel noise.  The result is a :class:`FaceSplit`
with ``source="synthetic"``: every figure and JSON made from it says so.  Nothing in dpact falls back to
it silently -- it is only used when a caller asks for ``dataset="synthetic"``.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from dpact_tf.data import FaceSplit, split_people

__all__ = ["synthetic_faces"]


def _render(params: Dict[str, np.ndarray], jitter: Dict[str, float], size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = 0.5 + jitter["dx"], 0.5 + jitter["dy"]
    s = jitter["scale"]
    img = np.empty((size, size, 3), np.float32)
    img[:] = params["background"]
    # hair: a larger ellipse behind the face, shifted up
    hair = ((xx - cx) / (params["face_w"] * 1.15 * s)) ** 2 + ((yy - cy + 0.08 * s) / (params["face_h"] * 1.1 * s)) ** 2 < 1
    img[hair] = params["hair"]
    face = ((xx - cx) / (params["face_w"] * s)) ** 2 + ((yy - cy) / (params["face_h"] * s)) ** 2 < 1
    img[face] = params["skin"]
    for side in (-1, 1):
        ex, ey = cx + side * params["eye_dx"] * s, cy - 0.06 * s
        eye = ((xx - ex) ** 2 + (yy - ey) ** 2) < (params["eye_r"] * s) ** 2
        img[eye] = params["eyes"]
    mouth = (np.abs(xx - cx) < params["mouth_w"] * s) & (np.abs(yy - cy - 0.14 * s) < 0.02 * s)
    img[mouth] = params["lips"]
    img *= jitter["light"]
    return img


def synthetic_faces(num_identities: int = 10, images_per_identity: int = 20, image_size: int = 32, *,
                    seed: int = 0, test_fraction: float = 0.1, noise: float = 0.04,
                    prefix: str = "synthetic") -> FaceSplit:
    """``num_identities`` x ``images_per_identity`` synthetic faces, split per identity like LFW.

    Identities are named ``<prefix>_NNN``; a different ``prefix`` (and seed) gives a disjoint set of people.
    """
    if num_identities < 2:
        raise ValueError(f"num_identities must be >= 2 (got {num_identities})")
    if images_per_identity < 2:
        raise ValueError(f"images_per_identity must be >= 2 for a train/test split (got {images_per_identity})")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (got {image_size})")
    rng = np.random.default_rng(seed)
    people, images = {}, {}
    for k in range(num_identities):
        name = f"{prefix}_{k:03d}"
        params = {
            "background": rng.uniform(0.0, 1.0, 3), "hair": rng.uniform(0.0, 0.6, 3),
            "skin": rng.uniform(0.35, 1.0, 3), "eyes": rng.uniform(0.0, 0.4, 3), "lips": rng.uniform(0.3, 0.9, 3),
            "face_w": rng.uniform(0.2, 0.32), "face_h": rng.uniform(0.28, 0.4), "eye_dx": rng.uniform(0.07, 0.13),
            "eye_r": rng.uniform(0.025, 0.05), "mouth_w": rng.uniform(0.04, 0.12),
        }
        files = []
        for i in range(images_per_identity):
            jitter = {"dx": rng.uniform(-0.06, 0.06), "dy": rng.uniform(-0.06, 0.06),
                      "scale": rng.uniform(0.9, 1.1), "light": rng.uniform(0.7, 1.2)}
            img = _render(params, jitter, image_size) + rng.normal(0.0, noise, (image_size, image_size, 3))
            rel = f"{name}/{name}_{i + 1:04d}"
            images[rel] = np.clip(img * 255.0, 0, 255).astype(np.uint8)
            files.append(rel)
        people[name] = files
    train, test, class_names = split_people(people, test_fraction=test_fraction, seed=seed)
    return FaceSplit(
        train_images=np.stack([images[f] for f, _ in train]), train_labels=np.array([l for _, l in train], np.int32),
        test_images=np.stack([images[f] for f, _ in test]), test_labels=np.array([l for _, l in test], np.int32),
        class_names=class_names, train_files=tuple(f for f, _ in train), test_files=tuple(f for f, _ in test),
        source="synthetic",
        description=(f"SYNTHETIC faces (not LFW): {num_identities} identities x {images_per_identity} images, "
                     f"{image_size}x{image_size}, seed {seed}"))
