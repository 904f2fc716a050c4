"""Who may call the edge server, decided before any work: per-client tokens and the gate in front of the service.

**Per-client tokens.** The operator issues each phone (or each person running the ``train`` command) its own
token with ``python -m dpact_tf.edge issue-token --client-id ID --tokens-file F``.  A token is
``<client id>.<43 random URL-safe characters>`` (256 bits from :mod:`secrets`); the server keeps only its
SHA-256 in the tokens file, one ``<client id> sha256:<hex>`` line per client, so the file can be read without
revealing a token (a random 256-bit secret needs no slow password hash).  Issuing a token again for an id
replaces its line, which revokes the old one; deleting the line revokes it.  The server re-reads the file
when it changes, so a new phone needs no restart.

A token issued to ``alice`` may open sessions for the client id ``alice`` and for ``alice/<anything>`` (the
``train`` command names each run ``<id>/<run>``), and for no other: the service compares the session's
client id with :func:`caller` and refuses another's with PERMISSION_DENIED.

**The gate** (:class:`Gate`, a ``grpc.ServerInterceptor``) runs in gRPC's polling thread on the call's metadata
alone, before a worker thread reads the request body:

* a call without a known token is refused UNAUTHENTICATED by a handler that never reads the body (gRPC
  Python buffers a unary request in full before its handler runs; a streaming handler that aborts at once
  releases the stream instead), so a slow unauthenticated upload costs the server one short task;
* an authenticated call runs with its client id in :func:`caller`; a client id with ``max_calls_per_client``
  calls already in flight gets RESOURCE_EXHAUSTED before its body is read, so one token holder cannot tie up
  the worker threads with slow uploads;
* a call whose request has not arrived ``upload_grace_seconds`` after it began is a slow upload: one client id
  (or, without tokens, one peer address) may have ``max_slow_uploads`` of them in flight, and a slow upload
  beyond them is cancelled (reason "slow_upload"); none is waited for past ``max_upload_seconds`` (reason
  "upload_timeout").  So slow uploads hold a bounded number of worker threads per client or address for a
  bounded time, while calls whose request arrives promptly are never counted;
* an authenticated call whose request never arrives is reported as refused, reason "upload_ended", with its
  client id: gRPC's core refuses a message above the size limit (RESOURCE_EXHAUSTED to the client) by
  cancelling the call before Python sees a byte of it, so the gate sees the same thing as a client that
  cancelled or went away mid-upload, and its log line says both;
* an exception escaping a handler is reported (``on_event("error", ...)``, with its traceback) and answered
  INTERNAL; the number of calls in flight is reported as ``on_event("inflight", {"calls": n})``.

Health checking and reflection (``grpc.health.v1``, ``grpc.reflection``) pass without a token, as load
balancers and ``grpcurl`` expect.
"""
from __future__ import annotations

import contextvars
import hashlib
import os
import re
import secrets
import threading
import time
import traceback
from typing import Callable, Dict, Optional, Sequence

import grpc

from dpact_tf.edge.wire import TOKEN_HEADER

__all__ = ["TokenBook", "Gate", "issue_token", "caller", "owns", "check_client_id", "OPEN_SERVICES"]

_CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")  # callable without a token
_CALLER: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("dpact_edge_caller", default=None)


def caller() -> Optional[str]:
    """The client id whose token authenticated the current call (None when the server checks no tokens)."""
    return _CALLER.get()


def owns(principal: str, client_id: str) -> bool:
    """Whether a token issued to ``principal`` may act as ``client_id``: itself or ``principal/<run>``."""
    return client_id == principal or client_id.startswith(principal + "/")


def check_client_id(client_id: str) -> str:
    if not _CLIENT_ID.fullmatch(client_id or ""):
        raise ValueError(f"a client id for a token is 1..64 letters, digits, '_' or '-' (got {client_id!r})")
    return client_id


def _digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def _read_lines(path: str) -> Dict[str, str]:
    """client id -> digest, from a tokens file (``ValueError`` naming a malformed line)."""
    out: Dict[str, str] = {}
    with open(path) as fh:
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or not _CLIENT_ID.fullmatch(parts[0]) or not re.fullmatch(r"sha256:[0-9a-f]{64}",
                                                                                       parts[1]):
                raise ValueError(f"{path}:{number}: expected '<client id> sha256:<64 hex digits>'")
            out[parts[0]] = parts[1]
    return out


def issue_token(path: str, client_id: str) -> str:
    """A new token for ``client_id``: its digest replaces the id's line in ``path`` (created with mode 0600,
    rewritten atomically); the token itself is returned and stored nowhere."""
    check_client_id(client_id)
    lines = _read_lines(path) if os.path.exists(path) else {}
    token = f"{client_id}.{secrets.token_urlsafe(32)}"
    lines[client_id] = _digest(token)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# dpact edge tokens: <client id> sha256:<digest of its token>; written by issue-token\n")
        fh.writelines(f"{cid} {digest}\n" for cid, digest in sorted(lines.items()))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return token


class TokenBook:
    """The digests of the clients' tokens, from ``path`` (re-read when the file changes, at most once a
    second) or, for tests, from ``tokens`` (client id -> token)."""

    def __init__(self, path: Optional[str] = None, *, tokens: Optional[Dict[str, str]] = None) -> None:
        if (path is None) == (tokens is None):
            raise ValueError("give a tokens file (path) or, in a test, the tokens themselves")
        self.path = path
        self._lock = threading.Lock()
        self._stamp: Optional[tuple] = None
        self._checked = 0.0
        self._by_digest: Dict[str, str] = {}
        if tokens is not None:
            self._by_digest = {_digest(t): check_client_id(cid) for cid, t in tokens.items()}
        else:
            if not os.path.exists(path):
                raise ValueError(f"tokens file {path} not found; create it with: python -m dpact_tf.edge "
                                 f"issue-token --client-id ID --tokens-file {path}")
            self._reload()

    def _reload(self) -> None:
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._by_digest = {digest: cid for cid, digest in _read_lines(self.path).items()}
            self._stamp = stamp

    def principal(self, token: str) -> Optional[str]:
        """The client id ``token`` was issued to, or None."""
        if self.path is not None and time.monotonic() - self._checked > 1.0:
            with self._lock:
                self._checked = time.monotonic()
                try:
                    self._reload()
                except (OSError, ValueError):
                    pass  # keep the last good book while the file is being replaced or is broken
        return self._by_digest.get(_digest(token)) if token else None

    def __len__(self) -> int:
        return len(self._by_digest)


def _bearer(metadata: Sequence) -> str:
    value = dict(metadata or ()).get(TOKEN_HEADER, "")
    value = value.decode() if isinstance(value, bytes) else str(value)
    return value[len("Bearer "):] if value.startswith("Bearer ") else ""


class Gate(grpc.ServerInterceptor):
    """Authenticates every call on its metadata and bounds the calls in flight per client (module docstring).

    Args:
      tokens: the clients' tokens, or None to let every call through as an anonymous caller (a loopback or
        trusted network; :func:`caller` is then None).
      on_event: ``(name, info)`` callback: "refused" (unauthenticated, too many calls in flight, or a request
        that never arrived), "error", "inflight".
      max_calls_per_client: calls of one client id in flight at once (the next one is refused).
      max_message_bytes: the server's message size limit, named in the log line of a call whose request never
        arrived (None: not known here).
      upload_grace_seconds: a request that has not arrived this long after its call began is a slow upload.
      max_slow_uploads: slow uploads in flight at once per client id (with tokens) or per peer address (without);
        a slow upload beyond them is cancelled, so slow uploads hold at most this many worker threads per client
        or address, and calls whose request arrives in time are never counted.
      max_upload_seconds: a request that has not arrived this long after its call began is cancelled.
    """

    def __init__(self, tokens: Optional[TokenBook], *, on_event: Callable[[str, dict], None],
                 max_calls_per_client: int = 2, max_message_bytes: Optional[int] = None,
                 upload_grace_seconds: float = 2.0, max_slow_uploads: int = 2,
                 max_upload_seconds: float = 60.0) -> None:
        if max_calls_per_client < 1 or max_slow_uploads < 1:
            raise ValueError(f"max_calls_per_client and max_slow_uploads must be >= 1 (got {max_calls_per_client}, "
                             f"{max_slow_uploads})")
        if not 0 < upload_grace_seconds <= max_upload_seconds:
            raise ValueError(f"need 0 < upload_grace_seconds <= max_upload_seconds (got {upload_grace_seconds}, "
                             f"{max_upload_seconds})")
        self.tokens, self.on_event, self.max_calls_per_client = tokens, on_event, int(max_calls_per_client)
        self.upload_grace_seconds, self.max_upload_seconds = float(upload_grace_seconds), float(max_upload_seconds)
        self.max_slow_uploads = int(max_slow_uploads)
        self._slow: Dict[str, int] = {}  # slow uploads in flight per client id or peer address
        limit = f"{max_message_bytes:,} bytes" if max_message_bytes else "the server's"
        self._ended = ("the call ended before its request arrived: the client cancelled it or went away during "
                       f"the upload, or the request was above the message size limit ({limit}; the client was "
                       "answered RESOURCE_EXHAUSTED)")
        self._lock = threading.Lock()
        self._calls: Dict[Optional[str], int] = {}
        self._total = 0

        def deny(request_iterator, context):  # never reads the body
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated",
                         "missing or unknown token (authorization: Bearer <token> issued by issue-token)", None)

        self._deny = grpc.stream_unary_rpc_method_handler(deny)

    def _refuse(self, context, code: grpc.StatusCode, reason: str, message: str, client_id: Optional[str],
                peer: Optional[str] = None) -> None:
        self.on_event("refused", {"client_id": client_id, "peer": peer or context.peer(), "code": code.name,
                                  "reason": reason, "message": message})
        context.abort(code, message)

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return continuation(handler_call_details)
        principal = None
        if self.tokens is not None:
            principal = self.tokens.principal(_bearer(handler_call_details.invocation_metadata))
            if principal is None:
                return self._deny
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.stream_unary_rpc_method_handler(self._guarded(handler.unary_unary, principal, method),
                                                    request_deserializer=handler.request_deserializer,
                                                    response_serializer=handler.response_serializer)

    def _guarded(self, behavior: Callable, principal: Optional[str], method: str) -> Callable:
        def run(request_iterator, context):
            with self._lock:
                busy = principal is not None and self._calls.get(principal, 0) >= self.max_calls_per_client
                if not busy:
                    self._calls[principal] = self._calls.get(principal, 0) + 1
                    self._total += 1
                    total = self._total
            if busy:
                self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "busy",
                             f"client {principal!r} already has {self.max_calls_per_client} calls in flight; retry "
                             "when one has finished", principal)
            self.on_event("inflight", {"calls": total})
            try:
                peer = context.peer()  # read before a cancellation clears it
                watch = _UploadWatch(self, principal if principal is not None else _peer_address(peer), context)
                try:
                    request = next(request_iterator)
                except (StopIteration, grpc.RpcError):
                    # the request never arrived: the call was cancelled during the upload (by the client, the size
                    # limit or the watch), which gRPC reports as either, depending on which of its events comes first
                    reason, message = watch.why or ("upload_ended", self._ended)
                    self._refuse(context, grpc.StatusCode.CANCELLED, reason, message, principal, peer)
                finally:
                    watch.done()
                caller_token = _CALLER.set(principal)
                try:
                    return behavior(request, context)
                except Exception:
                    if context.code() is not None:
                        raise  # a refusal (context.abort): already reported by whoever refused
                    self.on_event("error", {"client_id": principal, "method": method,
                                            "traceback": traceback.format_exc()})
                    context.abort(grpc.StatusCode.INTERNAL, "internal error (logged by the server)")
                finally:
                    _CALLER.reset(caller_token)
            finally:
                with self._lock:
                    self._calls[principal] -= 1
                    if not self._calls[principal]:
                        del self._calls[principal]
                    self._total -= 1
                    total = self._total
                self.on_event("inflight", {"calls": total})

        return run


def _peer_address(peer: str) -> str:
    """The address of a gRPC peer string without its port ("ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7")."""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


class _UploadWatch:
    """Times one call's upload for the :class:`Gate`: after ``upload_grace_seconds`` it counts as slow (against
    ``max_slow_uploads`` of its key, or cancelled if they are taken); after ``max_upload_seconds`` it is cancelled.
    ``why`` is (reason, message) of a cancellation by the watch."""

    def __init__(self, gate: "Gate", key: str, context) -> None:
        self.gate, self.key, self.context = gate, key, context
        self.why: Optional[tuple] = None
        self._counted = self._finished = False
        self._timer = threading.Timer(gate.upload_grace_seconds, self._slow)
        self._timer.daemon = True
        self._timer.start()

    def _cancel(self, reason: str, message: str) -> None:  # with the gate's lock held, the upload not finished
        self.why = (reason, message)
        self.context.cancel()

    def _slow(self) -> None:
        gate = self.gate
        with gate._lock:
            if self._finished:
                return
            taken = gate._slow.get(self.key, 0)
            if taken >= gate.max_slow_uploads:
                self._cancel("slow_upload", f"{self.key} already has {taken} uploads slower than "
                                            f"{gate.upload_grace_seconds:g} s in flight; this one was cancelled")
                return
            gate._slow[self.key] = taken + 1
            self._counted = True
            self._timer = threading.Timer(gate.max_upload_seconds - gate.upload_grace_seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        with self.gate._lock:
            if not self._finished:
                self._cancel("upload_timeout", f"the request had not arrived {self.gate.max_upload_seconds:g} s "
                                               "after the call began; the call was cancelled")

    def done(self) -> None:
        gate = self.gate
        with gate._lock:
            self._finished = True
            self._timer.cancel()
            if self._counted:
                gate._slow[self.key] -= 1
                if not gate._slow[self.key]:
                    del gate._slow[self.key]
