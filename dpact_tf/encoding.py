"""Wire encodings of a released activation: the integer levels of a noisy release, or a float baseline.

* ``"grid"`` -- what a noisy release travels as.  :mod:`dpact_tf.grid` releases integers n = k + Z on a grid
  of step g, and the server trains on n g.  The levels are sent as integers, packed in the smallest of int8,
  int16 and int32 that holds the batch's levels, with g as the scale: decoding gives exactly n g (the product
  computed in float64 and rounded once to float32), so the server sees the release and nothing else.
  Sending n g as a float instead would be harmless for n g itself, but a float path is what floating-point
  attacks exploit (Mironov 2012); a noisy release therefore never travels as a float.
* ``"float32"``, ``"float16"``, ``"uint8"`` -- a float activation: the no-noise baseline (and the accuracy
  study of :func:`dpact_tf.repro.studies.encoding_study`).  uint8 is affine per tensor,
  ``x ~= offset + scale * q`` with ``q = round((x - offset) / scale)`` in 0..255, ``offset = min(x)`` and
  ``scale = (max(x) - min(x)) / 255``.

Any encoding of a released activation is post-processing of the release and keeps its (epsilon, delta)
guarantee (Dwork & Roth 2014, Prop. 2.1).  Pure NumPy (no TensorFlow): the TF-free phone process, the edge
client and the edge server all import it.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["ENCODINGS", "GRID", "WIRE_ENCODINGS", "EncodedActivation", "encode", "decode", "decode_levels",
           "level_dtype", "bytes_per_image"]

# Encodings of a float activation (what :func:`encode` takes without ``step``).
ENCODINGS: Tuple[str, ...] = ("float32", "float16", "uint8")
# The encoding of a noisy release: integer levels and the grid step.
GRID = "grid"
WIRE_ENCODINGS: Tuple[str, ...] = ENCODINGS + (GRID,)
_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8}
_LEVEL_DTYPES = ("<i1", "<i2", "<i4")  # int8, int16, int32, little endian: the grid's packings, smallest first


@dataclasses.dataclass(frozen=True)
class EncodedActivation:
    """An encoded activation batch as it travels: raw bytes plus what is needed to decode them."""

    data: bytes               # the payload, C order, little endian
    encoding: str             # one of WIRE_ENCODINGS
    shape: Tuple[int, ...]    # [N, H, W, C] of the decoded activation
    scale: float = 1.0        # uint8: value of one quantization step; grid: the grid step g
    offset: float = 0.0       # uint8 only: value of q = 0

    @property
    def nbytes(self) -> int:
        return len(self.data)


def _check_encoding(encoding: str) -> str:
    if encoding not in WIRE_ENCODINGS:
        raise ValueError(f"encoding must be one of {WIRE_ENCODINGS} (got {encoding!r})")
    return encoding


def _check_step(step: float) -> float:
    step = float(step)
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"the grid step must be finite and > 0 (got {step})")
    return step


def level_dtype(lo: int, hi: int) -> np.dtype:
    """The smallest of int8, int16, int32 (little endian) that holds every level in [lo, hi]."""
    for name in _LEVEL_DTYPES:
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return np.dtype(name)
    raise ValueError(f"grid levels must fit in int32 (got {lo}..{hi})")


def _encode_levels(levels: np.ndarray, step: float) -> EncodedActivation:
    levels = np.asarray(levels)
    if not np.issubdtype(levels.dtype, np.integer):
        raise ValueError(f"the grid encoding carries the integer levels of a release (dpact_tf.grid.release); "
                         f"got {levels.dtype} values")
    step = _check_step(step)
    lo, hi = (int(levels.min()), int(levels.max())) if levels.size else (0, 0)
    data = np.ascontiguousarray(levels.astype(level_dtype(lo, hi))).tobytes()
    return EncodedActivation(data=data, encoding=GRID, shape=tuple(int(s) for s in levels.shape), scale=step)


def encode(activation: np.ndarray, encoding: str = "float32", *, step: Optional[float] = None) -> EncodedActivation:
    """Encode a release for upload.

    ``encoding="grid"``: ``activation`` are the integer levels of a noisy release and ``step`` its grid step
    (required).  Otherwise ``activation`` is a float activation (no ``step``).  Raises ``ValueError`` on
    non-integer levels, levels beyond int32, a step that is not finite and > 0, or non-finite floats.
    """
    _check_encoding(encoding)
    if encoding == GRID:
        if step is None:
            raise ValueError("the grid encoding needs the grid step (step=g of the release)")
        return _encode_levels(activation, step)
    if step is not None:
        raise ValueError(f"step is for the grid encoding only; {encoding!r} encodes a float activation")
    x = np.asarray(activation, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError("the activation contains NaN or inf; refusing to encode it for upload")
    shape = tuple(int(s) for s in x.shape)
    if encoding != "uint8":
        data = np.ascontiguousarray(x.astype("<f2" if encoding == "float16" else "<f4")).tobytes()
        return EncodedActivation(data=data, encoding=encoding, shape=shape)
    lo = float(x.min()) if x.size else 0.0
    hi = float(x.max()) if x.size else 0.0
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    q = np.clip(np.rint((x - lo) / scale), 0, 255).astype(np.uint8)
    return EncodedActivation(data=q.tobytes(), encoding=encoding, shape=shape, scale=scale, offset=lo)


def _count(shape: Sequence[int]) -> int:
    if any(int(s) < 0 for s in shape):
        raise ValueError(f"shape must not be negative (got {list(shape)})")
    return int(np.prod(shape, dtype=np.int64))


def decode_levels(encoded: EncodedActivation) -> Tuple[np.ndarray, float]:
    """(int32 levels, grid step) of a "grid" payload; the packing (int8/16/32) follows from its length."""
    if encoded.encoding != GRID:
        raise ValueError(f"not a grid payload (encoding {encoded.encoding!r})")
    step = _check_step(encoded.scale)
    count = _count(encoded.shape)
    width = len(encoded.data) // count if count else 1
    consistent = width in (1, 2, 4) and width * count == len(encoded.data) if count else not encoded.data
    if not consistent:
        raise ValueError(f"grid payload has {len(encoded.data)} bytes; shape {list(encoded.shape)} needs 1, 2 or 4 "
                         f"bytes per level ({count}, {2 * count} or {4 * count})")
    levels = np.frombuffer(encoded.data, dtype=_LEVEL_DTYPES[(1, 2, 4).index(width)]).reshape(encoded.shape)
    return levels.astype(np.int32), step


def decode(encoded: EncodedActivation) -> np.ndarray:
    """The float32 activation the server trains on (levels x step for "grid"); checks that the payload
    matches its shape."""
    _check_encoding(encoded.encoding)
    if encoded.encoding == GRID:
        levels, step = decode_levels(encoded)
        return (levels.astype(np.float64) * step).astype(np.float32)
    dtype = {"float32": "<f4", "float16": "<f2", "uint8": "u1"}[encoded.encoding]
    expected = _count(encoded.shape) * np.dtype(dtype).itemsize
    if len(encoded.data) != expected:
        raise ValueError(f"payload has {len(encoded.data)} bytes; shape {list(encoded.shape)} as "
                         f"{encoded.encoding} needs {expected}")
    values = np.frombuffer(encoded.data, dtype=dtype).reshape(encoded.shape)
    if encoded.encoding == "uint8":
        if not (np.isfinite(encoded.scale) and np.isfinite(encoded.offset) and encoded.scale > 0):
            raise ValueError(f"uint8 payload needs a finite scale > 0 and a finite offset "
                             f"(got scale={encoded.scale}, offset={encoded.offset})")
        return (encoded.offset + encoded.scale * values.astype(np.float32)).astype(np.float32)
    out = values.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError("the decoded activation contains NaN or inf")
    return out


def bytes_per_image(activation_shape: Sequence[int], encoding: str, *,
                    level_range: Optional[Tuple[int, int]] = None) -> int:
    """Payload bytes of one image's activation (per-tensor scale/offset not included).  "grid" needs
    ``level_range`` = (lowest, highest) level the batch holds: its packing is the smallest that holds them."""
    _check_encoding(encoding)
    if encoding == GRID:
        if level_range is None:
            raise ValueError("the grid encoding's size depends on its levels: pass level_range=(lo, hi)")
        itemsize = level_dtype(*level_range).itemsize
    else:
        itemsize = np.dtype(_DTYPES[encoding]).itemsize
    return _count(activation_shape) * itemsize
