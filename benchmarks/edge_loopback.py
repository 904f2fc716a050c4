"""Split training over gRPC on 127.0.0.1 vs in process: step latency, throughput, bytes and accuracy per encoding.

For each upload encoding (without noise: float32, float16, uint8 with a per-tensor scale; with --epsilon: the
integer grid levels, the only encoding of a noisy release) one run trains the profile's network on its
synthetic faces through a real gRPC server on loopback (Keras head, same seed), and one in-process
:class:`dpact_tf.SplitTrainer` run trains the identical network on the identical batches.  Reported per
encoding: median step latency, images per second, the ratio gRPC / in-process, payload and wire bytes per
uploaded image, and test accuracy (noise on when --epsilon is given) as the mean, min and max over --seeds
initialisations: one training trajectory can fall off a cliff at a learning-rate spike whatever the encoding,
so a single seed says little about an encoding.  Loopback has no bandwidth limit; the deploy chapter turns the
bytes per image into seconds on Wi-Fi and LTE.

    python benchmarks/edge_loopback.py --profile tiny --epochs 8 --seeds 3 [--epsilon 20] --json edge.json
"""
import argparse
import json
import time

import numpy as np
import tensorflow as tf

from dpact_tf import SplitTrainer, build_split_vggface
from dpact_tf.edge.cli import training_config
from dpact_tf.edge.client import EdgeClient
from dpact_tf.edge.model import ServerHalf
from dpact_tf.edge.ops import make_server
from dpact_tf.edge.server import EdgeService
from dpact_tf.edge.trainer import KerasHead, RemoteTrainer, batches
from dpact_tf.encoding import ENCODINGS, GRID, bytes_per_image
from dpact_tf.repro.profiles import get_profile
from dpact_tf.synthetic import synthetic_faces



class _Timer:
    def __init__(self):
        self.times, self.last = [], None

    def on_step_end(self, step, logs):
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--epsilon", type=float, help="per-coordinate epsilon of the release (default: no noise)")
    parser.add_argument("--seeds", type=int, default=3, help="initialisation/shuffling seeds per encoding")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    prof = get_profile(args.profile)
    data = synthetic_faces(prof.synthetic_identities, prof.synthetic_images_per_identity, prof.image_size, seed=0)
    steps_per_epoch = -(-len(data.train_labels) // prof.batch_size)
    decay = args.epochs * steps_per_epoch
    cfg = training_config(prof)

    def build(seed):
        tf.keras.utils.set_random_seed(seed)
        return build_split_vggface(num_classes=data.num_classes, epsilon=args.epsilon, noise_seed=seed + 1,
                                   **prof.model_kwargs())

    def train(seed):
        return lambda epoch: batches(data.train_images, data.train_labels, prof.batch_size, shuffle=True,
                                     seed=seed, epoch=epoch)

    def test():
        return batches(data.test_images, data.test_labels, prof.batch_size)

    def in_process(seed):
        """The same batches through SplitTrainer.train_step: (step seconds, test accuracy, bytes/image)."""
        trainer = SplitTrainer(build(seed), cfg, total_steps=decay)
        times = []
        for epoch in range(1, args.epochs + 1):
            for x, y in train(seed)(epoch):
                start = time.perf_counter()
                trainer.train_step(tf.constant(x.astype(np.float32) / 255.0), tf.constant(y))
                times.append(time.perf_counter() - start)
        correct = sum(int(np.sum(np.argmax(trainer.server.predict(trainer.client.release(
            tf.constant(x.astype(np.float32) / 255.0))), -1) == y)) for x, y in test())
        return times[1:], correct / len(data.test_labels), 0.0

    def over_grpc(seed, encoding):
        split = build(seed)
        service = EdgeService(ServerHalf(split.server, cfg, decay), num_classes=data.num_classes, cut=split.cut,
                              activation_shape=split.activation_shape, max_batch=prof.batch_size)
        server, port = make_server(service, host="127.0.0.1", port=0)
        server.start()
        try:
            client = EdgeClient(f"127.0.0.1:{port}", client_id=encoding, epsilon=args.epsilon, delta=1e-5,
                                cut=split.cut, activation_shape=split.activation_shape, encoding=encoding)
            timer = _Timer()
            # the same seeded noise as the in-process run: the comparison is exact
            history = RemoteTrainer(KerasHead(split.client, cfg, decay, allow_replayable_noise=True), client,
                                    callbacks=[timer]).fit(
                train(seed), args.epochs, validation_data=test)
            client.close()
        finally:
            server.stop(grace=None)
        return timer.times, history["test_accuracy"][-1], history["bytes_up"][-1] / len(data.train_labels)

    encodings = (GRID,) if args.epsilon is not None else ENCODINGS
    runs = {name: {"times": [], "accuracy": [], "wire": []} for name in ("in-process",) + encodings}
    for seed in range(args.seeds):  # interleaved, so that load on the machine hits every row alike
        for name in runs:
            times, accuracy, wire = in_process(seed) if name == "in-process" else over_grpc(seed, name)
            runs[name]["times"] += times
            runs[name]["accuracy"].append(accuracy)
            runs[name]["wire"].append(wire)
    activation_shape = build(0).activation_shape
    local_ms = 1000 * float(np.median(runs["in-process"]["times"]))
    rows = {}
    for name, run in runs.items():
        step_ms = 1000 * float(np.median(run["times"]))
        rows[name] = {
            # a grid payload's packing depends on the batch's levels: its wire bytes say what it was
            "payload_bytes_per_image": None if name in ("in-process", GRID) else bytes_per_image(activation_shape,
                                                                                                 name),
            "wire_bytes_per_image": None if name == "in-process" else float(np.mean(run["wire"])),
            "step_ms": step_ms, "images_per_s": prof.batch_size / (step_ms / 1000),
            "ratio_to_in_process": step_ms / local_ms, "test_accuracy": run["accuracy"],
            "test_accuracy_mean": float(np.mean(run["accuracy"])),
        }
    result = {"profile": prof.name, "epochs": args.epochs, "epsilon": args.epsilon, "seeds": args.seeds,
              "activation_shape": list(activation_shape), "batch_size": prof.batch_size,
              "train_images": int(len(data.train_labels)), "test_images": int(len(data.test_labels)),
              "chance": float(1 / data.num_classes), "rows": rows}
    print(f"profile {prof.name}, epsilon {args.epsilon}, activation {list(activation_shape)}, batch "
          f"{prof.batch_size}, {args.epochs} epochs on {len(data.train_labels)} synthetic images, "
          f"{args.seeds} seeds, chance {1 / data.num_classes:.3f}")
    print(f"{'':>10} {'B/image':>9} {'on wire':>9} {'step ms':>8} {'img/s':>7} {'x local':>7} "
          f"{'test acc mean (min..max)':>26}")
    for name, r in rows.items():
        payload = "-" if r["payload_bytes_per_image"] is None else f"{r['payload_bytes_per_image']:d}"
        wire = "-" if r["wire_bytes_per_image"] is None else f"{r['wire_bytes_per_image']:.0f}"
        acc = r["test_accuracy"]
        print(f"{name:>10} {payload:>9} {wire:>9} {r['step_ms']:8.1f} {r['images_per_s']:7.0f} "
              f"{r['ratio_to_in_process']:7.2f} {np.mean(acc):12.3f} ({min(acc):.3f}..{max(acc):.3f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
