"""The head's forward against Keras' when warm and after idle: what the interleaved benchmark's single calls pay.

:func:`dpact_tf.repro.mobile_cost.run_mobile_benchmark` (and ``head_speed.py``) time ONE call per round in each
runtime's process while the others wait, so every timed call starts from idle: its threads asleep, and on a virtual
machine their CPUs halted.  This script times, for each runtime in its own process (the LiteRT one without
TensorFlow), the median forward of back-to-back calls ("warm") and of calls after ``--idle`` seconds of sleep
("after idle"), for LiteRT with one and with two workers, the inference-only head (constant weights) and the
deployed one (with ``train``).  Prints the medians and the LiteRT / Keras ratios of each.  Not a timed test:
``python benchmarks/head_wakeup.py [--side 64] [--width 0.125] [--repeats 20] [--idle 0.05]``.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

_MEASURE = """
import json, sys, time
import numpy as np
kind, path, batch, repeats, idle, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), \\
    float(sys.argv[5]), int(sys.argv[6])
from dpact_tf.repro import mobile_cost as mc
if kind == "keras":
    _, ops, _ = mc.keras_session(path, batch=batch, num_threads=2)
else:
    _, ops, _ = mc.litert_session(path, batch=batch, num_threads=2, workers=workers, max_batch=1)
forward = ops["forward"]
start = time.perf_counter()
while time.perf_counter() - start < 0.3:  # warm-up: threads awake, CPUs out of idle
    forward()
def once():
    start = time.perf_counter()
    forward()
    return time.perf_counter() - start
warm = [once() for _ in range(repeats)]
after_idle = []
for _ in range(repeats):
    time.sleep(idle)
    after_idle.append(once())
print(json.dumps({"warm": float(np.median(warm)), "after_idle": float(np.median(after_idle)),
                  "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def _measure(kind, path, args, workers=1):
    out = subprocess.run([sys.executable, "-c", _MEASURE, kind, path, str(args.batch), str(args.repeats),
                          str(args.idle), str(workers)], check=True, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=64, help="input side in pixels (small profile: 64)")
    parser.add_argument("--width", type=float, default=1 / 8, help="channel multiplier (small: 1/8, 8 channels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--idle", type=float, default=0.05, help="seconds of sleep before each 'after idle' call")
    args = parser.parse_args()
    from dpact_tf.deploy.convert import client_for_export, convert_client_head
    from dpact_tf.repro.mobile_cost import save_keras_twin

    with tempfile.TemporaryDirectory() as tmp:
        # as the cost chapter: the head from the exported client, Keras from its noise-free twin
        exported = client_for_export(image_size=args.side, width=args.width)
        client = save_keras_twin(exported, os.path.join(tmp, "client.keras"), image_size=args.side,
                                 width=args.width)
        heads = {}
        for name, with_train in (("deployed (with train)", True), ("inference only", False)):
            heads[name] = os.path.join(tmp, f"head_{with_train}.tflite")
            convert_client_head(exported, heads[name], with_train=with_train)
        keras = _measure("keras", client, args)
        print(f"{args.side}x{args.side} input, width {args.width:g}, batch {args.batch}, 2 threads, "
              f"{args.repeats} calls each, {args.idle:g} s idle before each 'after idle' call; load average "
              f"{os.getloadavg()[0]:.2f}")
        print(f"Keras: warm {keras['warm'] * 1e3:.2f} ms, after idle {keras['after_idle'] * 1e3:.2f} ms")
        for name, path in heads.items():
            for workers in (1, 2):
                lite = _measure("litert", path, args, workers)
                assert not lite["tensorflow_imported"]
                print(f"LiteRT {name}, {workers} worker{'s' if workers > 1 else ''}: warm {lite['warm'] * 1e3:.2f} ms "
                      f"(ratio {lite['warm'] / keras['warm']:.2f}), after idle {lite['after_idle'] * 1e3:.2f} ms "
                      f"(ratio {lite['after_idle'] / keras['after_idle']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
