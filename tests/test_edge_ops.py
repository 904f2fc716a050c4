"""Operating the edge server: health checking and reflection without a token, Prometheus metrics, a log line for
every refusal and error, a TLS failure named at once, and no token sent or served in the clear."""
import logging
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from dpact_tf.edge.auth import TokenBook
from dpact_tf.edge.client import EdgeClient
from dpact_tf.edge.ops import SERVICE_NAME, EventLog, Metrics, fanout
from dpact_tf.repro.profiles import get_profile
from tests.edge_util import DEADLINE, batch, running, self_signed_certificate, tiny_service

ACT = (32, 32, 4)
TOKENS = {"phone": "phone.secret"}


def _client(address, token=TOKENS["phone"], **kw):
    return EdgeClient(address, client_id="phone", epsilon=None, delta=1e-5, cut="conv1_1", activation_shape=ACT,
                      token=token, timeout=DEADLINE, reconnect_timeout=5.0, **kw)


def test_health_and_reflection_answer_without_a_token():
    service = tiny_service()
    with running(service, tokens=TokenBook(tokens=TOKENS)) as address:
        channel = grpc.insecure_channel(address)
        check = health_pb2_grpc.HealthStub(channel).Check
        for name in ("", SERVICE_NAME):
            assert check(health_pb2.HealthCheckRequest(service=name), timeout=DEADLINE).status == \
                health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=DEADLINE)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert {"dpact.edge.v1.EdgeTraining", "grpc.health.v1.Health"} <= set(services)
        methods = {m.name for m in ProtoReflectionDescriptorDatabase(channel).FindFileContainingSymbol(
            SERVICE_NAME).service[0].method}
        assert methods == {"Handshake", "TrainStep", "Evaluate"}
        channel.close()


def test_metrics_count_steps_refusals_clients_and_calls_in_flight():
    metrics = Metrics()
    service = tiny_service()
    service.on_event = fanout(service.on_event, metrics.watch(service))
    with running(service, tokens=TokenBook(tokens=TOKENS)) as address:
        with _client(address) as client:
            client.train_step(1, *batch())
            client.train_step(2, *batch(seed=1))
            with pytest.raises(grpc.RpcError):
                client.train_step(2, *batch(seed=2))  # another request under an applied step id
        with _client(address, token="phone.wrong") as stranger, pytest.raises(grpc.RpcError):
            stranger.connect()
        http, thread = metrics.serve(0)
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{http.server_port}/metrics", timeout=10).read().decode()
        finally:
            http.shutdown()
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["dpact_edge_steps_total"] == 2 and values["dpact_edge_step_seconds_count"] == 2
    assert values['dpact_edge_refusals_total{code="ALREADY_EXISTS",reason="step_order"}'] == 1
    assert values['dpact_edge_refusals_total{code="UNAUTHENTICATED",reason="unauthenticated"}'] == 1
    assert values["dpact_edge_clients"] == 1 and values["dpact_edge_server_steps"] == 2
    assert values["dpact_edge_sessions"] == 1 and values["dpact_edge_inflight_calls"] == 0
    assert values["dpact_edge_handler_errors_total"] == 0


def test_every_refusal_and_error_is_a_log_line(caplog):
    log = logging.getLogger("test_edge_ops")
    events = EventLog(log, step_every=2)
    with caplog.at_level(logging.INFO, logger="test_edge_ops"):
        events("refused", {"client_id": "mallory", "code": "INVALID_ARGUMENT", "reason": "range", "message": "m"})
        events("error", {"client_id": "phone", "method": "/x/Evaluate", "traceback": "Traceback: boom"})
        events("step", {"client_id": "phone", "step": 1})
        events("step", {"client_id": "phone", "step": 2})
        events("inflight", {"calls": 3})
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records[0][0] == "WARNING" and '"client_id": "mallory"' in records[0][1] and '"reason": "range"' in \
        records[0][1]
    assert records[1][0] == "ERROR" and "Traceback: boom" in records[1][1]
    assert [m for _, m in records[2:]] == ['[edge] step: {"client_id": "phone", "step": 2}']


def test_a_message_above_the_size_limit_is_logged_with_its_client_id():
    events = []
    service = tiny_service(on_event=lambda name, info: events.append(info) if name == "refused" else None)
    with running(service, tokens=TokenBook(tokens=TOKENS), max_message_bytes=100_000) as address:
        with _client(address) as client:
            client.connect()
            with pytest.raises(grpc.RpcError) as err:
                client.train_step(1, *batch(16))  # 16 x 32 x 32 x 4 float32: 262 kB
            deadline = time.monotonic() + DEADLINE  # the server's side of the call may end after the client's
            while not events and time.monotonic() < deadline:
                time.sleep(0.05)
            client.train_step(1, *batch(4))  # the client goes on with a batch within the limit
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in err.value.details()
    assert len(events) == 1 and (events[0]["client_id"], events[0]["reason"]) == ("phone", "upload_ended")
    assert "message size limit (100,000 bytes" in events[0]["message"]
    assert service.client_steps() == {"phone": 1}


def test_a_token_is_not_sent_or_served_in_the_clear():
    with pytest.raises(ValueError, match="refusing to send the token in the clear to 10.1.2.3:50051"):
        _client("10.1.2.3:50051")
    _client("10.1.2.3:50051", allow_plaintext_token=True).close()  # a network trusted as a whole
    _client("10.1.2.3:50051", root_certificates=self_signed_certificate()[0]).close()
    for local in ("127.0.0.1:1", "localhost:1", "[::1]:1"):
        _client(local).close()
    from dpact_tf.edge.cli import main

    for args in (["--host", "0.0.0.0"], ["--host", "0.0.0.0", "--tokens-file", "t.txt"]):
        with pytest.raises(SystemExit, match="reachable beyond this machine: serve it with TLS"):
            main(["serve", "--port", "0", *args], get_profile=get_profile)


def test_the_train_command_names_a_tls_failure_at_once(tmp_path):
    from dpact_tf.edge.cli import main

    cert, key = self_signed_certificate()
    other = tmp_path / "other.pem"
    other.write_bytes(self_signed_certificate()[0])
    (tmp_path / "token").write_text(TOKENS["phone"])
    with running(tiny_service(), tls=(cert, key), tokens=TokenBook(tokens=TOKENS)) as address:
        start = time.monotonic()
        with pytest.raises(SystemExit) as done:
            main(["train", "--server", address, "--profile", "tiny", "--epochs", "1", "--epsilon", "none",
                  "--image-budget", "inf",
                  "--ledger", str(tmp_path / "ledger"), "--token-file", str(tmp_path / "token"), "--tls-ca",
                  str(other), "--reconnect-timeout", "120"], get_profile=get_profile)
        took = time.monotonic() - start
    assert "error: TLS handshake with" in str(done.value.code) and "CERTIFICATE_VERIFY_FAILED" in str(done.value.code)
    assert took < 60  # building the model and the data; the connection itself fails at once, not after 120 s


def test_profile_help_states_each_profiles_input_size_and_width():
    import re

    from dpact_tf.edge.serve_cli import PROFILE_HELP
    from dpact_tf.repro.profiles import PROFILES

    for name, prof in PROFILES.items():
        clause = next(c for c in re.split(r"[;:.] ", PROFILE_HELP) if re.search(rf"\b{name}\b", c) and "x" in c)
        assert f"{prof.image_size}x{prof.image_size}" in clause, (name, clause)
        assert ("1/8" in clause) == (prof.width == 1 / 8) and ("VGG-Face's widths" in clause) == (prof.width == 1.0)
