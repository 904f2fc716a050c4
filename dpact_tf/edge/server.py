"""The edge server: one server model, many phones, over gRPC (``dpact_edge.proto``).

Per-client sessions (a client id that never applied a step is forgotten when its session expires): a client
opens one with :meth:`EdgeService.Handshake` (stating ε, δ, the cut, the
activation shape and the upload encoding; the server refuses a cut or shape its model does not have) and
numbers its steps 1, 2, 3, ...; a client's handshake is forgotten after ``idle_ttl`` seconds without calls.  Behind a
server with tokens (:mod:`dpact_tf.edge.auth`) a token issued to ``alice`` opens sessions for ``alice`` and
``alice/<run>`` only, and a call on another client's session is refused.  A client with noise (ε stated) uploads the integer levels of
:mod:`dpact_tf.grid` ("grid" encoding; a float encoding of a noisy release is refused at the handshake), and
every upload is checked against the mechanism ``grid.check_release(ε, δ)`` it declared: the grid step, and
levels within [-T, D + T].  A client without noise uploads floats (float32, float16, uint8).  The server keeps,
per client, the last applied step id, the digest of its request and its reply (in memory until a checkpoint
writes it to the client's reply file, then read back only for a retry; a reply file is removed ``reply_ttl``
seconds after its client's last step).  A retry of the last step with
the identical request returns the stored reply and applies nothing (idempotent step ids); any other step id
that is not the next one is refused.

**The server serialises steps.** Each TrainStep is one SGD update of the shared model computed on the
batch one client sent, exactly the in-process step of :class:`dpact_tf.split.SplitTrainer`.  Batching the
uploads of several clients into one update would change the optimisation (a different batch size per
update, so a different learning-rate/momentum trajectory), make each phone's latency depend on the slowest
phone of the batch, and break the per-client replay of a step after a crash.  One step already occupies
every core of the machine (or, under tf.distribute, every GPU), so serialising costs no throughput on a
busy server; the gRPC thread pool only overlaps decoding and network I/O.

**No client can damage the shared model.** The declared mechanism is bounded at the handshake: a noisy
client's delta at most ``max_delta`` and its epsilon at least ``min_epsilon`` (by default the lower end of
:func:`dpact_tf.grid.certified_epsilons` at its delta), else FAILED_PRECONDITION, reason "privacy_bounds".
Every upload is checked against what the mechanism its client declared can produce: a grid upload's step and
levels in [-T, D + T] and levels that look like its noise (:func:`~dpact_tf.edge.wire.check_levels`), a
no-noise upload's values in [0, R] (``activation_range``), on training and evaluation calls alike.  Behind the checks, a step whose update would
leave the loss, dL/d(activation), a weight or an optimizer slot non-finite is rolled back
(:class:`~dpact_tf.edge.model.UnsafeStep`); it is refused and never reaches the journal.

The learning rate of each step comes from ``schedule`` (:mod:`dpact_tf.edge.schedule`: per server step, or
per epoch of each client's declared data), and the journal records it with the step
(:mod:`dpact_tf.edge.store`).

Bad input is refused with a gRPC status and nothing changes: a wrong token -> UNAUTHENTICATED; another
client's id or session -> PERMISSION_DENIED; an unknown or expired session -> NOT_FOUND; a step id already applied -> ALREADY_EXISTS; a gap in step ids -> FAILED_PRECONDITION;
a token with ``max_ids_per_token`` client ids in open sessions opening another -> RESOURCE_EXHAUSTED;
a wrong shape, encoding, label, NaN/inf, a value the declared mechanism cannot produce, a step that would
make the model non-finite -> INVALID_ARGUMENT; a handshake with another cut or activation shape ->
FAILED_PRECONDITION; a message above the size limit -> RESOURCE_EXHAUSTED (gRPC's own check; the gate logs
it).  Every refusal by the service is reported through
``on_event("refused", {"client_id", "code", "reason", "message"})``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import secrets
import threading
import time
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import grpc
import numpy as np

from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge import dpact_edge_pb2_grpc as pb_grpc
from dpact_tf.edge.auth import caller, owns
from dpact_tf.edge.model import ServerHalf, UnsafeStep
from dpact_tf.edge.schedule import Schedule
from dpact_tf.edge.store import CheckpointStore
from dpact_tf.edge.wire import (DEFAULT_MAX_DELTA, HandshakeError, MechanismError, PolicyError, check_batch,
                                check_handshake, check_levels, request_digest, to_proto)
from dpact_tf.grid import GridSpec
from dpact_tf.privacy import PAPER_ACTIVATION_RANGE

__all__ = ["EdgeService"]


@dataclasses.dataclass
class _Client:
    client_id: str
    session_id: str = ""
    encoding: str = "float32"
    spec: Optional[GridSpec] = None  # the release mechanism declared at the handshake (None: no noise)
    last_step: int = 0
    digest: bytes = b""
    reply: Optional[pb.TrainStepReply] = None  # the last reply while it is not in a checkpoint's reply file
    dirty: bool = False  # the reply changed since the last checkpoint
    images: int = 0  # images of the applied steps
    epoch_images: int = 0  # images in one epoch of its data, as declared (0: not declared)
    seen: float = 0.0  # time.monotonic() of the session's last call


class EdgeService(pb_grpc.EdgeTrainingServicer):
    """The gRPC servicer: sessions, step ids, checks, journal and checkpoints around a :class:`ServerHalf`.

    Args:
      half: the server model and its optimizer.
      num_classes, cut, activation_shape: what a client's handshake must agree with.
      max_batch: the largest batch accepted in one call.
      activation_range: R, the largest value of a clipped Eq. (1) coordinate
        (:func:`dpact_tf.privacy.lrn_output_bound` of the model's LRN constants): a no-noise upload must lie
        in [0, R].
      schedule: the learning rate of each step (None: the half's own decay over server steps).
      store: where checkpoints, replies and the step journal go (None: in memory only).
      checkpoint_every: checkpoint after every this many server steps (0: only on :meth:`save`).
      idle_ttl: seconds without calls after which a client's handshake is forgotten (NOT_FOUND: the client
        handshakes again).
      reply_ttl: seconds a client's stored reply is kept after its last step (to answer a retry of that step, after
        a crash of the client or the server); older reply files are removed at a checkpoint.
      min_epsilon: the smallest epsilon a noisy client may declare (None: the lower end of
        :func:`dpact_tf.grid.certified_epsilons` at the client's delta).
      max_delta: the largest delta a noisy client may declare.
      max_ids_per_token: client ids with an open session per token (``<id>`` and ``<id>/<run>``); a handshake for
        one more is refused RESOURCE_EXHAUSTED.
      on_event: callback ``(name, info)`` for "handshake", "step", "checkpoint", "restored", "journal_damaged",
        "refused" (no printing here; :mod:`dpact_tf.edge.ops` logs and counts them).
    """

    def __init__(self, half: ServerHalf, *, num_classes: int, cut: str, activation_shape: Sequence[int],
                 max_batch: int = 256, activation_range: float = PAPER_ACTIVATION_RANGE,
                 schedule: Optional[Schedule] = None, store: Optional[CheckpointStore] = None,
                 checkpoint_every: int = 0, idle_ttl: float = 3600.0, reply_ttl: float = 7 * 86400.0,
                 min_epsilon: Optional[float] = None, max_delta: float = DEFAULT_MAX_DELTA,
                 max_ids_per_token: int = 64,
                 on_event: Optional[Callable[[str, dict], None]] = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (got {max_batch})")
        if not (math.isfinite(activation_range) and activation_range > 0):
            raise ValueError(f"activation_range must be finite and > 0 (got {activation_range})")
        if not idle_ttl > 0 or not reply_ttl > 0:
            raise ValueError(f"idle_ttl and reply_ttl must be > 0 seconds (got {idle_ttl}, {reply_ttl})")
        if min_epsilon is not None and not (math.isfinite(min_epsilon) and min_epsilon > 0):
            raise ValueError(f"min_epsilon must be finite and > 0, or None for the grid's certified floor (got "
                             f"{min_epsilon})")
        if not 0 < max_delta < 1:
            raise ValueError(f"max_delta must be in (0, 1) (got {max_delta})")
        if max_ids_per_token < 1:
            raise ValueError(f"max_ids_per_token must be >= 1 (got {max_ids_per_token})")
        if checkpoint_every < 0 or (checkpoint_every and store is None):
            raise ValueError("checkpoint_every must be >= 0 and needs a store (a checkpoint directory)")
        self.half, self.schedule = half, schedule
        self.num_classes, self.cut, self.max_batch = int(num_classes), cut, int(max_batch)
        self.activation_shape = tuple(int(s) for s in activation_shape)
        self.activation_range, self.idle_ttl = float(activation_range), float(idle_ttl)
        self.reply_ttl = float(reply_ttl)
        self.min_epsilon, self.max_delta = min_epsilon, float(max_delta)
        self.max_ids_per_token = int(max_ids_per_token)
        self.store, self.checkpoint_every = store, int(checkpoint_every)
        self.on_event = on_event or (lambda name, info: None)
        self._lock = threading.Lock()
        self._clients: Dict[str, _Client] = {}
        self._sessions: Dict[str, str] = {}  # session id -> client id
        self._swept = time.monotonic()  # the last sweep of expired sessions
        self._waiting = 0  # calls waiting for the step lock (the queue-depth gauge)
        self._count_lock = threading.Lock()
        if store is not None:
            try:
                self._restore()
            except BaseException:
                store.close()  # release the directory's lock: the caller may move the directory and retry
                raise

    # --- persistence -------------------------------------------------------------------------------------
    def _restore(self) -> None:
        state = self.store.load_state()
        if state is not None:
            self.half.checkpoint.read(self.store.checkpoint_prefix(state)).assert_existing_objects_matched()
            for c in state.clients:
                self._clients[c.client_id] = _Client(c.client_id, last_step=c.last_step, digest=c.request_digest,
                                                     images=c.images, epoch_images=c.epoch_images)
        base = state.server_steps if state is not None else 0
        if self.half.steps != base:
            raise RuntimeError(f"checkpoint holds {self.half.steps} optimizer steps but its state says {base}")
        replayed, refused = 0, None
        for record in self.store.journal_records():
            if record.server_steps <= base:
                continue  # already in the checkpoint (killed between checkpoint and journal reset)
            refused = self._replay(record)
            if refused:
                break
            replayed += 1
        dropped = self.store.recover_journal(refused)
        if dropped:
            self.on_event("journal_damaged", dropped)
        if state is None and not replayed:
            self._save()  # a fresh directory: checkpoint the initial model, so a restart never depends on the seed
        self.on_event("restored", {"server_steps": self.half.steps, "replayed": replayed,
                                   "clients": len(self._clients)})

    def _replay(self, record: pb.JournalRecord) -> Optional[str]:
        """Apply one journal record; why it cannot be applied, or None."""
        client = self._clients.get(record.client_id) or _Client(record.client_id)
        if record.server_steps != self.half.steps + 1 or record.request.step != client.last_step + 1:
            return (f"journal record of server step {record.server_steps} (client {record.client_id!r} step "
                    f"{record.request.step}) does not follow server step {self.half.steps}")
        try:
            act, labels = check_batch(record.request.activation, record.request.labels,
                                      activation_shape=self.activation_shape,
                                      encoding=record.request.activation.encoding, num_classes=self.num_classes,
                                      max_batch=self.max_batch, value_range=self.activation_range)
            self._apply(client, record.request, act, labels, learning_rate=record.learning_rate, journal=False)
        except ValueError as err:  # includes UnsafeStep and a learning rate that is not finite and > 0
            return f"journal record of server step {record.server_steps} cannot be applied: {err}"
        self._clients[client.client_id] = client
        return None

    def save(self) -> None:
        """Checkpoint now (the caller holds no lock)."""
        with self._lock:
            self._save()

    def _save(self) -> None:
        start = time.monotonic()
        state = pb.ServerState(server_steps=self.half.steps)
        replies = {}
        for c in self._clients.values():
            if not c.last_step:
                continue  # a client id without steps has no progress to keep
            state.clients.add(client_id=c.client_id, last_step=c.last_step, request_digest=c.digest,
                              images=c.images, epoch_images=c.epoch_images)
            if c.dirty and c.reply is not None:
                replies[c.client_id] = (c.last_step, c.digest, c.reply)
        self.store.save(self.half.checkpoint, state, replies)
        for c in self._clients.values():  # every reply is on disk now: memory holds those of later steps only
            c.dirty, c.reply = False, None
        removed = self.store.remove_old_replies(self.reply_ttl)
        self.on_event("checkpoint", {"server_steps": state.server_steps, "replies_written": len(replies),
                                     "replies_removed": removed, "seconds": time.monotonic() - start})

    # --- the three calls ---------------------------------------------------------------------------------
    def Handshake(self, request: pb.HandshakeRequest, context: grpc.ServicerContext) -> pb.HandshakeReply:
        cid, principal = request.client_id, caller()
        if not cid or len(cid) > 128:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "client_id must be 1..128 characters",
                         principal, "handshake")
        if principal is not None and not owns(principal, cid):
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"this token was issued to client {principal!r}: it opens sessions for {principal!r} or "
                         f"{principal + '/<run>'!r}, not {cid!r}", principal, "impersonation")
        try:
            spec = check_handshake(request, cut=self.cut, activation_shape=self.activation_shape,
                                   needs_epoch_size=getattr(self.schedule, "needs_epoch_size", False),
                                   min_epsilon=self.min_epsilon, max_delta=self.max_delta)
        except PolicyError as err:
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, str(err), cid, "privacy_bounds")
        except HandshakeError as err:
            code = grpc.StatusCode.FAILED_PRECONDITION if err.precondition else grpc.StatusCode.INVALID_ARGUMENT
            self._refuse(context, code, str(err), cid, "handshake")
        with self._lock:
            self._sweep()
            if principal is not None and (cid not in self._clients or not self._clients[cid].session_id):
                live = sum(owns(principal, other) for other in self._sessions.values())
                if live >= self.max_ids_per_token:
                    self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 f"the token of {principal!r} has {live} client ids with open sessions, the most "
                                 f"this server keeps per token; reuse one, or wait {self.idle_ttl:g} s for an "
                                 "idle one to expire", cid, "too_many_ids")
            client = self._clients.setdefault(cid, _Client(cid))
            self._sessions.pop(client.session_id, None)  # one live session per client
            client.session_id = secrets.token_hex(16)
            client.encoding, client.spec, client.seen = request.encoding, spec, time.monotonic()
            if request.HasField("epoch_images"):
                client.epoch_images = int(request.epoch_images)
            self._sessions[client.session_id] = cid
            reply = pb.HandshakeReply(session_id=client.session_id, last_step=client.last_step,
                                      num_classes=self.num_classes, max_batch=self.max_batch,
                                      server_steps=self.half.steps)
        self.on_event("handshake", {"client_id": cid, "epsilon": request.epsilon if spec else None,
                                    "delta": request.delta, "encoding": request.encoding,
                                    "last_step": reply.last_step})
        return reply

    def TrainStep(self, request: pb.TrainStepRequest, context: grpc.ServicerContext) -> pb.TrainStepReply:
        start = time.monotonic()
        with self._queued():
            client = self._client(request.session_id, context)
            if request.step == client.last_step and client.last_step and request_digest(request) == client.digest:
                stored = client.reply or self._stored_reply(client)  # a retry: answered, not applied again
                if stored is None:
                    self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION,
                                 f"step {request.step} was applied but its stored reply was lost (removed "
                                 f"{self.reply_ttl:g} s after the step, or a damaged file in the checkpoint "
                                 "directory); this run cannot resume it", client.client_id, "reply_lost")
                reply = pb.TrainStepReply()
                reply.CopyFrom(stored)
                reply.replayed = True
                return reply
            if request.step <= client.last_step:
                self._refuse(context, grpc.StatusCode.ALREADY_EXISTS,
                             f"step {request.step} was already applied (last applied step of this client: "
                             f"{client.last_step}); a retry must resend the identical request, new work is "
                             f"step {client.last_step + 1}", client.client_id, "step_order")
            if request.step != client.last_step + 1:
                self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION,
                             f"out-of-order step {request.step}: the next step of this client is "
                             f"{client.last_step + 1}", client.client_id, "step_order")
            act, labels = self._check(request.activation, request.labels, client, context)
            try:
                reply = self._apply(client, request, act, labels, journal=True)
            except UnsafeStep as err:
                self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(err), client.client_id, "unsafe_update")
            server_steps = self.half.steps
            if self.checkpoint_every and server_steps % self.checkpoint_every == 0:
                self._save()
            client.seen = time.monotonic()  # idle time counts from the end of a call, however long it took
        self.on_event("step", {"client_id": client.client_id, "step": request.step, "loss": reply.loss,
                               "server_steps": server_steps, "seconds": time.monotonic() - start})
        return reply

    def Evaluate(self, request: pb.EvaluateRequest, context: grpc.ServicerContext) -> pb.EvaluateReply:
        with self._queued():
            client = self._client(request.session_id, context)
            act, labels = self._check(request.activation, request.labels, client, context)
            loss_sum, correct = self.half.evaluate(act, labels)
            client.seen = time.monotonic()
        return pb.EvaluateReply(loss_sum=loss_sum, correct=correct, count=len(labels))

    # --- helpers -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _queued(self) -> Iterator[None]:
        """The step lock, counting the calls that wait for it (:meth:`queue_depth`)."""
        with self._count_lock:
            self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            with self._count_lock:
                self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    def queue_depth(self) -> int:
        """Calls whose request arrived and that wait for the step lock (steps are serialised)."""
        return self._waiting

    def _client(self, session_id: str, context: grpc.ServicerContext) -> _Client:
        cid, principal = self._sessions.get(session_id), caller()
        if cid is None:
            self._refuse(context, grpc.StatusCode.NOT_FOUND,
                         "unknown session (the server may have restarted); call Handshake again", principal, "session")
        if principal is not None and not owns(principal, cid):
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED,
                         f"this session belongs to client {cid!r}, not to {principal!r} whose token this call carries",
                         principal, "impersonation")
        client, now = self._clients[cid], time.monotonic()
        if now - client.seen > self.idle_ttl:
            self._expire(session_id)
            self._refuse(context, grpc.StatusCode.NOT_FOUND, f"session expired after {self.idle_ttl:g} s without "
                         "calls; call Handshake again", cid, "session")
        client.seen = now
        return client

    def _expire(self, session_id: str) -> None:
        """Close a session; forget its client id if it never applied a step (so idle handshakes leave nothing)."""
        cid = self._sessions.pop(session_id, None)
        client = self._clients.get(cid) if cid is not None else None
        if client is not None:
            client.session_id = ""
            if not client.last_step:
                del self._clients[cid]

    def _sweep(self) -> None:
        """Forget the handshakes idle for more than ``idle_ttl`` (at most once every ``idle_ttl`` / 8 s)."""
        now = time.monotonic()
        if now - self._swept < min(self.idle_ttl / 8, 60.0):
            return
        self._swept = now
        for session_id, cid in list(self._sessions.items()):
            if now - self._clients[cid].seen > self.idle_ttl:
                self._expire(session_id)

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str,
                client_id: Optional[str] = None, reason: str = "input") -> None:
        """Report a refusal through ``on_event`` and end the call with ``code`` (never returns)."""
        self.on_event("refused", {"client_id": client_id, "code": code.name, "reason": reason, "message": message})
        context.abort(code, message)

    def _check(self, activation: pb.Activation, labels, client: _Client,
               context: grpc.ServicerContext) -> Tuple[np.ndarray, np.ndarray]:
        try:
            batch = check_batch(activation, labels, activation_shape=self.activation_shape,
                                encoding=client.encoding, num_classes=self.num_classes, max_batch=self.max_batch,
                                value_range=self.activation_range)
            if client.spec is not None:
                check_levels(activation, client.spec)
            return batch
        except MechanismError as err:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(err), client.client_id, "range")
        except ValueError as err:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(err), client.client_id)

    def _stored_reply(self, client: _Client) -> Optional[pb.TrainStepReply]:
        """The client's last reply from its file (None without a store, or if it is missing or damaged)."""
        stored = self.store.load_reply(client.client_id) if self.store is not None else None
        if stored and stored[0].step == client.last_step and stored[0].request_digest == client.digest:
            return stored[1]
        return None

    def _learning_rate(self, client: _Client) -> float:
        if self.schedule is None:
            return self.half.default_learning_rate(self.half.steps)
        return self.schedule.rate(server_steps=self.half.steps, client_images=client.images,
                                  epoch_images=client.epoch_images)

    def _apply(self, client: _Client, request: pb.TrainStepRequest, act: np.ndarray, labels: np.ndarray, *,
               journal: bool, learning_rate: Optional[float] = None) -> pb.TrainStepReply:
        rate = self._learning_rate(client) if learning_rate is None else learning_rate
        grad, loss, correct = self.half.train_step(act, labels, learning_rate=rate)  # UnsafeStep: nothing changed
        reply = pb.TrainStepReply(step=request.step, grad=to_proto(grad, "float32"), loss=loss, correct=correct)
        if journal and self.store is not None:
            body = pb.TrainStepRequest(step=request.step, activation=request.activation, labels=request.labels)
            self.store.append(pb.JournalRecord(server_steps=self.half.steps, client_id=client.client_id,
                                               request=body, learning_rate=rate))
        client.last_step, client.digest, client.reply = request.step, request_digest(request), reply
        client.images += len(labels)
        client.dirty = True
        return reply

    def session_count(self) -> int:
        """Sessions that have not expired."""
        now, clients = time.monotonic(), dict(self._clients)  # read without the lock: a scrape never waits
        seen = [clients[cid].seen for cid in list(self._sessions.values()) if cid in clients]
        return sum(now - t <= self.idle_ttl for t in seen)

    def client_count(self) -> int:
        """Client ids the server keeps progress for."""
        return len(self._clients)

    def client_steps(self) -> Dict[str, int]:
        """Last applied step id per client id."""
        with self._lock:
            return {cid: c.last_step for cid, c in self._clients.items()}
