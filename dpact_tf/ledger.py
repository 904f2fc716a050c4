"""The client's privacy ledger: every release of every image, on disk, and a per-image budget enforced before
anything is released.

Why: the per-coordinate epsilon of the paper is not a face's protection.  Each release of an image is one
Gaussian mechanism on its whole H x W x C activation (noise multiplier z =
:func:`dpact_tf.accounting.image_noise_multiplier`), and releases compose: an image released k times is
protected by z / sqrt(k), or, for releases with different z_i, by (sum_i z_i^-2)^(-1/2) -- Gaussians compose
exactly (:func:`dpact_tf.accounting.image_epsilon`).  Which releases an image's guarantee composes over is the
rule of :func:`dpact_tf.accounting.release_count`: its own releases, and -- when conv1 is trained on the raw
images -- every release (of any image) made after a training step on it in the same run, since the client's
weights depend on it from then on.  A "run" is one lineage of client weights (the edge client's id); a new run
starts from weights that do not depend on earlier runs' images.

The ledger is a file of JSON lines, one line per released batch (``images``: the SHA-256 of each image's uint8
bytes; ``epsilon`` (per coordinate, ``null``: no noise), ``delta``, ``shape`` (the activation's H, W, C),
``train_conv1``, ``kind`` ("train" or "evaluate"), ``run`` and ``time`` (Unix seconds)).  :meth:`PrivacyLedger.record`
checks the budget of every image the batch touches and appends the line -- under an exclusive ``flock``, written
in one ``write`` and ``fsync``-ed -- *before* the caller computes the release, so a crash can make the ledger
count a release that was never sent, never miss one that was.  A line cut short by a crash (no final newline)
is such a never-sent batch and is dropped; a damaged line anywhere else is an error, since the ledger could no
longer vouch for the budget.  Several processes may share one file.

What it does not do: it knows images by their bytes, so a re-encoded, resized or cropped copy of a face is a new
image to it, and other photos of the same person are not linked (the guarantee is per image, not per person);
the labels travel in the clear and no epsilon here covers them; and the per-image epsilon is the Gaussian
mechanism's with the grid's worst-case rounding added to the sensitivity (``grid_rounding`` of
:func:`dpact_tf.accounting.image_noise_multiplier`), a model of the release, not the exact accounting of its
discrete noise table.

Pure Python and NumPy (no TensorFlow): the phone's process runs it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import math
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from dpact_tf import accounting, privacy

__all__ = ["Budget", "DEFAULT_BUDGET", "BudgetExceeded", "PrivacyLedger", "image_hash", "run_epsilon", "KINDS"]

KINDS = ("train", "evaluate")
# Relative slack of the budget comparison: sums of 1/z^2 over many releases carry rounding of ~1e-16 each.
_SLACK = 1e-9


@dataclasses.dataclass(frozen=True)
class Budget:
    """A per-image privacy budget: (epsilon, delta) of the composed Gaussian mechanism of one image's releases.

    The default, epsilon = 8 at delta = 1e-5, is the largest epsilon at which differentially private image
    classifiers are commonly reported (De et al. 2022 train ImageNet and CIFAR-10 at epsilon = 8); it is no
    promise that a face cannot be recognised at 8.  It refuses the paper's method: one release at the paper's
    per-coordinate epsilon = 1 and 224 x 224 x 64 activations costs a per-image epsilon of about 35,700 under the
    Gaussian model and about 72,000 with the grid's worst-case rounding (what the ledger counts), and a tiny
    profile's 32 x 32 x 8 activation about 152 and 270.
    """

    epsilon: float = 8.0   # per-image epsilon (inf: record without a limit)
    delta: float = 1e-5    # the delta at which ``epsilon`` is measured

    def __post_init__(self) -> None:
        if not (self.epsilon > 0) or math.isnan(self.epsilon):
            raise ValueError(f"the per-image budget epsilon must be > 0 (got {self.epsilon}); inf means no limit")
        privacy._check_delta(self.delta)
        try:
            self.max_load
        except ValueError:
            raise ValueError(f"a per-image budget of epsilon={self.epsilon:g} is beyond what the Gaussian accounting "
                             "represents; use inf for no limit") from None

    @property
    def max_load(self) -> float:
        """The largest sum of 1/z^2 within the budget: 1 / z_min^2 with z_min the analytic Gaussian's multiplier
        at (epsilon, delta)."""
        if math.isinf(self.epsilon):
            return math.inf
        return privacy.gaussian_sigma(self.epsilon, self.delta, method="analytic") ** -2


DEFAULT_BUDGET = Budget()


class BudgetExceeded(ValueError):
    """A release would take an image beyond the ledger's budget; nothing was recorded or released."""


def image_hash(image: np.ndarray) -> str:
    """SHA-256 (hex) of one image's uint8 bytes in C order: how the ledger knows an image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"the ledger knows images by their uint8 bytes (got {image.dtype}); hash the image the "
                         "phone holds, before any scaling")
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def run_epsilon(epsilon: Optional[float], delta: float, activation_shape: Sequence[int], *, train_conv1: bool,
                n_train: int, n_test: int, epochs: int, batch_size: int, budget_delta: float = DEFAULT_BUDGET.delta
                ) -> float:
    """The per-image epsilon at ``budget_delta`` that a run will spend on its worst-case image, before it starts:
    :func:`dpact_tf.accounting.release_count`'s ``per_image`` releases at per-coordinate (epsilon, delta), one
    evaluation per epoch (inf without noise).  What the ledger records for that run reaches exactly this."""
    if privacy.check_release_epsilon(epsilon) is None:
        return math.inf
    count = accounting.release_count(train_conv1=train_conv1, n_train=n_train, n_test=n_test, epochs=epochs,
                                     batch_size=batch_size)
    z = accounting.image_noise_multiplier(epsilon, delta, tuple(int(s) for s in activation_shape),
                                          grid_rounding=True)
    return float(accounting.image_epsilon(z, budget_delta, releases=count["per_image"]))


@functools.lru_cache(maxsize=256)
def _inverse_variance(epsilon: Optional[float], delta: float, shape: Tuple[int, int, int]) -> float:
    """1/z^2 of one image release (inf: no noise)."""
    if epsilon is None:
        return math.inf
    return accounting.image_noise_multiplier(epsilon, delta, shape, grid_rounding=True) ** -2


@dataclasses.dataclass(frozen=True)
class _Load:
    """What an image's guarantee composes over: the number of releases, the sum of their 1/z^2, and how many
    of them had no noise (each makes the epsilon infinite)."""

    count: int = 0
    inverse_variance: float = 0.0
    clean: int = 0

    @staticmethod
    def of(inverse_variance: float) -> "_Load":
        """One release with this 1/z^2 (inf: no noise)."""
        return _Load(1, 0.0, 1) if math.isinf(inverse_variance) else _Load(1, inverse_variance, 0)

    def times(self, n: int) -> "_Load":
        return _Load(n * self.count, n * self.inverse_variance, n * self.clean)

    def __add__(self, other: "_Load") -> "_Load":
        return _Load(self.count + other.count, self.inverse_variance + other.inverse_variance, self.clean + other.clean)

    def __sub__(self, other: "_Load") -> "_Load":
        return _Load(self.count - other.count, self.inverse_variance - other.inverse_variance, self.clean - other.clean)

    def epsilon(self, delta: float) -> float:
        if self.clean:
            return math.inf
        if self.inverse_variance <= 0:
            return 0.0
        return float(accounting.image_epsilon(self.inverse_variance ** -0.5, delta))

    def within(self, budget: Budget) -> bool:
        if self.clean:
            return math.isinf(budget.epsilon)
        return self.inverse_variance <= budget.max_load * (1 + _SLACK)


class PrivacyLedger:
    """The releases of one phone (or one user), in the JSON-lines file ``path`` (created if missing).

    Args:
      path: the ledger file; survives restarts, may be shared by several processes.
      budget: the per-image budget every new release is checked against (:data:`DEFAULT_BUDGET`).
    """

    def __init__(self, path: str, *, budget: Budget = DEFAULT_BUDGET) -> None:
        if not path:
            raise ValueError("path must name the ledger file")
        self.path, self.budget = path, budget
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        created = not os.path.exists(path)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        if created:  # the new file's name is durable too
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._offset = 0     # bytes of the file already applied to the state below
        self._records = 0    # lines applied
        # An image's load is its own releases outside the runs that depend on it, plus, per such run, the run's
        # growth since the image's first training step in it.
        self._own: Dict[str, _Load] = {}                  # image -> its releases not covered by a run's growth
        self._deps: Dict[str, Dict[str, _Load]] = {}      # image -> {run: the run's total after that first step}
        self._run_total: Dict[str, _Load] = {}            # run -> all its releases so far
        self._dependents: Dict[str, Set[str]] = {}        # run -> the images its later releases depend on
        with self._locked():
            pass

    # --- file ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the file's exclusive lock, with every line written so far applied."""
        if self._fd < 0:
            raise ValueError(f"the ledger {self.path} is closed")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._refresh()
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _refresh(self) -> None:
        """Apply the lines other processes (or an earlier run) appended; drop a crashed writer's partial line."""
        size = os.fstat(self._fd).st_size
        if size < self._offset:
            raise ValueError(f"{self.path} shrank from {self._offset} to {size} bytes while in use; the ledger "
                             "cannot vouch for the budget any more")
        data = os.pread(self._fd, size - self._offset, self._offset)
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # No final newline: a writer died inside its write (we hold the lock, so none is writing now).  Its
            # batch was never released (the record precedes the release): drop the fragment.
            os.ftruncate(self._fd, self._offset + end)
            os.fsync(self._fd)
        parsed = []
        for n, line in enumerate(data[:end].splitlines(), start=self._records + 1):
            try:
                parsed.append(self._parse(json.loads(line)))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{self.path}: record {n} is damaged ({err}); the ledger cannot vouch for the "
                                 "budget any more -- restore the file from a backup, or move it away knowingly (its "
                                 "releases would then be forgotten)") from None
        for batch in parsed:
            self._apply(*batch)
        self._records += len(parsed)
        self._offset += end

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "PrivacyLedger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- composition --------------------------------------------------------------------------------------
    @staticmethod
    def _parse(record: dict) -> Tuple[List[str], _Load, str, bool]:
        epsilon = record["epsilon"]
        epsilon = None if epsilon is None else float(epsilon)
        shape = tuple(int(s) for s in record["shape"])
        if len(shape) != 3 or record["kind"] not in KINDS or not isinstance(record["train_conv1"], bool):
            raise ValueError(f"not a release record: {record!r:.200}")
        images = [str(h) for h in record["images"]]
        return images, _Load.of(_inverse_variance(epsilon, float(record["delta"]), shape)), str(record["run"]), (
            record["kind"] == "train" and record["train_conv1"])

    def _load(self, image: str) -> _Load:
        load = self._own.get(image, _Load())
        for run, snapshot in self._deps.get(image, {}).items():
            load = load + (self._run_total[run] - snapshot)
        return load

    def _after(self, images: List[str], one: _Load, run: str) -> Dict[str, _Load]:
        """The load of every image a batch (``images``, each release ``one``, in ``run``) touches, after it."""
        dependents = self._dependents.get(run, set())
        batch = one.times(len(images))
        after = {image: self._load(image) + batch for image in dependents}  # every later release counts
        for image in images:
            if image not in dependents:
                after[image] = after.get(image, self._load(image)) + one
        return after

    def _apply(self, images: List[str], one: _Load, run: str, trains: bool) -> None:
        dependents = self._dependents.setdefault(run, set())
        total = self._run_total.get(run, _Load())
        for image in images:
            if image not in dependents:
                self._own[image] = self._own.get(image, _Load()) + one
            total = total + one
        self._run_total[run] = total
        if trains:  # the weights after this step depend on these images: later releases of the run count for them
            for image in images:
                if image not in dependents:
                    self._deps.setdefault(image, {})[run] = total
                    dependents.add(image)

    # --- the API ------------------------------------------------------------------------------------------
    def record(self, images: Union[np.ndarray, Sequence[str]], *, epsilon: Optional[float], delta: float,
               activation_shape: Sequence[int], train_conv1: bool, run: str, kind: str) -> None:
        """Check the budget and record one batch's releases; call it *before* computing the release.

        ``images``: the uint8 batch [N, H, W, 3] (or its :func:`image_hash` list); ``epsilon``/``delta``: the
        per-coordinate parameters of the release (epsilon None: no noise); ``activation_shape``: [H, W, C] of one
        image's activation; ``train_conv1``: conv1 is trained in this run; ``run``: the run's id; ``kind``:
        "train" (a step that updates the weights) or "evaluate".  Raises :class:`BudgetExceeded`, recording
        nothing, if any image whose guarantee the batch touches would exceed the budget.
        """
        hashes = [image_hash(im) for im in images] if isinstance(images, np.ndarray) else [str(h) for h in images]
        if not hashes:
            raise ValueError("a release needs at least one image")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS} (got {kind!r})")
        if not run:
            raise ValueError("run must name the run (the edge client's id)")
        epsilon = privacy.check_release_epsilon(epsilon)
        privacy._check_delta(delta)
        shape = [int(s) for s in activation_shape]
        entry = {"time": time.time(), "run": str(run), "kind": kind, "epsilon": epsilon, "delta": float(delta),
                 "shape": shape, "train_conv1": bool(train_conv1), "images": hashes}
        _, one, _, _ = self._parse(entry)  # validates the shape and computes 1/z^2 outside the lock
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        with self._locked():
            after = self._after(hashes, one, str(run))
            worst_image, worst = max(after.items(), key=lambda kv: (kv[1].clean, kv[1].inverse_variance))
            if not worst.within(self.budget):
                raise BudgetExceeded(
                    f"refused before release: image {worst_image[:12]} would reach a per-image epsilon of "
                    f"{worst.epsilon(self.budget.delta):.4g} at delta={self.budget.delta:g} over {worst.count} "
                    f"releases (now {self._load(worst_image).epsilon(self.budget.delta):.4g}), above the budget "
                    f"epsilon={self.budget.epsilon:g}; nothing was recorded or sent")
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(f"short write to {self.path} ({written} of {len(line)} bytes)")
            os.fsync(self._fd)
            self._refresh()  # applies the line just written

    def releases(self, image: Union[np.ndarray, str]) -> int:
        """How many releases the image's guarantee composes over."""
        with self._locked():
            return self._load(self._key(image)).count

    def image_epsilon(self, image: Union[np.ndarray, str], delta: Optional[float] = None) -> float:
        """The image's per-image epsilon at ``delta`` (default: the budget's) over the recorded releases."""
        with self._locked():
            load = self._load(self._key(image))
        return load.epsilon(self.budget.delta if delta is None else delta)

    def max_image_epsilon(self, delta: Optional[float] = None) -> float:
        """The largest per-image epsilon of any recorded image (0.0 for an empty ledger)."""
        with self._locked():
            images = set(self._own) | set(self._deps)
            loads = [self._load(image) for image in images]
        if not loads:
            return 0.0
        worst = max(loads, key=lambda load: (load.clean, load.inverse_variance))
        return worst.epsilon(self.budget.delta if delta is None else delta)

    @property
    def records(self) -> int:
        """Released batches recorded (every process's)."""
        with self._locked():
            return self._records

    @staticmethod
    def _key(image: Union[np.ndarray, str]) -> str:
        return image if isinstance(image, str) else image_hash(image)
