"""The server's durable state: checksummed, length-prefixed journal records; recovery that cuts the journal at
the first bad record and stays right over any number of restarts; each client's reply in a file of its own."""
import functools
import os
import shutil
import struct

import grpc
import numpy as np
import pytest

from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge import dpact_edge_pb2_grpc as pb_grpc
from dpact_tf.edge.journal import DamagedFile, Journal, frame, read_records, write_records
from dpact_tf.edge.store import CheckpointStore
from dpact_tf.edge.wire import to_proto
from tests.edge_util import DEADLINE, batch, running, tiny_service, weights

ACT = (32, 32, 4)


def _record_ends(path):
    """Byte offset after each record of a journal (length-prefixed: 8-byte length, 4-byte CRC, body)."""
    data, ends, pos = open(path, "rb").read(), [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        pos += 12 + length
        ends.append(pos)
    return ends


def test_records_round_trip_and_every_damage_is_detected(tmp_path):
    path = str(tmp_path / "f.bin")
    bodies = [b"", b"a", os.urandom(1000)]
    write_records(path, bodies, fsync=True)
    assert read_records(path) == bodies and frame(b"a")[8:12] == (0xC1D04330).to_bytes(4, "little")  # CRC-32C("a")
    data = open(path, "rb").read()
    for name, damaged in {"cut short": data[:-1], "flipped byte": data[:20] + bytes([data[20] ^ 1]) + data[21:],
                          "huge length": data[:-1012] + struct.pack("<QI", 1 << 40, 0) + data[-1000:]}.items():
        open(path, "wb").write(damaged)
        with pytest.raises(DamagedFile):
            read_records(path)
    journal = Journal(str(tmp_path / "j.bin"))
    for body in bodies:
        journal.append(body)
    journal.close()
    with open(journal.path, "ab") as fh:
        fh.write(frame(b"never acknowledged")[:-3])
    assert list(journal.records()) == bodies
    dropped = journal.recover()
    assert dropped["dropped_bytes"] == 12 + 18 - 3 and "cut short" in dropped["problem"]
    assert open(dropped["dropped_to"], "rb").read() == frame(b"never acknowledged")[:-3]  # kept for inspection
    journal.append(b"next")  # follows the good records, not the garbage
    assert list(journal.records()) == bodies + [b"next"] and journal.recover() is None


def _service(directory, seed=5):
    events = []
    service = tiny_service(seed=seed, store=CheckpointStore(directory), checkpoint_every=3,
                           on_event=lambda name, info: events.append((name, info)))
    return service, events


def _hello(stub, client_id="c"):
    return stub.Handshake(pb.HandshakeRequest(client_id=client_id, delta=1e-5, cut="conv1_1",
                                              activation_shape=list(ACT), encoding="float32"), timeout=DEADLINE)


def _flip(path, index, mask=1):
    data = bytearray(open(path, "rb").read())
    data[index] ^= mask
    open(path, "wb").write(bytes(data))


def _steps(address, steps, client_id="c"):
    stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
    hello = _hello(stub, client_id)
    for step in steps:
        x, y = batch(seed=step)
        stub.TrainStep(pb.TrainStepRequest(session_id=hello.session_id, step=step, activation=to_proto(x),
                                           labels=list(y)), timeout=DEADLINE)
    return hello


@functools.lru_cache(maxsize=None)
def _reference(steps: range):
    """The weights after ``steps`` on a fresh server without a store (computed once per range: read-only)."""
    service = tiny_service(seed=0)
    with running(service) as address:
        _steps(address, steps)
    return weights(service)


@pytest.fixture(scope="module")
def five_steps(tmp_path_factory):
    """A server directory after steps 1-5 (a checkpoint after 3; 4 and 5 in the journal), its store closed: each
    damage below is done to a copy."""
    directory = str(tmp_path_factory.mktemp("five") / "ckpt")
    first, _ = _service(directory, seed=0)
    with running(first) as address:
        _steps(address, range(1, 6))
    first.store.close()
    return directory


@pytest.mark.parametrize("damage", ["cut short", "flipped byte", "last record removed"])
def test_recovery_cuts_at_the_first_bad_record_and_stays_right_over_restarts(tmp_path, damage, five_steps):
    """Steps 1-5 (a checkpoint after 3; 4 and 5 in the journal), then the journal is damaged: a record of step 6
    cut short by a kill (never acknowledged: nothing acknowledged is lost), a flipped byte in step 5's record, or
    step 5's record gone (a power cut without --fsync).  The first restart stops at the first bad record, the
    client goes on from the server's last step, and a second restart finds everything the first one left."""
    directory = str(tmp_path / "ckpt")
    shutil.copytree(five_steps, directory)
    path = os.path.join(directory, "journal.bin")
    ends = _record_ends(path)
    assert len(ends) == 2  # steps 4 and 5
    data = open(path, "rb").read()
    if damage == "cut short":
        damaged = data + frame(b"\x08\x06 the record of step 6")[:-5]
    elif damage == "flipped byte":
        damaged = data[:ends[0] + 40] + bytes([data[ends[0] + 40] ^ 0x10]) + data[ends[0] + 41:]
    else:
        damaged = data[:ends[0]]
    open(path, "wb").write(damaged)
    kept = 5 if damage == "cut short" else 4

    second, events = _service(directory)
    assert second.half.steps == kept and second.client_steps() == {"c": kept}
    for a, b in zip(weights(second), _reference(range(1, kept + 1))):
        np.testing.assert_allclose(a, b, atol=1e-6)
    damaged_events = [info for name, info in events if name == "journal_damaged"]
    assert len(damaged_events) == (0 if damage == "last record removed" else 1)
    with running(second) as address:
        _steps(address, range(kept + 1, kept + 3))  # steps after the checkpoint at 6 go to the new journal
    second.store.close()

    third, events = _service(directory)
    assert third.half.steps == kept + 2 and third.client_steps() == {"c": kept + 2}
    assert not [name for name, _ in events if name == "journal_damaged"]
    for a, b in zip(weights(third), weights(second)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    third.store.close()


def test_each_reply_lives_in_its_own_file_and_answers_a_retry_after_a_restart(tmp_path):
    directory = str(tmp_path / "ckpt")
    first, _ = _service(directory, seed=0)
    with running(first) as address:
        for cid in ("a", "b"):
            _steps(address, [1], client_id=cid)
        hello = _steps(address, [2], client_id="a")  # server step 3: a checkpoint, the journal is empty
        x, y = batch(seed=2)
        retry = pb.TrainStepRequest(step=2, activation=to_proto(x), labels=list(y))
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        retry.session_id = hello.session_id
        first_reply = stub.TrainStep(retry, timeout=DEADLINE)
    first.store.close()
    assert first_reply.replayed
    assert len(os.listdir(os.path.join(directory, "replies"))) == 2
    assert os.path.getsize(os.path.join(directory, "state.bin")) < 300  # no reply in the state
    assert os.path.getsize(os.path.join(directory, "journal.bin")) == 0

    second, _ = _service(directory)
    with running(second) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        retry.session_id = _hello(stub, "a").session_id
        again = stub.TrainStep(retry, timeout=DEADLINE)
    second.store.close()
    assert again.replayed and again.grad.data == first_reply.grad.data and again.loss == first_reply.loss
    # a damaged reply file is not served: the retry is refused, saying why
    _flip(second.store._reply_path("a"), -1)
    third, _ = _service(directory)
    with running(third) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        retry.session_id = _hello(stub, "a").session_id
        with pytest.raises(grpc.RpcError) as err:
            stub.TrainStep(retry, timeout=DEADLINE)
    third.store.close()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "reply was lost" in err.value.details()


def test_a_reply_file_is_removed_reply_ttl_after_its_clients_last_step(tmp_path):
    import time

    directory = str(tmp_path / "ckpt")
    service, events = _service(directory, seed=0)
    service.reply_ttl = 3600.0
    replies = os.path.join(directory, "replies")
    with running(service) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        _steps(address, [1], client_id="old")
        _steps(address, [1, 2], client_id="recent")  # server step 3: a checkpoint writes both replies
        assert sorted(os.listdir(replies)) == sorted(os.path.basename(service.store._reply_path(c))
                                                     for c in ("old", "recent"))
        old = service.store._reply_path("old")
        an_hour_ago = time.time() - 3601
        os.utime(old, (an_hour_ago, an_hour_ago))  # "old" has not stepped for over an hour
        _steps(address, [3, 4], client_id="recent")
        _steps(address, [1], client_id="other")  # server step 6: a checkpoint
        assert not os.path.exists(old) and len(os.listdir(replies)) == 2  # "recent" and "other"
        assert [info["replies_removed"] for name, info in events if name == "checkpoint"] == [0, 0, 1]
        x, y = batch(seed=1)  # a retry of old's last step cannot be answered any more, and says why
        retry = pb.TrainStepRequest(session_id=_hello(stub, "old").session_id, step=1, activation=to_proto(x),
                                    labels=list(y))
        with pytest.raises(grpc.RpcError) as err:
            stub.TrainStep(retry, timeout=DEADLINE)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "removed 3600 s after" in \
            err.value.details()
        retry.step = 2  # its next step goes on
        assert stub.TrainStep(retry, timeout=DEADLINE).step == 2
    service.store.close()
    assert service.client_steps() == {"old": 2, "recent": 4, "other": 1}


def test_a_damaged_state_file_stops_the_server_with_a_clear_error(tmp_path):
    directory = str(tmp_path / "ckpt")
    first, _ = _service(directory, seed=0)
    with running(first) as address:
        _steps(address, range(1, 4))
    first.store.close()
    _flip(os.path.join(directory, "state.bin"), -2, 4)
    with pytest.raises(DamagedFile, match="state.bin: record at byte 0 fails its CRC-32C checksum"):
        _service(directory)
    os.remove(os.path.join(directory, "state.bin"))
    open(os.path.join(directory, "state.pb"), "wb").write(b"\x08\x03")  # a state file of another layout
    with pytest.raises(DamagedFile, match="holds a state.pb"):
        _service(directory)


def test_an_idle_session_expires_and_the_client_opens_another(tmp_path):
    import time

    from dpact_tf.edge.client import EdgeClient

    service = tiny_service()
    with running(service) as address:
        client = EdgeClient(address, client_id="c", epsilon=None, delta=1e-5, cut="conv1_1", activation_shape=ACT,
                            timeout=DEADLINE, reconnect_timeout=5.0)
        client.train_step(1, *batch())
        old = client.session.session_id
        service.idle_ttl = 1.0  # from now on (the first step above compiled the model: seconds)
        assert service.session_count() == 1
        time.sleep(1.3)
        assert service.session_count() == 0
        stub = pb_grpc.EdgeTrainingStub(client.channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Evaluate(pb.EvaluateRequest(session_id=old, activation=to_proto(batch()[0]),
                                             labels=list(batch()[1])), timeout=DEADLINE)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "expired" in err.value.details()
        client.train_step(2, *batch(seed=2))  # NOT_FOUND: the client handshakes again and goes on
        assert client.session.session_id != old and service.client_steps() == {"c": 2}
        client.close()
