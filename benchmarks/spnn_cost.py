"""What the SPNN-style baseline's secret sharing costs at conv1_1, against the DP-activation client.

For each shape -- the ``small`` profile's conv1_1 (64x64x3 -> 64x64x8, batch = the profile's) and the paper's
(224x224x3 -> 64 channels, batch 8) -- it times one step of :class:`dpact_tf.baselines.secret_sharing.SharedConv1`
(``forward`` + ``backward``, both holders, the dealer and the server's reconstruction, all in this process) and,
interleaved with it (one of each per round, order alternating) so that the machine's load hits both alike, the same
layer in float64 NumPy (im2col, one BLAS product forward, one backward, the SGD momentum update): what a client
pays without sharing.  Prints medians, min-max and the ratio of the medians, per image.

Bytes per image come from the protocol's transcript after one step: online (holder <-> holder, holders -> server,
server -> holders), offline (the dealer's triples and masks), against the DP client's float32 upload of its
activation (H*W*C*4) and the float32 gradient it downloads (the same size).  The trusted dealer's bytes are the
assumption's stand-in for an offline phase (oblivious transfer or homomorphic encryption would cost more).

    PYTHONPATH=$PWD nice -n 15 python benchmarks/spnn_cost.py [--repeats 5]
"""
import argparse
import os
import statistics
import time

import numpy as np

from dpact_tf.baselines.secret_sharing import SharedConv1, im2col3x3, split_columns
from dpact_tf.repro.profiles import get_profile
from dpact_tf.vggface import layer_plan


def float_step(x, kernel, bias, velocity, lr, momentum):
    """conv1_1 forward and SGD-momentum backward in float64 NumPy (the unshared reference cost)."""
    patches = im2col3x3(x)
    z = patches @ kernel + bias
    grad = np.ones_like(z) * 1e-3
    velocity[:] = momentum * velocity - lr * (patches.T @ grad)
    kernel += velocity
    return z


def measure(name, shape, channels, batch, repeats, seed=0):
    h, w, cin = shape
    rng = np.random.default_rng(seed)
    kernel = rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, channels))
    bias = np.zeros(channels)
    x = rng.uniform(0, 1, (batch, h, w, cin))
    left, right = split_columns(x, w // 2)
    proto = SharedConv1(kernel, bias, rng=seed)
    grad = np.full((batch, h, w, channels), 1e-3, np.float32)
    k_float, v_float = kernel.reshape(-1, channels).copy(), np.zeros((9 * cin, channels))
    times = {"shared": [], "float": []}

    def shared():
        proto.forward(left, right)
        proto.backward(grad, learning_rate=0.01, momentum=0.9)

    def plain():
        float_step(x, k_float, bias, v_float, 0.01, 0.9)

    shared()  # warm-up, and the transcript of exactly one step
    summary = proto.transcript.summary()
    plain()
    for r in range(repeats):
        order = (("shared", shared), ("float", plain)) if r % 2 == 0 else (("float", plain), ("shared", shared))
        for key, fn in order:
            t = time.perf_counter()
            fn()
            times[key].append((time.perf_counter() - t) / batch)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n== {name}: conv1_1 {h}x{w}x{cin} -> {h}x{w}x{channels}, batch {batch}, {repeats} interleaved repeats")
    for key in ("shared", "float"):
        print(f"  {key:6s} forward+backward: median {med[key] * 1e3:9.2f} ms/image "
              f"(min {min(times[key]) * 1e3:.2f}, max {max(times[key]) * 1e3:.2f})")
    print(f"  ratio shared / float (medians): {med['shared'] / med['float']:.1f}x")

    dp_up = h * w * channels * 4
    per_image = summary["bytes_per_image"]
    phases = summary["phase_bytes_per_image"]
    to_server = per_image["A->server"] + per_image["B->server"]
    between = per_image["A->B"] + per_image["B->A"]
    from_server = per_image["server->A"] + per_image["server->B"]
    online = summary["online_bytes_per_image"]
    offline = phases["offline"]
    mb = 1e6
    print(f"  DP activation client: upload {dp_up / mb:.3f} MB/image, gradient download {dp_up / mb:.3f} MB/image, "
          f"1 round trip")
    print(f"  SPNN holders -> server (two z shares): {to_server / mb:.3f} MB/image = {to_server / dp_up:.1f}x the DP upload")
    print(f"  SPNN holder <-> holder (pixel shares, E, F, truncation): {between / mb:.3f} MB/image")
    print(f"  SPNN server -> holders (dL/dz to both): {from_server / mb:.3f} MB/image")
    print(f"  SPNN online total: {online / mb:.3f} MB/image = {online / (2 * dp_up):.1f}x the DP client's "
          f"upload + download; {summary['online_rounds_per_forward']:.0f} online rounds per step (DP: 2 messages)")
    print(f"  SPNN dealer (offline, trusted): {offline / mb:.3f} MB/image; online + offline = "
          f"{(online + offline) / (2 * dp_up):.1f}x the DP client's traffic")
    print(f"  messages per step: {summary['messages_per_forward']:.0f} (incl. the 2 set-up messages of the weights)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paper-batch", type=int, default=8)
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}, CPUs: {os.cpu_count()}")
    small = get_profile("small")
    kwargs = small.model_kwargs()
    channels = layer_plan(kwargs["width"])[0][2]
    measure("small profile", kwargs["input_shape"], channels, small.batch_size, args.repeats)
    if not args.skip_paper:
        paper = get_profile("paper")
        measure("paper", paper.model_kwargs()["input_shape"], layer_plan(paper.width)[0][2], args.paper_batch,
                args.repeats)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
