"""What the client's release costs: one compiled step (forward and backward) of the client head at several
activation sizes, with the grid release (DPActivation at epsilon=5, a fixed seed) and without noise (epsilon=None).

The release draws one uniform int64 word per activation coordinate per image (Philox) and finds each word's noise
in the grid's table (a bucket lookup compiled with XLA, as the layer runs it; :mod:`dpact_tf.grid_tf`).  This benchmark isolates that cost from the
server's network.  Both variants run the same compiled function on the same batch, interleaved (one timed call of
each per round, their order alternating) so a change in the machine's load hits both alike.  It also times the
release alone (the words and the table search for the activation's shape) for the coordinates per second it reaches.

Prints, per shape: the median step time without and with noise, their ratio, and the median time of the release
alone with its rate.  Not a timed test: ``python benchmarks/noise_cost.py [--shapes 64x32,96x64] [--rounds 20]``.
"""
import argparse
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from dpact_tf import build_split_vggface, grid, grid_tf


def parse_shapes(text):
    """'64x32,96x64' -> [(64, 32), (96, 64)]: (input side, conv1_1 channels)."""
    try:
        points = [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",")]
        if any(len(p) != 2 for p in points):
            raise ValueError
        return points
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes are SIDExCHANNELS separated by commas, e.g. 64x32,96x64 "
                                         f"(got {text!r})") from None


def client_step(side, channels, epsilon):
    """A compiled forward + backward of the client head (conv1_1 -> ReLU -> LRN -> release), as the client trains."""
    model = build_split_vggface((side, side, 3), num_classes=10, width=1 / 8, fc_units=16,
                                channels={"conv1_1": channels}, epsilon=epsilon, noise_seed=0)
    client = model.client

    @tf.function
    def step(x, upstream):
        with tf.GradientTape() as tape:
            out = client(x, training=True)
        # the output is returned too: a step that returned only the gradients would let TensorFlow prune the release
        # (the straight-through gradient does not depend on it) and time a noise-free head both times
        return tape.gradient(out, client.trainable_variables, output_gradients=upstream), tf.reduce_sum(out)

    return client, step


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    _ = [t.numpy() for t in tf.nest.flatten(out)]
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", type=parse_shapes, default=parse_shapes("64x8,64x32,64x64,96x64"),
                    help="SIDExCHANNELS points (default 64x8,64x32,64x64,96x64)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()

    load = os.getloadavg()
    print(f"batch {args.batch}, {args.rounds} rounds, CPUs {os.cpu_count()}, load {load[0]:.2f}")
    rng = np.random.default_rng(0)
    for side, channels in args.shapes:
        x = tf.constant(rng.uniform(0, 1, (args.batch, side, side, 3)).astype(np.float32))
        steps = {}
        for name, eps in (("no noise", None), ("noise", 5.0)):
            client, step = client_step(side, channels, eps)
            upstream = tf.ones((args.batch, *client.output_shape[1:]))
            steps[name] = (step, x, upstream)
        shape = upstream.shape
        spec = grid.grid_spec(5.0, 1e-5)
        clean = tf.constant(rng.uniform(0, 0.5, shape).astype(np.float32))

        # the key is an argument, so the draw cannot be folded into a constant when the function is traced
        @tf.function
        def sample(key):
            release = grid_tf.compiled_release_levels(grid.noise_table(spec.steps_per_std))
            return release(clean, grid_tf.random_words(shape, key), tf.constant(spec.scale, tf.float32),
                           tf.constant(spec.max_level))
        for _ in range(args.warmup):
            for step, *inputs in steps.values():
                timed(step, *inputs)
            timed(sample, tf.constant([0, 0], tf.int64))
        times = {name: [] for name in (*steps, "sampling")}
        for r in range(args.rounds):
            order = list(steps) if r % 2 == 0 else list(reversed(list(steps)))
            for name in order:
                step, *inputs = steps[name]
                times[name].append(timed(step, *inputs))
            times["sampling"].append(timed(sample, tf.constant([1, r], tf.int64)))
        med = {k: statistics.median(v) for k, v in times.items()}
        n = int(np.prod(shape))
        print(f"{side}x{side}x{channels}: {n / 1e6:.1f} M coordinates a step | step no noise {med['no noise']:.3f} s, "
              f"noise {med['noise']:.3f} s, ratio {med['noise'] / med['no noise']:.2f} | sampling alone "
              f"{med['sampling']:.3f} s ({n / med['sampling'] / 1e6:.0f} M coordinates/s)")
    after = os.getloadavg()
    print(f"load after {after[0]:.2f}")


if __name__ == "__main__":
    main()
