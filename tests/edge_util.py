"""Shared pieces of the edge tests: a tiny split, an in-thread server on 127.0.0.1, a self-signed certificate."""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
from typing import Iterator, Optional, Tuple

import numpy as np
import tensorflow as tf

from dpact_tf import TrainingConfig, build_split_vggface
from dpact_tf.edge.model import ServerHalf
from dpact_tf.edge.server import EdgeService, make_server
from dpact_tf.edge.store import CheckpointStore
from dpact_tf.privacy import PAPER_ACTIVATION_RANGE

SHAPE = (32, 32, 3)
CLASSES = 3
CONFIG = TrainingConfig(lr_decay_steps=10)
DEADLINE = 20.0  # seconds: every call in these tests is bounded


def tiny_split(seed: int = 0, epsilon: Optional[float] = None):
    tf.keras.utils.set_random_seed(seed)
    return build_split_vggface(SHAPE, CLASSES, width=1 / 16, fc_units=8, epsilon=epsilon, noise_seed=1)


def tiny_service(*, seed: int = 0, store: Optional[CheckpointStore] = None, checkpoint_every: int = 0,
                 max_batch: int = 16) -> EdgeService:
    split = tiny_split(seed)
    half = ServerHalf(split.server, CONFIG, 10)
    return EdgeService(half, num_classes=CLASSES, cut="conv1_1", activation_shape=split.activation_shape,
                       max_batch=max_batch, store=store, checkpoint_every=checkpoint_every)


@contextlib.contextmanager
def running(service: EdgeService, **kwargs) -> Iterator[str]:
    """The service on a free loopback port; yields "127.0.0.1:port"."""
    server, port = make_server(service, host="127.0.0.1", port=0, **kwargs)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


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
