"""Epoch wall time of SplitTrainer vs keras.Model.fit on the identical network and data, noise off.

Both train the same network (same initial weights, same optimizer and schedule, float32) on the same cached,
prefetched ``tf.data`` pipeline, with tf.data's autotuning off (its thread stalled random epochs by 1-2.5 s).
The trainers are interleaved -- one epoch of each per round, their order alternating from round to round --
so that a change in the machine's load hits both alike; each first runs ``--warmup`` epochs that are not
timed (tracing, first allocations).  Optionally (``--edge-path``) a third side runs the protocol as the gRPC
edge does, one compiled call per message (``SplitClient.forward`` -> ``EdgeServer.step`` ->
``SplitClient.backward``), for information.

Prints, per trainer, the median, minimum, maximum and interquartile range of the epoch times and, when they
fall into two clusters (other jobs on the machine can halve the speed of some), the clusters; then the ratio
split / Keras within each mode (the epochs of both sides split at one threshold; the target: <= 1.05 in every
mode), of the medians over all epochs, of the minima and per round; the ratio of the median CPU
times per epoch (the process's, all threads: less sensitive to other jobs than wall time, though a thread
that spins while it waits counts too); and the machine's load (``os.getloadavg`` before and after, CPUs).
Not a timed test: run it with `make benchmark` or `python benchmarks/split_overhead.py --edge-path`.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from dpact_tf import SplitTrainer, TrainingConfig, build_split_vggface
from dpact_tf.data import without_autotune
from dpact_tf.repro.profiles import get_profile
from dpact_tf.split import SplitClient, EdgeServer, make_optimizer

TARGET = 1.05  # split / Keras, ratio of the median epoch times, in each mode
MODE_GAP = 0.25  # two clusters when sorted epoch times jump by more than this fraction of the median


def modes(times):
    """The clusters of ``times`` split at their largest gap, if it exceeds MODE_GAP x median; else one."""
    ordered = sorted(times)
    gaps = [b - a for a, b in zip(ordered, ordered[1:])]
    if not gaps or max(gaps) <= MODE_GAP * statistics.median(ordered):
        return [ordered]
    cut = gaps.index(max(gaps)) + 1
    return [ordered[:cut], ordered[cut:]]


def mode_threshold(*samples):
    """The epoch time that separates the fast mode from the slow one, from every side's epochs together (the
    middle of the largest gap, if it exceeds MODE_GAP x median), or None when the epochs form one mode."""
    ordered = sorted(t for sample in samples for t in sample)
    gaps = [b - a for a, b in zip(ordered, ordered[1:])]
    if not gaps or max(gaps) <= MODE_GAP * statistics.median(ordered):
        return None
    i = gaps.index(max(gaps))
    return (ordered[i] + ordered[i + 1]) / 2


def ratios_by_mode(split, keras, threshold):
    """{mode: {"split_n", "keras_n", "ratio"}}: the ratio of the medians of the epochs of each side in that mode
    (all epochs as one mode when threshold is None; a mode one side never reached has ratio None)."""
    if threshold is None:
        return {"all": {"split_n": len(split), "keras_n": len(keras),
                        "ratio": statistics.median(split) / statistics.median(keras)}}
    out = {}
    for mode, keep in (("fast", lambda t: t < threshold), ("slow", lambda t: t >= threshold)):
        a, b = [t for t in split if keep(t)], [t for t in keras if keep(t)]
        out[mode] = {"split_n": len(a), "keras_n": len(b),
                     "ratio": statistics.median(a) / statistics.median(b) if a and b else None}
    return out


def spread(times):
    q75, q25 = np.percentile(times, [75, 25])
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "iqr": float(q75 - q25),
            "modes": [{"n": len(m), "median": statistics.median(m)} for m in modes(times)]}


def describe(name, s):
    text = (f"  {name:14s} median {s['median']:.3f} s/epoch  min {s['min']:.3f}  max {s['max']:.3f}  "
            f"IQR {s['iqr']:.3f}")
    if len(s["modes"]) > 1:
        text += "  modes: " + ", ".join(f"{m['n']} epochs at {m['median']:.3f} s" for m in s["modes"])
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="small")
    parser.add_argument("--images", type=int, default=1280, help="training images per epoch (random data)")
    parser.add_argument("--rounds", type=int, default=11, help="timed epochs of each, interleaved (>= 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed epochs of each before the rounds (>= 1)")
    parser.add_argument("--edge-path", action="store_true",
                        help="also time the protocol as three compiled calls per step, as the gRPC edge runs it")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be >= 5 for a median with a spread")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first epoch traces the graphs)")
    policy = tf.keras.mixed_precision.global_policy().name
    if policy != "float32":
        raise SystemExit(f"the Keras dtype policy is {policy}; the comparison is defined for float32")
    prof = get_profile(args.profile)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.images, prof.image_size, prof.image_size, 3)).astype(np.float32)
    y = rng.integers(0, 158, args.images).astype(np.int32)
    # One pipeline for every side: batched, cached, prefetched, without tf.data's autotuner (whose model thread held
    # the end of random epochs: the "half-speed" epochs; see dpact_tf.data.without_autotune).
    ds = without_autotune(tf.data.Dataset.from_tensor_slices((x, y)).batch(prof.batch_size).cache().prefetch(2))
    total_steps = (args.rounds + args.warmup) * len(ds)
    cfg = TrainingConfig(learning_rate=prof.learning_rate, momentum=prof.momentum, lr_decay_rate=prof.lr_decay_rate)

    def build():
        tf.keras.utils.set_random_seed(0)  # the same initial weights for every side
        return build_split_vggface(num_classes=158, epsilon=None, **prof.model_kwargs())

    trainer = SplitTrainer(build(), cfg, total_steps=total_steps)
    mono = build().monolithic()
    mono.compile(optimizer=make_optimizer(cfg, total_steps),
                 loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    sides = {"split": lambda: trainer.fit(ds, 1), "keras": lambda: mono.fit(ds, epochs=1, verbose=0)}
    if args.edge_path:
        edge = build()
        client = SplitClient(edge.client, make_optimizer(cfg, total_steps))
        server = EdgeServer(edge.server, make_optimizer(cfg, total_steps))

        def edge_epoch():
            for images, labels in ds:
                client.backward(server.step(client.forward(images, labels)))
        sides["edge path"] = edge_epoch

    load_before = os.getloadavg()
    for _ in range(args.warmup):
        for fn in sides.values():
            fn()
    times = {name: [] for name in sides}
    cpu = {name: [] for name in sides}  # CPU seconds of the process (all threads): less sensitive to other jobs
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            sides[name]()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    load_after = os.getloadavg()

    stats = {name: spread(t) for name, t in times.items()}
    per_round = [a / b for a, b in zip(times["split"], times["keras"])]
    ratio = stats["split"]["median"] / stats["keras"]["median"]
    ratio_min = stats["split"]["min"] / stats["keras"]["min"]
    cpu_ratio = statistics.median(cpu["split"]) / statistics.median(cpu["keras"])
    threshold = mode_threshold(times["split"], times["keras"])
    by_mode = ratios_by_mode(times["split"], times["keras"], threshold)
    result = {"profile": prof.name, "images_per_epoch": args.images, "steps_per_epoch": len(ds),
              "rounds": args.rounds, "warmup": args.warmup, "dtype_policy": policy,
              "epoch_s": stats, "times": times, "ratio_of_medians": ratio, "ratio_of_minima": ratio_min,
              "ratio_per_round": per_round, "cpu_times": cpu, "cpu_ratio_of_medians": cpu_ratio,
              "mode_threshold_s": threshold, "ratio_by_mode": by_mode,
              "target": TARGET, "met": all(m["ratio"] is None or m["ratio"] <= TARGET for m in by_mode.values()),
              "load_average_before": load_before, "load_average_after": load_after, "cpus": os.cpu_count()}
    if args.edge_path:
        result["edge_path_ratio_of_medians"] = stats["edge path"]["median"] / stats["keras"]["median"]
    print(f"profile {prof.name}: {len(ds)} steps of {prof.batch_size} per epoch, {args.rounds} interleaved epochs "
          f"each after {args.warmup} untimed, dtype {policy}; load average (1, 5, 15 min) before "
          f"{', '.join(f'{v:.2f}' for v in load_before)}, after {', '.join(f'{v:.2f}' for v in load_after)} "
          f"on {os.cpu_count()} CPUs")
    for name, s in stats.items():
        print(describe({"split": "SplitTrainer", "keras": "keras fit"}.get(name, name), s))
    verdict = "met" if result["met"] else "NOT met"
    modes_text = "; ".join(
        f"{mode} mode ({m['split_n']} + {m['keras_n']} epochs): " + ("one side never ran in it" if m["ratio"] is None
                                                                     else f"{m['ratio']:.3f}")
        for mode, m in by_mode.items())
    print(f"  split / Keras within each mode{'' if threshold is None else f' (split at {threshold:.3f} s)'}: "
          f"{modes_text} (target <= {TARGET} in every mode: {verdict})")
    print(f"  split / Keras: ratio of medians {ratio:.3f}"
          f", of minima {ratio_min:.3f}, per round median {statistics.median(per_round):.3f} "
          f"({min(per_round):.3f}..{max(per_round):.3f}); CPU time per epoch, ratio of medians {cpu_ratio:.3f}")
    if args.edge_path:
        print(f"  edge path / Keras: ratio of medians {result['edge_path_ratio_of_medians']:.3f}, of minima "
              f"{stats['edge path']['min'] / stats['keras']['min']:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
