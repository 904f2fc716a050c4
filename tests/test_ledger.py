"""The client's privacy ledger: composition counts, the budget, persistence across processes, crashes."""
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dpact_tf import accounting
from dpact_tf.ledger import Budget, BudgetExceeded, PrivacyLedger, image_hash, run_epsilon

SHAPE = (8, 8, 4)
DELTA = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNLIMITED = Budget(epsilon=math.inf)


def _record(ledger, images, *, run="r", kind="train", train_conv1=False, epsilon=2.0):
    ledger.record(images, epsilon=epsilon, delta=DELTA, activation_shape=SHAPE, train_conv1=train_conv1, run=run,
                  kind=kind)


def _simulate(ledger, *, train_conv1, n_train=10, n_test=4, epochs=3, batch_size=4):
    train = [f"train{i}" for i in range(n_train)]
    test = [f"test{i}" for i in range(n_test)]
    for _ in range(epochs):
        for start in range(0, n_train, batch_size):
            _record(ledger, train[start:start + batch_size], train_conv1=train_conv1)
        _record(ledger, test, kind="evaluate", train_conv1=train_conv1)
    return train, test


@pytest.mark.parametrize("train_conv1", [False, True])
def test_composition_counts_are_release_count(tmp_path, train_conv1):
    with PrivacyLedger(str(tmp_path / "l.jsonl"), budget=UNLIMITED) as ledger:
        train, test = _simulate(ledger, train_conv1=train_conv1)
        want = accounting.release_count(train_conv1=train_conv1, n_train=10, n_test=4, epochs=3, batch_size=4)
        assert ledger.releases(train[0]) == want["train_image"] and ledger.releases(test[0]) == want["test_image"]
        assert ledger.records == 3 * 4
        if train_conv1:
            # 3 epochs x (10 training + 4 test releases) = 42; train0 is in the first batch of 4: its own first
            # release plus the 38 after that batch = 39.  train8 is first released in the third batch, after 10
            # releases: 1 + (42 - 10) = 33.  A test image never updates conv1: its 3 evaluations.
            assert [ledger.releases(train[0]), ledger.releases(train[8])] == [39, 33]
        else:
            assert {ledger.releases(t) for t in train} == {3}
        assert {ledger.releases(t) for t in test} == {3}


@pytest.mark.parametrize("train_conv1", [False, True])
def test_the_planned_epsilon_of_a_run_is_what_the_ledger_records(tmp_path, train_conv1):
    with PrivacyLedger(str(tmp_path / "l.jsonl"), budget=UNLIMITED) as ledger:
        _simulate(ledger, train_conv1=train_conv1)
        planned = run_epsilon(2.0, DELTA, SHAPE, train_conv1=train_conv1, n_train=10, n_test=4, epochs=3,
                              batch_size=4)
        assert ledger.max_image_epsilon() == pytest.approx(planned, rel=1e-9)
    assert run_epsilon(None, DELTA, SHAPE, train_conv1=True, n_train=10, n_test=4, epochs=3, batch_size=4) == math.inf


def test_per_image_epsilon_composes_the_gaussians(tmp_path):
    z = {e: accounting.image_noise_multiplier(e, DELTA, SHAPE, grid_rounding=True) for e in (1.0, 2.0, 3.0)}
    with PrivacyLedger(str(tmp_path / "l.jsonl"), budget=UNLIMITED) as ledger:
        for _ in range(3):
            _record(ledger, ["a"])
        assert ledger.image_epsilon("a") == pytest.approx(
            accounting.image_epsilon(z[2.0], DELTA, releases=3), rel=1e-9)
        # Gaussians of multipliers z1, z3 compose to one of multiplier (z1^-2 + z3^-2)^(-1/2)
        _record(ledger, ["b"], epsilon=1.0)
        _record(ledger, ["b"], epsilon=3.0)
        composed = (z[1.0] ** -2 + z[3.0] ** -2) ** -0.5
        assert ledger.image_epsilon("b") == pytest.approx(accounting.image_epsilon(composed, DELTA), rel=1e-9)
        assert ledger.image_epsilon("never released") == 0.0
        assert ledger.max_image_epsilon() == max(ledger.image_epsilon("a"), ledger.image_epsilon("b"))


def test_a_release_beyond_the_budget_is_refused_before_it_is_recorded(tmp_path):
    z = accounting.image_noise_multiplier(2.0, DELTA, SHAPE, grid_rounding=True)
    budget = Budget(epsilon=accounting.image_epsilon(z, DELTA, releases=2), delta=DELTA)  # two releases fit
    path = str(tmp_path / "l.jsonl")
    with PrivacyLedger(path, budget=budget) as ledger:
        _record(ledger, ["a", "b"])
        _record(ledger, ["a"])
        before = open(path, "rb").read()
        with pytest.raises(BudgetExceeded, match="refused before release.*over 3 releases"):
            _record(ledger, ["c", "a"])
        assert open(path, "rb").read() == before and ledger.releases("c") == 0
        _record(ledger, ["b", "c"])  # b's second release and c's first still fit
        with pytest.raises(BudgetExceeded, match="per-image epsilon of inf"):
            _record(ledger, ["d"], epsilon=None)  # the clean activation: an infinite epsilon


def test_with_conv1_trained_new_images_are_refused_when_an_earlier_one_is_spent(tmp_path):
    z = accounting.image_noise_multiplier(2.0, DELTA, SHAPE, grid_rounding=True)
    budget = Budget(epsilon=accounting.image_epsilon(z, DELTA, releases=5), delta=DELTA)
    with PrivacyLedger(str(tmp_path / "l.jsonl"), budget=budget) as ledger:
        # a and b: 1 release, then +2 per later batch of two: 3 after [c, d], 5 after [e, f]
        for batch in (["a", "b"], ["c", "d"], ["e", "f"]):
            _record(ledger, batch, train_conv1=True)
        assert [ledger.releases(x) for x in "acef"] == [5, 3, 1, 1]
        with pytest.raises(BudgetExceeded, match="image a|image b"):
            _record(ledger, ["g", "h"], train_conv1=True)  # new images, but a and b would reach 7
        _record(ledger, ["g", "h"], train_conv1=True, run="another run")  # fresh weights: independent of a, b
        assert ledger.releases("a") == 5 and ledger.releases("g") == 1


def test_image_hash_is_the_sha256_of_the_uint8_bytes():
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert image_hash(image) == hashlib.sha256(bytes(range(12))).hexdigest()
    assert image_hash(image.T.copy().T) == image_hash(image)  # C order, whatever the memory layout
    with pytest.raises(ValueError, match="uint8"):
        image_hash(image.astype(np.float32) / 255.0)


def _run(code, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


_WRITER = """
import sys
from dpact_tf.ledger import PrivacyLedger, Budget
path, name, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ledger = PrivacyLedger(path, budget=Budget(epsilon=float("inf")))
for i in range(n):
    ledger.record([f"{name}-{i}-{j}" for j in range(size)] + ["shared"], epsilon=2.0, delta=1e-5,
                  activation_shape=(8, 8, 4), train_conv1=False, run=name, kind="train")
    print("ok", i + 1, flush=True)
"""


def test_two_processes_share_one_ledger(tmp_path):
    path = str(tmp_path / "l.jsonl")
    writers = [_run(_WRITER, path, name, "40", "3") for name in ("p", "q")]  # at the same time
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err[-2000:]
    with PrivacyLedger(path, budget=UNLIMITED) as ledger:
        assert ledger.records == 80 and ledger.releases("shared") == 80 and ledger.releases("q-39-2") == 1
    lines = open(path).read().splitlines()
    assert len(lines) == 80 and all(json.loads(line)["run"] in ("p", "q") for line in lines)
    # the budget holds across processes: this one (a third process) is refused for the image the others spent
    z = accounting.image_noise_multiplier(2.0, DELTA, SHAPE, grid_rounding=True)
    spent = accounting.image_epsilon(z, DELTA, releases=80)
    with PrivacyLedger(path, budget=Budget(epsilon=spent)) as ledger:
        _record(ledger, ["new"], run="r")
        with pytest.raises(BudgetExceeded):
            _record(ledger, ["shared"], run="r")
    with PrivacyLedger(path, budget=UNLIMITED) as ledger:
        assert ledger.records == 81 and ledger.releases("shared") == 80


def test_a_truncated_last_record_is_dropped_and_the_ledger_goes_on(tmp_path):
    path = str(tmp_path / "l.jsonl")
    with PrivacyLedger(path, budget=UNLIMITED) as ledger:
        for batch in (["a"], ["a", "b"], ["a", "c"]):
            _record(ledger, batch)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:  # a crash inside the write of the last batch: it was never released
        fh.truncate(size - 5)
    with PrivacyLedger(path, budget=UNLIMITED) as ledger:
        assert ledger.records == 2 and [ledger.releases(x) for x in "abc"] == [2, 1, 0]
        _record(ledger, ["c"])
    lines = open(path).read().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["images"] == ["c"]


def test_a_damaged_record_is_an_error(tmp_path):
    path = str(tmp_path / "l.jsonl")
    with PrivacyLedger(path, budget=UNLIMITED) as ledger:
        for batch in (["a"], ["b"], ["c"]):
            _record(ledger, batch)
    lines = open(path).read().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "#" + lines[1][21:]
    open(path, "w").write("".join(lines))
    with pytest.raises(ValueError, match="record 2 is damaged"):
        PrivacyLedger(path)


def test_a_writer_killed_in_the_middle_loses_no_acknowledged_release(tmp_path):
    path = str(tmp_path / "l.jsonl")
    writer = _run(_WRITER, path, "w", "100000", "2000")  # ~140 kB per line: the kill may land inside a write
    acknowledged, deadline = 0, time.monotonic() + 120
    while acknowledged < 5 and time.monotonic() < deadline:
        line = writer.stdout.readline()
        assert line, writer.stderr.read()[-2000:]
        acknowledged = int(line.split()[1])
    time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.communicate(timeout=60)
    assert acknowledged >= 5
    with PrivacyLedger(path, budget=UNLIMITED) as ledger:
        # every batch record() returned for is there; at most the one being written when killed is extra
        assert acknowledged <= ledger.records == ledger.releases("shared")
        _record(ledger, ["after"])
        assert ledger.releases("after") == 1
    assert all(json.loads(line) for line in open(path).read().splitlines())


@pytest.mark.parametrize("train_conv1", [True, False])
def test_the_ledger_of_a_replayed_run_reads_back_the_accountings_epsilon(tmp_path, train_conv1):
    from dpact_tf.repro import studies

    replay = studies.ledger_replay(profile="tiny", dataset="synthetic", epsilon=5.0, train_conv1=train_conv1,
                                   directory=str(tmp_path))
    assert replay["ledger_epsilon"] == pytest.approx(replay["accounting_epsilon"], rel=1e-9)
    assert replay["first_batch_refused"]  # the default budget (8 per image) refuses the paper's method
    assert replay["records"] > 0 and replay["releases"] >= 1
