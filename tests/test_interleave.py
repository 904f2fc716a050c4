"""Measuring processes timed alternately: the protocol, the order of the rounds, failures."""
import os
import sys

import pytest

from dpact_tf.repro.interleave import Worker, interleave

# A measuring process: its ops append to a shared log, so the test sees the order the parent asked in.
_SERVE = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("interleave", sys.argv[1])
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
name, log = sys.argv[2], sys.argv[3]
def op(cmd, seconds):
    def run():
        time.sleep(seconds)
        with open(log, "a") as fh:
            fh.write(f"{name}:{cmd}\\n")
    return run
mod.serve({"name": name, "ready": True}, {"fast": op("fast", 0.01), "slow": op("slow", 0.05)},
          lambda: {"finished": name})
"""
_MODULE = os.path.join(os.path.dirname(__file__), os.pardir, "dpact_tf", "repro", "interleave.py")


def _worker(name, log):
    return Worker([sys.executable, "-c", _SERVE, _MODULE, name, str(log)])


def test_rounds_alternate_and_time_each_call(tmp_path):
    log = tmp_path / "log"
    workers = {"a": _worker("a", log), "b": _worker("b", log)}
    try:
        assert workers["a"].info == {"name": "a", "ready": True}
        times, cpu = interleave(workers, [("a", "fast"), ("b", "slow")], 3, gap_s=0.0)
        assert [w.finish() for w in workers.values()] == [{"finished": "a"}, {"finished": "b"}]
    finally:
        for w in workers.values():
            w.kill()
    # round 1 a then b, round 2 b then a, round 3 a then b: each call sits between calls of the other side
    assert log.read_text().split() == ["a:fast", "b:slow", "b:slow", "a:fast", "a:fast", "b:slow"]
    assert len(times[("a", "fast")]) == len(times[("b", "slow")]) == 3
    assert min(times[("b", "slow")]) >= 0.05 > 0.01 <= min(times[("a", "fast")])
    assert 0 <= max(cpu[("b", "slow")]) < 0.04  # sleeping is wall time, not CPU time


def test_unknown_command_and_a_dying_process_raise(tmp_path):
    w = _worker("a", tmp_path / "log")
    try:
        with pytest.raises(RuntimeError, match="unknown command 'jump'"):
            w.time("jump")
    finally:
        w.kill()
    with pytest.raises(RuntimeError, match=r"(?s)exited \(1\).*boom"):
        Worker([sys.executable, "-c", "import sys; sys.exit('boom')"])
