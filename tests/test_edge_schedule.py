"""The learning rate is the operator's choice: decay per server step (all clients) or per epoch of each client's
declared data; the rate of every step is journalled and a replay uses it."""
import grpc
import numpy as np
import pytest

from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge import dpact_edge_pb2_grpc as pb_grpc
from dpact_tf.edge.client import EdgeClient
from dpact_tf.edge.schedule import EpochDecay, StepDecay
from dpact_tf.edge.store import CheckpointStore
from tests.edge_util import DEADLINE, batch, running, tiny_service, weights

ACT = (32, 32, 4)


def test_the_two_decays():
    step = StepDecay(0.01, 0.1, 100)
    assert step.rate(server_steps=0) == 0.01 and step.rate(server_steps=50) == pytest.approx(0.01 * 0.1 ** 0.5)
    epoch = EpochDecay(0.01, 0.1, 2)
    # 300 images of epochs of 100: 3 epochs of a 2-epoch horizon -> 0.1 ** 1.5
    assert epoch.rate(client_images=300, epoch_images=100) == pytest.approx(0.01 * 0.1 ** 1.5)
    assert epoch.rate(client_images=0, epoch_images=7, server_steps=10**6) == 0.01  # other clients do not count
    with pytest.raises(ValueError, match="epoch size"):
        epoch.rate(client_images=5, epoch_images=0)
    for bad in ({"learning_rate": 0.0}, {"decay_rate": 1.5}, {"decay_rate": 0.0}, {"horizon": float("nan")}):
        args = {"learning_rate": 0.01, "decay_rate": 0.1, "horizon": 10.0, **bad}
        for cls in (StepDecay, EpochDecay):
            with pytest.raises(ValueError):
                cls(args["learning_rate"], args["decay_rate"], args["horizon"])


def _client(address, cid, epoch_images):
    return EdgeClient(address, client_id=cid, epsilon=None, delta=1e-5, cut="conv1_1", activation_shape=ACT,
                      timeout=DEADLINE, reconnect_timeout=5.0, epoch_images=epoch_images)


def test_per_epoch_decay_follows_each_clients_own_epochs_and_replays_exactly(tmp_path):
    schedule = EpochDecay(0.01, 0.1, 1.0)
    store = CheckpointStore(str(tmp_path))
    service = tiny_service(store=store, schedule=schedule)
    with running(service) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        with pytest.raises(grpc.RpcError) as err:  # a client that does not say how large its epoch is
            stub.Handshake(pb.HandshakeRequest(client_id="x", delta=1e-5, cut="conv1_1", activation_shape=list(ACT),
                                               encoding="float32"), timeout=DEADLINE)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "epoch_images" in err.value.details()
        a, b = _client(address, "a", 8), _client(address, "b", 16)
        for step in (1, 2, 3):
            a.train_step(step, *batch(seed=step))  # batches of 4: a has trained 0, 1/2, 1 epochs before them
        b.train_step(1, *batch(seed=10))  # b joins late: its first step is at the top
        a.train_step(4, *batch(seed=4))
        for c in (a, b):
            c.close()
    rates = [(r.client_id, r.learning_rate) for r in store.load()[1]]
    assert [cid for cid, _ in rates] == ["a", "a", "a", "b", "a"]
    np.testing.assert_allclose([rate for _, rate in rates],
                               [0.01, 0.01 * 0.1 ** 0.5, 0.001, 0.01, 0.01 * 0.1 ** 1.5], rtol=1e-12)
    store.close()
    # a restart under another schedule replays the journalled rates: the same model
    restored = tiny_service(seed=3, store=CheckpointStore(str(tmp_path)), schedule=StepDecay(0.5, 1.0, 1))
    assert restored.half.steps == 5
    for x, y in zip(weights(service), weights(restored)):
        np.testing.assert_allclose(x, y, atol=1e-7)
    restored.store.close()


def test_per_step_decay_counts_every_clients_steps():
    service = tiny_service(schedule=StepDecay(0.01, 0.1, 4))
    seen = []
    original = service.half.train_step

    def spy(act, labels, *, learning_rate=None):
        seen.append(learning_rate)
        return original(act, labels, learning_rate=learning_rate)

    service.half.train_step = spy
    with running(service) as address:
        a, b = _client(address, "a", None), _client(address, "b", None)
        a.train_step(1, *batch())
        b.train_step(1, *batch(seed=1))
        a.train_step(2, *batch(seed=2))
        for c in (a, b):
            c.close()
    np.testing.assert_allclose(seen, [0.01 * 0.1 ** (k / 4) for k in range(3)], rtol=1e-12)
