"""Achieved training throughput against this machine's measured matmul peak, and where the rest goes.

Measured in one process, float32 throughout:

* **peak**: the best GFLOP/s of large square ``tf.matmul`` (2 n^3 FLOPs each), the most this CPU gives TensorFlow;
* **training step**: the profile's network (noise off, and the grid release at ``--epsilon``) trained by
  ``SplitTrainer`` on random batches: images/s times the step's FLOPs per image
  (:func:`dpact_tf.repro.fidelity.training_flops_per_image`: forward, and twice that for the backward);
* **the same step without the input pipeline** (one batch held in memory, the compiled step called in a loop):
  the compute floor, so the difference is what the pipeline and the per-step Python cost;
* **per layer**: forward + backward of every conv and fc layer alone on a batch (a GradientTape over that layer),
  its GFLOP/s and its share of the step's layer time; the layer whose time exceeds its FLOPs at peak by the most is
  the largest loss, printed with what it costs per step.

Prints ratios, not targets: ``python benchmarks/throughput.py [--profile small] [--epsilon 5] [--steps 30]``.
"""
import argparse
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from dpact_tf import SplitTrainer, TrainingConfig, build_split_vggface
from dpact_tf.repro.fidelity import training_flops_per_image
from dpact_tf.repro.profiles import get_profile


def best_seconds(fn, repeats):
    fn()  # warm: tracing, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def matmul_peak(sizes=(1024, 2048, 3072), repeats=5):
    best = 0.0
    for n in sizes:
        a, b = tf.random.normal((n, n)), tf.random.normal((n, n))
        f = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
        t, _ = best_seconds(lambda: f().numpy(), repeats)
        best = max(best, 2 * n ** 3 / t / 1e9)
    return best


def layer_costs(model, batch, repeats):
    """(name, FLOPs of forward + backward for the batch, best seconds) per conv/dense layer of ``model``."""
    rows = []
    for layer in model.layers:
        if not isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)):
            continue
        x = tf.random.uniform((batch, *layer.input_shape[1:]))
        out = layer.output_shape[1:]
        if isinstance(layer, tf.keras.layers.Conv2D):
            k = np.prod(layer.kernel.shape[:-1])
            fwd = 2 * k * np.prod(out)
        else:
            fwd = 2 * layer.kernel.shape[0] * layer.kernel.shape[1]

        @tf.function
        def step(x=x, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.reduce_sum(layer(x))
            return tape.gradient(y, [x, *layer.trainable_variables])
        t, _ = best_seconds(lambda: [g.numpy() for g in step()], repeats)
        rows.append((layer.name, 3 * fwd * batch, t))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="small")
    parser.add_argument("--epsilon", type=float, default=5.0, help="the noisy step's per-coordinate epsilon")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--classes", type=int, default=158)
    args = parser.parse_args()
    prof = get_profile(args.profile)
    print(f"profile {prof.name}, batch {prof.batch_size}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    peak = matmul_peak()
    print(f"matmul peak (float32): {peak:.1f} GFLOP/s")
    flops = training_flops_per_image(image_size=prof.image_size, width=prof.width, fc_units=prof.fc_units,
                                     num_classes=args.classes)
    rng = np.random.default_rng(0)
    batches = [(rng.uniform(size=(prof.batch_size, prof.image_size, prof.image_size, 3)).astype(np.float32),
                rng.integers(0, args.classes, prof.batch_size).astype(np.int32)) for _ in range(8)]
    ds = tf.data.Dataset.from_tensor_slices((np.concatenate([b[0] for b in batches]),
                                             np.concatenate([b[1] for b in batches]))).batch(prof.batch_size)
    results = {}
    for label, eps in (("no noise", None), (f"grid release at ε = {args.epsilon:g}", args.epsilon)):
        tf.keras.utils.set_random_seed(0)
        split = build_split_vggface(num_classes=args.classes, epsilon=eps, **prof.model_kwargs())
        trainer = SplitTrainer(split, TrainingConfig(), total_steps=10 * args.steps)
        x, y = (tf.constant(v) for v in batches[0])

        def held():
            for _ in range(args.steps):
                trainer.train_step(x, y)

        def piped():
            n = 0
            while n < args.steps:
                for xb, yb in ds:
                    trainer.train_step(xb, yb)
                    n += 1
                    if n == args.steps:
                        break
        t_held, _ = best_seconds(held, 3)
        t_piped, _ = best_seconds(piped, 3)
        ips_held, ips_piped = args.steps * prof.batch_size / t_held, args.steps * prof.batch_size / t_piped
        results[label] = (split, ips_held, ips_piped)
        print(f"{label}: {ips_piped:.0f} images/s with the pipeline, {ips_held:.0f} without -> "
              f"{ips_piped * flops / 1e9:.1f} / {ips_held * flops / 1e9:.1f} GFLOP/s = "
              f"{ips_piped * flops / 1e9 / peak:.2f} / {ips_held * flops / 1e9 / peak:.2f} of peak")
    (_, clean_held, _), (_, noisy_held, _) = results.values()
    print(f"the grid release costs {clean_held / noisy_held - 1:+.0%} step time over no noise")
    split = next(iter(results.values()))[0]
    rows = layer_costs(split.client, prof.batch_size, 5) + layer_costs(split.server, prof.batch_size, 5)
    layer_time = sum(t for _, _, t in rows)
    step_time = prof.batch_size / clean_held
    print(f"per layer (forward + backward of a batch of {prof.batch_size}; their sum {layer_time * 1e3:.1f} ms of a "
          f"{step_time * 1e3:.1f} ms step):")
    for name, f, t in rows:
        print(f"  {name:8s} {f / 1e9:7.3f} GFLOP {t * 1e3:7.2f} ms  {f / t / 1e9:6.1f} GFLOP/s  "
              f"({f / t / 1e9 / peak:.2f} of peak, {t / layer_time:.0%} of layer time)")
    name, f, t = max(rows, key=lambda r: r[2] - r[1] / (peak * 1e9))
    print(f"largest loss: {name}, {t * 1e3:.2f} ms where its FLOPs at peak take {f / peak / 1e6:.2f} ms "
          f"({(t - f / peak / 1e9) / step_time:.0%} of the step)")
    print(f"outside the layers (activations, the optimizer, the loss, the protocol's checks): "
          f"{(step_time - layer_time) / step_time:.0%} of the step")


if __name__ == "__main__":
    main()
