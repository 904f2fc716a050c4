"""LFW with the paper's protocol (Mao et al. 2018, Sec. VI-A), and the public pre-training set.

Evaluation set: the people of LFW with at least 10 images -- 158 identities, 4,324 images -- each
person's images split 9:1 into train and test.  Public pre-training set (our offline stand-in for
the VGG-Face training data): the people with 2 to 9 images, disjoint from the 158.

Sources:
* ``source="dir"``: a directory in the standard LFW layout ``<Person>/<Person>_NNNN.jpg`` (lfw,
  lfw-funneled or lfw-deepfunneled).  ``root=None`` reads ``$DPACT_LFW_DIR``, then ``data/lfw``.
* ``source="tfds"``: the TensorFlow Datasets ``lfw`` builder (downloads on a connected machine).

Decoded and resized images are cached on disk (``$DPACT_CACHE_DIR`` or ``~/.cache/dpact``), keyed by
the source, the preprocessing and a hash of the file list, so the second load takes seconds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
    from dpact_tf.augment import Augmentation

__all__ = ["FaceSplit", "load_lfw", "load_lfw_public", "split_people", "scan_lfw_dir", "resolve_lfw_dir",
           "make_dataset", "without_autotune", "PIPELINE_PARALLELISM", "people_from_records", "preprocess_image", "PAPER_COUNTS", "PUBLIC_COUNTS",
           "LFWNotFoundError", "validation_split"]

# (people, images) of the paper's protocol and of the public set, for the complete LFW.
PAPER_COUNTS: Tuple[int, int] = (158, 4324)   # people with >= 10 images
PUBLIC_COUNTS: Tuple[int, int] = (1522, 4840)  # people with 2..9 images

_HOW_TO_GET_LFW = (
    "Get LFW with `python data_scripts/fetch_lfw.py --dest data/lfw` (official archive or TFDS) and/or "
    "set DPACT_LFW_DIR to a directory in the standard layout <Person>/<Person>_NNNN.jpg; "
    "on a connected machine load_lfw(source='tfds') also works. For a run without LFW pass "
    "dataset='synthetic' (DATASET=synthetic for make book): its results are labelled synthetic.")


class LFWNotFoundError(FileNotFoundError):
    """Raised when no LFW directory is configured or found."""


@dataclasses.dataclass(frozen=True)
class FaceSplit:
    """A train/test split of face images (uint8 RGB) with integer identity labels."""

    train_images: np.ndarray          # uint8 [N_train, H, W, 3]
    train_labels: np.ndarray          # int32 [N_train]
    test_images: np.ndarray           # uint8 [N_test, H, W, 3]
    test_labels: np.ndarray           # int32 [N_test]
    class_names: Tuple[str, ...]      # label -> person name
    train_files: Tuple[str, ...]      # source file of every training image (relative), for audits
    test_files: Tuple[str, ...]       # source file of every test image (relative)
    source: str                       # "lfw", "lfw-tfds" or "synthetic"
    description: str = ""             # human-readable provenance

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"

    @property
    def majority_class_rate(self) -> float:
        """Test accuracy of always predicting the largest class (the floor every accuracy is read against)."""
        return float(np.max(np.bincount(self.test_labels)) / len(self.test_labels))

    def distinct_people_test_indices(self, n: int) -> np.ndarray:
        """Indices of ``n`` test images of different people, spread over the identities."""
        first = np.unique(self.test_labels, return_index=True)[1]
        return first[np.linspace(0, len(first) - 1, min(n, len(first))).astype(int)]

    def summary(self) -> Dict[str, object]:
        return {"source": self.source, "people": self.num_classes,
                "images": int(len(self.train_labels) + len(self.test_labels)),
                "train_images": int(len(self.train_labels)), "test_images": int(len(self.test_labels)),
                "image_size": self.image_size, "description": self.description}


def validation_split(labels: np.ndarray, fraction: float, *, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(fit, validation) indices into ``labels``: per person, round(fraction * n) of its images (at least one when
    it has two or more) go to validation; the test images are never touched."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1) (got {fraction})")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx))))) if len(idx) > 1 else 0
        val.extend(idx[:k].tolist())
    val = np.sort(np.asarray(val, np.int64))
    return np.setdiff1d(np.arange(len(labels)), val), val


def resolve_lfw_dir(root: Optional[str] = None) -> str:
    """``root``, else ``$DPACT_LFW_DIR``, else ``data/lfw`` under the current directory."""
    candidates = [root] if root else [os.environ.get("DPACT_LFW_DIR"), os.path.join("data", "lfw")]
    for cand in candidates:
        if cand and os.path.isdir(cand):
            return os.path.abspath(cand)
    tried = ", ".join(repr(c) for c in candidates if c) or "nothing ($DPACT_LFW_DIR is unset)"
    raise LFWNotFoundError(f"No LFW directory found (tried {tried}). {_HOW_TO_GET_LFW}")


def scan_lfw_dir(root: str) -> Dict[str, List[str]]:
    """Map person -> sorted list of image paths relative to ``root`` (``<Person>/<file>.jpg``)."""
    people: Dict[str, List[str]] = {}
    for person in sorted(os.listdir(root)):
        pdir = os.path.join(root, person)
        if not os.path.isdir(pdir):
            continue
        files = sorted(f for f in os.listdir(pdir) if f.lower().endswith((".jpg", ".jpeg", ".png")))
        if files:
            people[person] = [f"{person}/{f}" for f in files]
    if not people:
        raise LFWNotFoundError(f"{root!r} holds no <Person>/<image>.jpg files. {_HOW_TO_GET_LFW}")
    return people


def select_people(people: Mapping[str, Sequence[str]], min_images: int,
                  max_images: Optional[int]) -> Dict[str, List[str]]:
    return {p: list(f) for p, f in sorted(people.items())
            if len(f) >= min_images and (max_images is None or len(f) <= max_images)}


def split_people(people: Mapping[str, Sequence[str]], *, test_fraction: float = 0.1,
                 seed: int = 0) -> Tuple[List[Tuple[str, int]], List[Tuple[str, int]], Tuple[str, ...]]:
    """Split every person's files ``(1 - test_fraction) : test_fraction``, deterministically from ``seed``.

    Each person contributes ``max(1, round(n * test_fraction))`` test images and the rest to train,
    so every person is in both splits and no file is in both. Returns (train, test, class_names) with
    (file, label) pairs.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1) (got {test_fraction}); the paper uses 0.1")
    class_names = tuple(sorted(people))
    train, test = [], []
    for label, person in enumerate(class_names):
        files = sorted(people[person])
        if len(files) < 2:
            raise ValueError(f"{person} has {len(files)} image(s); a train/test split needs at least 2")
        digest = int.from_bytes(hashlib.sha256(f"{seed}/{person}".encode()).digest()[:8], "little")
        order = np.random.default_rng(digest).permutation(len(files))
        n_test = min(len(files) - 1, max(1, int(round(len(files) * test_fraction))))
        test += [(files[i], label) for i in sorted(order[:n_test])]
        train += [(files[i], label) for i in sorted(order[n_test:])]
    return train, test, class_names


def preprocess_image(data: bytes, *, image_size: int, crop_fraction: float, name: str = "") -> np.ndarray:
    """Decode a JPEG/PNG, centre-crop ``crop_fraction`` of its side, resize to ``image_size`` (uint8 RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot decode image {name or '<bytes>'}: {err}. Replace or remove this file "
                         f"(data_scripts/verify_lfw.py checks a directory against its checksums)") from err
    img = img.convert("RGB")
    w, h = img.size
    side = int(round(min(w, h) * crop_fraction))
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != image_size:
        img = img.resize((image_size, image_size), Image.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def _cache_dir(cache_dir: Optional[str]) -> str:
    return cache_dir or os.environ.get("DPACT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dpact")


def _load_images(root: str, files: Sequence[str], *, image_size: int, crop_fraction: float,
                 cache_dir: Optional[str], source_tag: str, progress: bool) -> np.ndarray:
    key = hashlib.sha256("\n".join([source_tag, str(image_size), f"{crop_fraction:.6f}", *files]).encode()).hexdigest()[:20]
    path = os.path.join(_cache_dir(cache_dir), f"faces-{key}.npy")
    if os.path.exists(path):
        arr = np.load(path)
        if arr.shape == (len(files), image_size, image_size, 3):
            return arr
    import sys

    from tqdm import tqdm

    out = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    for i, rel in enumerate(tqdm(files, desc=f"decoding {len(files)} LFW images (first load; cached after)",
                                 disable=not progress, file=sys.__stderr__, mininterval=1.0)):
        with open(os.path.join(root, rel), "rb") as fh:
            out[i] = preprocess_image(fh.read(), image_size=image_size, crop_fraction=crop_fraction, name=rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def _check_counts(found: Tuple[int, int], expected: Optional[Tuple[int, int]], what: str, root: str,
                  strict: bool) -> None:
    if strict and expected is not None and found != expected:
        raise ValueError(
            f"{what} in {root!r}: found {found[0]} people / {found[1]} images, the paper's protocol on the "
            f"complete LFW gives {expected[0]} / {expected[1]}. The copy looks partial or is another data set; "
            f"check it with data_scripts/verify_lfw.py, or pass strict=False to use it anyway.")


def _build_split(people: Mapping[str, Sequence[str]], read, *, test_fraction: float, seed: int,
                 source: str, description: str) -> FaceSplit:
    train, test, class_names = split_people(people, test_fraction=test_fraction, seed=seed)
    files = [f for f, _ in train] + [f for f, _ in test]
    images = read(files)
    n = len(train)
    return FaceSplit(train_images=images[:n], train_labels=np.array([l for _, l in train], np.int32),
                     test_images=images[n:], test_labels=np.array([l for _, l in test], np.int32),
                     class_names=class_names, train_files=tuple(f for f, _ in train),
                     test_files=tuple(f for f, _ in test), source=source, description=description)


def _load(root: Optional[str], *, min_images: int, max_images: Optional[int], expected, what: str,
          test_fraction: float, image_size: int, crop_fraction: float, seed: int, strict: bool,
          source: str, cache_dir: Optional[str], progress: bool) -> FaceSplit:
    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8 (got {image_size})")
    if not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1] (got {crop_fraction})")
    if source == "tfds":
        people, blobs = _tfds_people(root)
        tag, label = "tfds-lfw", "lfw-tfds"

        def read(files):
            return np.stack([preprocess_image(blobs[f], image_size=image_size, crop_fraction=crop_fraction, name=f)
                             for f in files])
        root = "tfds:lfw"
    elif source == "dir":
        root = resolve_lfw_dir(root)
        people = scan_lfw_dir(root)
        tag, label = f"dir:{root}", "lfw"

        def read(files):
            return _load_images(root, files, image_size=image_size, crop_fraction=crop_fraction,
                                cache_dir=cache_dir, source_tag=tag, progress=progress)
    else:
        raise ValueError(f"source must be 'dir' or 'tfds' (got {source!r})")
    chosen = select_people(people, min_images, max_images)
    found = (len(chosen), sum(len(v) for v in chosen.values()))
    _check_counts(found, expected, what, root, strict)
    if not chosen:
        raise ValueError(f"no person in {root!r} has between {min_images} and {max_images or 'any'} images")
    desc = (f"LFW ({root}), people with {min_images}..{max_images or 'inf'} images: {found[0]} people, "
            f"{found[1]} images, split {1 - test_fraction:.0%}/{test_fraction:.0%} per person (seed {seed})")
    return _build_split(chosen, read, test_fraction=test_fraction, seed=seed, source=label, description=desc)


def load_lfw(root: Optional[str] = None, *, min_images_per_person: int = 10, test_fraction: float = 0.1,
             image_size: int = 224, crop_fraction: float = 224 / 250, seed: int = 0, strict: bool = True,
             source: str = "dir", cache_dir: Optional[str] = None, progress: bool = True) -> FaceSplit:
    """The paper's evaluation set: people with >= ``min_images_per_person`` images, split 9:1 per person.

    With the defaults on the complete LFW: 158 people, 4,324 images (3,895 train / 429 test: each person gives round(n / 10) test images). A copy with
    other counts raises ``ValueError`` unless ``strict=False``.
    """
    expected = PAPER_COUNTS if min_images_per_person == 10 else None
    return _load(root, min_images=min_images_per_person, max_images=None, expected=expected,
                 what="LFW people with >= 10 images", test_fraction=test_fraction, image_size=image_size,
                 crop_fraction=crop_fraction, seed=seed, strict=strict, source=source, cache_dir=cache_dir,
                 progress=progress)


def load_lfw_public(root: Optional[str] = None, *, min_images_per_person: int = 2,
                    max_images_per_person: int = 9, test_fraction: float = 0.1, image_size: int = 224,
                    crop_fraction: float = 224 / 250, seed: int = 0, strict: bool = True, source: str = "dir",
                    cache_dir: Optional[str] = None, progress: bool = True) -> FaceSplit:
    """The public pre-training set: people with 2..9 images (1,522 people, 4,840 images in LFW).

    No person here has >= 10 images, so it is disjoint from :func:`load_lfw`'s identities.
    """
    if max_images_per_person >= 10:
        raise ValueError("max_images_per_person must be < 10, or the public set would overlap the "
                         f"158 evaluation identities (got {max_images_per_person})")
    expected = PUBLIC_COUNTS if (min_images_per_person, max_images_per_person) == (2, 9) else None
    return _load(root, min_images=min_images_per_person, max_images=max_images_per_person, expected=expected,
                 what="LFW people with 2..9 images", test_fraction=test_fraction, image_size=image_size,
                 crop_fraction=crop_fraction, seed=seed, strict=strict, source=source, cache_dir=cache_dir,
                 progress=progress)


def people_from_records(records: Iterable[Mapping[str, object]]) -> Tuple[Dict[str, List[str]], Dict[str, object]]:
    """Group TFDS ``lfw`` records (``{"label": name, "image": uint8 HxWx3}``) into our layout.

    Returns ``(people, images)``: person -> synthetic relative names ``<Person>/<Person>_NNNN`` (numbered in
    record order) and name -> image (array or encoded bytes).
    """
    people: Dict[str, List[str]] = {}
    images: Dict[str, object] = {}
    for rec in records:
        label = rec["label"]
        name = label.decode() if isinstance(label, bytes) else str(label)
        files = people.setdefault(name, [])
        rel = f"{name}/{name}_{len(files) + 1:04d}"
        files.append(rel)
        img = rec["image"]
        if isinstance(img, np.ndarray):
            buf = io.BytesIO()
            from PIL import Image
            Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
            img = buf.getvalue()
        images[rel] = img
    return people, images


def _tfds_people(data_dir: Optional[str]):
    import tensorflow_datasets as tfds  # only needed for this source

    ds = tfds.load("lfw", split="train", data_dir=data_dir)
    return people_from_records(tfds.as_numpy(ds))


# Parallel calls of make_dataset's map stages (its pipelines run without tf.data's autotuner).
PIPELINE_PARALLELISM = 2


def without_autotune(ds):
    """``ds`` with tf.data's autotuner off.

    The autotuner runs a model thread per iterator, and destroying an iterator -- at every epoch's end, after every
    evaluation -- waits for that thread's current optimization pass: measured at the `small` profile, ~4.5 s lost
    at the end of about half the 6-s epochs (``benchmarks/epoch_turnover.py``).  This library's pipelines are a
    cast, a gather, a batch and optional augmentation, never the bottleneck: fixed parallelism is enough.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def make_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int, shuffle: bool = False,
                 seed: int = 0, image_size: Optional[int] = None, drop_remainder: bool = False,
                 augment: Optional["Augmentation"] = None):
    """A ``tf.data`` pipeline: cache, seeded shuffle (reshuffled every epoch), batch, scale to [0, 1],
    optional resize to ``image_size``, optional augmentation, prefetch; no autotuner (:func:`without_autotune`).

    ``augment`` (a :class:`dpact_tf.augment.Augmentation`) is for training pipelines only: every epoch draws new
    flips, crops and colour jitter, keyed by ``seed`` (same seed, same epochs).  Never pass it for evaluation.
    """
    import tensorflow as tf

    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (got {images.dtype}); scaling to [0, 1] happens here")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32))).cache()
    if shuffle:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)

    def scale(x, y):
        x = tf.cast(x, tf.float32) / 255.0
        if image_size is not None and image_size != images.shape[1]:
            x = tf.image.resize(x, (image_size, image_size), antialias=True)
        return x, y

    ds = ds.map(scale, num_parallel_calls=PIPELINE_PARALLELISM)
    if augment is not None:
        from dpact_tf.augment import augment_batch

        # One stateless key per batch, new every epoch (rerandomized per iteration), fixed by ``seed``.
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, keys)).map(lambda xy, key: (augment_batch(xy[0], key, augment), xy[1]),
                                                 num_parallel_calls=PIPELINE_PARALLELISM)
    return without_autotune(ds.prefetch(2))  # no autotuner: see without_autotune
