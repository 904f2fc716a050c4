"""The client's cost: the .tflite head in LiteRT (as on a phone) vs the Keras client on the same CPU.

Measured per batch of 8 (the paper's Nexus 6P setting): model load time, forward (``infer``) latency,
on-device training step per sample, peak resident memory of a process that only runs the head (LiteRT,
no TensorFlow), .tflite size, and bytes uploaded per image.  The LiteRT numbers are taken in a fresh
subprocess (``python -m dpact_tf.mobile litert ...``) so that TensorFlow's own memory is not counted.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpact_tf.jsonio import write_json

__all__ = ["PAPER_NEXUS6P", "upload_bytes", "measure_litert", "measure_keras", "run_mobile_benchmark"]

# Mao et al. (2018), Sec. VI-D: the client on a Nexus 6P, batch of 8 images (upper bounds read from the paper).
PAPER_NEXUS6P: Dict[str, float] = {"load_s": 0.4, "forward_s": 0.6, "backward_s_per_sample": 0.2, "memory_mb": 500.0}


def upload_bytes(activation_shape: Sequence[int]) -> Dict[str, int]:
    """Bytes per image of the (already noisy) activation sent as float32, float16 or uint8.

    Quantizing the noisy activation is post-processing of a DP release, so the guarantee is unchanged.
    """
    n = int(np.prod(activation_shape))
    return {"float32": 4 * n, "float16": 2 * n, "uint8": n}


def peak_rss_mb() -> float:
    """Peak resident memory of this process image (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _median_time(fn, repeats: int) -> Tuple[float, List[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def measure_litert(path: str, *, batch: int = 8, repeats: int = 10, epsilon: float = 5.0,
                   num_threads: Optional[int] = None) -> Dict[str, Any]:
    """Load, forward and train-step times of a head in LiteRT (call in a TF-free process).

    ``num_threads`` defaults to all cores, as TensorFlow uses for the Keras client.
    """
    num_threads = num_threads or os.cpu_count()
    from dpact_tf.runtime import HeadRunner

    load_times = []
    for _ in range(max(3, repeats // 2)):
        # load = read the flatbuffer, build the interpreter and allocate its tensors (ready to run)
        start = time.perf_counter()
        runner = HeadRunner(path, num_threads=num_threads)
        load_times.append(time.perf_counter() - start)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch,) + runner.image_shape, dtype=np.uint8)
    act = runner.infer(images, epsilon)  # warm-up (allocates tensors)
    forward, _ = _median_time(lambda: runner.infer(images, epsilon), repeats)
    out: Dict[str, Any] = {"runtime": "litert", "batch": batch, "load_s": statistics.median(load_times),
                           "forward_s": forward, "tflite_bytes": os.path.getsize(path),
                           "activation_shape": list(act.shape[1:])}
    if runner._train is not None:
        grad = rng.normal(0, 1e-3, act.shape).astype(np.float32)
        runner.train(images, grad, 1e-6)  # warm-up
        step, _ = _median_time(lambda: runner.train(images, grad, 1e-6), repeats)
        out["backward_s_per_sample"] = step / batch
    out["peak_rss_mb"] = peak_rss_mb()
    out["num_threads"] = num_threads
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    return out


def measure_keras(client, *, batch: int = 8, repeats: int = 10) -> Dict[str, Any]:
    """The same quantities for the Keras client (TensorFlow, same CPU)."""
    import tensorflow as tf

    shape = tuple(int(s) for s in client.input_shape[1:])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "client.keras")
        client.save(path)
        load_times = []
        for _ in range(3):
            start = time.perf_counter()
            loaded = tf.keras.models.load_model(path)
            load_times.append(time.perf_counter() - start)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(batch,) + shape).astype(np.float32))
    fwd = tf.function(lambda t: loaded(t, training=False))
    fwd(x)
    forward, _ = _median_time(lambda: fwd(x).numpy(), repeats)
    variables = loaded.trainable_variables
    opt = tf.keras.optimizers.SGD(1e-6, momentum=0.9)
    act = fwd(x)
    grad = tf.constant(rng.normal(0, 1e-3, act.shape).astype(np.float32))

    @tf.function
    def step(t, g):
        with tf.GradientTape() as tape:
            out = loaded(t, training=True)
        grads = tape.gradient(out, variables, output_gradients=g)
        opt.apply_gradients(zip(grads, variables))
        return grads[0]

    step(x, grad)
    back, _ = _median_time(lambda: step(x, grad).numpy(), repeats)
    return {"runtime": "keras", "batch": batch, "load_s": statistics.median(load_times), "forward_s": forward,
            "backward_s_per_sample": back / batch,
            "peak_rss_mb_process": peak_rss_mb()}


def run_mobile_benchmark(configs: Sequence[Tuple[str, int, float]], *, out_dir: str, batch: int = 8,
                         repeats: int = 10, seed: int = 0) -> Dict[str, Any]:
    """Convert and measure one head per (label, image_size, width); writes ``mobile_cost.json`` in ``out_dir``."""
    from dpact_tf.export import client_for_export, convert_client_head

    os.makedirs(out_dir, exist_ok=True)
    results: Dict[str, Any] = {"batch": batch, "repeats": repeats, "paper_nexus6p": PAPER_NEXUS6P,
                               "hardware": _hardware(), "configs": []}
    for label, size, width in configs:
        client = client_for_export(image_size=size, width=width, seed=seed)
        path32 = os.path.join(out_dir, f"head_{label}.tflite")
        path16 = os.path.join(out_dir, f"head_{label}_fp16.tflite")
        meta = convert_client_head(client, path32)
        convert_client_head(client, path16, precision="float16")
        print(f"[{label}] {size}x{size}, width {width:g}: measuring LiteRT (TF-free subprocess) ...", flush=True)
        lite = json.loads(subprocess.run(
            [sys.executable, "-m", "dpact_tf.mobile", "litert", path32, "--batch", str(batch), "--repeats", str(repeats)],
            check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"[{label}] measuring the Keras client ...", flush=True)
        keras = measure_keras(client, batch=batch, repeats=repeats)
        entry = {"label": label, "image_size": size, "width": width, "activation_shape": lite["activation_shape"],
                 "litert": lite, "keras": keras, "tflite_bytes": {"float32": os.path.getsize(path32),
                                                                   "float16": os.path.getsize(path16)},
                 "upload_bytes_per_image": upload_bytes(lite["activation_shape"]),
                 "ratio_litert_over_keras": {k: lite[k] / keras[k] for k in ("load_s", "forward_s", "backward_s_per_sample")
                                             if k in lite and k in keras},
                 "sidecar": meta}
        results["configs"].append(entry)
        r = entry["ratio_litert_over_keras"]
        print(f"[{label}] LiteRT load {lite['load_s'] * 1e3:.1f} ms, forward {lite['forward_s'] * 1e3:.1f} ms, "
              f"backward {lite.get('backward_s_per_sample', float('nan')) * 1e3:.1f} ms/sample, peak RSS "
              f"{lite['peak_rss_mb']:.0f} MB | Keras forward {keras['forward_s'] * 1e3:.1f} ms | "
              f"LiteRT/Keras forward {r['forward_s']:.2f}, backward {r.get('backward_s_per_sample', float('nan')):.2f}",
              flush=True)
    write_json(os.path.join(out_dir, "mobile_cost.json"), results)
    return results


def _hardware() -> Dict[str, Any]:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system()}


def _main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dpact_tf.mobile")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("litert", help="measure a head in LiteRT (prints one JSON line)")
    p.add_argument("path")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    print(json.dumps(measure_litert(args.path, batch=args.batch, repeats=args.repeats)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
