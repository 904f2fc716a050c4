"""Shared pieces of the edge tests: a tiny split, an in-thread server on 127.0.0.1, ``serve`` in a subprocess, a
self-signed certificate, a hostile client that uploads slowly over raw HTTP/2."""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Iterator, Optional, Tuple

import numpy as np
import tensorflow as tf

from dpact_tf import TrainingConfig, build_split_vggface
from dpact_tf.edge.model import ServerHalf
from dpact_tf.edge.ops import make_server
from dpact_tf.edge.server import EdgeService
from dpact_tf.edge.store import CheckpointStore
from dpact_tf.privacy import PAPER_ACTIVATION_RANGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (32, 32, 3)
CLASSES = 3
CONFIG = TrainingConfig(lr_decay_steps=10)
ACTIVATION = (32, 32, 4)  # tiny_split's activation: conv1_1 of width 1/16 on 32 x 32
DEADLINE = 20.0  # seconds: every call in these tests is bounded


def tiny_split(seed: int = 0, epsilon: Optional[float] = None):
    tf.keras.utils.set_random_seed(seed)
    return build_split_vggface(SHAPE, CLASSES, width=1 / 16, fc_units=8, epsilon=epsilon, noise_seed=1)


def tiny_server(seed: int = 0) -> tf.keras.Model:
    """A small server half on tiny_split's activation (32 x 32 x 4 -> CLASSES logits): conv, pool, dense.  The
    service takes any activation -> logits model; a few layers build and trace far quicker than VGG-Face's
    fifteen.  Tests that compare the server with a split trained in process use ``tiny_split().server``."""
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input(shape=ACTIVATION, name="activation")
    h = tf.keras.layers.MaxPooling2D(4)(tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs))
    return tf.keras.Model(inputs, tf.keras.layers.Dense(CLASSES)(tf.keras.layers.Flatten()(h)), name="server")


def tiny_service(*, seed: int = 0, store: Optional[CheckpointStore] = None, checkpoint_every: int = 0,
                 max_batch: int = 16, **kwargs) -> EdgeService:
    half = ServerHalf(tiny_server(seed), CONFIG, 10)
    return EdgeService(half, num_classes=CLASSES, cut="conv1_1", activation_shape=ACTIVATION,
                       max_batch=max_batch, store=store, checkpoint_every=checkpoint_every, **kwargs)


@contextlib.contextmanager
def running(service: EdgeService, **kwargs) -> Iterator[str]:
    """The service on a free loopback port; yields "127.0.0.1:port"."""
    server, port = make_server(service, host="127.0.0.1", port=0, **kwargs)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m dpact_tf.edge serve --host 127.0.0.1 --port PORT --profile tiny ARGS...`` in a subprocess, as
    an operator runs it; its output is drained by a thread.  A test kills it with ``proc.send_signal``."""

    def __init__(self, port: int, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dpact_tf.edge", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--profile", "tiny", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()

    def wait_for(self, text: str, timeout: float = 90.0) -> str:
        """The first output line (not yet read) that contains ``text``."""
        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "server exited:\n" + "".join(seen)
                continue
            seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout} s:\n" + "".join(seen))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def batch(n: int = 4, seed: int = 0, shape=(32, 32, 4)) -> Tuple[np.ndarray, np.ndarray]:
    """A no-noise upload: activations in [0, R] (R = 1/sqrt(3), the clipped Eq. (1) range) and labels."""
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, PAPER_ACTIVATION_RANGE, (n,) + tuple(shape)).astype(np.float32),
            rng.integers(0, CLASSES, n).astype(np.int32))


def weights(service: EdgeService):
    return [v.numpy().copy() for v in service.half.model.weights]


def self_signed_certificate() -> Tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for localhost / 127.0.0.1, valid for one day; thrown away after the test."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _hpack_int(value: int, prefix_bits: int = 7) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def _hpack(headers) -> bytes:
    """An HPACK header block of literal fields without indexing and without Huffman coding (RFC 7541, 6.2.2)."""
    out = b""
    for name, value in headers:
        out += b"\x00" + _hpack_int(len(name)) + name.encode() + _hpack_int(len(value)) + value.encode()
    return out


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class SlowUploader(threading.Thread):
    """A hostile client speaking raw HTTP/2: it opens a TrainStep call (with ``token``, or none), declares a
    ``declared``-byte request and uploads it at ``rate`` bytes/s; when the server answers the call (a HEADERS or
    RST_STREAM frame on its stream), it notes how long that took and opens another.  It stops by itself after
    ``duration`` seconds.  (gRPC's own clients cannot upload slowly; this one stays within HTTP/2's initial
    65,535-byte window, so the server need not grant it more.)"""

    PATH = "/dpact.edge.v1.EdgeTraining/TrainStep"

    def __init__(self, port: int, *, token: Optional[str] = None, duration: float = 6.0, rate: float = 20_000.0,
                 declared: int = 300_000) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.duration, self.rate, self.declared = port, token, duration, rate, declared
        self.answered: list = []  # seconds from opening a call to the server's answer
        self.unanswered: list = []  # seconds each call still open when the uploader stopped had been waiting

    def _call(self, deadline: float) -> None:
        import socket
        import time

        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as sock:
            headers = [(":method", "POST"), (":scheme", "http"), (":path", self.PATH),
                       (":authority", f"127.0.0.1:{self.port}"), ("content-type", "application/grpc"),
                       ("te", "trailers")] + ([("authorization", f"Bearer {self.token}")] if self.token else [])
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0) + _frame(1, 4, 1, _hpack(headers)))
            started, sent, buffer = time.monotonic(), 0, b""
            body = b"\x00" + struct.pack(">I", self.declared)
            sock.settimeout(0.05)
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(65536)
                    if not data:
                        self.answered.append(time.monotonic() - started)
                        return
                    buffer += data
                except socket.timeout:
                    pass
                while len(buffer) >= 9:  # frames from the server
                    length, kind, flags, stream = int.from_bytes(buffer[:3], "big"), buffer[3], buffer[4], \
                        int.from_bytes(buffer[5:9], "big") & 0x7FFFFFFF
                    if len(buffer) < 9 + length:
                        break
                    payload, buffer = buffer[9:9 + length], buffer[9 + length:]
                    if kind == 4 and not flags & 1:
                        sock.sendall(_frame(4, 1, 0))  # SETTINGS ACK
                    elif kind == 6 and not flags & 1:
                        sock.sendall(_frame(6, 1, 0, payload))  # PING ACK
                    elif stream == 1 and kind in (1, 3):  # HEADERS (the status) or RST_STREAM: answered
                        self.answered.append(time.monotonic() - started)
                        return
                chunk = int(self.rate * 0.05)
                if sent + chunk < 60_000:
                    piece = (body + bytes(chunk))[:chunk] if sent == 0 else bytes(chunk)
                    sock.sendall(_frame(0, 0, 1, piece))
                    sent += chunk
            self.unanswered.append(time.monotonic() - started)

    def run(self) -> None:
        import time

        deadline = time.monotonic() + self.duration
        while time.monotonic() < deadline:
            try:
                self._call(deadline)
            except OSError:
                pass
            time.sleep(0.25)  # then open the next call


def events_of(service):
    """The list ``service`` appends its (event, info) pairs to from now on."""
    events = []
    service.on_event = lambda name, info: events.append((name, info))
    return events


def rpc_code(fn):
    """(status code, details) of the gRPC error ``fn()`` raises."""
    import grpc
    import pytest

    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()
