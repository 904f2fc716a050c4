"""Who may call the edge server: per-client tokens stored as digests, one client cannot act as another, no work
for an unauthenticated call (not even reading its body), and a bound on one client's calls in flight."""
import os
import stat
import time

import grpc
import numpy as np
import pytest

from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge import dpact_edge_pb2_grpc as pb_grpc
from dpact_tf.edge.auth import TokenBook, issue_token
from dpact_tf.edge.client import EdgeClient
from dpact_tf.edge.wire import to_proto, token_metadata
from dpact_tf.repro.profiles import get_profile
from tests.edge_util import (DEADLINE, SlowUploader, batch, events_of, rpc_code, running, tiny_service, weights)

ACT = (32, 32, 4)


def _client(address, client_id, token, **kw):
    return EdgeClient(address, client_id=client_id, epsilon=None, delta=1e-5, cut="conv1_1", activation_shape=ACT,
                      token=token, timeout=DEADLINE, reconnect_timeout=5.0, **kw)


def test_issued_tokens_are_stored_as_digests_and_reissuing_revokes(tmp_path):
    path = str(tmp_path / "tokens.txt")
    alice = issue_token(path, "alice")
    bob = issue_token(path, "bob")
    assert alice.startswith("alice.") and len(alice) == len("alice.") + 43  # 32 random bytes, URL-safe base64
    text = open(path).read()
    assert alice not in text and alice.split(".")[1] not in text and "alice sha256:" in text
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    book = TokenBook(path)
    assert (book.principal(alice), book.principal(bob), book.principal("alice.guess"), book.principal("")) == \
        ("alice", "bob", None, None)
    again = issue_token(path, "alice")  # a new token for alice: the old one stops working once the file is re-read
    book._checked = 0.0
    assert book.principal(again) == "alice" and book.principal(alice) is None and len(book) == 2
    for bad in ("", "a/b", "a.b", "x" * 65, "sp ace"):
        with pytest.raises(ValueError, match="client id"):
            issue_token(path, bad)
    with open(path, "a") as fh:
        fh.write("carol not-a-digest\n")
    with pytest.raises(ValueError, match="tokens.txt:4"):
        TokenBook(path)
    with pytest.raises(ValueError, match="issue-token"):
        TokenBook(str(tmp_path / "missing.txt"))


def test_issue_token_command(tmp_path, capsys):
    from dpact_tf.edge.cli import main

    tokens, out = str(tmp_path / "tokens.txt"), str(tmp_path / "phone.token")
    assert main(["issue-token", "--client-id", "phone", "--tokens-file", tokens], get_profile=get_profile) == 0
    printed = capsys.readouterr().out.strip()
    assert main(["issue-token", "--client-id", "phone", "--tokens-file", tokens, "--out", out],
                get_profile=get_profile) == 0
    written = open(out).read().strip()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600 and written not in capsys.readouterr().out
    book = TokenBook(tokens)
    assert book.principal(written) == "phone" and book.principal(printed) is None  # the second replaced the first


def test_one_client_cannot_act_as_another():
    tokens = {"alice": "alice.a-secret", "bob": "bob.b-secret"}
    service = tiny_service()
    events = events_of(service)
    with running(service, tokens=TokenBook(tokens=tokens)) as address:
        bob = _client(address, "bob/run1", tokens["bob"])
        bob.train_step(1, *batch())
        before, bob_session = weights(service), bob.session.session_id
        alice = _client(address, "alice/run7", tokens["alice"])
        alice.connect()  # her own runs: yes
        for cid in ("bob", "bob/run1", "alicex", "alice-bob"):  # anyone else's id: no
            code, details = rpc_code(_client(address, cid, tokens["alice"]).connect)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "issued to client 'alice'" in details, cid
        stub = pb_grpc.EdgeTrainingStub(alice.channel)  # bob's session id with alice's token
        x, y = batch(seed=1)
        for call in (lambda: stub.TrainStep(pb.TrainStepRequest(session_id=bob_session, step=2, activation=to_proto(x),
                                                                labels=list(y)),
                                            timeout=DEADLINE, metadata=token_metadata(tokens["alice"])),
                     lambda: stub.Evaluate(pb.EvaluateRequest(session_id=bob_session, activation=to_proto(x),
                                                              labels=list(y)),
                                           timeout=DEADLINE, metadata=token_metadata(tokens["alice"]))):
            code, details = rpc_code(call)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "belongs to client 'bob/run1'" in details
        assert service.client_steps() == {"bob/run1": 1, "alice/run7": 0}
        for a, b in zip(before, weights(service)):
            np.testing.assert_array_equal(a, b)
        bob.train_step(2, x, y)  # bob's session was not disturbed
        for c in (alice, bob):
            c.close()
    refused = [info for name, info in events if name == "refused"]
    assert len(refused) == 6 and {(r["client_id"], r["reason"], r["code"]) for r in refused} == \
        {("alice", "impersonation", "PERMISSION_DENIED")}


def test_an_unauthenticated_call_is_refused_before_its_body_is_read():
    """24 hostile uploads without a token, each declaring a 300 kB request (within the message limit) and sending
    it at 20 kB/s (re-opened as
    soon as it is refused), against a server of 16 worker threads: each is answered within a second, without
    waiting for its body, and a client with a token is served all along."""
    tokens = {"phone": "phone.secret"}
    service = tiny_service()
    events = events_of(service)
    with running(service, tokens=TokenBook(tokens=tokens), max_workers=16) as address:
        port = int(address.rsplit(":", 1)[1])
        hostile = [SlowUploader(port, duration=6.0) for _ in range(24)]
        for h in hostile:
            h.start()
        time.sleep(0.5)
        honest = _client(address, "phone", tokens["phone"])
        timings = []
        for step in range(1, 4):
            start = time.monotonic()
            honest.train_step(step, *batch(seed=step))  # the first call also handshakes
            timings.append(time.monotonic() - start)
        for h in hostile:
            h.join(timeout=15)
        honest.close()
    assert not any(h.is_alive() for h in hostile)
    answered = [t for h in hostile for t in h.answered]
    assert len(answered) >= 24 and max(answered) < 1.0, (len(answered), max(answered))
    assert all(t < 1.0 for h in hostile for t in h.unanswered)  # no upload was left waiting for its body
    assert max(timings) < 3.0, timings
    assert service.client_steps() == {"phone": 3}
    refused = [info for name, info in events if name == "refused"]
    assert len(refused) >= len(answered) and {r["reason"] for r in refused} == {"unauthenticated"}
    assert all(r["peer"].startswith("ipv4:127.0.0.1:") for r in refused)


def test_one_client_cannot_tie_up_the_workers_with_slow_uploads():
    """A token holder opens four slow uploads: two stay in flight (they are its), the others are refused at once
    (RESOURCE_EXHAUSTED, before their body is read); another client is served meanwhile; when the uploads end,
    nothing stays counted."""
    tokens = {"phone": "phone.secret", "mallory": "mallory.secret"}
    service = tiny_service()
    events = events_of(service)
    with running(service, tokens=TokenBook(tokens=tokens), max_workers=4, max_calls_per_client=2) as address:
        port = int(address.rsplit(":", 1)[1])
        hostile = [SlowUploader(port, token=tokens["mallory"], duration=4.0) for _ in range(4)]
        for h in hostile:
            h.start()
            time.sleep(0.2)
        honest = _client(address, "phone", tokens["phone"])
        start = time.monotonic()
        honest.train_step(1, *batch())
        took = time.monotonic() - start
        for h in hostile:
            h.join(timeout=15)
        time.sleep(0.5)  # the server notices the closed connections
        honest.train_step(2, *batch(seed=2))
        honest.close()
    assert took < 3.0 and sum(t > 2.0 for h in hostile for t in h.unanswered) == 2  # its two, waiting for a body
    busy = [info for name, info in events if name == "refused" and info["reason"] == "busy"]
    assert busy and {(r["client_id"], r["code"]) for r in busy} == {("mallory", "RESOURCE_EXHAUSTED")}
    inflight = [info["calls"] for name, info in events if name == "inflight"]
    assert max(inflight) <= 3 and inflight[-1] == 0


def test_an_exception_in_a_handler_is_logged_and_answered_internal(monkeypatch):
    service = tiny_service()
    events = events_of(service)

    def broken(*args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(service.half, "evaluate", broken)
    with running(service) as address, _client(address, "phone", None) as client:
        code, details = rpc_code(lambda: client.evaluate(*batch()))
        assert code == grpc.StatusCode.INTERNAL and "logged" in details and "fire" not in details
        client.train_step(1, *batch())  # the server goes on
    errors = [info for name, info in events if name == "error"]
    assert len(errors) == 1 and "disk on fire" in errors[0]["traceback"] and errors[0]["method"].endswith("Evaluate")
