"""The phone's side of the connection: handshake, train steps with retry-and-resume, evaluation.

No TensorFlow here (NumPy, gRPC, :mod:`dpact_tf.encoding`), so it runs beside the LiteRT head.  A noisy
client uploads the integer levels of its release (:mod:`dpact_tf.grid`, encoding "grid"); the no-noise
baseline uploads floats.  A step's request is built once (:meth:`EdgeClient.train_request`) and every retry
resends those exact bytes (:meth:`EdgeClient.send_train_step`).  That is what makes a retry idempotent on
the server, and it is also a privacy rule: drawing fresh noise for a retry would be a second release of
the same images.  A caller that persists the request before sending it
(:class:`dpact_tf.edge.resume.RunState`) can resend the same bytes after its own restart.

A token is sent only over TLS, or to this machine (loopback): :class:`EdgeClient` refuses a plaintext
channel to another host unless told the network is trusted (``allow_plaintext_token``).  A TLS handshake that
fails -- a server certificate the client does not trust (``root_certificates``), or a server without TLS --
raises :class:`TLSFailure` at once, naming the cause, instead of being retried until ``reconnect_timeout``.

When the server is unreachable (restarting after a crash) or has forgotten the session, the client
handshakes again until ``reconnect_timeout`` and reads the server's last applied step of this client:
equal to the step in flight -> resend it (the server answers from its stored reply, applying nothing);
one less -> resend it (it was not applied); anything else -> :class:`EdgeError` (the server lost or
invented acknowledged work).
"""
from __future__ import annotations

import ipaddress
import math
import time
from typing import Optional, Sequence, Tuple, Union

import grpc
import numpy as np

from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge import dpact_edge_pb2_grpc as pb_grpc
from dpact_tf.edge.wire import from_proto, to_proto, token_metadata
from dpact_tf.encoding import ENCODINGS, GRID, WIRE_ENCODINGS

__all__ = ["EdgeClient", "EdgeError", "TLSFailure", "Release"]

# What a head releases: (int levels, grid step) of a noisy release, or a float activation (no noise).
Release = Union[Tuple[np.ndarray, float], np.ndarray]

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.DEADLINE_EXCEEDED)


class EdgeError(RuntimeError):
    """The server and the client disagree about which steps were applied; training cannot resume safely."""


class TLSFailure(RuntimeError):
    """The TLS handshake with the server failed (a certificate the client does not trust, a name that does not
    match it, or a server that does not speak TLS)."""


_TLS_SIGNS = ("tls handshake", "ssl handshake", "ssl_error", "certificate_verify_failed", "wrong_version_number")


def _tls_failure(err: grpc.RpcError) -> Optional[str]:
    """The TLS cause of a failed call, if that is what failed."""
    details = err.details() or ""
    if err.code() == grpc.StatusCode.UNAVAILABLE and any(sign in details.lower() for sign in _TLS_SIGNS):
        return details.split("last error: ", 1)[-1]
    return None


def _retryable(err: grpc.RpcError) -> bool:
    """A failure a later call may not meet: the server away or restarted, a session expired, a deadline, or too
    many calls in flight (not a message above the size limit, also RESOURCE_EXHAUSTED)."""
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        details = err.details() or ""
        return "in flight" in details or "Concurrent RPC limit" in details
    return err.code() in _RETRYABLE and not _tls_failure(err)


def _is_loopback(target: str) -> bool:
    """Whether a gRPC target names this machine: a unix socket, exactly "localhost", or a loopback IP address
    (127.0.0.0/8, ::1) -- parsed as an address, so a host name such as "127.evil.example" is not one."""
    if target.startswith("unix:"):
        return True
    rest = target.split("///", 1)[-1]
    if rest.startswith("["):  # [v6]:port
        host = rest[1:].split("]", 1)[0]
    elif rest.count(":") == 1:  # host:port
        host = rest.rsplit(":", 1)[0]
    else:  # a host without a port, or a bare IPv6 address
        host = rest
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EdgeClient:
    """A session with an edge server.

    Args:
      target: "host:port".
      client_id: stable id of this client (the server keys its progress by it).
      epsilon, delta: the client's release parameters (epsilon None = no noise), stated at the handshake.
      cut, activation_shape: the client's split point and per-image activation shape [H, W, C].
      encoding: upload encoding: "grid" (the only one, and the default, with noise), or "float32" (the default),
        "float16" or "uint8" without noise.
      token: this client's token, from ``issue-token`` (None if the server checks none).
      root_certificates: PEM of the CA (or self-signed certificate) to trust; enables TLS.
      server_name: the name the server's certificate was issued to, if it differs from the target's host.
      timeout: deadline of one call, seconds.
      reconnect_timeout: how long to keep trying to re-open the session after a failure, seconds.
      epoch_images: training images in one epoch of this client's data, stated at the handshake (a server whose
        learning rate decays per epoch of each client's data needs it).
      allow_plaintext_token: send the token without TLS to a host other than this machine (a network trusted as a
        whole); refused otherwise.
    """

    def __init__(self, target: str, *, client_id: str, epsilon: Optional[float], delta: float, cut: str,
                 activation_shape: Sequence[int], encoding: Optional[str] = None, token: Optional[str] = None,
                 root_certificates: Optional[bytes] = None, server_name: Optional[str] = None,
                 timeout: float = 30.0, reconnect_timeout: float = 60.0,
                 max_message_bytes: int = 1 << 30, epoch_images: Optional[int] = None,
                 allow_plaintext_token: bool = False) -> None:
        if epsilon is not None and not (math.isfinite(epsilon) and epsilon > 0):
            raise ValueError(f"epsilon must be finite and > 0, or None for no noise (got {epsilon})")
        encoding = encoding or (GRID if epsilon is not None else "float32")
        if encoding not in WIRE_ENCODINGS:
            raise ValueError(f"encoding must be one of {WIRE_ENCODINGS} (got {encoding!r})")
        if (epsilon is not None) != (encoding == GRID):
            raise ValueError(f"a noisy release (epsilon set) is uploaded as {GRID!r} levels and the no-noise baseline "
                             f"as one of {ENCODINGS}; got epsilon={epsilon} with encoding {encoding!r}")
        if token and root_certificates is None and not _is_loopback(target) and not allow_plaintext_token:
            raise ValueError(f"refusing to send the token in the clear to {target}: give the server's CA certificate "
                             "(root_certificates, --tls-ca), or allow it on a network you trust as a whole "
                             "(allow_plaintext_token, --insecure)")
        self.target, self.client_id, self.encoding = target, client_id, encoding
        self.epsilon, self.delta = epsilon, float(delta)
        self.activation_shape = tuple(int(s) for s in activation_shape)
        self.timeout, self.reconnect_timeout = float(timeout), float(reconnect_timeout)
        self._hello = pb.HandshakeRequest(client_id=client_id, delta=delta, cut=cut,
                                          activation_shape=[int(s) for s in activation_shape], encoding=encoding)
        if epsilon is not None:
            self._hello.epsilon = float(epsilon)
        if epoch_images is not None:
            self._hello.epoch_images = int(epoch_images)
        self._metadata = token_metadata(token) if token else ()
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 500)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if root_certificates is not None:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb_grpc.EdgeTrainingStub(self.channel)
        self.session: Optional[pb.HandshakeReply] = None
        self.bytes_up = 0    # serialized request bytes of the train and evaluate calls
        self.bytes_down = 0  # serialized reply bytes of those calls

    def connect(self, *, wait: float = 0.0) -> pb.HandshakeReply:
        """Open the session (waiting up to ``wait`` seconds for the server to come up); :class:`TLSFailure` at
        once if the TLS handshake fails."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self.session = self.stub.Handshake(self._hello, timeout=self.timeout, metadata=self._metadata)
                return self.session
            except grpc.RpcError as err:
                cause = _tls_failure(err)
                if cause:
                    raise TLSFailure(f"TLS handshake with {self.target} failed: {cause}") from None
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) \
                        or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _session_id(self) -> str:
        if self.session is None:
            self.connect()
        return self.session.session_id

    def _upload(self, release: Release) -> pb.Activation:
        if self.encoding == GRID:
            if not (isinstance(release, tuple) and len(release) == 2):
                raise ValueError("a noisy client uploads (levels, step) of a grid release, not a float activation")
            levels, step = release
            return to_proto(levels, GRID, step=step)
        if isinstance(release, tuple):
            raise ValueError(f"this client uploads a float activation as {self.encoding!r}, not grid levels")
        return to_proto(release, self.encoding)

    def train_request(self, step: int, release: Release, labels: Sequence[int]) -> pb.TrainStepRequest:
        """The request of step ``step`` (without a session id): what a retry, or a caller's own restart,
        must resend byte for byte."""
        return pb.TrainStepRequest(step=int(step), activation=self._upload(release),
                                   labels=[int(v) for v in np.asarray(labels).reshape(-1)])

    def send_train_step(self, request: pb.TrainStepRequest) -> Tuple[np.ndarray, float, int, bool]:
        """Send a built request (retrying and re-opening the session as needed); returns (dL/d activation,
        mean loss, correct count, replayed)."""
        request = pb.TrainStepRequest(session_id=self._session_id(), step=request.step,
                                      activation=request.activation, labels=request.labels)
        step = request.step
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            try:
                reply = self.stub.TrainStep(request, timeout=self.timeout, metadata=self._metadata)
                break
            except grpc.RpcError as err:
                if not _retryable(err) or time.monotonic() > deadline:
                    raise
                hello = self.connect(wait=max(0.0, deadline - time.monotonic()))
                if hello.last_step not in (step - 1, step):
                    raise EdgeError(f"after reconnecting, the server's last applied step of client "
                                    f"{self.client_id!r} is {hello.last_step}; the client is at step {step}") from err
                request.session_id = hello.session_id
        self.bytes_up += request.ByteSize()
        self.bytes_down += reply.ByteSize()
        return from_proto(reply.grad), float(reply.loss), int(reply.correct), bool(reply.replayed)

    def train_step(self, step: int, release: Release, labels: Sequence[int]
                   ) -> Tuple[np.ndarray, float, int, bool]:
        """Send step ``step``; returns (dL/d activation, mean loss, correct count, replayed)."""
        return self.send_train_step(self.train_request(step, release, labels))

    def evaluate_request(self, release: Release, labels: Sequence[int]) -> pb.EvaluateRequest:
        """An evaluation request (without a session id)."""
        return pb.EvaluateRequest(activation=self._upload(release),
                                  labels=[int(v) for v in np.asarray(labels).reshape(-1)])

    def send_evaluate(self, request: pb.EvaluateRequest) -> Tuple[float, int, int]:
        """(summed loss, correct, count) of the server's current model on one built evaluation request."""
        request = pb.EvaluateRequest(session_id=self._session_id(), activation=request.activation,
                                     labels=request.labels)
        try:
            reply = self.stub.Evaluate(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            if not _retryable(err):
                raise
            request.session_id = self.connect(wait=self.reconnect_timeout).session_id
            reply = self.stub.Evaluate(request, timeout=self.timeout, metadata=self._metadata)
        self.bytes_up += request.ByteSize()
        self.bytes_down += reply.ByteSize()
        return float(reply.loss_sum), int(reply.correct), int(reply.count)

    def evaluate(self, release: Release, labels: Sequence[int]) -> Tuple[float, int, int]:
        """(summed loss, correct, count) of the server's current model on one released batch."""
        return self.send_evaluate(self.evaluate_request(release, labels))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "EdgeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
