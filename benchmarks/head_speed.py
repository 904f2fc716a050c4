"""The exported head's forward against Keras' at one activation size: the LiteRT/Keras ratio of every head variant.

The same measurement as the cost chapter's (:func:`dpact_tf.repro.mobile_cost.run_mobile_benchmark`: each runtime in
its own process, loaded and warm, the repeats interleaved round by round), for one (input side, width) only, so a
change to the head or its runner is measured in a minute.  Both sides release on the grid at the same epsilon
with the same thread count; the goal is a ratio <= 1 for every deployed variant.

Prints, per variant: the median forward of each side, their ratio, the median of the round-by-round ratios
(paired) and the ratio of their CPU times (all threads).  Not a timed test:
``python benchmarks/head_speed.py [--side 64] [--width 0.125] [--repeats 30] [--variants "parallel strips"]``.
"""
import argparse
import tempfile

from dpact_tf.repro.mobile_cost import DEPLOYED, VARIANTS, run_mobile_benchmark


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=64, help="input side in pixels (small profile: 64)")
    parser.add_argument("--width", type=float, default=1 / 8, help="channel multiplier (small: 1/8, 8 channels)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--epsilon", type=float, default=5.0)
    parser.add_argument("--threads", type=int, help="threads of both runtimes (default: all cores)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        res = run_mobile_benchmark([("bench", args.side, args.width)], out_dir=out, batch=args.batch,
                                   repeats=args.repeats, epsilon=args.epsilon, num_threads=args.threads,
                                   variants=args.variants)
    config = res["configs"][0]
    keras = config["keras"]
    print(f"{args.side}x{args.side} input, activation {'x'.join(map(str, config['activation_shape']))}, batch "
          f"{args.batch}, {res['num_threads']} threads, epsilon {args.epsilon:g}, {args.repeats} interleaved rounds, "
          f"load average {res['load_avg_start']:.2f} -> {res['load_avg_end']:.2f}")
    print(f"Keras forward {keras['forward_s'] * 1e3:.2f} ms")
    for name, lite in config["variants"].items():
        r = config["ratio_litert_over_keras"][name]
        print(f"{name}{' (deployed)' if name == DEPLOYED else ''}: LiteRT {lite['forward_s'] * 1e3:.2f} ms, "
              f"ratio {r['forward_s']:.2f}, paired {r['forward_paired']['median']:.2f} "
              f"(IQR {r['forward_paired']['iqr'][0]:.2f}-{r['forward_paired']['iqr'][1]:.2f}), "
              f"CPU {r['forward_cpu']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
