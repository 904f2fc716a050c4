"""The edge server over gRPC on 127.0.0.1: equality with the in-process protocol, sessions and step ids,
bad input, token, TLS, size limits, what goes over the wire, checkpoint + journal, many clients."""
import json
import math
import os
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import SplitTrainer, TrainingConfig, build_split_vggface
from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge import dpact_edge_pb2_grpc as pb_grpc
from dpact_tf.edge.cli import parser
from dpact_tf.edge.client import EdgeClient
from dpact_tf.edge.model import ServerHalf
from dpact_tf.edge.server import EdgeService
from dpact_tf.edge.store import CheckpointStore
from dpact_tf.edge.trainer import KerasHead, LiteRTHead, RemoteTrainer, batches
from dpact_tf.edge.wire import to_proto, token_metadata
from dpact_tf.encoding import bytes_per_image
from dpact_tf.privacy import noise_std
from dpact_tf.repro.profiles import get_profile
from tests.edge_util import (CLASSES, CONFIG, DEADLINE, batch, running, self_signed_certificate, tiny_service,
                             tiny_split, weights)

ACT = (32, 32, 4)  # activation shape of tiny_split


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
        history = RemoteTrainer(KerasHead(split.client, cfg, len(train)), client, callbacks=[Record()]).fit(
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
    from dpact_tf.export import convert_client_head
    from dpact_tf.runtime import HeadRunner

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
    service = tiny_service()
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
    with running(service, token="s3cret") as address:
        good = _client(address, client_id="good", token="s3cret")
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
    with running(service, tls=(cert, key), token="t") as address:
        with _client(address, token="t", root_certificates=cert) as client:
            _, loss, _, _ = client.train_step(1, *batch())
            assert np.isfinite(loss)
        for kwargs in ({}, {"root_certificates": other_cert}):  # plaintext, or a certificate we do not trust
            with _client(address, client_id="x", token="t", timeout=3.0, **kwargs) as client:
                assert _code(client.connect)[0] == grpc.StatusCode.UNAVAILABLE
        assert service.half.steps == 1


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


def test_the_server_receives_only_the_encoded_noisy_activation_and_the_labels():
    epsilon = 5.0
    split = tiny_split(epsilon=epsilon)
    recorder = _Recorder()
    service = tiny_service()
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, 8).astype(np.int32)
    with running(service, token="t", interceptors=[recorder]) as address:
        with _client(address, token="t", epsilon=epsilon) as client:
            RemoteTrainer(KerasHead(split.client, CONFIG, 10), client).train_step(images, labels)
    assert [m for m, _ in recorder.requests] == ["Handshake", "TrainStep"]
    for metadata in recorder.metadata:  # the token, and gRPC's own headers
        assert set(metadata) <= {"authorization", "user-agent"}, metadata
    hello = pb.HandshakeRequest.FromString(recorder.requests[0][1])
    assert {f.name for f, _ in hello.ListFields()} == {"client_id", "epsilon", "delta", "cut", "activation_shape",
                                                       "encoding"}
    raw = recorder.requests[1][1]
    req = pb.TrainStepRequest.FromString(raw)
    assert len(req.SerializeToString()) == len(raw)  # no unknown fields hiding anything else
    assert {f.name for f, _ in req.ListFields()} == {"session_id", "step", "activation", "labels"}
    assert list(req.labels) == labels.tolist() and list(req.activation.shape) == [8, *ACT]
    assert len(req.activation.data) == 8 * bytes_per_image(ACT, "float32")
    for image in images:
        assert image.tobytes() not in raw
    # what was sent is the noisy release: clean activation + N(0, S_f^2 sigma^2); n = 32768 values, so the
    # std of the difference is within 5 / sqrt(2 n) ~ 2% of the calibrated std
    sent = np.frombuffer(req.activation.data, "<f4").reshape(req.activation.shape)
    clean = split.clean_client()(images.astype(np.float32) / 255.0).numpy()
    std = noise_std(epsilon, 1e-5)
    assert np.std(sent - clean) == pytest.approx(std, rel=5 / math.sqrt(2 * sent.size))
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


def test_journal_drops_a_record_cut_short_by_a_kill(tmp_path):
    store = CheckpointStore(str(tmp_path))
    for step in (1, 2):
        store.append(pb.JournalRecord(server_steps=step, client_id="c", request=pb.TrainStepRequest(step=step)))
    store.close()
    path = str(tmp_path / "journal.bin")
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:  # the kill hit while step 2 was being written: it was never acknowledged
        fh.truncate(size - 3)
    state, records = CheckpointStore(str(tmp_path)).load()
    assert state is None and [r.request.step for r in records] == [1]


def test_train_command_against_a_running_server(tmp_path, capsys):
    from dpact_tf.edge.cli import build_split, main, training_config

    prof = get_profile("tiny")
    split = build_split(prof, prof.synthetic_identities, "conv1_1", 0, None, 1e-5)
    service = EdgeService(ServerHalf(split.server, training_config(prof), 100), num_classes=prof.synthetic_identities,
                          cut="conv1_1", activation_shape=split.activation_shape, max_batch=prof.batch_size)
    (tmp_path / "token").write_text("s3cret\n")
    with running(service, token="s3cret") as address:
        code = main(["train", "--server", address, "--profile", "tiny", "--epochs", "1", "--epsilon", "5",
                     "--encoding", "uint8", "--token-file", str(tmp_path / "token"), "--client-id", "cli",
                     "--json", str(tmp_path / "history.json"), "--timeout", str(DEADLINE)], get_profile=get_profile)
    assert code == 0 and "epoch 1/1" in capsys.readouterr().out
    result = json.load(open(tmp_path / "history.json"))
    history = result["history"]
    assert history["epoch"] == [1] and result["encoding"] == "uint8" and len(history["test_accuracy"]) == 1
    steps = service.client_steps()["cli"]
    assert steps == service.half.steps and steps >= 1
    from dpact_tf.synthetic import synthetic_faces

    n_train = len(synthetic_faces(prof.synthetic_identities, prof.synthetic_images_per_identity,
                                  prof.image_size).train_labels)
    assert steps == -(-n_train // prof.batch_size)
    per_image = history["bytes_up"][0] / n_train
    assert bytes_per_image(split.activation_shape, "uint8") <= per_image < 1.2 * bytes_per_image(
        split.activation_shape, "uint8")
