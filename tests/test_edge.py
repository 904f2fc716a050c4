"""The edge server over gRPC on 127.0.0.1: equality with the in-process protocol, sessions and step ids,
bad input, token, TLS, size limits, what goes over the wire, checkpoint + journal, many clients."""
import json
import math
import os
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import SplitTrainer, TrainingConfig, build_split_vggface
from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge import dpact_edge_pb2_grpc as pb_grpc
from dpact_tf.edge.auth import TokenBook, issue_token
from dpact_tf.edge.cli import parser
from dpact_tf.edge.client import EdgeClient, TLSFailure
from dpact_tf.edge.model import ServerHalf
from dpact_tf.edge.server import EdgeService
from dpact_tf.edge.store import CheckpointStore
from dpact_tf.edge.trainer import KerasHead, LiteRTHead, RemoteTrainer, batches
from dpact_tf import grid
from dpact_tf.edge.wire import level_bounds, to_proto, token_metadata
from dpact_tf.encoding import bytes_per_image
from dpact_tf.privacy import PAPER_ACTIVATION_RANGE, noise_std
from dpact_tf.repro.profiles import get_profile
from tests.edge_util import (CLASSES, CONFIG, DEADLINE, batch, running, self_signed_certificate, tiny_service,
                             tiny_split, weights)

ACT = (32, 32, 4)  # activation shape of tiny_split



def _seeded_head() -> KerasHead:
    """A Keras head whose noise is seeded (replayable): allowed here because these are tests."""
    return KerasHead(tiny_split(epsilon=5.0).client, CONFIG, 10, allow_replayable_noise=True)

def _client(address, client_id="phone", **kw):
    kw.setdefault("epsilon", None)
    kw.setdefault("timeout", DEADLINE)
    return EdgeClient(address, client_id=client_id, delta=1e-5, cut="conv1_1", activation_shape=ACT,
                      reconnect_timeout=5.0, **kw)



def test_tiny_profile_epoch_over_grpc_equals_in_process_split_trainer():
    from dpact_tf.synthetic import synthetic_faces

    prof = get_profile("tiny")
    data = synthetic_faces(prof.synthetic_identities, prof.synthetic_images_per_identity, prof.image_size, seed=0)
    train = list(batches(data.train_images, data.train_labels, prof.batch_size))
    cfg = TrainingConfig(learning_rate=prof.learning_rate, momentum=prof.momentum, lr_decay_rate=prof.lr_decay_rate,
                         lr_decay_steps=len(train))

    def build():
        tf.keras.utils.set_random_seed(0)
        return build_split_vggface(num_classes=data.num_classes, epsilon=None, **prof.model_kwargs())

    reference = build()
    trainer = SplitTrainer(reference, cfg)
    ref_losses = [float(trainer.train_step(tf.constant(x.astype(np.float32) / 255.0), tf.constant(y)).loss)
                  for x, y in train]

    split = build()  # the client half stays here, the server half goes behind gRPC
    service = EdgeService(ServerHalf(split.server, cfg, len(train)), num_classes=data.num_classes, cut="conv1_1",
                          activation_shape=split.activation_shape, max_batch=prof.batch_size)
    losses = []

    class Record:
        def on_step_end(self, step, logs):
            losses.append(logs["loss"])

    with running(service) as address:
        client = EdgeClient(address, client_id="phone", epsilon=None, delta=1e-5, cut="conv1_1",
                            activation_shape=split.activation_shape, timeout=DEADLINE)
        history = RemoteTrainer(KerasHead(split.client, cfg, len(train), allow_replayable_noise=True), client,
                                callbacks=[Record()]).fit(
            lambda epoch: train, 1)
        client.close()
    assert len(losses) == len(train) == service.half.steps
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    sizes = [len(y) for _, y in train]
    assert history["loss"][0] == pytest.approx(np.dot(ref_losses, sizes) / sum(sizes), rel=1e-5)
    # float32 upload: 4 bytes per activation value, plus a few bytes of framing and labels per image
    per_image = history["bytes_up"][0] / len(data.train_labels)
    assert bytes_per_image(split.activation_shape, "float32") <= per_image < bytes_per_image(
        split.activation_shape, "float32") + 64
    for a, b in zip(split.client.weights + split.server.weights, reference.client.weights + reference.server.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_litert_head_over_grpc_equals_in_process(tmp_path):
    from dpact_tf.deploy.convert import convert_client_head
    from dpact_tf.deploy.runtime import HeadRunner

    rng = np.random.default_rng(3)
    steps = [(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), rng.integers(0, CLASSES, 4).astype(np.int32))
             for _ in range(2)]
    reference = tiny_split()
    trainer = SplitTrainer(reference, CONFIG)
    ref_losses = [float(trainer.train_step(tf.constant(x.astype(np.float32) / 255.0), tf.constant(y)).loss)
                  for x, y in steps]

    split = tiny_split()
    convert_client_head(split.client, str(tmp_path / "head.tflite"), momentum=CONFIG.momentum)
    runner = HeadRunner(str(tmp_path / "head.tflite"))
    head = LiteRTHead(runner, epsilon=None, learning_rate=CONFIG.learning_rate, decay_rate=CONFIG.lr_decay_rate,
                      decay_steps=CONFIG.lr_decay_steps)
    service = EdgeService(ServerHalf(tiny_split().server, CONFIG, 10), num_classes=CLASSES, cut="conv1_1",
                          activation_shape=ACT, max_batch=16)  # the server half of the reference's split
    with running(service) as address, _client(address) as client:
        remote = RemoteTrainer(head, client)
        losses = [remote.train_step(x, y)["loss"] for x, y in steps]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)  # step 2 sees the head's on-device update
    for a, b in zip(service.half.model.weights, reference.server.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    clean = reference.clean_client()(steps[0][0].astype(np.float32) / 255.0).numpy()
    np.testing.assert_allclose(runner.clean(steps[0][0]), clean, atol=1e-5)  # the head was trained


def _code(fn):
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


def test_bad_input_is_refused_with_clear_codes_and_changes_nothing():
    service = tiny_service(max_batch=8)
    with running(service) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        good = _client(address, client_id="good")
        good.train_step(1, *batch())
        hello = pb.HandshakeRequest(client_id="bad", delta=1e-5, cut="conv1_1", activation_shape=list(ACT),
                                    encoding="float32")
        session = stub.Handshake(hello, timeout=DEADLINE).session_id
        x, y = batch()
        before, steps = weights(service), service.half.steps

        def step(activation=None, labels=None, step_id=1, session_id=None):
            req = pb.TrainStepRequest(session_id=session if session_id is None else session_id, step=step_id,
                                      activation=to_proto(x) if activation is None else activation,
                                      labels=list(y) if labels is None else labels)
            return lambda: stub.TrainStep(req, timeout=DEADLINE)

        def raw(data, encoding="float32", shape=(4,) + ACT, scale=1.0):
            return pb.Activation(data=data, encoding=encoding, shape=list(shape), scale=scale)

        nan, inf = x.copy(), x.copy()
        nan[0, 0, 0, 0], inf[1, 2, 3, 0] = np.nan, np.inf
        cases = {
            "unknown session": (step(session_id="nope"), grpc.StatusCode.NOT_FOUND, "unknown session"),
            "wrong shape": (step(to_proto(np.zeros((4, 16, 16, 4), np.float32))), grpc.StatusCode.INVALID_ARGUMENT,
                            "activation shape"),
            "rank 3": (step(to_proto(np.zeros((4, 32, 32), np.float32))), grpc.StatusCode.INVALID_ARGUMENT,
                       "activation shape"),
            "float64 payload": (step(raw(x.astype(np.float64).tobytes())), grpc.StatusCode.INVALID_ARGUMENT,
                                "payload has"),
            "unknown dtype": (step(raw(x.tobytes(), "float64")), grpc.StatusCode.INVALID_ARGUMENT, "uploads float32"),
            "other encoding": (step(to_proto(x, "float16")), grpc.StatusCode.INVALID_ARGUMENT, "uploads float32"),
            "NaN": (step(raw(nan.tobytes())), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
            "inf": (step(raw(inf.tobytes())), grpc.StatusCode.INVALID_ARGUMENT, "NaN or inf"),
            "too few labels": (step(labels=[0, 1]), grpc.StatusCode.INVALID_ARGUMENT, "labels for 4"),
            "label range": (step(labels=[0, 1, 2, CLASSES]), grpc.StatusCode.INVALID_ARGUMENT, "labels must be"),
            "negative label": (step(labels=[0, -1, 2, 1]), grpc.StatusCode.INVALID_ARGUMENT, "labels must be"),
            "batch too large": (step(to_proto(np.zeros((9,) + ACT, np.float32)), labels=[0] * 9),
                                grpc.StatusCode.INVALID_ARGUMENT, "batch size"),
            "empty batch": (step(to_proto(np.zeros((0,) + ACT, np.float32)), labels=[]),
                            grpc.StatusCode.INVALID_ARGUMENT, "batch size"),
            "step 0": (step(step_id=0), grpc.StatusCode.ALREADY_EXISTS, "already applied"),
            "gap": (step(step_id=2), grpc.StatusCode.FAILED_PRECONDITION, "out-of-order"),
            "evaluate unknown session": (
                lambda: stub.Evaluate(pb.EvaluateRequest(session_id="nope"), timeout=DEADLINE),
                grpc.StatusCode.NOT_FOUND, "Handshake"),
            "handshake other cut": (lambda: stub.Handshake(pb.HandshakeRequest(
                client_id="x", delta=1e-5, cut="conv1_2", activation_shape=list(ACT), encoding="float32"),
                timeout=DEADLINE), grpc.StatusCode.FAILED_PRECONDITION, "cut after conv1_1"),
            "handshake other shape": (lambda: stub.Handshake(pb.HandshakeRequest(
                client_id="x", delta=1e-5, cut="conv1_1", activation_shape=[16, 16, 4], encoding="float32"),
                timeout=DEADLINE), grpc.StatusCode.FAILED_PRECONDITION, "activations"),
            "handshake epsilon 0": (lambda: stub.Handshake(pb.HandshakeRequest(
                client_id="x", epsilon=0.0, delta=1e-5, cut="conv1_1", activation_shape=list(ACT),
                encoding="float32"), timeout=DEADLINE), grpc.StatusCode.INVALID_ARGUMENT, "epsilon"),
            "handshake epsilon nan": (lambda: stub.Handshake(pb.HandshakeRequest(
                client_id="x", epsilon=math.nan, delta=1e-5, cut="conv1_1", activation_shape=list(ACT),
                encoding="float32"), timeout=DEADLINE), grpc.StatusCode.INVALID_ARGUMENT, "epsilon"),
        }
        for name, (call, code, message) in cases.items():
            got, details = _code(call)
            assert got == code, (name, got, details)
            assert message in details, (name, details)
            assert service.half.steps == steps, name
        for a, b in zip(before, weights(service)):
            np.testing.assert_array_equal(a, b)
        # a new handshake replaces the session (the old id is unknown now); the uint8 path refuses a bad scale
        old_session = session
        session = stub.Handshake(pb.HandshakeRequest(client_id="bad", delta=1e-5, cut="conv1_1",
                                                     activation_shape=list(ACT), encoding="uint8"),
                                 timeout=DEADLINE).session_id
        assert _code(step(session_id=old_session))[0] == grpc.StatusCode.NOT_FOUND
        q = b"\0" * (4 * int(np.prod(ACT)))
        for scale in (math.nan, math.inf, 0.0):
            got, details = _code(step(raw(q, "uint8", scale=scale)))
            assert got == grpc.StatusCode.INVALID_ARGUMENT and "scale" in details
        assert service.half.steps == steps
        # ... and the server kept serving the others all along
        _, loss, _, replayed = good.train_step(2, *batch(seed=1))
        assert np.isfinite(loss) and not replayed and service.half.steps == steps + 1
        good.close()


def test_huge_finite_uploads_are_refused_logged_and_never_journaled(tmp_path):
    """Huge but finite activations, each of which would poison the shared model for every client.  A no-noise
    client's values must lie in [0, R], R = 1/sqrt(3); each is refused (training and evaluation), logged with the
    client id, and kept out of the journal, so a restart does not replay it."""
    store = CheckpointStore(str(tmp_path))
    service = tiny_service(store=store)
    events = _events(service)
    r = PAPER_ACTIVATION_RANGE
    x, y = batch(seed=1)
    one = x.copy()
    one[0, 3, 3, 1] = 3e38
    negative = x.copy()
    negative[2, 0, 0, 0] = -0.25
    n = x.size
    cases = {  # encoding -> upload
        "1e10": ("float32", to_proto(np.full_like(x, 1e10))),
        "one coordinate 3e38": ("float32", to_proto(one)),
        "negative": ("float32", to_proto(negative)),
        "just above R": ("float32", to_proto(np.full_like(x, r * (1 + 2 ** -9)))),
        "float16 65504": ("float16", to_proto(np.full_like(x, 65504.0), "float16")),
        "uint8 scale 1e30": ("uint8", pb.Activation(data=bytes(range(256)) * (n // 256), encoding="uint8",
                                                    shape=list(x.shape), scale=1e30)),
    }
    with running(service) as address, _client(address, client_id="honest") as honest:
        honest.train_step(1, *batch())
        # the largest value the mechanism produces is accepted, and so is 0
        honest.train_step(2, np.resize(np.array([0.0, r], np.float32), x.shape), y)
        before = weights(service)
        stub = pb_grpc.EdgeTrainingStub(honest.channel)
        for name, (encoding, upload) in cases.items():
            session = stub.Handshake(pb.HandshakeRequest(client_id="mallory", delta=1e-5, cut="conv1_1",
                                                         activation_shape=list(ACT), encoding=encoding),
                                     timeout=DEADLINE).session_id
            calls = (lambda: stub.TrainStep(pb.TrainStepRequest(session_id=session, step=1, activation=upload,
                                                                labels=list(y)), timeout=DEADLINE),
                     lambda: stub.Evaluate(pb.EvaluateRequest(session_id=session, activation=upload, labels=list(y)),
                                           timeout=DEADLINE))
            for call in calls:
                code, details = _code(call)
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
                assert "lies in [0, 0.57735]" in details, (name, details)
        assert service.half.steps == 2 and service.client_steps() == {"honest": 2, "mallory": 0}
        for a, b in zip(before, weights(service)):
            np.testing.assert_array_equal(a, b)
        _, loss, _, _ = honest.train_step(3, *batch(seed=2))  # the others' next step is unharmed
        assert np.isfinite(loss) and loss < 5
    refused = [info for name, info in events if name == "refused"]
    assert len(refused) == 2 * len(cases)
    assert {(r["client_id"], r["code"], r["reason"]) for r in refused} == {("mallory", "INVALID_ARGUMENT", "range")}
    _, records = store.load()
    assert [(r.client_id, r.request.step) for r in records] == [("honest", 1), ("honest", 2), ("honest", 3)]
    store.close()


def test_a_step_that_would_make_the_model_non_finite_is_refused_and_not_journaled(tmp_path):
    """Behind the range checks: with an absurd learning rate an honest batch's update overflows; the step is
    rolled back, refused and logged, and it is not in the journal."""
    store = CheckpointStore(str(tmp_path))
    split = tiny_split()
    service = EdgeService(ServerHalf(split.server, TrainingConfig(learning_rate=1e38, lr_decay_steps=10), 10),
                          num_classes=CLASSES, cut="conv1_1", activation_shape=ACT, store=store)
    events = _events(service)
    with running(service) as address, _client(address) as client:
        code, details = None, None
        for step in range(1, 4):
            try:
                client.train_step(step, *batch(seed=step))
            except grpc.RpcError as err:
                code, details = err.code(), err.details()
                break
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "rolled back" in details
        assert service.client_steps() == {"phone": step - 1} and service.half.steps == step - 1
        assert all(np.all(np.isfinite(w)) for w in weights(service))
    refused = [info for name, info in events if name == "refused"]
    assert [(r["client_id"], r["reason"]) for r in refused] == [("phone", "unsafe_update")]
    assert [r.request.step for r in store.load()[1]] == list(range(1, step))
    store.close()


def test_step_ids_are_idempotent_and_replays_are_refused():
    service = tiny_service()
    with running(service) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        session = stub.Handshake(pb.HandshakeRequest(client_id="c", delta=1e-5, cut="conv1_1",
                                                     activation_shape=list(ACT), encoding="float32"),
                                 timeout=DEADLINE).session_id
        x, y = batch()
        req = pb.TrainStepRequest(session_id=session, step=1, activation=to_proto(x), labels=list(y))
        first = stub.TrainStep(req, timeout=DEADLINE)
        after = weights(service)
        again = stub.TrainStep(req, timeout=DEADLINE)  # a retry (the reply was lost): same answer, not re-applied
        assert again.replayed and not first.replayed and again.grad.data == first.grad.data
        assert service.half.steps == 1
        for a, b in zip(after, weights(service)):
            np.testing.assert_array_equal(a, b)
        other = pb.TrainStepRequest(session_id=session, step=1, activation=to_proto(x * 0.5), labels=list(y))
        code, details = _code(lambda: stub.TrainStep(other, timeout=DEADLINE))
        assert code == grpc.StatusCode.ALREADY_EXISTS and "new work is step 2" in details
        assert service.half.steps == 1


def test_wrong_token_is_unauthenticated_and_changes_nothing():
    service = tiny_service()
    with running(service, tokens=TokenBook(tokens={"good": "good.s3cret"})) as address:
        good = _client(address, client_id="good", token="good.s3cret")
        good.train_step(1, *batch())
        before = weights(service)
        for token in ("wrong", None):
            bad = _client(address, client_id="good", token=token)
            code, details = _code(bad.connect)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "token" in details
            stub = pb_grpc.EdgeTrainingStub(bad.channel)
            req = pb.TrainStepRequest(session_id=good.session.session_id, step=2, activation=to_proto(batch()[0]),
                                      labels=list(batch()[1]))
            assert _code(lambda: stub.TrainStep(req, timeout=DEADLINE, metadata=token_metadata(token or "")))[0] \
                == grpc.StatusCode.UNAUTHENTICATED
            bad.close()
        assert service.half.steps == 1 and service.client_steps() == {"good": 1}
        for a, b in zip(before, weights(service)):
            np.testing.assert_array_equal(a, b)
        good.train_step(2, *batch(seed=1))  # the session of the right token is untouched
        good.close()


def test_message_size_limit():
    service = tiny_service()
    one_image = bytes_per_image(ACT, "float32")
    with running(service, max_message_bytes=one_image + 1024) as address, _client(address) as client:
        client.train_step(1, *batch(n=1))
        code, _ = _code(lambda: client.train_step(2, *batch(n=2)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert service.half.steps == 1


def test_tls_with_a_throwaway_self_signed_certificate():
    cert, key = self_signed_certificate()
    other_cert, _ = self_signed_certificate()
    service = tiny_service()
    with running(service, tls=(cert, key), tokens=TokenBook(tokens={"phone": "phone.t"})) as address:
        with _client(address, token="phone.t", root_certificates=cert) as client:
            _, loss, _, _ = client.train_step(1, *batch())
            assert np.isfinite(loss)
        with _client(address, token="phone.t", timeout=3.0) as client:  # plaintext
            assert _code(client.connect)[0] == grpc.StatusCode.UNAVAILABLE
        with _client(address, token="phone.t", root_certificates=other_cert) as client:  # a certificate not trusted
            start = time.monotonic()
            with pytest.raises(TLSFailure, match="TLS handshake with 127.0.0.1:.*CERTIFICATE_VERIFY_FAILED"):
                client.connect(wait=60.0)  # named at once, not retried for a minute
            assert time.monotonic() - start < 5.0
        assert service.half.steps == 1
    with running(service) as address, _client(address, root_certificates=cert) as client:  # a server without TLS
        with pytest.raises(TLSFailure, match="WRONG_VERSION_NUMBER"):
            client.connect(wait=60.0)


class _Recorder(grpc.ServerInterceptor):
    """Keeps every request exactly as it arrived (the serialized bytes) and the call metadata."""

    def __init__(self):
        self.requests, self.metadata = [], []

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        self.metadata.append(dict(details.invocation_metadata))
        deserialize = handler.request_deserializer

        def record(raw):
            self.requests.append((details.method.rsplit("/", 1)[-1], raw))
            return deserialize(raw)

        return handler._replace(request_deserializer=record)


def test_the_server_receives_only_the_grid_levels_of_the_noisy_release_and_the_labels():
    epsilon = 5.0
    split = tiny_split(epsilon=epsilon)
    recorder = _Recorder()
    service = tiny_service()
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, 8).astype(np.int32)
    with running(service, tokens=TokenBook(tokens={"phone": "phone.t"}), interceptors=[recorder]) as address:
        with _client(address, token="phone.t", epsilon=epsilon) as client:
            RemoteTrainer(KerasHead(split.client, CONFIG, 10, allow_replayable_noise=True), client).train_step(
                images, labels)
    assert [m for m, _ in recorder.requests] == ["Handshake", "TrainStep"]
    for metadata in recorder.metadata:  # the token, and gRPC's own headers
        assert set(metadata) <= {"authorization", "user-agent"}, metadata
    hello = pb.HandshakeRequest.FromString(recorder.requests[0][1])
    assert {f.name for f, _ in hello.ListFields()} == {"client_id", "epsilon", "delta", "cut", "activation_shape",
                                                       "encoding"}
    assert hello.encoding == "grid"
    raw = recorder.requests[1][1]
    req = pb.TrainStepRequest.FromString(raw)
    assert len(req.SerializeToString()) == len(raw)  # no unknown fields hiding anything else
    assert {f.name for f, _ in req.ListFields()} == {"session_id", "step", "activation", "labels"}
    assert list(req.labels) == labels.tolist() and list(req.activation.shape) == [8, *ACT]
    # one byte per coordinate: at epsilon 5 the levels are 0..14 plus noise of std 16 steps, within int8
    assert req.activation.encoding == "grid" and len(req.activation.data) == 8 * int(np.prod(ACT))
    for image in images:
        assert image.tobytes() not in raw
    spec = grid.check_release(epsilon, 1e-5)
    assert req.activation.scale == spec.step
    levels = np.frombuffer(req.activation.data, "<i1").reshape(req.activation.shape).astype(np.int64)
    lo, hi = level_bounds(spec)
    assert lo <= levels.min() and levels.max() <= hi
    # the release is levels x step: the clean activation plus noise of std K steps = S_f sigma (the dithered
    # rounding adds at most 1/(4 K^2) of its variance); n = 32768 values, so the std of the difference is within
    # 5 / sqrt(2 n) ~ 2% of the calibrated std
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    diff = levels * spec.step - clean
    std = noise_std(epsilon, 1e-5)
    assert np.std(diff) == pytest.approx(std, rel=5 / math.sqrt(2 * diff.size))
    assert abs(np.mean(diff)) < 5 * std / math.sqrt(diff.size)
    assert clean.tobytes()[:4096] not in raw


def test_checkpoint_and_journal_restore_the_exact_state_and_the_last_reply(tmp_path):
    store = CheckpointStore(str(tmp_path))
    service = tiny_service(store=store, checkpoint_every=3)
    stub_requests = []
    with running(service) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        session = stub.Handshake(pb.HandshakeRequest(client_id="c", delta=1e-5, cut="conv1_1",
                                                     activation_shape=list(ACT), encoding="float32"),
                                 timeout=DEADLINE).session_id
        for step in range(1, 6):  # a checkpoint after step 3, steps 4 and 5 only in the journal
            x, y = batch(seed=step)
            stub_requests.append(pb.TrainStepRequest(session_id=session, step=step, activation=to_proto(x),
                                                     labels=list(y)))
            last = stub.TrainStep(stub_requests[-1], timeout=DEADLINE)
    state, records = store.load()
    assert state.server_steps == 3 and [r.request.step for r in records] == [4, 5]
    store.close()
    # "kill" the server: a fresh process state from the same directory (a different init seed proves the restore)
    restored = tiny_service(seed=5, store=CheckpointStore(str(tmp_path)), checkpoint_every=3)
    assert restored.half.steps == 5 and restored.client_steps() == {"c": 5}
    for a, b in zip(weights(service), weights(restored)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    with running(restored) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        hello = stub.Handshake(pb.HandshakeRequest(client_id="c", delta=1e-5, cut="conv1_1",
                                                   activation_shape=list(ACT), encoding="float32"), timeout=DEADLINE)
        assert hello.last_step == 5 and hello.server_steps == 5
        retry = pb.TrainStepRequest()
        retry.CopyFrom(stub_requests[-1])
        retry.session_id = hello.session_id
        again = stub.TrainStep(retry, timeout=DEADLINE)  # the reply to step 5 was lost in the crash
        assert again.replayed and again.grad.data == last.grad.data and restored.half.steps == 5


def test_eight_clients_concurrently_no_step_lost_or_applied_twice(tmp_path):
    n_clients, n_steps = 8, 4
    store = CheckpointStore(str(tmp_path))
    service = tiny_service(store=store, checkpoint_every=1000)
    results = {}
    start = threading.Barrier(n_clients)

    def run(k):
        with _client(address, client_id=f"phone{k}") as client:
            client.connect()
            start.wait(timeout=DEADLINE)
            got = []
            for step in range(1, n_steps + 1):
                x, y = batch(seed=100 * k + step)
                grad, loss, _, replayed = client.train_step(step, x, y)
                # a retry of the same step (as after a lost reply) must be answered, not applied again
                client_step = client.stub.TrainStep(pb.TrainStepRequest(
                    session_id=client.session.session_id, step=step, activation=to_proto(x), labels=list(y)),
                    timeout=DEADLINE)
                got.append((step, replayed, client_step.replayed, np.array_equal(
                    np.frombuffer(client_step.grad.data, "<f4").reshape(grad.shape), grad)))
            results[k] = got

    with running(service, max_workers=n_clients) as address:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    assert sorted(results) == list(range(n_clients))
    for k, got in results.items():
        assert got == [(s, False, True, True) for s in range(1, n_steps + 1)], k
    assert service.half.steps == n_clients * n_steps  # optimizer updates: each step exactly once
    assert service.client_steps() == {f"phone{k}": n_steps for k in range(n_clients)}
    _, records = store.load()
    assert [r.server_steps for r in records] == list(range(1, n_clients * n_steps + 1))
    for k in range(n_clients):
        assert [r.request.step for r in records if r.client_id == f"phone{k}"] == list(range(1, n_steps + 1))
    store.close()


@pytest.mark.parametrize("command", ["serve", "train"])
def test_both_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        parser().parse_args([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--profile" in text and ("--tls-cert" in text if command == "serve" else "--head" in text)


def test_the_phone_side_runs_without_tensorflow():
    import subprocess
    import sys

    code = ("import sys; import dpact_tf.edge.client, dpact_tf.edge.trainer, dpact_tf.edge.wire; "
            "assert 'tensorflow' not in sys.modules, 'the phone side imported TensorFlow'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("epsilon", ["5", "none"])
def test_train_command_against_a_running_server(tmp_path, capsys, epsilon):
    from dpact_tf.edge.cli import build_split, main, training_config
    from dpact_tf.synthetic import synthetic_faces

    prof = get_profile("tiny")
    split = build_split(prof, prof.synthetic_identities, "conv1_1", 0, None, 1e-5)
    service = EdgeService(ServerHalf(split.server, training_config(prof), 100), num_classes=prof.synthetic_identities,
                          cut="conv1_1", activation_shape=split.activation_shape, max_batch=prof.batch_size)
    (tmp_path / "token").write_text(issue_token(str(tmp_path / "tokens.txt"), "phone") + "\n")
    extra = ["--encoding", "uint8"] if epsilon == "none" else []
    with running(service, tokens=TokenBook(str(tmp_path / "tokens.txt"))) as address:
        code = main(["train", "--server", address, "--profile", "tiny", "--epochs", "1", "--epsilon", epsilon,
                     "--image-budget", "inf", "--ledger", str(tmp_path / "ledger"), *extra,
                     "--token-file", str(tmp_path / "token"), "--json", str(tmp_path / "history.json"),
                     "--timeout", str(DEADLINE)], get_profile=get_profile)
    out = capsys.readouterr()
    assert code == 0 and "epoch 1/1" in out.out
    assert ("uploads the CLEAN first-layer activation" in out.err) == (epsilon == "none")
    result = json.load(open(tmp_path / "history.json"))
    history = result["history"]
    assert history["epoch"] == [1] and len(history["test_accuracy"]) == 1
    assert result["encoding"] == ("uint8" if epsilon == "none" else "grid")
    assert result["client_id"].startswith("phone/")  # the run is named after the id its token was issued to
    steps = service.client_steps()[result["client_id"]]
    assert steps == service.half.steps and steps >= 1
    data = synthetic_faces(prof.synthetic_identities, prof.synthetic_images_per_identity, prof.image_size)
    n_train = len(data.train_labels)
    assert steps == -(-n_train // prof.batch_size)
    per_image = history["bytes_up"][0] / n_train
    assert bytes_per_image(split.activation_shape, "uint8") <= per_image < 1.2 * bytes_per_image(
        split.activation_shape, "uint8")  # uint8, or grid levels in int8: one byte per coordinate
    # the ledger holds every batch released, training and evaluation, and the run is finished
    records = [json.loads(line) for line in open(tmp_path / "ledger" / "releases.jsonl")]
    assert len(records) == steps + -(-len(data.test_labels) // prof.batch_size)
    assert sum(len(r["images"]) for r in records) == n_train + len(data.test_labels)
    assert {r["epsilon"] for r in records} == {None if epsilon == "none" else 5.0}
    assert json.load(open(tmp_path / "ledger" / "run" / "run.json"))["finished"]


def _events(service):
    events = []
    service.on_event = lambda name, info: events.append((name, info))
    return events


def test_grid_uploads_are_checked_against_the_declared_mechanism():
    service = tiny_service()
    events = _events(service)
    spec = grid.check_release(5.0, 1e-5)
    # D = ceil(R / g) = ceil(0.57735 / 0.0428224) = 14; the K = 16 table's magnitudes reach T = 137
    assert (spec.max_level, level_bounds(spec)) == (14, (-137, 151))
    _, y = batch()
    with running(service) as address, _client(address, client_id="noisy", epsilon=5.0) as client:
        assert client.encoding == "grid"
        # an honest release (clean values 0..R) with the mechanism's highest level in one coordinate
        clean = np.linspace(0.0, 0.57735, 4 * int(np.prod(ACT)), dtype=np.float32).reshape((4,) + ACT)
        words = np.random.default_rng(0).integers(-2**63, 2**63 - 1, clean.shape, dtype=np.int64)
        edges = grid.release(clean, words, spec)
        edges.flat[0] = 151
        _, loss, _, _ = client.train_step(1, (edges, spec.step), y)
        assert np.isfinite(loss) and service.half.steps == 1
        before = weights(service)
        above, below = edges.copy(), edges.copy()
        above.flat[0], below.flat[0] = 152, -138
        cases = {
            "level above": (above, spec.step, "must lie in [-137, 151]"),
            "level below": (below, spec.step, "got -138.."),
            "other step": (edges, spec.step * 1.01, "is not the step"),
        }
        for name, (levels, step, message) in cases.items():
            for call in (lambda: client.train_step(2, (levels, step), y), lambda: client.evaluate((levels, step), y)):
                code, details = _code(call)
                assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, (name, details)
        stub = pb_grpc.EdgeTrainingStub(client.channel)
        floats = pb.TrainStepRequest(session_id=client.session.session_id, step=2,
                                     activation=to_proto(edges * spec.step), labels=list(y))
        code, details = _code(lambda: stub.TrainStep(floats, timeout=DEADLINE))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "uploads grid" in details
    assert service.half.steps == 1
    for a, b in zip(before, weights(service)):
        np.testing.assert_array_equal(a, b)
    refused = [info for name, info in events if name == "refused"]
    assert len(refused) == 7 and {r["client_id"] for r in refused} == {"noisy"}
    assert {r["code"] for r in refused} == {"INVALID_ARGUMENT"} and "must lie in" in refused[0]["message"]


def test_the_handshake_ties_the_encoding_to_the_noise():
    service = tiny_service()
    events = _events(service)
    with running(service) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))

        def hello(encoding, **kw):
            return lambda: stub.Handshake(pb.HandshakeRequest(client_id="x", delta=1e-5, cut="conv1_1",
                                                              activation_shape=list(ACT), encoding=encoding, **kw),
                                          timeout=DEADLINE)

        for encoding in ("float32", "float16", "uint8"):  # a float encoding of a noisy release
            code, details = _code(hello(encoding, epsilon=5.0))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "integer grid levels" in details
        code, details = _code(hello("grid"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "state its epsilon" in details
        code, details = _code(hello("grid", epsilon=30.0))  # no grid releases it with delta 1e-5 as implemented
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "no grid releases epsilon=30" in details
        assert hello("grid", epsilon=5.0)().session_id and hello("uint8")().session_id
    assert [info["code"] for name, info in events if name == "refused"] == ["INVALID_ARGUMENT"] * 5
    for epsilon, encoding in ((5.0, "float32"), (None, "grid")):  # the client refuses them first
        with pytest.raises(ValueError, match="uploaded as 'grid' levels"):
            _client("127.0.0.1:1", epsilon=epsilon, encoding=encoding)


def test_a_release_beyond_the_budget_is_refused_before_anything_is_sent(tmp_path):
    from dpact_tf import accounting
    from dpact_tf.ledger import Budget, BudgetExceeded, PrivacyLedger

    split = tiny_split(epsilon=5.0)
    recorder = _Recorder()
    service = tiny_service()
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    y = np.arange(4) % CLASSES
    z = accounting.image_noise_multiplier(5.0, 1e-5, ACT)
    # conv1 trained: the first batch's images compose over their own release and every later one, so one more
    # batch of other images would take them to 1 + 4 releases; the budget allows 4
    budget = Budget(epsilon=accounting.image_epsilon(z, 1e-5, releases=4))
    with running(service, interceptors=[recorder]) as address, _client(address, epsilon=5.0) as client, \
            PrivacyLedger(str(tmp_path / "releases.jsonl"), budget=budget) as ledger:
        trainer = RemoteTrainer(KerasHead(split.client, CONFIG, 10, allow_replayable_noise=True), client,
                                ledger=ledger)
        trainer.train_step(x, y)
        sent = len(recorder.requests)
        with pytest.raises(BudgetExceeded, match="refused before release"):
            trainer.train_step(x[::-1].copy(), y)
        with pytest.raises(BudgetExceeded):
            trainer.evaluate([(x, y)])  # the same images again: 2 releases, and the first batch's reach 5
        assert len(recorder.requests) == sent and ledger.records == 1 and service.half.steps == 1


class _ExitAfterApplying(grpc.ServerInterceptor):
    """Applies TrainStep ``step`` and then fails the call once (non-retryable), as a server forcing a client to
    exit would; ``hold`` instead keeps the reply back until ``release`` is set (the client is killed meanwhile)."""

    def __init__(self, step, hold=False):
        self.step, self.hold, self.fired = step, hold, False
        self.release, self.applied = threading.Event(), threading.Event()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if not details.method.endswith("/TrainStep"):
            return handler
        inner = handler.unary_unary

        def wrapped(request, context):
            reply = inner(request, context)
            if request.step == self.step and not self.fired:
                self.fired = True
                self.applied.set()
                if self.hold:
                    self.release.wait(timeout=120)
                context.abort(grpc.StatusCode.INTERNAL, "forced exit")
            return reply

        return handler._replace(unary_unary=wrapped)


def _train_requests(recorder):
    return [pb.TrainStepRequest.FromString(raw) for method, raw in recorder.requests if method == "TrainStep"]


def test_a_restarted_client_resends_the_request_in_flight_and_releases_nothing_again(tmp_path):
    from dpact_tf.edge.client import EdgeError
    from dpact_tf.edge.resume import RunState
    from dpact_tf.ledger import Budget, PrivacyLedger

    rng = np.random.default_rng(5)
    data = [(rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), np.arange(4) % CLASSES) for _ in range(3)]
    recorder, exit_after = _Recorder(), _ExitAfterApplying(2)
    service = tiny_service()
    settings = {"epsilon": 5.0}

    def run():
        state = RunState(str(tmp_path / "run"), settings=settings)
        client = _client(address, client_id=state.client_id, epsilon=5.0)
        ledger = PrivacyLedger(str(tmp_path / "releases.jsonl"), budget=Budget(epsilon=math.inf))
        trainer = RemoteTrainer(_seeded_head(), client, ledger=ledger,
                                state=state)
        try:
            return trainer.fit(lambda epoch: iter(data), 1, validation_data=lambda: iter(data[:1])), state, ledger
        finally:
            client.close()

    with running(service, interceptors=[recorder, exit_after]) as address:
        with pytest.raises(grpc.RpcError):  # step 2 was applied, its reply never arrived: the client "exits"
            run()
        assert service.half.steps == 2
        history, state, ledger = run()  # the same run again: resumes after step 1, step 2 in flight
        # a second, finished run starts under a new id; a server that has lost this run's steps gets nothing
        assert RunState(str(tmp_path / "run"), settings=settings).client_id != state.client_id
    steps = [r.step for r in _train_requests(recorder)]
    assert steps == [1, 2, 2, 3] and service.client_steps() == {state.client_id: 3} and service.half.steps == 3
    first, again = [r for r in _train_requests(recorder) if r.step == 2]
    assert again.activation.SerializeToString() == first.activation.SerializeToString()
    assert list(again.labels) == list(first.labels)
    assert history["epoch"] == [1] and len(history["test_accuracy"]) == 1
    assert ledger.records == 4  # three training batches and one evaluation, each released once
    # conv1 trained: an image of the first batch composes over its release and the 4 + 4 + 4 after it; one of the
    # last batch over its release and the evaluation's 4
    assert [ledger.releases(data[0][0][0]), ledger.releases(data[2][0][0])] == [13, 5]
    fresh = tiny_service(seed=3)  # a server that forgot the run (or pretends to)
    with running(fresh) as address:
        state = RunState(str(tmp_path / "run2"), settings=settings)
        with _client(address, client_id=state.client_id, epsilon=5.0) as client:
            trainer = RemoteTrainer(_seeded_head(), client, state=state)
            trainer.train_step(*data[0])
        forgetful = tiny_service(seed=4)
        with running(forgetful) as other, _client(other, client_id=state.client_id, epsilon=5.0) as client:
            state = RunState(str(tmp_path / "run2"), settings=settings)
            trainer = RemoteTrainer(_seeded_head(), client, state=state)
            with pytest.raises(EdgeError, match="nothing is released again"):
                trainer.fit(lambda epoch: iter(data), 1)
            assert forgetful.half.steps == 0


def test_train_needs_epsilon(capsys):
    from dpact_tf.edge.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train", "--server", "127.0.0.1:1"], get_profile=get_profile)
    assert done.value.code == 2
    assert "train needs --epsilon" in capsys.readouterr().err
    for bad in ("inf", "0", "abc"):
        with pytest.raises(SystemExit):
            main(["train", "--server", "127.0.0.1:1", "--epsilon", bad], get_profile=get_profile)
        assert "--epsilon" in capsys.readouterr().err


def test_train_refuses_a_run_above_the_default_budget_before_connecting(tmp_path, capsys):
    from dpact_tf.edge.cli import main

    with pytest.raises(SystemExit) as done:  # nothing listens on port 1: the refusal comes first
        main(["train", "--server", "127.0.0.1:1", "--profile", "tiny", "--epsilon", "5", "--epochs", "1",
              "--ledger", str(tmp_path)], get_profile=get_profile)
    assert "above the default budget of 8; pass --image-budget" in str(done.value.code)
    assert "per-image epsilon of up to" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "releases.jsonl")


def test_a_client_process_killed_mid_run_resumes_without_releasing_anything_again(tmp_path, capsys):
    """``train`` in a subprocess, killed with SIGKILL while step 3 is applied on the server and its reply held
    back; the same command again, in this process (another process than the killed one, with only the files
    the killed one left), resumes the run."""
    import subprocess
    import sys

    from dpact_tf.edge.cli import build_split, main, training_config
    from dpact_tf.synthetic import synthetic_faces

    prof = get_profile("tiny")
    split = build_split(prof, prof.synthetic_identities, "conv1_1", 0, None, 1e-5)
    recorder, hold = _Recorder(), _ExitAfterApplying(3, hold=True)
    service = EdgeService(ServerHalf(split.server, training_config(prof), 100), num_classes=prof.synthetic_identities,
                          cut="conv1_1", activation_shape=split.activation_shape, max_batch=prof.batch_size)
    ledger = tmp_path / "ledger"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with running(service, interceptors=[recorder, hold]) as address:
        args = ["train", "--server", address, "--profile", "tiny", "--epochs", "2", "--epsilon", "5",
                "--image-budget", "inf", "--ledger", str(ledger), "--timeout", str(DEADLINE), "--reconnect-timeout", "5"]
        first = subprocess.Popen([sys.executable, "-m", "dpact_tf.edge", *args], cwd=root, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert hold.applied.wait(timeout=240), "the client never reached step 3"
        finally:
            first.kill()  # SIGKILL while step 3 is applied on the server and its reply is held back
            first.communicate(timeout=60)
            hold.release.set()
        client_id = json.load(open(ledger / "run" / "run.json"))["client_id"]
        assert service.client_steps() == {client_id: 3}
        capsys.readouterr()
        code = main(args, get_profile=get_profile)
    second = capsys.readouterr()
    assert code == 0, second.err[-3000:]
    assert f"resuming run {client_id} after step 2, its head restored" in second.out
    data = synthetic_faces(prof.synthetic_identities, prof.synthetic_images_per_identity, prof.image_size)
    per_epoch = -(-len(data.train_labels) // prof.batch_size)
    test_batches = -(-len(data.test_labels) // prof.batch_size)
    requests = _train_requests(recorder)
    # every step sent once, except step 3: sent, applied, killed before its reply -- then resent, byte for byte
    assert [r.step for r in requests] == [1, 2, 3] + list(range(3, 2 * per_epoch + 1))
    first3, again3 = [pb.TrainStepRequest(step=r.step, activation=r.activation, labels=r.labels).SerializeToString()
                      for r in requests if r.step == 3]  # all but the session id, which the handshake renews
    assert first3 == again3 and service.client_steps() == {client_id: 2 * per_epoch}
    # the ledger: every training image released once per epoch, every test image once per evaluation -- what an
    # uninterrupted run releases
    records = [json.loads(line) for line in open(ledger / "releases.jsonl")]
    train = [h for r in records if r["kind"] == "train" for h in r["images"]]
    test = [h for r in records if r["kind"] == "evaluate" for h in r["images"]]
    assert len(records) == 2 * (per_epoch + test_batches) and {r["run"] for r in records} == {client_id}
    assert len(train) == 2 * len(data.train_labels) and set(train.count(h) for h in train) == {2}
    assert len(test) == 2 * len(data.test_labels) and set(test.count(h) for h in test) == {2}
