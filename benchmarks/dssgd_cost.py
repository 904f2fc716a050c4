"""Epoch wall time of DSSGD (K participants, top-theta upload) vs the split protocol, on the same network and data.

Both train the profile's network (``SplitTrainer`` with ``epsilon=None``; DSSGD on ``.monolithic()`` of the same
build) on the same ``tf.data`` pipeline of random images: :func:`interleave_shards` over
:func:`participant_shards` (the split trainer ignores the order), tf.data's autotuning off as in
``benchmarks/split_overhead.py``.  After ``--warmup`` untimed epochs each (tracing), the two are timed
interleaved -- one epoch of each per round, their order alternating -- so that the machine's load hits both alike.
Prints the epoch times, the ratio DSSGD / split of the medians and per round (and of the median CPU times), DSSGD's traffic per epoch, and the
load (``uptime``) before and after.  Not a test: ``python benchmarks/dssgd_cost.py``.
"""
import argparse
import statistics
import subprocess
import time

import numpy as np
import tensorflow as tf

from dpact_tf import SplitTrainer, TrainingConfig, build_split_vggface
from dpact_tf.baselines.dssgd import DSSGDTrainer, interleave_shards, participant_shards
from dpact_tf.repro.profiles import get_profile


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="small")
    parser.add_argument("--images", type=int, default=1024, help="training images per epoch (random data)")
    parser.add_argument("--classes", type=int, default=158)
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--theta", type=float, default=0.1, help="theta_upload (theta_download stays 1)")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs of each, interleaved")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of each first (>= 1: tracing)")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first epoch traces the graphs)")
    print("load before:", uptime())
    prof = get_profile(args.profile)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.images, prof.image_size, prof.image_size, 3)).astype(np.float32)
    y = rng.integers(0, args.classes, args.images).astype(np.int32)
    ds = interleave_shards(x, y, participant_shards(y, args.participants), prof.batch_size)  # no autotuner (library default)
    total_steps = (args.rounds + args.warmup) * int(ds.cardinality())
    cfg = TrainingConfig(learning_rate=prof.learning_rate, momentum=prof.momentum, lr_decay_rate=prof.lr_decay_rate)

    def build():
        return build_split_vggface(num_classes=args.classes, epsilon=None, **prof.model_kwargs())

    tf.keras.utils.set_random_seed(0)
    split = SplitTrainer(build(), cfg, total_steps=total_steps)
    dssgd = DSSGDTrainer(lambda: build().monolithic(), participants=args.participants, theta_upload=args.theta,
                         learning_rate=cfg.learning_rate, momentum=cfg.momentum, lr_decay_rate=cfg.lr_decay_rate,
                         seed=0, total_steps=total_steps)
    sides = {"split": lambda: split.fit(ds, 1), "dssgd": lambda: dssgd.fit(ds, 1)}
    print(f"{args.profile} profile, {args.images} images, batch {prof.batch_size}, {int(ds.cardinality())} batches "
          f"per epoch; DSSGD K={args.participants}, theta_upload={args.theta}, theta_download=1, "
          f"{dssgd.num_parameters} parameters")
    for _ in range(args.warmup):
        for fn in sides.values():
            fn()
    times = {name: [] for name in sides}
    cpu = {name: [] for name in sides}  # the process's CPU seconds (all threads): less sensitive to other jobs
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            start, start_cpu = time.perf_counter(), time.process_time()
            sides[name]()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    for name, t in times.items():
        print(f"  {name:6s} median {statistics.median(t):.3f} s/epoch  min {min(t):.3f}  max {max(t):.3f}  "
              f"all {[round(v, 3) for v in t]}; CPU median {statistics.median(cpu[name]):.3f} s")
    ratio = statistics.median(times["dssgd"]) / statistics.median(times["split"])
    per_round = [d / s for d, s in zip(times["dssgd"], times["split"])]
    print(f"DSSGD / split, ratio of the median epoch times: {ratio:.3f}; per round: "
          f"{[round(v, 3) for v in per_round]}; ratio of the median CPU times: "
          f"{statistics.median(cpu['dssgd']) / statistics.median(cpu['split']):.3f}")
    extras = dssgd.history_extras()
    print(f"DSSGD traffic per epoch (all participants): upload {extras['upload_bytes'][-1] / 1e6:.2f} MB, "
          f"download {extras['download_bytes'][-1] / 1e6:.2f} MB; per turn {dssgd.upload_bytes_per_turn} B up, "
          f"{dssgd.download_bytes_per_turn} B down")
    print("load after:", uptime())


if __name__ == "__main__":
    main()
