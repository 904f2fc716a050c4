"""Run the exported client head in the LiteRT runtime -- without TensorFlow, as on a phone.

:class:`HeadRunner` wraps ``ai_edge_litert``'s interpreter and checks what the raw interpreter does not: image
dtype and shape, epsilon (inside the interval the head certifies, from its JSON sidecar), the server's gradient
and learning rate (finite, the expected shape), and -- if asked -- that the conv weights stored in the file are
the ones the user trusts.  The graph checks epsilon, the entropy, the gradient and the learning rate again (its
``valid`` / ``applied`` outputs), so a Kotlin app that calls the signatures directly cannot release with another
noise than the one certified or apply a non-finite update.  Shapes are the app's job there: LiteRT broadcasts a
``grad_bias`` of shape [1] (the weights stay finite, but the update is not the server's); ``HeadRunner`` checks
every shape first.

A release is integers (:mod:`dpact_tf.grid`): :meth:`HeadRunner.release` returns the levels and the grid scale;
the server reads ``levels / scale``.  Its noise comes from the app's secret words alone (:class:`EntropyStream`:
the AES-128-CTR keystream under a key from :mod:`secrets`, viewed as int64), which ``HeadRunner`` writes straight
into the ``release`` signature's input tensor, one chunk of images and strip of rows at a time, on ``workers``
interpreters in as many threads (LiteRT releases the GIL while it runs a graph).

The ``train`` signature is allocated only when first used: an app that only releases activations pays for
the ``release`` arena alone; each signature's tensors are allocated by its first call, for that batch size.
This module must not import TensorFlow (tests check it in a subprocess).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from dpact_tf.deploy import tflite_inspect

__all__ = ["HeadRunner", "Release", "TrainResult", "EntropyStream", "strip_rows"]

# HeadRunner's rows_per_call=None (strip_rows): the most bytes of one strip's entropy, so that a strip's tensors stay
# in a core's L2 cache, and the fewest rows, so that each call's fixed cost (its ~100 ops, the halo rows) stays small.
# Measured on this project's 2-core x86 machine: 32 rows (128 KiB) release 64x64x8 ~7% faster than whole images
# (256 KiB); at 224x224x64, 4 rows (448 KiB) ~4% faster than 1 row (112 KiB).
_STRIP_BYTES = 1 << 17
_MIN_STRIP_ROWS = 4


def strip_rows(height: int, row_bytes: int) -> int:
    """Rows per ``release`` call for an image of ``height`` rows whose entropy takes ``row_bytes`` per row: the most
    rows dividing ``height`` whose entropy fits :data:`_STRIP_BYTES`, or, if that is fewer than
    :data:`_MIN_STRIP_ROWS`, the fewest rows dividing ``height`` that are at least that many (``height`` if none)."""
    if height < 1 or row_bytes < 1:
        raise ValueError(f"height and row_bytes must be positive (got {height}, {row_bytes})")
    divisors = [r for r in range(1, height + 1) if height % r == 0]
    fits = [r for r in divisors if r * row_bytes <= _STRIP_BYTES]
    if fits and max(fits) >= _MIN_STRIP_ROWS:
        return max(fits)
    return min([r for r in divisors if r >= _MIN_STRIP_ROWS] or [height])


class EntropyStream:
    """The app's secret words for ``release``: the keystream of AES-128 in counter mode under a 128-bit key from
    :mod:`secrets` (the core of NIST SP 800-90A's CTR_DRBG; OpenSSL through ``cryptography``, with the CPU's AES
    instructions), eight bytes per coordinate viewed as a little-endian int64 (the byte order of x86 and ARM).  One
    stream per release and worker: a new key for every :meth:`HeadRunner.release` call, so forked processes never
    share a stream."""

    def __init__(self) -> None:
        import secrets

        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        # a fresh key per stream: the all-zero initial counter block is never reused with it
        self._cipher = Cipher(algorithms.AES(secrets.token_bytes(16)), modes.CTR(bytes(16))).encryptor()
        self._zeros = b""

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Fill the C-contiguous int64 array ``out`` with the next ``out.size`` words of the stream, in place."""
        if out.dtype != np.int64 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous int64 array (got {out.dtype})")
        raw = memoryview(out.reshape(-1).view(np.uint8))
        nbytes = len(raw)
        if len(self._zeros) < nbytes:
            self._zeros = bytes(nbytes)
        # update_into wants 15 bytes of room beyond its input: the keystream goes straight into `out` but for its
        # last block, which is copied
        body = max(0, nbytes - 16)
        if body:
            self._cipher.update_into(memoryview(self._zeros)[:body], raw)
        raw[body:] = self._cipher.update(self._zeros[:nbytes - body])
        return out


class Release(NamedTuple):
    """One release: the integers the head computed and the grid they live on."""

    levels: np.ndarray   # int32 [N, H', W', C]: the released integers
    scale: float         # grid steps per activation unit (float32): the server reads levels / scale

    def activation(self) -> np.ndarray:
        """``levels / scale`` in float32: the activation values the server reads (post-processing of the release)."""
        return self.levels.astype(np.float32) / np.float32(self.scale)


class _InPlaceSignature:
    """One signature called with its tensors used in place: the app's entropy is written straight into the input
    tensor and the levels copied once out of the output tensor.  (``SignatureRunner`` copies every input in and
    every output out into a new array.)  It calls the same interpreter wrapper methods as
    ``SignatureRunner.__call__`` (ai-edge-litert, pinned in requirements.lock); a view is never held across a
    resize, an allocation or an invocation."""

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
    """The norm of the conv1_1 gradient (a float) that also says whether the update was applied."""

    applied: bool

    def __new__(cls, grad_norm: float, applied: bool) -> "TrainResult":
        obj = super().__new__(cls, grad_norm)
        obj.applied = bool(applied)
        return obj


class HeadRunner:
    """A dpact head.tflite: releases through ``release``, computes the no-noise baseline through ``clean`` and, if
    exported, applies on-device updates through ``gradient`` + ``apply_gradient``."""

    def __init__(self, path: str, *, num_threads: Optional[int] = None, max_batch: int = 1,
                 rows_per_call: Optional[int] = None, workers: int = 1,
                 trusted_sha256: Optional[str] = None, trusted_weights_sha256: Optional[str] = None) -> None:
        """``max_batch``: images per interpreter call.  Batches are streamed through the head in chunks of
        ``max_batch`` (the arena holds one chunk's intermediates, not the whole batch's) -- each chunk gets fresh
        words, so the release is the same.

        ``rows_per_call``: image rows per ``release`` call, for heads whose sidecar says ``release`` takes strips
        of rows (a conv1_1 cut: ``release.halo_rows`` = 1).  Each strip is passed with one row of its neighbours
        above and below (zero rows at the image's border, which is conv1_1's own SAME padding), so the release is
        the same; a strip's tensors stay in the CPU's cache.  ``None`` picks the most rows that divide the image
        height and keep a strip's entropy within 128 KiB, but at least 4 (:func:`strip_rows`: 4 rows at 224x224x64,
        32 at 64x64x8, whole images at 32x32x8).

        ``workers``: interpreters that release strips in parallel, each in its own thread with ``num_threads``
        threads of its own (TFLite's int64 kernels, which draw the noise, are single-threaded: ``workers=2,
        num_threads=1`` uses two cores for all of it).  ``train`` updates every interpreter alike.

        ``trusted_sha256``: the SHA-256 of the whole .tflite the user trusts (its graph and its weights: a graph
        written by someone else can release anything, e.g. the clean activation, while passing every check below);
        a mismatch raises ``ValueError``, and the interpreters run exactly the bytes that were hashed.

        ``trusted_weights_sha256``: the hash of the conv weights the user trusts
        (:func:`dpact_tf.deploy.convert.weights_hash` of the Keras client); the weights stored in the file are read from
        its flatbuffer and hashed, and a mismatch raises ``ValueError`` before anything runs.

        The file must be a grid-release head (:func:`dpact_tf.deploy.tflite_inspect.check_grid_release`: no random op,
        int64 entropy in, int32 levels out) with its JSON sidecar; older heads are refused."""
        from ai_edge_litert.interpreter import Interpreter

        inspect = tflite_inspect
        self._lock = threading.Lock()  # calls are serialized: one interpreter is not thread-safe
        for name, value in (("max_batch", max_batch), ("workers", workers)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer (got {value!r})")
        self.max_batch, self.workers = int(max_batch), int(workers)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found; make one with `python tflite/convert.py --out {path}`")
        with open(path, "rb") as fh:
            content = fh.read()
        self.sha256 = hashlib.sha256(content).hexdigest()
        if trusted_sha256 is not None and trusted_sha256.lower() != self.sha256:
            raise ValueError(f"{path} has SHA-256 {self.sha256}, not the trusted {trusted_sha256}: refusing to run a "
                             "head you did not approve (its graph decides what is released)")
        sidecar = os.path.splitext(path)[0] + ".json"
        if not os.path.exists(sidecar):
            raise FileNotFoundError(f"{sidecar} not found: HeadRunner needs the head's JSON sidecar (written beside "
                                    "it by tflite/convert.py) for the epsilons it certifies")
        with open(sidecar) as fh:
            self.meta: Dict[str, Any] = json.load(fh)
        try:
            inspect.check_grid_release(path)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        self.weights_sha256 = inspect.weights_sha256(inspect.stored_conv_weights(path))
        if trusted_weights_sha256 is not None and trusted_weights_sha256 != self.weights_sha256:
            raise ValueError(f"{path} stores conv weights whose SHA-256 is {self.weights_sha256}, not the trusted "
                             f"{trusted_weights_sha256}: refusing to run weights you did not approve (export the head "
                             "from the client you trust, and pass dpact_tf.deploy.convert.weights_hash(client))")
        rel = self.meta.get("release") or {}
        try:
            self.certified_epsilons = tuple(float(e) for e in rel["certified_epsilons"])
            self.scale_per_epsilon = np.float32(rel["scale_per_epsilon"])
            self._halo = int(rel["halo_rows"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{sidecar} is not the sidecar of a grid-release head (no release.{err}); export the "
                             "head again") from err
        self._interpreters = [Interpreter(model_content=content, num_threads=num_threads) for _ in range(self.workers)]
        self.interpreter = self._interpreters[0]
        self.signatures = self.interpreter.get_signature_list()
        self._clean = self.interpreter.get_signature_runner("clean")
        self.image_shape = tuple(int(s) for s in self._clean.get_input_details()["image"]["shape_signature"][1:])
        releases = [it.get_signature_runner("release") for it in self._interpreters]
        self._release_calls = [_InPlaceSignature(r) for r in releases]
        entropy = releases[0].get_input_details()["entropy"]["shape_signature"]
        self.activation_shape = (int(self.meta["activation_shape"][1]),) + (int(entropy[2]), int(entropy[3]))
        self.rows_per_call = self._strip_rows(rows_per_call)
        self._runners: Dict[str, Any] = {}
        self._pad_buffer: Optional[np.ndarray] = None  # _padded's

    def _strip_rows(self, rows: Optional[int]) -> int:
        """Check ``rows_per_call`` (or pick it, for ``None``) against the image height and the head."""
        height = self.image_shape[0]
        if rows is None:
            if not self._halo:
                return height
            return strip_rows(height, 8 * self.activation_shape[1] * self.activation_shape[2])
        if isinstance(rows, bool) or int(rows) != rows or rows < 1 or height % rows:
            raise ValueError(f"rows_per_call must be a positive divisor of the image height {height} (got {rows})")
        if rows != height and not self._halo:
            raise ValueError("this head's release takes whole images only (its sidecar's release.halo_rows is 0: "
                             "strips of a cut after conv1_1 would need more rows of halo); use rows_per_call=None")
        return int(rows)

    @property
    def has_train(self) -> bool:
        return "train" in self.signatures

    def _runner(self, name: str, interpreter: Any = None):
        """A signature runner, created (and its tensors allocated) on first use; ``None`` if absent."""
        interpreter = interpreter or self.interpreter
        key = (name, id(interpreter))
        if key not in self._runners and name in self.signatures:
            self._runners[key] = interpreter.get_signature_runner(name)
        return self._runners.get(key)

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

    def check_epsilon(self, epsilon: float) -> np.float32:
        """``epsilon`` as the float32 the head computes with, if the head certifies it; ``ValueError`` saying why
        otherwise."""
        eps = float(epsilon)
        lo, hi = self.certified_epsilons
        if math.isnan(eps) or eps <= 0:
            raise ValueError(f"epsilon must be > 0 (got {epsilon})")
        if math.isinf(eps):
            raise ValueError("a release always adds noise: epsilon=inf is the no-noise baseline, which clean() "
                             "computes (never send it)")
        eps32 = np.float32(eps)
        if not lo <= float(eps32) <= hi:
            why = ("a smaller epsilon needs a head exported with more steps_per_std (dpact_tf.grid."
                   "choose_steps_per_std)" if eps < lo else "above it the noise table's tail is too short for the "
                   "delta asked")
            raise ValueError(f"epsilon={epsilon:g} is outside [{lo:.4f}, {hi:.4f}], the epsilons this head releases "
                             f"with delta={self.meta.get('delta', float('nan')):g} as implemented "
                             f"({self.meta['release'].get('steps_per_std')} grid steps per std); {why}")
        return eps32

    def clean(self, image: np.ndarray) -> np.ndarray:
        """The activation WITHOUT noise (float32): tests, benchmarks and the no-noise baseline.  Never send it."""
        with self._lock:
            image = self._check_image(image)
            parts = [self._clean(image=image[s:s + self.max_batch])["activation"]
                     for s in range(0, image.shape[0], self.max_batch)]
            return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def release(self, image: np.ndarray, epsilon: float) -> Release:
        """The release to upload: the integer levels and the grid scale (the server reads ``levels / scale``).

        Raises ``ValueError`` for an epsilon the head does not certify, and ``RuntimeError`` (nothing returned) if
        the graph refuses a call or its scale is not the sidecar's.  Thread-safe: calls on one runner are
        serialized (a LiteRT interpreter is not thread-safe: unserialized calls were seen to return rows without
        noise and noise shared between threads)."""
        with self._lock:
            eps = self.check_epsilon(epsilon)
            return self._release_all(self._check_image(image), eps)

    def _release_all(self, image: np.ndarray, eps: np.float32) -> Release:
        """``release`` on each chunk of images and strip of rows, on every worker's interpreter in its own thread,
        the app's words written into the entropy tensor in place."""
        height, rows, halo = self.image_shape[0], self.rows_per_call, self._halo
        if halo:  # zero rows above and below: conv1_1's SAME padding at the image's border
            image = self._padded(image)
        expected_scale = np.float32(eps * self.scale_per_epsilon)
        act_rows, width, channels = self.activation_shape
        out_rows = rows if halo else act_rows  # activation rows per call
        levels = np.empty((image.shape[0], act_rows, width, channels), np.int32)
        units = iter([(s, top) for s in range(0, image.shape[0], self.max_batch) for top in range(0, height, rows)])
        take, errors = threading.Lock(), []

        def work(call: _InPlaceSignature) -> None:
            stream = EntropyStream()  # a new key for every call and worker
            while not errors:
                with take:
                    unit = next(units, None)
                if unit is None:
                    return
                start, top = unit
                chunk = image[start:start + self.max_batch, top:top + rows + 2 * halo]
                n = chunk.shape[0]
                call.resize({"image": chunk.shape, "entropy": (n, out_rows, width, channels)})
                call.set("image", chunk)
                call.set("epsilon", eps)
                stream.fill(call.view("entropy"))
                call.invoke()
                if int(call.view("valid")) != 1 or np.float32(call.view("scale")) != expected_scale:
                    errors.append(RuntimeError(
                        f"the head refused the release (epsilon {float(eps):g}: valid {int(call.view('valid'))}, "
                        f"scale {float(call.view('scale')):g} for the sidecar's {float(expected_scale):g}); nothing "
                        "released"))
                    return
                row = top if halo else 0
                np.copyto(levels[start:start + n, row:row + out_rows], call.view("levels"))

        def guarded(call: _InPlaceSignature) -> None:
            try:
                work(call)
            except Exception as err:  # re-raised in the calling thread below
                errors.append(err)

        threads = [threading.Thread(target=guarded, args=(call,)) for call in self._release_calls[1:]]
        for t in threads:
            t.start()
        guarded(self._release_calls[0])
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return Release(levels, float(expected_scale))

    def _padded(self, image: np.ndarray) -> np.ndarray:
        """``image`` with ``halo`` zero rows above and below, in a buffer kept for the next batch of this size (its
        border rows are never written; calls are serialized by the lock)."""
        halo = self._halo
        n, h, w, c = image.shape
        shape = (n, h + 2 * halo, w, c)
        if self._pad_buffer is None or self._pad_buffer.shape != shape:
            self._pad_buffer = np.zeros(shape, np.uint8)
        self._pad_buffer[:, halo:halo + h] = image
        return self._pad_buffer

    def grad_shape(self, batch: int) -> Tuple[int, ...]:
        """The shape ``train`` expects for ``grad_activation``: [batch, H, W, C] of the activation."""
        if self._runner("train") is None:
            raise ValueError("this head has no 'train' signature")
        sig = self._runner("train").get_input_details()["grad_activation"]["shape_signature"]
        return (batch,) + tuple(int(s) for s in sig[1:])

    def train(self, image: np.ndarray, grad_activation: np.ndarray, learning_rate: float) -> TrainResult:
        """Apply the server's dL/d(activation) to the head's conv1_1 (SGD with momentum); returns |grad|.

        Refuses (``ValueError``, weights unchanged) a gradient of the wrong shape or with NaN/inf, and a
        learning rate that is not finite and > 0.  The batch is streamed through ``gradient`` (summing the weight
        gradients) and the step applied by ``apply_gradient`` on every worker's interpreter, so all release with
        the same weights.  Serialized with :meth:`release`.
        """
        with self._lock:
            return self._train_locked(image, grad_activation, learning_rate)

    def _train_locked(self, image: np.ndarray, grad_activation: np.ndarray, learning_rate: float) -> TrainResult:
        if not self.has_train:
            raise ValueError("this head has no 'train' signature (exported with a cut other than conv1_1, "
                             "or --no-train)")
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
        gk = gb = None
        for start in range(0, image.shape[0], self.max_batch):
            part = self._runner("gradient")(image=image[start:start + self.max_batch],
                                            grad_activation=grad[start:start + self.max_batch])
            gk = part["grad_kernel"] if gk is None else gk + part["grad_kernel"]
            gb = part["grad_bias"] if gb is None else gb + part["grad_bias"]
        outs: List[Dict[str, np.ndarray]] = [
            self._runner("apply_gradient", it)(grad_kernel=gk, grad_bias=gb, learning_rate=np.float32(lr))
            for it in self._interpreters]
        applied = [bool(int(out["applied"])) for out in outs]
        if not all(applied):
            if any(applied):  # the same step on the same weights: never seen, but never released either
                raise RuntimeError("the interpreters disagree on the update; discard this runner")
            raise ValueError("the head refused the update (the gradient step overflows float32); weights unchanged")
        return TrainResult(float(outs[0]["grad_norm"]), True)
