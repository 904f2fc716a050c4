"""What the client's Gaussian noise costs: one compiled step (forward and backward) of the client head at several
activation sizes, with the noise (DPActivation at epsilon=5, a fixed seed) and without (epsilon=None).

The fidelity chapter's medium ladder found a noisy epoch at 64x64x32 ~17 s against ~11 s without noise: the head's
noise is a draw of one standard normal per activation coordinate per image (64x64x32 x 64 images = 8.4 M per step).
This benchmark isolates that cost from the server's network.  Both variants run the same compiled function on the
same batch, interleaved (one timed call of each per round, their order alternating) so a change in the machine's
load hits both alike.  It also times the sampling alone (``tf.random.stateless_normal`` of the activation's shape,
Philox, TensorFlow's only stateless algorithm on CPU) for the normals per second it reaches.

Prints, per shape: the median step time without and with noise, their ratio, and the median time of the sampling
alone with its rate.  Not a timed test: ``python benchmarks/noise_cost.py [--shapes 64x32,96x64] [--rounds 20]``.
"""
import argparse
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from dpact_tf import build_split_vggface


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
    """A compiled forward + backward of the client head (conv1_1 -> ReLU -> LRN -> noise), as the client trains."""
    model = build_split_vggface((side, side, 3), num_classes=10, width=1 / 8, fc_units=16,
                                channels={"conv1_1": channels}, epsilon=epsilon, noise_seed=0)
    client = model.client

    @tf.function
    def step(x, upstream):
        with tf.GradientTape() as tape:
            out = client(x, training=True)
        # the output is returned too: a step that returned only the gradients would let TensorFlow prune the noise
        # (the gradient of `clean + noise` does not depend on it) and time a noise-free head both times
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
        # the seed is an argument, so the draw cannot be folded into a constant when the function is traced
        sample = tf.function(lambda key: tf.random.stateless_normal(shape, seed=key))
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
              f"{med['sampling']:.3f} s ({n / med['sampling'] / 1e6:.0f} M normals/s)")
    after = os.getloadavg()
    print(f"load after {after[0]:.2f}")


if __name__ == "__main__":
    main()
