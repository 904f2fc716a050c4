"""A token holder who plays by every wire rule still cannot damage the shared model or the other clients: the
declared (epsilon, delta) is bounded, a grid upload must look like the declared noise, the update is clipped,
the default schedule counts each client's own epochs, slow uploads are bounded per client or address, the
checkpoint directory has one server, and idle client ids do not pile up."""
import argparse
import math
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import grid
from dpact_tf.edge import dpact_edge_pb2 as pb
from dpact_tf.edge import dpact_edge_pb2_grpc as pb_grpc
from dpact_tf.edge.auth import TokenBook
from dpact_tf.edge.client import EdgeClient, _is_loopback
from dpact_tf.edge.model import ServerHalf, UnsafeStep
from dpact_tf.edge.serve_cli import add_serve_arguments
from dpact_tf.edge.store import CheckpointStore, DirectoryInUse
from dpact_tf.edge.wire import (PLAUSIBILITY_ALPHA, TAIL_STDS, MechanismError, check_levels, level_bounds,
                                level_limits, to_proto)
from tests.edge_util import (CONFIG, DEADLINE, SlowUploader, batch, events_of,
                              rpc_code, running, tiny_service, tiny_split, weights)

ACT = (32, 32, 4)


def _hello(stub, client_id="x", token=None, **kw):
    request = pb.HandshakeRequest(client_id=client_id, cut="conv1_1", activation_shape=list(ACT), **kw)
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    return stub.Handshake(request, timeout=DEADLINE, metadata=metadata)


def _serve_args(*argv):
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_handshake_bounds_the_declared_epsilon_and_delta():
    """(1e-3, 1e-5) and (2e-4, 0.1), at which one in-range upload destroys the model, are refused
    FAILED_PRECONDITION and logged; the default floor is the grid's certified lower end at the declared delta; an
    operator can lower it."""
    lo = grid.certified_epsilons(1e-5)[0]
    service = tiny_service()
    events = events_of(service)
    with running(service) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        for epsilon, delta, text in ((1e-3, 1e-5, "epsilon >= 0.7417"), (2e-4, 0.1, "delta <= 0.001"),
                                     (0.99 * lo, 1e-5, "epsilon >= 0.7417"), (1.0, 0.99, "delta <= 0.001")):
            code, details = rpc_code(lambda: _hello(stub, epsilon=epsilon, delta=delta, encoding="grid"))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and text in details, (epsilon, delta, details)
        assert _hello(stub, epsilon=1.01 * lo, delta=1e-5, encoding="grid").session_id
        assert _hello(stub, delta=0.5, encoding="float32").session_id  # no noise: delta is not used
    refused = [info for name, info in events if name == "refused"]
    assert len(refused) == 4 and {r["reason"] for r in refused} == {"privacy_bounds"}
    lowered = tiny_service(min_epsilon=0.5, max_delta=0.01)
    with running(lowered) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        assert _hello(stub, epsilon=0.6, delta=0.01, encoding="grid").session_id
    args = _serve_args()
    assert (args.min_epsilon, args.max_delta) == (None, 1e-3)


def test_plausibility_limits_are_chernoff_bounds_of_the_tables_tails():
    """Each tail limit fails an honest upload with probability <= alpha / (TAIL_STDS + 2), checked against the
    exact binomial tail; the limits grow with the batch and the sum's slack per level shrinks."""
    from scipy import stats

    z, p = grid.noise_table(16).pmf()
    for n in (1, 100, 8192, 2**21):
        limits = level_limits(16, n)
        for j, most in enumerate(limits.tail_counts, start=1):
            q = float(p[np.abs(z) > 16 * j].sum())
            assert stats.binom.sf(most, n, q) <= PLAUSIBILITY_ALPHA / (TAIL_STDS + 2)
            assert most < n or stats.binom.sf(most - 1, n, q) > 1e-30  # not absurdly loose
    assert level_limits(16, 2**21).sum_slack / 2**21 < 0.1 < level_limits(16, 100).sum_slack / 100


def test_honest_grid_releases_pass_and_edge_attacks_are_refused():
    """Honest releases at the clean extremes (0 and R) pass, levels at the ends -T / D + T are refused, and
    so are the attacks that stay just inside the tails: every level at D + 1 std, or 40% of them past 1 std."""
    rng = np.random.default_rng(1)
    for epsilon in (1.0, 5.0):
        spec = grid.check_release(epsilon, 1e-5)
        lo, hi = level_bounds(spec)
        shape = (64,) + ACT
        for clean in (0.0, 0.57735):
            for _ in range(10):
                words = rng.integers(-2**63, 2**63 - 1, shape, dtype=np.int64)
                levels = grid.release(np.full(shape, clean, np.float32), words, spec)
                check_levels(to_proto(levels, "grid", step=spec.step), spec)
        k = spec.steps_per_std
        attacks = {
            "edges": np.where(rng.random(shape) < 0.5, lo, hi),
            "top": np.full(shape, hi),
            "one std above": np.full(shape, spec.max_level + k),
            "two-sided 1.5 std": np.where(rng.random(shape) < 0.4, np.where(rng.random(shape) < 0.5, -3 * k // 2,
                                                                          spec.max_level + 3 * k // 2), 0),
        }
        for name, levels in attacks.items():
            with pytest.raises(MechanismError, match="noise std|average"):
                check_levels(to_proto(levels.astype(np.int32), "grid", step=spec.step), spec)


def test_a_grid_upload_at_the_ends_of_the_range_is_refused_and_the_model_is_unchanged():
    epsilon = 1.0
    spec = grid.check_release(epsilon, 1e-5)
    lo, hi = level_bounds(spec)
    service = tiny_service()
    events = events_of(service)
    before = weights(service)
    _, y = batch(16)
    with running(service) as address:
        client = EdgeClient(address, client_id="eve", epsilon=epsilon, delta=1e-5, cut="conv1_1",
                            activation_shape=ACT, timeout=DEADLINE)
        levels = np.where(np.random.default_rng(0).random((16,) + ACT) < 0.5, lo, hi).astype(np.int32)
        code, details = rpc_code(lambda: client.train_step(1, (levels, spec.step), y))
        client.close()
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "noise std" in details
    assert service.half.steps == 0
    for a, b in zip(before, weights(service)):
        np.testing.assert_array_equal(a, b)
    assert [info["reason"] for name, info in events if name == "refused"] == ["range"]


def test_the_default_update_is_clipped_and_bounds_one_steps_move():
    """`serve` clips the server's gradient norm to 1 by default; with it, the first step of a batch far larger
    than an honest one moves the weights by at most learning_rate x 1 (SGD's first momentum step)."""
    args = _serve_args()
    assert args.max_grad_norm == 1.0 and _serve_args("--max-grad-norm", "0").max_grad_norm == 0.0
    split = tiny_split()
    half = ServerHalf(split.server, CONFIG, 10, max_grad_norm=args.max_grad_norm)
    before = [v.numpy().copy() for v in half.model.trainable_variables]
    x = np.full((16,) + ACT, 30.0, np.float32)  # what epsilon = 1 levels near +T decode to
    half.train_step(x, np.arange(16) % 3, learning_rate=0.01)
    moved = math.sqrt(sum(float(np.sum((v.numpy() - b) ** 2)) for v, b in zip(half.model.trainable_variables,
                                                                                before)))
    assert 0 < moved <= 0.01 * 1.0 * (1 + 1e-4)


def test_the_default_schedule_is_per_epoch_so_junk_steps_leave_others_rates_alone():
    """The default `--decay per-epoch`: 40 batch-1 steps of one client do not lower another client's rate (under
    per-step decay they would)."""
    from dpact_tf.edge.schedule import EpochDecay

    assert _serve_args().decay == "per-epoch"
    store_rates = []
    service = tiny_service(schedule=EpochDecay(0.01, 0.1, 1.0))
    service.on_event = lambda name, info: None
    apply = service._apply

    def recording(client, request, act, labels, *, journal, learning_rate=None):
        store_rates.append((client.client_id, service._learning_rate(client)))
        return apply(client, request, act, labels, journal=journal, learning_rate=learning_rate)

    service._apply = recording
    with running(service) as address:
        def client(cid):
            return EdgeClient(address, client_id=cid, epsilon=None, delta=1e-5, cut="conv1_1", activation_shape=ACT,
                              timeout=DEADLINE, epoch_images=1000)
        honest, spam = client("honest"), client("spam")
        honest.train_step(1, *batch(4))
        for step in range(1, 41):
            spam.train_step(step, *batch(1, seed=step))
        honest.train_step(2, *batch(4, seed=2))
        honest.close(), spam.close()
    honest_rates = [rate for cid, rate in store_rates if cid == "honest"]
    assert honest_rates == [0.01, pytest.approx(0.01 * 0.1 ** (4 / 1000))]


def test_slow_uploads_without_tokens_are_bounded_per_address():
    """Without tokens, six slow uploads from one address: two are kept (until the upload deadline), the others are
    cancelled after the grace period; an honest client is served meanwhile."""
    service = tiny_service()
    events = events_of(service)
    with running(service, max_workers=4, upload_grace_seconds=0.5, max_slow_uploads=2,
                 max_upload_seconds=2.0) as address:
        port = int(address.rsplit(":", 1)[1])
        honest = EdgeClient(address, client_id="phone", epsilon=None, delta=1e-5, cut="conv1_1",
                            activation_shape=ACT, timeout=DEADLINE)
        honest.train_step(1, *batch(seed=1))  # handshake and the step's first trace, before the uploads
        hostile = [SlowUploader(port, duration=4.0, rate=5_000.0) for _ in range(6)]
        for h in hostile:
            h.start()
        time.sleep(0.3)
        timings = []
        for step in range(2, 6):
            start = time.monotonic()
            honest.train_step(step, *batch(seed=step))
            timings.append(time.monotonic() - start)
            time.sleep(0.3)
        for h in hostile:
            h.join(timeout=15)
        honest.close()
    answered = [t for h in hostile for t in h.answered]
    assert answered and max(answered) < 3.0, answered  # nothing waits past the upload deadline (+ slack)
    assert not [t for h in hostile for t in h.unanswered if t > 2.5]
    assert max(timings) < 2.0, timings
    refused = [info for name, info in events if name == "refused"]
    reasons = {r["reason"] for r in refused}  # upload_ended: an upload still going when its uploader stopped
    assert {"slow_upload", "upload_timeout"} <= reasons <= {"slow_upload", "upload_timeout", "upload_ended"}, refused
    assert len(refused) >= len(answered), (len(refused), len(answered))
    assert all(r["peer"].startswith("ipv4:127.0.0.1:") for r in refused)


def test_one_server_per_checkpoint_directory(tmp_path):
    first = CheckpointStore(str(tmp_path))
    with pytest.raises(DirectoryInUse, match="in use by another server"):
        CheckpointStore(str(tmp_path))
    first.close()
    CheckpointStore(str(tmp_path)).close()  # free again once the first has closed


def test_loopback_means_a_loopback_address_or_exactly_localhost():
    for target in ("127.0.0.1:50051", "127.1.2.3:1", "localhost:50051", "[::1]:50051", "dns:///localhost:1",
                   "unix:/tmp/s", "LOCALHOST:5"):
        assert _is_loopback(target), target
    for target in ("127.evil.example:50051", "dns:///127.evil.example:1", "localhost.evil.example:1",
                   "10.0.0.1:50051", "[::2]:1", "example.com"):
        assert not _is_loopback(target), target
    with pytest.raises(ValueError, match="in the clear"):
        EdgeClient("127.evil.example:50051", client_id="a", epsilon=None, delta=1e-5, cut="conv1_1",
                   activation_shape=ACT, token="a.secret")


def test_idle_client_ids_expire_and_live_ids_are_bounded_per_token():
    tokens = {"eve": "eve.secret", "bob": "bob.secret"}
    service = tiny_service(idle_ttl=0.5, max_ids_per_token=5)
    events = events_of(service)
    with running(service, tokens=TokenBook(tokens=tokens)) as address:
        stub = pb_grpc.EdgeTrainingStub(grpc.insecure_channel(address))
        for k in range(5):
            _hello(stub, f"eve/r{k}", tokens["eve"], delta=1e-5, encoding="float32")
        code, details = rpc_code(lambda: _hello(stub, "eve/r5", tokens["eve"], delta=1e-5, encoding="float32"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "5 client ids" in details
        assert _hello(stub, "eve/r0", tokens["eve"], delta=1e-5, encoding="float32").session_id  # its own again
        assert _hello(stub, "bob", tokens["bob"], delta=1e-5, encoding="float32").session_id  # another token
        session = _hello(stub, "bob/run", tokens["bob"], delta=1e-5, encoding="float32").session_id
        x, y = batch()
        stub.TrainStep(pb.TrainStepRequest(session_id=session, step=1, activation=to_proto(x), labels=list(y)),
                       timeout=DEADLINE, metadata=(("authorization", f"Bearer {tokens['bob']}"),))
        assert service.client_count() == 7
        time.sleep(0.7)  # every session idles past its ttl
        assert _hello(stub, "eve/r5", tokens["eve"], delta=1e-5, encoding="float32").session_id
    assert sorted(service._clients) == ["bob/run", "eve/r5"]  # ids without steps are forgotten, progress is kept
    assert sorted(service._sessions.values()) == ["eve/r5"]
    assert [info["reason"] for name, info in events if name == "refused"] == ["too_many_ids"]


def test_queue_depth_is_a_metric():
    import threading

    from dpact_tf.edge.ops import Metrics

    service = tiny_service()
    metrics = Metrics().watch(service)
    assert metrics.registry.get_sample_value("dpact_edge_queue_depth") == 0.0

    def wait():
        with service._queued():
            pass

    with service._lock:  # a step in progress: a second call waits for it
        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.2)
        assert metrics.registry.get_sample_value("dpact_edge_queue_depth") == 1.0
    waiter.join(timeout=5)
    assert metrics.registry.get_sample_value("dpact_edge_queue_depth") == 0.0


def test_serve_refuses_a_locked_or_damaged_directory_with_one_line(tmp_path):
    from dpact_tf.edge.serve_cli import serve
    from dpact_tf.repro.profiles import get_profile

    directory = str(tmp_path / "ck")
    holder = CheckpointStore(directory)
    args = _serve_args("--checkpoint-dir", directory, "--port", "0")
    with pytest.raises(SystemExit) as err:
        serve(args, get_profile("tiny"))
    assert str(err.value).startswith("error: ") and "in use by another server" in str(err.value)
    holder.close()
    with open(f"{directory}/state.bin", "wb") as fh:
        fh.write(b"\x00" * 40)  # not a checksummed record
    with pytest.raises(SystemExit) as err:
        serve(args, get_profile("tiny"))
    assert str(err.value).startswith("error: ") and "\n" not in str(err.value)


def test_a_refusal_in_the_middle_of_train_ends_it_with_one_line(tmp_path, monkeypatch, capsys):
    from dpact_tf.edge.cli import build_split, main, training_config
    from dpact_tf.edge.server import EdgeService
    from dpact_tf.repro.profiles import get_profile

    prof = get_profile("tiny")
    split = build_split(prof, prof.synthetic_identities, "conv1_1", 0, None, 1e-5)
    service = EdgeService(ServerHalf(split.server, training_config(prof), 100), num_classes=prof.synthetic_identities,
                          cut="conv1_1", activation_shape=split.activation_shape, max_batch=prof.batch_size)
    apply = service._apply

    def refuse_the_second(client, request, *args, **kwargs):
        if request.step == 2:
            raise UnsafeStep("this batch would make the server model non-finite")
        return apply(client, request, *args, **kwargs)

    monkeypatch.setattr(service, "_apply", refuse_the_second)
    with running(service) as address, pytest.raises(SystemExit) as err:
        main(["train", "--server", address, "--profile", "tiny", "--epochs", "1", "--epsilon", "5",
              "--image-budget", "inf", "--ledger", str(tmp_path / "ledger"), "--timeout", str(DEADLINE)],
             get_profile=get_profile)
    assert str(err.value) == ("error: the server answered INVALID_ARGUMENT: this batch would make the server model "
                              "non-finite")
    assert "Traceback" not in capsys.readouterr().err
