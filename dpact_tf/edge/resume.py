"""The client's durable run state: its id, its acknowledged progress and a write-ahead outbox of requests.

Why: a restarted client that released its batches afresh would give the server a second noisy release of the
same images -- and a server can force restarts.  So a client run keeps, in a directory:

* ``run.json`` -- the client id (the server keys its progress by it), the settings of the run, the last step
  whose reply the client applied (``step``), the last epoch whose evaluation finished, the client head's
  checkpoint at ``step``, and whether the run finished.  Replaced atomically (write, fsync, rename).
* ``outbox/<name>`` -- each request, written (and fsync-ed) *before* it is sent: the hashes of its images and
  the serialized request (a :class:`TrainStepRequest` or :class:`EvaluateRequest` without session id).  After a
  restart the client resends these exact bytes instead of releasing the batch again; the server answers an
  applied step from its stored reply (:mod:`dpact_tf.edge.server`).  A train request is dropped once its reply
  is applied and persisted; an epoch's evaluation requests once the epoch's evaluation finished.
* ``head/`` -- the client head's weights after ``step`` (for heads that can save them).

Run again with the same settings, a client resumes the unfinished run: the same id, the batches up to ``step``
skipped, the in-flight request resent.  A finished run (or ``new_run=True``) starts a new id.  No TensorFlow.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import uuid
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["RunState"]


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


class RunState:
    """One client run's state in ``directory`` (created if missing).

    Args:
      directory: where the run's files live (the edge CLI: ``<ledger dir>/run``).
      settings: what makes two invocations the same run (server, data, model, epsilon, seed, ...): an unfinished
        run with other settings is not resumed (``ValueError``) unless ``new_run``.
      new_run: abandon an unfinished run and start a new one (its releases stay in the ledger).
      client_prefix: a new run's id is ``<client_prefix>/<random>`` (the client id its server token was issued
        to, which may act for such ids only); without it, the random part alone.
    """

    def __init__(self, directory: str, *, settings: Dict[str, Any], new_run: bool = False,
                 client_prefix: Optional[str] = None) -> None:
        if not directory:
            raise ValueError("directory must name a folder for the client's run state")
        self.directory = directory
        self.outbox = os.path.join(directory, "outbox")
        self.head_dir = os.path.join(directory, "head")
        self._path = os.path.join(directory, "run.json")
        settings = json.loads(json.dumps(settings))  # what a reload gives back: lists, not tuples
        state = None
        if os.path.exists(self._path):
            with open(self._path) as fh:
                state = json.load(fh)
        if state is not None and not state["finished"] and not new_run and state["settings"] != settings:
            changed = sorted(k for k in set(settings) | set(state["settings"])
                             if settings.get(k) != state["settings"].get(k))
            raise ValueError(f"{directory} holds an unfinished run of client {state['client_id']} with other "
                             f"settings ({', '.join(changed)} differ); re-run with its settings to resume it, or "
                             "start a new run (its releases stay in the ledger)")
        self.resumed = state is not None and not state["finished"] and not new_run
        if not self.resumed:
            for sub in (self.outbox, self.head_dir):
                shutil.rmtree(sub, ignore_errors=True)
            run = uuid.uuid4().hex
            state = {"client_id": f"{client_prefix}/{run}" if client_prefix else run, "settings": settings,
                     "step": 0, "evaluated_epoch": 0,
                     "head": None, "finished": False}
        os.makedirs(self.outbox, exist_ok=True)
        os.makedirs(self.head_dir, exist_ok=True)
        self._state = state
        if not self.resumed:
            self._save()

    def _save(self) -> None:
        _write_atomic(self._path, json.dumps(self._state, indent=1).encode())

    @property
    def client_id(self) -> str:
        return self._state["client_id"]

    @property
    def step(self) -> int:
        """The last step whose reply the client applied (and whose head it saved)."""
        return int(self._state["step"])

    @property
    def finished(self) -> bool:
        return bool(self._state["finished"])

    @property
    def evaluated_epoch(self) -> int:
        """The last epoch whose evaluation finished."""
        return int(self._state["evaluated_epoch"])

    @property
    def head_checkpoint(self) -> Optional[str]:
        """The path prefix of the head's weights after :attr:`step` (None: not saved)."""
        name = self._state["head"]
        return None if name is None else os.path.join(self.head_dir, name)

    def head_prefix(self, step: int) -> str:
        return os.path.join(self.head_dir, f"step-{int(step):08d}")

    # --- the outbox ---------------------------------------------------------------------------------------
    def put(self, name: str, images: List[str], request: bytes) -> None:
        """Persist a request before sending it: the hashes of its images and its serialized bytes."""
        header = json.dumps({"images": list(images)}).encode() + b"\n"
        _write_atomic(os.path.join(self.outbox, name), header + request)

    def pending(self, name: str) -> Optional[Tuple[List[str], bytes]]:
        """(image hashes, request bytes) persisted under ``name``, or None."""
        path = os.path.join(self.outbox, name)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as fh:
            data = fh.read()
        header, _, request = data.partition(b"\n")
        return json.loads(header)["images"], request

    def drop(self, pattern: str) -> None:
        for path in glob.glob(os.path.join(self.outbox, pattern)):
            os.remove(path)

    # --- progress -----------------------------------------------------------------------------------------
    def acknowledge(self, step: int, head_checkpoint: Optional[str] = None) -> None:
        """Step ``step``'s reply is applied (and the head saved at ``head_checkpoint``): record it, then drop
        its request and older head checkpoints."""
        self._state["step"] = int(step)
        self._state["head"] = None if head_checkpoint is None else os.path.basename(head_checkpoint)
        self._save()
        self.drop(f"train-{int(step):08d}")
        keep = self._state["head"]
        for path in glob.glob(os.path.join(self.head_dir, "step-*")):
            if keep is None or not os.path.basename(path).startswith(keep + "."):
                os.remove(path)

    def evaluated(self, epoch: int) -> None:
        """Epoch ``epoch``'s evaluation finished: record it and drop its requests."""
        self._state["evaluated_epoch"] = int(epoch)
        self._save()
        self.drop(f"eval-{int(epoch):04d}-*")

    def finish(self) -> None:
        """The run is complete: the next run with this directory starts a new client id."""
        self._state["finished"] = True
        self._save()
        self.drop("*")
