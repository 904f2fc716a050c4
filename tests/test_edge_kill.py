"""kill -9 of a real server process mid-training: after the restart the client resumes from its last
acknowledged step, and every step is applied exactly once (the restarted server's answers and final model
equal an uninterrupted in-process run).  The server runs as an operator would run it: per-client tokens,
Prometheus metrics, health checking."""
import re
import signal
import urllib.request

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dpact_tf.edge.auth import issue_token
from dpact_tf.edge.cli import build_split, training_config
from dpact_tf.edge.client import EdgeClient
from dpact_tf.edge.model import ServerHalf
from dpact_tf.privacy import PAPER_ACTIVATION_RANGE
from dpact_tf.repro.profiles import get_profile
from tests.edge_util import ServerProcess, free_port

DECAY, EVERY, CLASSES = 20, 3, 8


def _server(port, directory, tokens):
    # per-step decay without clipping: the reference below is a plain ServerHalf
    return ServerProcess(port, "--num-classes", str(CLASSES), "--seed", "0", "--decay", "per-step",
                         "--decay-steps", str(DECAY), "--max-grad-norm", "0",
                         "--checkpoint-dir", directory, "--checkpoint-every", str(EVERY), "--tokens-file", tokens,
                         "--metrics-port", "0")


def test_kill_9_and_restart_resumes_without_losing_or_repeating_a_step(tmp_path):
    prof = get_profile("tiny")
    rng = np.random.default_rng(0)
    shape = (32, 32, 8)  # tiny profile: 32x32 input, conv1_1 with 64/8 channels
    r = PAPER_ACTIVATION_RANGE  # a no-noise upload lies in [0, R]
    steps = [(rng.uniform(0, r, (8,) + shape).astype(np.float32), rng.integers(0, CLASSES, 8)) for _ in range(8)]
    probe = (rng.uniform(0, r, (16,) + shape).astype(np.float32), rng.integers(0, CLASSES, 16))
    port, directory, tokens = free_port(), str(tmp_path / "ckpt"), str(tmp_path / "tokens.txt")
    token = issue_token(tokens, "phone")
    server = _server(port, directory, tokens)
    try:
        # the uninterrupted reference, computed while the server starts
        split = build_split(prof, CLASSES, "conv1_1", 0, None, 1e-5)
        reference = ServerHalf(split.server, training_config(prof), DECAY)
        expected = [reference.train_step(x, y) for x, y in steps]
        server.wait_for("serving")
        client = EdgeClient(f"127.0.0.1:{port}", client_id="phone", epsilon=None, delta=1e-5, cut="conv1_1",
                            activation_shape=shape, timeout=30.0, reconnect_timeout=90.0, token=token)
        got = [client.train_step(i + 1, x, y) for i, (x, y) in enumerate(steps[:5])]
        # checkpoint after step 3; steps 4 and 5 are acknowledged and only in the journal
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        server = _server(port, directory, tokens)
        got += [client.train_step(i + 1, x, y) for i, (x, y) in enumerate(steps) if i >= 5]  # waits for it
        restored = server.wait_for("restored")
        assert '"server_steps": 5' in restored and '"replayed": 2' in restored, restored
        serving = server.wait_for("serving")
        assert "1 client tokens" in serving, serving
        metrics_port = int(re.search(r"metrics on 127.0.0.1:(\d+)", serving).group(1))
        hello = client.connect()
        assert hello.last_step == 8 and hello.server_steps == 8  # every step applied exactly once
        loss_sum, correct, count = client.evaluate(*probe)
        health = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert "dpact_edge_server_steps 8.0" in scrape and "dpact_edge_steps_total 3.0" in scrape  # 6, 7, 8
        client.close()
    finally:
        server.stop()
    for (grad, loss, correct_k, replayed), (ref_grad, ref_loss, ref_correct) in zip(got, expected):
        assert not replayed and correct_k == ref_correct
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        np.testing.assert_allclose(grad, ref_grad, atol=1e-6)
    ref_loss_sum, ref_correct = reference.evaluate(*probe)
    np.testing.assert_allclose(loss_sum, ref_loss_sum, rtol=1e-5)
    assert (correct, count) == (ref_correct, 16)
