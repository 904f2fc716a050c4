"""Run the exported client head in the LiteRT runtime -- without TensorFlow, as on a phone.

:class:`HeadRunner` wraps ``ai_edge_litert``'s interpreter and validates what the raw interpreter does not:
image dtype and shape, epsilon (0 < epsilon <= the head's max_epsilon from its sidecar, or +inf for no noise),
and the server's gradient and learning rate (finite, the expected shape).  The graph checks epsilon, the gradient and the learning rate
again (its ``valid`` / ``applied`` outputs), so a Kotlin app that calls the signatures directly cannot release
with less noise than asked or apply a non-finite update.  Shapes are the app's job there: LiteRT broadcasts a
``grad_bias`` of shape [1] or a ``grad_activation`` of shape [1, 1, 1, 1] (the weights stay finite, but the update
is not the server's); ``HeadRunner`` checks every shape first.

The noise of a release comes from the app's secret uniforms (:class:`EntropyStream`: the AES-128-CTR keystream
under a key from :mod:`secrets`, turned into 24-bit uniforms in (0, 1] by :func:`uniforms_from_words`), which
``HeadRunner`` writes straight into the ``release`` signature's input tensor, one chunk of images and strip of
rows at a time (the tensors of a 16-row strip of a 224x224x64 activation stay in the CPU's cache).

The ``train`` signature is allocated only when first used: an app that only releases activations pays for
the ``release`` arena alone; each signature's tensors are allocated by its first call, for that batch size.
This module must not import TensorFlow (tests check it in a subprocess).
"""
from __future__ import annotations

import json
import math
import os
import threading
from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = ["HeadRunner", "TrainResult", "EntropyStream", "uniforms_from_words"]

# Without a sidecar: dpact_tf.privacy.MAX_EPSILON (the graph still applies the head's own, smaller limit).
_DEFAULT_MAX_EPSILON = 1000.0
# Box-Muller computes -2 std^2 ln(v) with -ln(v) <= 24 ln 2 ~ 16.6 for v >= 2^-24: the largest noise std that stays
# finite (the review found epsilon ~2e-19 passing "std^2 finite" and releasing inf).  The head's graph uses it too.
MAX_BOX_MULLER_STD = float(np.sqrt(np.finfo(np.float32).max / 34.0))
# The most bytes of one strip's activation (HeadRunner's rows_per_call=None): its tensors stay in the CPU's cache.
_STRIP_BYTES = 1 << 20


def _tflite_inspect():
    """:mod:`dpact_tf.tflite_inspect`, also when this file is loaded by path without the package (the TF-free
    measuring process of :mod:`dpact_tf.mobile`)."""
    if __name__.startswith("dpact_tf."):
        from dpact_tf import tflite_inspect

        return tflite_inspect
    import importlib.util
    import sys

    key = "_dpact_tflite_inspect"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, os.path.join(os.path.dirname(__file__), "tflite_inspect.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def uniforms_from_words(words: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """The uniforms ``release`` takes, from uniform 32-bit words: ((w >> 8) + 1) / 2^24, exactly uniform on the
    2^24 points of (0, 1] (float32 holds every one exactly).  ``words`` (uint32) is overwritten."""
    words = np.asarray(words)
    if words.dtype != np.uint32:
        raise ValueError(f"words must be uint32 (got {words.dtype})")
    np.right_shift(words, 8, out=words)
    words += np.uint32(1)
    if out is None:
        out = np.empty(words.shape, np.float32)
    np.multiply(words, np.float32(2.0 ** -24), out=out, dtype=np.float32, casting="unsafe")  # exact: <= 2^24
    return out


class EntropyStream:
    """The app's secret uniforms for ``release``: the keystream of AES-128 in counter mode under a 128-bit key
    from :mod:`secrets` (the core of NIST SP 800-90A's CTR_DRBG; OpenSSL through ``cryptography``, with the
    CPU's AES instructions), four bytes per uniform (:func:`uniforms_from_words`).  One stream per release: a
    new key for every :meth:`HeadRunner.infer` call, so forked processes never share a stream."""

    def __init__(self) -> None:
        import secrets

        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        # a fresh key per stream: the all-zero initial counter block is never reused with it
        self._cipher = Cipher(algorithms.AES(secrets.token_bytes(16)), modes.CTR(bytes(16))).encryptor()
        self._zeros = b""
        self._buf = bytearray()

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Fill the float32 array ``out`` with the next ``out.size`` uniforms of the stream."""
        nbytes = 4 * out.size
        if len(self._zeros) < nbytes:
            self._zeros = bytes(nbytes)
            self._buf = bytearray(nbytes + 15)  # update_into wants room for one more block
        self._cipher.update_into(memoryview(self._zeros)[:nbytes], self._buf)
        words = np.frombuffer(self._buf, np.uint32, count=out.size).reshape(out.shape)
        return uniforms_from_words(words, out)


class _InPlaceSignature:
    """One signature called with its tensors used in place: the app's entropy is written straight into the input
    tensor and the activation copied once out of the output tensor.  (``SignatureRunner`` copies every input in
    and every output out into a new array: ~6 ms per 224x224x64 image, measured.)  It calls the same interpreter
    wrapper methods as ``SignatureRunner.__call__`` (ai-edge-litert, pinned in requirements.lock); a view is never
    held across a resize, an allocation or an invocation."""

    def __init__(self, runner: Any) -> None:
        self._wrapper, self._base = runner._interpreter_wrapper, runner._interpreter
        self._graph = runner._subgraph_index
        self._index = {**dict(runner._inputs), **dict(runner._outputs)}
        self._inputs = dict(runner._inputs)
        self._shapes: Dict[str, Tuple[int, ...]] = {}

    def resize(self, shapes: Dict[str, Tuple[int, ...]]) -> None:
        """Give the inputs these shapes (allocating the arena only when a shape changes)."""
        if shapes != self._shapes:
            for name, shape in shapes.items():
                self._wrapper.ResizeInputTensor(self._inputs[name], np.array(shape, np.int32), False, self._graph)
            self._wrapper.AllocateTensors(self._graph)
            self._shapes = dict(shapes)

    def set(self, name: str, value: np.ndarray) -> None:
        self._wrapper.SetTensor(self._inputs[name], value, self._graph)

    def view(self, name: str) -> np.ndarray:
        """The tensor's own buffer (valid until the next resize or invocation)."""
        return self._wrapper.tensor(self._base, self._index[name], self._graph)

    def invoke(self) -> None:
        self._wrapper.Invoke(self._graph)


class TrainResult(float):
    """The norm of the conv1_1 gradient (a float, as before) that also says whether the update was applied."""

    applied: bool

    def __new__(cls, grad_norm: float, applied: bool) -> "TrainResult":
        obj = super().__new__(cls, grad_norm)
        obj.applied = bool(applied)
        return obj


class HeadRunner:
    """A dpact head.tflite: releases through ``release`` (or, for runtime-only heads, ``infer``) and, if exported,
    on-device updates through ``train`` / ``gradient`` + ``apply_gradient``."""

    def __init__(self, path: str, *, num_threads: Optional[int] = None, max_batch: int = 1,
                 rows_per_call: Optional[int] = None, allow_replayable_noise_for_tests: bool = False,
                 allow_runtime_noise_only: bool = False) -> None:
        """``max_batch``: images per interpreter call.  Batches are streamed through the head in chunks of
        ``max_batch`` (the arena holds one chunk's intermediates, not the whole batch's) -- each chunk draws
        fresh noise, so the release is the same.

        ``rows_per_call``: image rows per ``release`` call, for heads whose sidecar says ``release`` takes strips
        of rows (a conv1_1 cut: ``release_strip_halo_rows``).  Each strip is passed with one row of its
        neighbours above and below (zero rows at the image's border, which is conv1_1's own SAME padding) and
        those rows' outputs are dropped, so the release is the same; a strip's tensors stay in the CPU's cache.
        ``None`` picks the most rows that divide the image height and keep a strip's activation within 1 MiB
        (16 rows at 224x224x64; whole images at 64x64x8); the image height releases whole images.

        A model whose random op carries fixed seeds (noise anyone holding the file can replay) is refused unless
        ``allow_replayable_noise_for_tests=True``: the server may be the one who shipped the model.  Heads with a
        ``release`` signature draw their noise from the app's secret uniforms alone (:class:`EntropyStream`:
        AES-128-CTR keyed with 128 bits from :mod:`secrets`, a new key for every call of :meth:`infer`), never from
        LiteRT's own generator (32-bit process seed).  A head without ``release`` (exported before it existed,
        or with ``noise="standard_normal"``) is refused unless ``allow_runtime_noise_only=True`` (for benchmarks
        of such heads): its noise comes from the 32-bit-seeded generator alone."""
        from ai_edge_litert.interpreter import Interpreter

        tflite_inspect = _tflite_inspect()

        self._lock = threading.Lock()  # one interpreter: infer/train calls from several threads are serialized
        if int(max_batch) != max_batch or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer (got {max_batch})")
        self.max_batch = int(max_batch)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; make one with `python tflite/convert.py --out {path}`")
        sidecar = os.path.splitext(path)[0] + ".json"
        self.meta: Dict[str, Any] = json.load(open(sidecar)) if os.path.exists(sidecar) else {}
        self.max_epsilon = float(self.meta.get("max_epsilon", _DEFAULT_MAX_EPSILON))
        self.noise_scale = self.meta.get("noise_std_times_epsilon")
        fixed = tflite_inspect.fixed_seed_ops(path)
        if fixed and not allow_replayable_noise_for_tests:
            raise ValueError(f"{path} has random ops with fixed seeds ({fixed}): anyone holding the file can replay "
                             "and subtract its noise. Export a deployable head (without replayable_noise_for_tests)")
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.signatures = self.interpreter.get_signature_list()
        if "infer" not in self.signatures:
            raise ValueError(f"{path} has no 'infer' signature (signatures: {list(self.signatures)})")
        self._infer = self.interpreter.get_signature_runner("infer")
        details = self._infer.get_input_details()["image"]
        self.image_shape = tuple(int(s) for s in details["shape_signature"][1:])
        self._release = (self.interpreter.get_signature_runner("release") if "release" in self.signatures else None)
        if self._release is None and not allow_runtime_noise_only:
            raise ValueError(f"{path} has no 'release' signature: its noise would come from LiteRT's generator alone, "
                             "which is seeded from 32 bits per process and can be searched by whoever holds the "
                             "model. Export it again with this version (noise='box_muller', the default)")
        self.rows_per_call = self.image_shape[0]
        if self._release is not None:
            if "RANDOM_UNIFORM" in tflite_inspect.operator_names(path).get("release", []):
                raise ValueError(f"{path} was exported before `release` took 24-bit uniforms in (0, 1] (its entropy "
                                 "was shifted into the runtime's own uniforms in [0, 1)); export it again")
            self._release_call = _InPlaceSignature(self._release)
            entropy = self._release.get_input_details()["entropy"]["shape_signature"]
            self._entropy_width, self._entropy_channels = int(entropy[2]), int(entropy[3])
            self._halo = self.meta.get("release_strip_halo_rows")
            self.rows_per_call = self._strip_rows(rows_per_call)
        elif rows_per_call is not None:
            raise ValueError("rows_per_call needs a head with a 'release' signature")
        self._runners: Dict[str, Any] = {}

    def _strip_rows(self, rows: Optional[int]) -> int:
        """Check ``rows_per_call`` (or pick it, for ``None``) against the image height and the head."""
        height = self.image_shape[0]
        if rows is None:
            if not self._halo:
                return height
            row_bytes = 4 * self._entropy_width * self._entropy_channels
            fits = [r for r in range(1, height + 1)
                    if height % r == 0 and (r + 2 * self._halo) * row_bytes <= _STRIP_BYTES]
            return max(fits) if fits else 1
        if int(rows) != rows or rows < 1 or height % rows:
            raise ValueError(f"rows_per_call must be a positive divisor of the image height {height} (got {rows})")
        if rows != height and not self._halo:
            raise ValueError("this head's release does not take strips of rows (only conv1_1 heads exported by this "
                             "version do: its sidecar has release_strip_halo_rows); use rows_per_call=None")
        return int(rows)

    @property
    def has_train(self) -> bool:
        return "train" in self.signatures

    def _runner(self, name: str):
        """A signature runner, created (and its tensors allocated) on first use; ``None`` if absent."""
        if name not in self._runners and name in self.signatures:
            self._runners[name] = self.interpreter.get_signature_runner(name)
        return self._runners.get(name)

    @property
    def _train(self):
        return self._runner("train")

    def _check_image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 RGB 0..255 (got dtype {image.dtype}); the head scales it itself")
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or tuple(image.shape[1:]) != self.image_shape:
            raise ValueError(f"image must have shape [N, {', '.join(map(str, self.image_shape))}] "
                             f"(got {list(image.shape)}); resize or crop it to the head's input size first")
        return image

    def check_epsilon(self, epsilon: float) -> float:
        """``epsilon`` as float32 if it is in (0, max_epsilon] or +inf; a ``ValueError`` saying why otherwise."""
        eps = float(epsilon)
        if math.isnan(eps) or eps <= 0:
            raise ValueError(f"epsilon must be > 0, or inf for no noise (got {epsilon})")
        if math.isfinite(eps) and eps > self.max_epsilon:
            raise ValueError(f"epsilon must be <= {self.max_epsilon:g} (got {epsilon}): above it this head's "
                             "classic calibration is no longer (epsilon, delta)-DP (or float32 loses the noise); "
                             "use inf for the no-noise baseline")
        if self.noise_scale is not None and math.isfinite(eps) and not self.noise_scale / eps < MAX_BOX_MULLER_STD:
            raise ValueError(f"epsilon {epsilon} is too small: its noise std (squared) overflows float32")
        return eps

    def infer(self, image: np.ndarray, epsilon: float) -> np.ndarray:
        """The noisy activation to upload; ``epsilon=math.inf`` gives the noise-free activation (the baseline of
        tests and benchmarks, computed by the ``infer`` signature: the deployable ``release`` refuses +inf).

        Thread-safe: calls on one runner are serialized (a LiteRT interpreter is not thread-safe; unserialized
        calls from two threads were seen to return noise-free rows and noise shared between threads).
        """
        with self._lock:
            return self._infer_locked(image, epsilon)

    def _infer_locked(self, image: np.ndarray, epsilon: float) -> np.ndarray:
        eps = np.float32(self.check_epsilon(epsilon))
        image = self._check_image(image)
        if self._release is not None and math.isfinite(float(eps)):
            return self._release_all(image, eps, epsilon)
        result = None  # a runtime-only head (allow_runtime_noise_only): LiteRT's generator alone
        for start in range(0, image.shape[0], self.max_batch):
            out = self._infer(image=image[start:start + self.max_batch], epsilon=eps)
            if "valid" in out and int(out["valid"]) != 1:  # the graph's own check disagrees: never return it
                raise RuntimeError(f"the head reported an invalid epsilon ({epsilon}); nothing released")
            act = out["activation"]
            if result is None:
                result = np.empty((image.shape[0],) + act.shape[1:], act.dtype)
            result[start:start + act.shape[0]] = act
        return result

    def _release_all(self, image: np.ndarray, eps: np.float32, epsilon: float) -> np.ndarray:
        """``release`` on each chunk of images and strip of rows, the app's uniforms written into the entropy
        tensor in place."""
        call = self._release_call
        height, rows = self.image_shape[0], self.rows_per_call
        halo = self._halo if rows < height else 0
        if halo:  # zero rows above and below: conv1_1's SAME padding at the image's border
            image = np.pad(image, [(0, 0), (halo, halo), (0, 0), (0, 0)])
        # entropy rows of a call: the activation's rows (whole images of a pooling head have fewer)
        scale = self.image_shape[1] // self._entropy_width
        # a new 128-bit key for every call: two processes forked from one runner still release independent noise
        stream = EntropyStream()
        result = None
        for start in range(0, image.shape[0], self.max_batch):
            for top in range(0, height, rows):
                chunk = image[start:start + self.max_batch, top:top + rows + 2 * halo]
                n = chunk.shape[0]
                call.resize({"image": chunk.shape, "entropy": (n, chunk.shape[1] // scale, self._entropy_width,
                                                               self._entropy_channels)})
                call.set("image", chunk)
                call.set("epsilon", eps)
                stream.fill(call.view("entropy"))
                call.invoke()
                if int(call.view("valid")) != 1:  # the graph's own check disagrees: never return it
                    raise RuntimeError(f"the head refused the release (epsilon {epsilon}); nothing released")
                act = call.view("activation")
                if result is None:
                    result = np.empty((image.shape[0], height // scale) + act.shape[2:], act.dtype)
                out_rows = act.shape[1] - 2 * halo
                np.copyto(result[start:start + n, top // scale:top // scale + out_rows], act[:, halo:halo + out_rows])
        return result

    def grad_shape(self, batch: int) -> Tuple[int, ...]:
        """The shape ``train`` expects for ``grad_activation``: [batch, H, W, C] of the activation."""
        if self._train is None:
            raise ValueError("this head has no 'train' signature")
        sig = self._train.get_input_details()["grad_activation"]["shape_signature"]
        return (batch,) + tuple(int(s) for s in sig[1:])

    def train(self, image: np.ndarray, grad_activation: np.ndarray, learning_rate: float) -> TrainResult:
        """Apply the server's dL/d(activation) to the head's conv1_1 (SGD with momentum); returns |grad|.

        Refuses (``ValueError``, weights unchanged) a gradient of the wrong shape or with NaN/inf, and a
        learning rate that is not finite and > 0.  Serialized with :meth:`infer` (one interpreter).
        """
        with self._lock:
            return self._train_locked(image, grad_activation, learning_rate)

    def _train_locked(self, image: np.ndarray, grad_activation: np.ndarray, learning_rate: float) -> TrainResult:
        if not self.has_train:
            raise ValueError("this head has no 'train' signature (exported with a cut other than conv1_1, "
                             "float16 weights, or --no-train)")
        image = self._check_image(image)
        grad = np.asarray(grad_activation, np.float32)
        expected = self.grad_shape(image.shape[0])
        if grad.shape != expected:
            raise ValueError(f"grad_activation must have shape {list(expected)} (the activation of this batch of "
                             f"{image.shape[0]} images); got {list(grad.shape)}")
        if not np.all(np.isfinite(grad)):
            raise ValueError("grad_activation from the server contains NaN or inf; refusing the update "
                             "(the head's weights are unchanged)")
        lr = float(learning_rate)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning_rate must be finite and > 0 (got {learning_rate}); weights unchanged")
        if self._runner("gradient") is not None and self._runner("apply_gradient") is not None:
            # stream the batch through `gradient` (summing the weight gradients), then one SGD step
            gk = gb = None
            for start in range(0, image.shape[0], self.max_batch):
                part = self._runner("gradient")(image=image[start:start + self.max_batch],
                                                grad_activation=grad[start:start + self.max_batch])
                gk = part["grad_kernel"] if gk is None else gk + part["grad_kernel"]
                gb = part["grad_bias"] if gb is None else gb + part["grad_bias"]
            out = self._runner("apply_gradient")(grad_kernel=gk, grad_bias=gb, learning_rate=np.float32(lr))
        else:
            out = self._train(image=image, grad_activation=grad, learning_rate=np.float32(lr))
        applied = bool(int(out["applied"])) if "applied" in out else True
        if not applied:
            raise ValueError("the head refused the update (the gradient step overflows float32); weights unchanged")
        return TrainResult(float(out["grad_norm"]), applied)
