"""Epoch wall time of DP-SGD (:class:`dpact_tf.baselines.dpsgd.DPSGDTrainer`) vs the split protocol without noise
(:class:`dpact_tf.split.SplitTrainer`, ``epsilon=None``) on the small profile's network: what DP-SGD's
per-example gradients cost, to decide whether the small-profile book can afford the baseline.

Both train the same network from the same initial weights on the same cached ``tf.data`` pipeline of random
images (``--images`` faces of 64x64, 158 classes, batch 64; tf.data autotuning off).  Each trainer first runs
``--warmup`` untimed epochs (tracing), then the trainers are interleaved, one epoch each per round, their order
alternating, so that the machine's load hits both alike.  ``--optimizer`` adds DPSGDTrainer with TF Privacy's
``DPKerasSGDOptimizer`` (``implementation="optimizer"``: a Jacobian through the whole batch, much slower).

Prints the median, minimum and maximum epoch times per trainer, the ratios DP-SGD / split of the medians and per
round, and the load average before and after.  Not a timed test.
"""
import argparse
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from dpact_tf import SplitTrainer, build_split_vggface
from dpact_tf.baselines.dpsgd import DPSGDTrainer
from dpact_tf.data import without_autotune
from dpact_tf.repro.profiles import get_profile

CLASSES = 158


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per trainer")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs per trainer")
    parser.add_argument("--profile", default="small")
    parser.add_argument("--optimizer", action="store_true", help="also time implementation='optimizer'")
    args = parser.parse_args()

    profile = get_profile(args.profile)
    kwargs = profile.model_kwargs()
    size = profile.image_size
    rng = np.random.default_rng(0)
    images = rng.random((args.images, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, CLASSES, args.images).astype(np.int32)
    train = without_autotune(tf.data.Dataset.from_tensor_slices((images, labels)).batch(profile.batch_size).cache()
                             .prefetch(2))
    steps = (args.warmup + args.repeats) * int(train.cardinality())

    tf.keras.utils.set_random_seed(0)
    split = build_split_vggface(num_classes=CLASSES, epsilon=None, **kwargs)
    initial = split.client.get_weights() + split.server.get_weights()
    trainers = {"split": SplitTrainer(split, total_steps=steps)}

    def dpsgd(implementation):
        twin = build_split_vggface(num_classes=CLASSES, epsilon=None, **kwargs)
        twin.client.set_weights(initial[:len(split.client.weights)])
        twin.server.set_weights(initial[len(split.client.weights):])
        return DPSGDTrainer(twin.monolithic(), l2_norm_clip=1.0, noise_multiplier=1.0, total_steps=steps,
                            implementation=implementation)

    trainers["dpsgd"] = dpsgd("model")
    if args.optimizer:
        trainers["dpsgd_optimizer"] = dpsgd("optimizer")

    load_before = os.getloadavg()
    for name, trainer in trainers.items():
        start = time.perf_counter()
        trainer.fit(train, args.warmup)
        print(f"warm-up {name}: {time.perf_counter() - start:.1f} s for {args.warmup} epoch(s)", flush=True)
    times = {name: [] for name in trainers}
    for r in range(args.repeats):
        order = list(trainers) if r % 2 == 0 else list(trainers)[::-1]
        for name in order:
            times[name].append(trainers[name].fit(train, 1)["seconds"][0])
        print(f"round {r + 1}: " + "  ".join(f"{n} {times[n][-1]:.2f} s" for n in trainers), flush=True)
    load_after = os.getloadavg()

    print(f"\n{args.images} images, {args.profile} profile ({size}x{size}, width {kwargs['width']:g}, "
          f"fc {kwargs['fc_units']}), batch {profile.batch_size}, {CLASSES} classes; {args.repeats} timed epochs each")
    for name, t in times.items():
        print(f"  {name:16s} median {statistics.median(t):.2f} s/epoch  min {min(t):.2f}  max {max(t):.2f}")
    base = times["split"]
    for name in trainers:
        if name != "split":
            per_round = [a / b for a, b in zip(times[name], base)]
            print(f"  ratio {name} / split: median {statistics.median(times[name]) / statistics.median(base):.1f}x, "
                  f"per round " + ", ".join(f"{v:.1f}" for v in per_round))
    print(f"  load average (1, 5, 15 min) before {tuple(round(v, 2) for v in load_before)}, "
          f"after {tuple(round(v, 2) for v in load_after)}; {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
