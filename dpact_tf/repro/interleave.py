"""Time several measuring processes alternately, so that a shared, busy CPU slows every side alike.

A timing ratio between two runtimes measured one after the other is at the mercy of whatever else the machine
runs meanwhile.  Here each runtime lives in its own process (the LiteRT one must not import TensorFlow): it
loads and warms up, then :func:`serve` waits for commands on stdin and times one call per command.  The parent
holds a :class:`Worker` per process and :func:`interleave` asks them in turn, round after round (each round in
the other order than the last), so every repeat of one side sits between repeats of the others.

This module imports nothing but the standard library: the TF-free measuring script loads it by path.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

__all__ = ["serve", "Worker", "interleave"]


def serve(info: Dict[str, Any], ops: Mapping[str, Callable[[], Any]], finish: Callable[[], Dict[str, Any]]) -> None:
    """The measuring process's side: print ``info`` (one JSON line: "ready"), then for every command line on stdin
    run ``ops[command]`` once and print ``{"seconds": wall time, "cpu_seconds": CPU time of all its threads}``;
    on ``done`` print ``finish()`` and return."""
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "done":
            break
        if cmd not in ops:
            print(json.dumps({"error": f"unknown command {cmd!r} (known: {sorted(ops)})"}), flush=True)
            continue
        cpu, start = time.process_time(), time.perf_counter()
        ops[cmd]()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(json.dumps({"seconds": wall, "cpu_seconds": cpu}), flush=True)
    print(json.dumps(finish()), flush=True)


class Worker:
    """A measuring process started with ``cmd`` that speaks :func:`serve`'s protocol; ``info`` is its first line."""

    def __init__(self, cmd: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 1800.0) -> None:
        self._log = tempfile.TemporaryFile(mode="w+")  # stderr: TensorFlow logs freely; read back on failure
        self._cmd = list(cmd)
        self._timeout = timeout
        self._proc = subprocess.Popen(self._cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                      text=True, env=dict(env) if env is not None else None)
        self.info = self._read()

    def _read(self) -> Dict[str, Any]:
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait(timeout=60)
            self._log.seek(0)
            raise RuntimeError(f"{' '.join(self._cmd[1:3])} exited ({self._proc.returncode}):\n"
                               f"{self._log.read()[-3000:]}")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def _send(self, cmd: str) -> Dict[str, Any]:
        self._proc.stdin.write(cmd + "\n")
        self._proc.stdin.flush()
        return self._read()

    def time(self, cmd: str) -> Tuple[float, float]:
        """Run ``cmd`` once in the process; its wall time and its CPU time (all threads) in seconds."""
        out = self._send(cmd)
        return float(out["seconds"]), float(out["cpu_seconds"])

    def finish(self) -> Dict[str, Any]:
        """End the process; what its ``finish`` reported (peak memory, load average...)."""
        out = self._send("done")
        self._proc.wait(timeout=self._timeout)
        self._log.close()
        return out

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=60)
        self._log.close()


def interleave(workers: Mapping[str, Worker], schedule: Sequence[Tuple[str, str]], rounds: int, *,
               gap_s: float = 0.05) -> Tuple[Dict[Tuple[str, str], List[float]], Dict[Tuple[str, str], List[float]]]:
    """Run every (worker, command) of ``schedule`` once per round, ``rounds`` times, alternating the order;
    returns the wall times and the CPU times per (worker, command), round by round.  ``gap_s`` separates two
    calls, so that one runtime's threads, spinning down, do not eat into the next one's time."""
    wall: Dict[Tuple[str, str], List[float]] = {key: [] for key in schedule}
    cpu: Dict[Tuple[str, str], List[float]] = {key: [] for key in schedule}
    for r in range(rounds):
        for key in (schedule if r % 2 == 0 else list(reversed(schedule))):
            time.sleep(gap_s)
            w, c = workers[key[0]].time(key[1])
            wall[key].append(w)
            cpu[key].append(c)
    return wall, cpu

