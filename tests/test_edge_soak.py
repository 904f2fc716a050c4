"""A bounded soak on loopback: eight honest phones train together while a hostile token holder cycles through
poisoning, impersonation and slow uploads (its own and unauthenticated ones).  Every hostile call is refused
and logged, no honest call is, the phones are served promptly, and the shared model ends exactly where a run
without the hostile client ends -- the same weights, so the same accuracy.  Then the server process is killed
(``kill -9``) in the middle of eight phones' training with a journal record cut short, restarted twice from its
directory, and no acknowledged step is lost or applied twice."""
import json
import os
import signal
import threading
import time

import grpc
import numpy as np

from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge import dpact_edge_pb2_grpc as pb_grpc
from dpact_tf.edge.auth import TokenBook, issue_token
from dpact_tf.edge.client import EdgeClient
from dpact_tf.edge.journal import frame
from dpact_tf.edge.schedule import StepDecay
from dpact_tf.edge.wire import to_proto, token_metadata
from dpact_tf.privacy import PAPER_ACTIVATION_RANGE
from tests.edge_util import (CLASSES, DEADLINE, ServerProcess, SlowUploader, free_port, running, tiny_service,
                             weights)

ACT, PHONES, STEPS = (32, 32, 4), 8, 4
TOKENS = {**{f"phone{k}": f"phone{k}.secret-{k}" for k in range(PHONES)}, "mallory": "mallory.secret"}


def _data(seed, n=8, shape=ACT):
    """A learnable no-noise task: the label's channel is high, the others low (all within [0, R])."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n).astype(np.int32)
    x = rng.uniform(0, 0.1, (n,) + shape).astype(np.float32)
    x[np.arange(n), :, :, y] = rng.uniform(0.4, PAPER_ACTIVATION_RANGE, (n,) + shape[:2]).astype(np.float32)
    return x, y


def _phone(address, k):
    return EdgeClient(address, client_id=f"phone{k}/run", epsilon=None, delta=1e-5, cut="conv1_1",
                      activation_shape=ACT, token=TOKENS[f"phone{k}"], timeout=DEADLINE, reconnect_timeout=10.0)


class _Mallory(threading.Thread):
    """Cycles through the attacks until ``stop`` is set; counts what it tried."""

    def __init__(self, address, stop):
        super().__init__(daemon=True)
        self.address, self.stop, self.tried, self.accepted = address, stop, 0, 0

    def _try(self, call):
        self.tried += 1
        try:
            call()
            self.accepted += 1
        except grpc.RpcError:
            pass

    def run(self):
        port = int(self.address.rsplit(":", 1)[1])
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(self.address))
        mine = token_metadata(TOKENS["mallory"])
        session = stub.Handshake(pb.HandshakeRequest(client_id="mallory", delta=1e-5, cut="conv1_1",
                                                     activation_shape=list(ACT), encoding="float32"),
                                 timeout=DEADLINE, metadata=mine).session_id
        x, y = _data(99)
        # three slow uploads of her own (two stay in flight, the rest is refused) and one without a token
        slow = [SlowUploader(port, token=TOKENS["mallory"], duration=4.0) for _ in range(3)] + \
            [SlowUploader(port, token=None, duration=4.0)]
        step = 0
        while not self.stop.is_set():
            step += 1
            if step == 5:  # poisoning and impersonation first, then all at once
                for s in slow:
                    s.start()
            poison = x.copy()
            poison[0, 0, 0, step % 4] = 3e38 if step % 2 else 1e10
            self._try(lambda: stub.TrainStep(pb.TrainStepRequest(session_id=session, step=1, activation=to_proto(
                poison), labels=list(y)), timeout=DEADLINE, metadata=mine))
            self._try(lambda: stub.Handshake(pb.HandshakeRequest(  # someone else's id
                client_id=f"phone{step % PHONES}/run", delta=1e-5, cut="conv1_1", activation_shape=list(ACT),
                encoding="float32"), timeout=DEADLINE, metadata=mine))
            time.sleep(0.05)
        for s in slow:
            if s.ident is not None:  # started
                s.join(timeout=15)


def _run(hostile):
    events = []
    service = tiny_service(schedule=StepDecay(0.05, 1.0, 1), on_event=lambda name, info: events.append((name, info)))
    latencies, mallory = [], None
    with running(service, tokens=TokenBook(tokens=TOKENS), max_workers=8) as address:
        phones = [_phone(address, k) for k in range(PHONES)]
        stop = threading.Event()
        if hostile:
            mallory = _Mallory(address, stop)
            mallory.start()
            time.sleep(0.5)
        for step in range(1, STEPS + 1):  # a fixed order of steps, so that the two runs are comparable exactly
            for k, phone in enumerate(phones):
                start = time.monotonic()
                phone.train_step(step, *_data(100 * step + k))
                latencies.append(time.monotonic() - start)
        loss_sum, correct, count = (sum(v) for v in zip(*(phones[0].evaluate(*_data(s, n=16)) for s in (7, 8, 9))))
        stop.set()
        if mallory is not None:
            mallory.join(timeout=30)
        for phone in phones:
            phone.close()
    return service, events, latencies, (loss_sum / count, correct / count), mallory


def test_honest_phones_train_exactly_as_without_a_hostile_client():
    quiet, _, _, (quiet_loss, quiet_accuracy), _ = _run(hostile=False)
    attacked, events, latencies, (loss, accuracy), mallory = _run(hostile=True)
    assert not mallory.is_alive() and mallory.tried > 10 and mallory.accepted == 0
    for a, b in zip(weights(quiet), weights(attacked)):
        np.testing.assert_array_equal(a, b)
    assert (loss, accuracy) == (quiet_loss, quiet_accuracy)
    assert accuracy > 1 / CLASSES + 0.2  # the phones learned something (chance is 1/3), and both runs the same
    assert attacked.client_steps() == {**{f"phone{k}/run": STEPS for k in range(PHONES)}, "mallory": 0}
    assert max(latencies) < 3.0, max(latencies)
    refused = [info for name, info in events if name == "refused"]
    assert all(r["client_id"] in ("mallory", None) for r in refused)  # no honest call was refused
    tried = {"range", "impersonation", "busy", "unauthenticated"}
    assert tried <= {r["reason"] for r in refused} <= tried | {"upload_ended"}  # her slow uploads, cut off
    assert not [name for name, _ in events if name == "error"]


# The tiny profile's conv1_1 activation; steps per phone; the kill comes after KILLED_AT steps: one checkpoint
# (server step EVERY) is before it and none after, so the second restart reads the records appended after the cut.
TINY_ACT, KILL_STEPS, KILLED_AT, EVERY = (32, 32, 8), 5, 3 * PHONES, 22


def _restored(server):
    """The restarted server's "restored" event."""
    return json.loads(server.wait_for("[edge] restored: ").split("restored: ", 1)[1])


def test_a_kill_9_and_a_cut_short_journal_record_mid_soak_lose_and_double_nothing(tmp_path):
    port, directory, tokens = free_port(), str(tmp_path / "ckpt"), str(tmp_path / "tokens.txt")
    secrets = {k: issue_token(tokens, f"phone{k}") for k in range(PHONES)}
    # the rate decays tenfold every 10 server steps: at the profile's 0.01 throughout, this tiny model's loss
    # spikes after about 30 steps in some orders of the phones' steps, and a step made non-finite is refused
    args = ("--num-classes", str(CLASSES), "--checkpoint-dir", directory, "--checkpoint-every", str(EVERY),
            "--tokens-file", tokens, "--decay", "per-step", "--decay-steps", "10")
    acked, failures = [0] * PHONES, []  # per phone: its last acknowledged step

    def phone(k):
        client = EdgeClient(f"127.0.0.1:{port}", client_id=f"phone{k}/run", epsilon=None, delta=1e-5,
                            cut="conv1_1", activation_shape=TINY_ACT, token=secrets[k], timeout=DEADLINE,
                            reconnect_timeout=90.0)
        try:
            for step in range(1, KILL_STEPS + 1):
                client.train_step(step, *_data(100 * step + k, shape=TINY_ACT))  # the client checks, after
                acked[k] = step  # a restart, that the server holds its last acknowledged step or the one after
        except Exception as err:  # noqa: BLE001 -- reported by the assertion below
            failures.append((k, repr(err)))
        finally:
            client.close()

    server = ServerProcess(port, *args)
    try:
        server.wait_for("serving")
        phones = [threading.Thread(target=phone, args=(k,), daemon=True) for k in range(PHONES)]
        for t in phones:
            t.start()
        deadline = time.monotonic() + 60
        while sum(acked) < KILLED_AT and time.monotonic() < deadline:  # in the middle: some steps done
            time.sleep(0.005)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        at_kill = list(acked)  # no reply arrives from a dead process: every step counted here was acknowledged
        assert KILLED_AT <= sum(at_kill) < PHONES * KILL_STEPS, at_kill
        # What a kill in the middle of writing a record leaves: its first bytes (the step was not acknowledged)
        x, y = _data(0, shape=TINY_ACT)
        record = pb.JournalRecord(server_steps=sum(at_kill) + PHONES + 1, client_id="phone0/run",
                                  request=pb.TrainStepRequest(step=at_kill[0] + 1, activation=to_proto(x),
                                                              labels=list(y)), learning_rate=0.01)
        cut_short = frame(record.SerializeToString())[:-5]
        journal = os.path.join(directory, "journal.bin")
        kept = os.path.getsize(journal)
        with open(journal, "ab") as fh:
            fh.write(cut_short)

        server = ServerProcess(port, *args)
        damaged = json.loads(server.wait_for("journal_damaged").split("journal_damaged: ", 1)[1])
        assert (damaged["kept_bytes"], damaged["dropped_bytes"]) == (kept, len(cut_short)), damaged
        restored = _restored(server)
        # every acknowledged step is in the restored model, and at most each phone's step in flight besides
        assert sum(at_kill) <= restored["server_steps"] <= sum(at_kill) + PHONES, (restored, at_kill)
        for t in phones:
            t.join(timeout=120)
        assert not failures and acked == [KILL_STEPS] * PHONES, (failures, acked)
        server.proc.send_signal(signal.SIGKILL)  # again: the recovered journal, with records appended after the
        server.proc.wait(timeout=30)  # cut, restores the same state
        server = ServerProcess(port, *args)
        restored = _restored(server)
        server.wait_for("serving")
        assert restored["server_steps"] == PHONES * KILL_STEPS and restored["replayed"] == \
            PHONES * KILL_STEPS - EVERY, restored
        for k in range(PHONES):  # each phone's steps applied once: the server's count of them, and the total
            with EdgeClient(f"127.0.0.1:{port}", client_id=f"phone{k}/run", epsilon=None, delta=1e-5,
                            cut="conv1_1", activation_shape=TINY_ACT, token=secrets[k], timeout=DEADLINE) as c:
                hello = c.connect()
            assert (hello.last_step, hello.server_steps) == (KILL_STEPS, PHONES * KILL_STEPS)
    finally:
        server.stop()
