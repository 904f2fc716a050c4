"""The client's cost, measured the way the paper did and fairly: the .tflite head in LiteRT vs Keras, same CPU.

Mao et al. (2018), Sec. VI-D, ran the client on a Nexus 6P with batches of 8 LFW images: "a batch of training
samples from LFW can be loaded on the phone under 0.4 s", forward < 0.6 s, backward < 0.2 s per sample, and
the app stays under 500 MB.  Measured here, per batch of 8:

* **batch load** -- what the paper calls load: reading and decoding 8 LFW JPEGs and centre-crop + resize
  them to the head's uint8 input (PIL/NumPy, as an app would), in the TF-free client process;
* **model load** -- everything before the first result (read the flatbuffer, build the interpreter, allocate,
  first call); the same for Keras (load the .keras model, trace, first call).  This first call is the warm-up
  and is reported, never mixed into the timed repeats;
* **forward** -- the deployable release (``HeadRunner.release``: the grid release of :mod:`dpact_tf.grid` with the
  app's AES-CTR words, in strips of rows on parallel interpreters); Keras runs the same mechanism after the same
  conv1_1 and Eq. (1) (:func:`dpact_tf.grid_tf.compiled_release_levels`, as the Keras layer runs it, words from TensorFlow's
  stateless generator), both at the same epsilon and thread count; median and interquartile range of the
  repeats, with the achieved GFLOP/s of conv1_1 (2 H W 27 C FLOPs per image);
* **backward** -- the on-device update (LiteRT ``gradient`` + ``apply_gradient``; Keras GradientTape + SGD);
* **memory** -- the peak resident size of the LiteRT process minus that of a bare interpreter process that
  imported only NumPy, PIL and LiteRT (reported beside it), for ``release`` and ``train`` in separate processes.

Every runtime runs in its own process, loaded and warm, and the repeats are interleaved
(:mod:`dpact_tf.repro.interleave`): each round times one forward or backward of every process in turn, so a busy
CPU slows both sides alike; the LiteRT/Keras ratio is also reported round by round (median and IQR).
The LiteRT processes run ``python -m dpact_tf.repro.mobile_cost litert ...``, which imports ``dpact_tf.deploy.runtime``
and ``dpact_tf.data`` and so neither TensorFlow nor SciPy (a test checks the process's modules).  This module writes nothing but ``run_mobile_benchmark``'s JSON and prints nothing:
progress goes to an optional callback.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import tempfile
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["PAPER_NEXUS6P", "VARIANTS", "DEPLOYED", "upload_bytes", "litert_session", "keras_session",
           "measure_litert", "bare_process_mb", "run_mobile_benchmark"]

# Mao et al. (2018), Sec. VI-D: the client on a Nexus 6P, batch of 8 images (upper bounds read from the paper).
# load_s is the paper's batch load (8 LFW images decoded and resized), not the model's.
PAPER_NEXUS6P: Dict[str, float] = {"load_s": 0.4, "forward_s": 0.6, "backward_s_per_sample": 0.2, "memory_mb": 500.0}

# Exports and runners compared by the benchmark, all releasing on the grid.  "reference kernels, whole batch":
# TFLite's reference LOCAL_RESPONSE_NORMALIZATION kernel, the whole batch in one call on one interpreter with all
# threads, release and train in one model; "parallel strips": Eq. (1) as square -> 1x1 conv -> rsqrt -> mul
# (XNNPACK ops), each image streamed in strips of rows on two interpreters in two threads (the noise's int64
# kernels are single-threaded), the training signatures in the model; "parallel strips, inference only": the same
# with constant weights (no train), which XNNPACK's CONV_2D takes (variable weights run TFLite's own conv kernel).
# workers: interpreters (each with num_threads / workers threads); rows_per_call None: HeadRunner's strips.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "reference kernels, whole batch": {"lrn": "lrn_kernel", "with_train": True, "max_batch": 8, "workers": 1,
                                       "whole_images": True},
    "parallel strips": {"lrn": "builtin_ops", "with_train": True, "max_batch": 1, "workers": 2,
                        "whole_images": False},
    "parallel strips, inference only": {"lrn": "builtin_ops", "with_train": False, "max_batch": 1, "workers": 2,
                                        "whole_images": False},
}
# The variant a deployed app runs (on-device training included, as on the paper's phone): the cost chapter's verdict.
DEPLOYED = "parallel strips"
_CROP_FRACTION = 224 / 250  # data.load_lfw's default crop of the 250x250 LFW images


def upload_bytes(activation_shape: Sequence[int]) -> Dict[str, int]:
    """Bytes per image of the (already noisy) activation in each wire encoding of :mod:`dpact_tf.encoding`."""
    from dpact_tf import encoding as enc

    return {name: enc.bytes_per_image(activation_shape, name) for name in enc.ENCODINGS}


def _status_mb(field: str) -> float:
    """VmHWM (peak) or VmRSS (current) of this process in MB; unlike ru_maxrss, VmHWM is not inherited."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise OSError(f"{field} not in /proc/self/status")


def _timed(fn: Callable[[], Any], repeats: int) -> Dict[str, Any]:
    times = [_once(fn) for _ in range(repeats)]
    q = np.percentile(times, [25, 75])
    return {"median": statistics.median(times), "iqr": [float(q[0]), float(q[1])], "all": times}


def _jpegs(jpeg_dir: Optional[str], batch: int, tmp: str) -> List[str]:
    """``batch`` LFW JPEG paths (first people in name order), or synthetic 250x250 JPEGs without LFW."""
    if jpeg_dir:
        paths = []
        for person in sorted(os.listdir(jpeg_dir)):
            folder = os.path.join(jpeg_dir, person)
            if os.path.isdir(folder):
                paths += [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".jpg")][:1]
            if len(paths) == batch:
                return paths
        raise ValueError(f"{jpeg_dir} holds fewer than {batch} people with a .jpg")
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(batch):
        path = os.path.join(tmp, f"face_{i}.jpg")
        Image.fromarray(rng.integers(0, 256, (250, 250, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def litert_session(path: str, *, mode: str = "release", batch: int = 8, repeats: int = 10, epsilon: float = 5.0,
                   num_threads: Optional[int] = None, max_batch: int = 1, workers: int = 1,
                   whole_images: bool = False,
                   jpeg_dir: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, Callable[[], Any]],
                                                            Callable[[], Dict[str, Any]]]:
    """Load a head in LiteRT and warm it up: (what setup measured, the timed operation -- ``forward`` for
    ``mode="release"``, ``backward`` for ``"train"`` --, a function reporting memory at the end).  Setup measures
    the batch load (``repeats`` times) and the model load (everything up to the first result).  ``num_threads``
    in all, split over ``workers`` interpreters; ``whole_images``: one call per chunk of images instead of
    HeadRunner's strips.  Run it in a TF-free process (``python -m dpact_tf.repro.mobile_cost litert ...``)."""
    if mode not in ("release", "train"):
        raise ValueError(f"mode must be 'release' or 'train' (got {mode!r})")
    num_threads = num_threads or os.cpu_count()
    from dpact_tf import data
    from dpact_tf.deploy import runtime

    rss_before = _status_mb("VmRSS")
    start = time.perf_counter()
    per_worker = max(1, num_threads // workers)
    rows = None
    if whole_images:
        with open(os.path.splitext(path)[0] + ".json") as fh:
            rows = json.load(fh)["input"]["shape"][1]
    runner = runtime.HeadRunner(path, num_threads=per_worker, max_batch=max_batch, workers=workers, rows_per_call=rows)
    create_s = time.perf_counter() - start
    size = runner.image_shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        paths = _jpegs(jpeg_dir, batch, tmp)

        def load_batch() -> np.ndarray:  # what the paper calls "load": 8 JPEGs -> the head's uint8 input
            blobs = [open(p, "rb").read() for p in paths]
            return np.stack([data.preprocess_image(b, image_size=size, crop_fraction=_CROP_FRACTION) for b in blobs])

        start = time.perf_counter()
        images = load_batch()
        first_load = time.perf_counter() - start
        load_batch_t = _timed(load_batch, repeats)
    info: Dict[str, Any] = {"runtime": "litert", "mode": mode, "batch": batch, "num_threads": num_threads,
                            "workers": workers, "threads_per_worker": per_worker, "max_batch": max_batch,
                            "rows_per_call": runner.rows_per_call, "epsilon": epsilon,
                            "jpegs": "LFW" if jpeg_dir else "synthetic", "batch_load_s": load_batch_t["median"],
                            "batch_load_iqr_s": load_batch_t["iqr"], "batch_load_first_s": first_load,
                            "tflite_bytes": os.path.getsize(path), "rss_before_model_mb": rss_before,
                            "load_avg_before": os.getloadavg()[0]}
    if mode == "release":
        start = time.perf_counter()
        levels = runner.release(images, epsilon).levels  # the first result: allocation + warm-up
        info["model_load_s"] = create_s + time.perf_counter() - start
        h, w, c = levels.shape[1:]
        info["activation_shape"] = [h, w, c]
        info["conv1_1_gflop_per_batch"] = batch * 2 * h * w * 27 * c / 1e9 if h == size else None
        ops = {"forward": lambda: runner.release(images, epsilon)}
    else:
        if not runner.has_train:
            raise ValueError(f"{path} has no train signature")
        grad = np.random.default_rng(1).normal(0, 1e-3, runner.grad_shape(batch)).astype(np.float32)
        start = time.perf_counter()
        runner.train(images, grad, 1e-6)
        info["first_step_s"] = time.perf_counter() - start
        ops = {"backward": lambda: runner.train(images, grad, 1e-6)}

    def finish() -> Dict[str, Any]:
        return {**_warm(ops), "peak_rss_mb_process": _status_mb("VmHWM"),
                "load_avg_after": os.getloadavg()[0], "tensorflow_imported": "tensorflow" in sys.modules,
                "scipy_imported": "scipy" in sys.modules}

    return info, ops, finish


def keras_session(client_path: str, *, batch: int = 8, epsilon: float = 5.0, num_threads: Optional[int] = None,
                  jpeg_dir: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, Callable[[], Any]],
                                                           Callable[[], Dict[str, Any]]]:
    """The same for the Keras client saved at ``client_path`` (without noise): ``forward`` is the same release as
    the head's -- the client's clean activation, then :func:`dpact_tf.grid_tf.compiled_release_levels` (as the layer)
    on words from TensorFlow's stateless generator under a fresh key per call --, ``backward`` GradientTape + SGD on
    conv1_1.  Run it in a fresh process (``python -m dpact_tf.repro.mobile_cost keras ...``) so the thread count applies."""
    import secrets

    import tensorflow as tf

    import dpact_tf.layers  # noqa: F401  (registers DPActivation for load_model)
    from dpact_tf import grid, grid_tf

    num_threads = num_threads or os.cpu_count()
    tf.config.threading.set_intra_op_parallelism_threads(num_threads)
    start = time.perf_counter()
    client = tf.keras.models.load_model(client_path)
    shape = tuple(int(s) for s in client.input_shape[1:])
    dp = client.get_layer("dp_activation")
    spec = grid.grid_spec(epsilon, dp.delta, sensitivity=dp.sensitivity, true_range=dp.true_range,
                          steps_per_std=grid.STEPS_PER_STD)
    from dpact_tf.data import preprocess_image

    with tempfile.TemporaryDirectory() as tmp:
        paths = _jpegs(jpeg_dir, batch, tmp)
        images = np.stack([preprocess_image(open(p, "rb").read(), image_size=shape[0], crop_fraction=_CROP_FRACTION)
                           for p in paths])
    x = tf.constant(images.astype(np.float32) / 255.0)

    @tf.function
    def release(t, key):
        clean = client(t, training=False)
        words = grid_tf.random_words(tf.shape(clean), key)
        return grid_tf.compiled_release_levels(grid.noise_table(spec.steps_per_std))(
            clean, words, tf.constant(np.float32(spec.scale)), tf.constant(spec.max_level, tf.int32))

    def fwd():
        return release(x, tf.constant(np.frombuffer(secrets.token_bytes(16), np.int64))).numpy()

    out = fwd()  # the first result: model load + tracing
    model_load = time.perf_counter() - start
    variables = [client.get_layer("conv1_1").kernel, client.get_layer("conv1_1").bias]
    opt = tf.keras.optimizers.SGD(1e-6, momentum=0.9)
    grad = tf.constant(np.random.default_rng(1).normal(0, 1e-3, out.shape).astype(np.float32))

    @tf.function
    def step(t, g):
        with tf.GradientTape() as tape:
            act = client(t, training=True)
        grads = tape.gradient(act, variables, output_gradients=g)
        opt.apply_gradients(zip(grads, variables))
        return grads[0]

    step(x, grad).numpy()  # traced and warm
    h, w, c = out.shape[1:]
    info = {"runtime": "keras", "batch": batch, "num_threads": num_threads, "epsilon": epsilon,
            "steps_per_std": spec.steps_per_std, "model_load_s": model_load,
            "conv1_1_gflop_per_batch": batch * 2 * h * w * 27 * c / 1e9 if h == shape[0] else None}

    def finish() -> Dict[str, Any]:
        return {**_warm({"forward": fwd}), "peak_rss_mb_process": _status_mb("VmHWM"),
                "load_avg_after": os.getloadavg()[0]}

    return info, {"forward": fwd, "backward": lambda: step(x, grad).numpy()}, finish


def measure_litert(path: str, *, mode: str = "release", batch: int = 8, repeats: int = 10, epsilon: float = 5.0,
                   num_threads: Optional[int] = None, max_batch: int = 1, workers: int = 1,
                   whole_images: bool = False, jpeg_dir: Optional[str] = None) -> Dict[str, Any]:
    """Batch load, model load, forward (``mode="release"``) or backward (``mode="train"``) and memory of a head in
    LiteRT, its ``repeats`` one after the other (:func:`run_mobile_benchmark` interleaves them with Keras')."""
    info, ops, finish = litert_session(path, mode=mode, batch=batch, repeats=repeats, epsilon=epsilon,
                                       num_threads=num_threads, max_batch=max_batch, workers=workers,
                                       whole_images=whole_images, jpeg_dir=jpeg_dir)
    (name, op), = ops.items()
    return {**info, **_summary(name, [_once(op) for _ in range(repeats)], batch), **finish()}


def _warm(ops: Mapping[str, Callable[[], Any]], calls: int = 20, warm_up_s: float = 0.3) -> Dict[str, Any]:
    """``forward_warm_s``: the median of ``calls`` forwards called back to back (the process's threads awake, its
    caches its own), as an app releasing a stream of batches runs, after ``warm_up_s`` seconds of such calls; none for
    a process without ``forward``.  Timed at the end, while the other measuring processes wait: the interleaved
    rounds time every call after idle."""
    if "forward" not in ops:
        return {}
    start = time.perf_counter()
    while time.perf_counter() - start < warm_up_s:
        ops["forward"]()
    return {"forward_warm_s": statistics.median([_once(ops["forward"]) for _ in range(calls)])}


def _once(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _summary(op: str, times: Sequence[float], batch: int, cpu: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Median, interquartile range and every repeat of ``forward`` (s per batch) or ``backward`` (s per sample),
    and the median CPU time of all the process's threads when measured."""
    per = 1.0 if op == "forward" else float(batch)
    times = [t / per for t in times]
    q = np.percentile(times, [25, 75])
    key = "forward_s" if op == "forward" else "backward_s_per_sample"
    base = "forward" if op == "forward" else "backward"
    out = {key: statistics.median(times), f"{base}_iqr_s": [float(q[0]), float(q[1])], f"{base}_all_s": times}
    if cpu is not None:
        out[f"{base}_cpu_s"] = statistics.median(cpu) / per
    return out


def bare_process_mb() -> float:
    """Peak resident size of a bare interpreter that imported only NumPy, PIL and LiteRT (the baseline)."""
    code = ("import numpy, PIL.Image, ai_edge_litert.interpreter\n"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])")
    return int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                              timeout=120).stdout.split()[-1]) / 1024.0


def _paired(lite: Sequence[float], keras: Sequence[float]) -> Dict[str, Any]:
    """LiteRT over Keras, round by round (the two were timed next to each other): median and IQR."""
    ratios = [a / b for a, b in zip(lite, keras)]
    q = np.percentile(ratios, [25, 75])
    return {"median": statistics.median(ratios), "iqr": [float(q[0]), float(q[1])]}


def save_keras_twin(client: Any, path: str, *, image_size: int, width: float) -> str:
    """Save, at ``path``, the Keras client that an exported head is timed against: a noise-free copy of ``client``
    (the model given to the converter, which may carry a noise layer of its own) with its weights, so that
    :func:`keras_session`, which adds the grid release, adds it exactly once.  Returns ``path``."""
    from dpact_tf.vggface import build_split_vggface

    clean = build_split_vggface((image_size, image_size, 3), 2, width=width, fc_units=2, epsilon=None)
    clean.client.set_weights(client.get_weights())
    clean.client.save(path)
    return path


def run_mobile_benchmark(configs: Sequence[Tuple[str, int, float]], *, out_dir: str, batch: int = 8,
                         repeats: int = 10, epsilon: float = 5.0, num_threads: Optional[int] = None,
                         variants: Optional[Sequence[str]] = None, jpeg_dir: Optional[str] = None,
                         seed: int = 0, progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Export each variant of one head per (label, image_size, width) and time it against the Keras client,
    interleaved (:mod:`dpact_tf.repro.interleave`: every process loaded and warm, then ``repeats`` rounds in which each
    times one forward or backward in turn); writes ``mobile_cost.json``.

    ``jpeg_dir``: the LFW folder for the batch load (default ``$DPACT_LFW_DIR``; synthetic JPEGs without it).
    ``progress``: called with one line per step (the library prints nothing).
    """
    from dpact_tf.deploy import tflite_inspect
    from dpact_tf.deploy.convert import client_for_export, convert_client_head
    from dpact_tf.repro.interleave import Worker, interleave
    from dpact_tf.jsonio import write_json

    say = progress or (lambda line: None)
    num_threads = num_threads or os.cpu_count()
    jpeg_dir = jpeg_dir if jpeg_dir is not None else os.environ.get("DPACT_LFW_DIR")
    names = list(variants or VARIANTS)
    os.makedirs(out_dir, exist_ok=True)
    bare = bare_process_mb()
    results: Dict[str, Any] = {"batch": batch, "repeats": repeats, "epsilon": epsilon, "num_threads": num_threads,
                               "paper_nexus6p": PAPER_NEXUS6P, "hardware": _hardware(), "interleaved": True,
                               "bare_process_mb": bare, "load_avg_start": os.getloadavg()[0], "configs": []}
    common = ["--batch", str(batch), "--repeats", str(repeats), "--epsilon", str(epsilon),
              "--threads", str(num_threads), "--serve"] + (["--jpeg-dir", jpeg_dir] if jpeg_dir else [])
    script = [sys.executable, "-m", "dpact_tf.repro.mobile_cost"]
    for label, size, width in configs:
        client = client_for_export(image_size=size, width=width, seed=seed)
        entry: Dict[str, Any] = {"label": label, "image_size": size, "width": width, "variants": {},
                                 "load_avg_start": os.getloadavg()[0]}
        workers: Dict[str, Worker] = {}
        schedule: List[Tuple[str, str]] = []
        metas: Dict[str, Dict[str, Any]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                for name in names:
                    v = VARIANTS[name]
                    path = os.path.join(out_dir, f"head_{label}_{name.replace(', ', '_').replace(' ', '_')}.tflite")
                    metas[name] = convert_client_head(client, path, lrn=v["lrn"], with_train=v["with_train"])
                    tflite_inspect.check_builtin_only(path)
                    say(f"[{label}] {name}: loading LiteRT (TF-free processes) ...")
                    lite = script + ["litert", path, "--max-batch", str(v["max_batch"]), "--workers",
                                     str(v["workers"])] + (["--whole-images"] if v["whole_images"] else []) + common
                    workers[f"{name}/release"] = Worker(lite + ["--mode", "release"])
                    schedule.append((f"{name}/release", "forward"))
                    if metas[name]["train_optimizer"]:
                        workers[f"{name}/train"] = Worker(lite + ["--mode", "train"])
                        schedule.append((f"{name}/train", "backward"))
                keras_client = save_keras_twin(client, os.path.join(tmp, "client.keras"), image_size=size,
                                               width=width)
                say(f"[{label}] loading the Keras client (the grid release at epsilon {epsilon:g}, "
                    f"{num_threads} threads) ...")
                workers["keras"] = Worker([sys.executable, "-m", "dpact_tf.repro.mobile_cost", "keras",
                                           keras_client] + common)
                schedule += [("keras", "forward"), ("keras", "backward")]
                say(f"[{label}] {repeats} interleaved rounds of {len(schedule)} timings ...")
                times, cpu = interleave(workers, schedule, repeats)
                finals = {key: w.finish() for key, w in workers.items()}
            finally:
                for w in workers.values():
                    w.kill()
        keras = {**workers["keras"].info, **finals["keras"],
                 **_summary("forward", times[("keras", "forward")], batch, cpu[("keras", "forward")]),
                 **_summary("backward", times[("keras", "backward")], batch, cpu[("keras", "backward")])}
        for name in names:
            info, meta = workers[f"{name}/release"].info, metas[name]
            lite = {**info, **_summary("forward", times[(f"{name}/release", "forward")], batch,
                                       cpu[(f"{name}/release", "forward")]),
                    "forward_warm_s": finals[f"{name}/release"]["forward_warm_s"]}
            lite["release_memory_mb"] = finals[f"{name}/release"]["peak_rss_mb_process"] - bare
            lite.update({k: finals[f"{name}/release"][k] for k in ("tensorflow_imported", "scipy_imported")})
            if f"{name}/train" in workers:
                lite.update(_summary("backward", times[(f"{name}/train", "backward")], batch,
                                     cpu[(f"{name}/train", "backward")]),
                            train_memory_mb=finals[f"{name}/train"]["peak_rss_mb_process"] - bare)
            lite.update({"memory_mb": max(lite["release_memory_mb"], lite.get("train_memory_mb", 0.0)),
                         "builtin_ops_only": True, "noise_source": meta["noise_source"],
                         "steps_per_std": meta["release"]["steps_per_std"],
                         "certified_epsilons": meta["release"]["certified_epsilons"],
                         "signatures": meta["signatures"], "lrn_implementation": VARIANTS[name]["lrn"],
                         "with_train": VARIANTS[name]["with_train"]})
            entry["variants"][name] = lite
        for run in list(entry["variants"].values()) + [keras]:
            flop = run.pop("conv1_1_gflop_per_batch", None)
            run["conv1_1_gflop_per_s"] = flop / run["forward_s"] if flop else None
        deployed = entry["variants"].get(DEPLOYED) or next(iter(entry["variants"].values()))
        entry.update(keras=keras, litert=deployed, activation_shape=deployed["activation_shape"],
                     upload_bytes_per_image=upload_bytes(deployed["activation_shape"]),
                     load_avg_end=os.getloadavg()[0])
        entry["ratio_litert_over_keras"] = {
            name: {**{k: lite[k] / keras[k] for k in ("forward_s", "backward_s_per_sample", "model_load_s")
                      if lite.get(k) and keras.get(k)},
                   "forward_paired": _paired(lite["forward_all_s"], keras["forward_all_s"]),
                   "forward_warm": lite["forward_warm_s"] / keras["forward_warm_s"],
                   "forward_cpu": lite["forward_cpu_s"] / keras["forward_cpu_s"]}
            for name, lite in entry["variants"].items()}
        results["configs"].append(entry)
        for name, r in entry["ratio_litert_over_keras"].items():
            say(f"[{label}] {name}: LiteRT/Keras forward {r.get('forward_s', float('nan')):.2f} (paired "
                f"{r['forward_paired']['median']:.2f}, warm {r['forward_warm']:.2f}), backward {r.get('backward_s_per_sample', float('nan')):.2f}")
    results["load_avg_end"] = os.getloadavg()[0]
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

    parser = argparse.ArgumentParser(prog="python -m dpact_tf.repro.mobile_cost")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("litert", "keras"):
        p = sub.add_parser(name, help=f"measure a head in {name} (prints one JSON line)")
        p.add_argument("path")
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--repeats", type=int, default=10)
        p.add_argument("--epsilon", type=float, default=5.0)
        p.add_argument("--threads", type=int)
        p.add_argument("--jpeg-dir")
        p.add_argument("--serve", action="store_true",
                       help="load and warm up, then time one call per command on stdin (dpact_tf.interleave)")
        if name == "litert":
            p.add_argument("--mode", choices=["release", "train"], default="release")
            p.add_argument("--max-batch", type=int, default=1)
            p.add_argument("--workers", type=int, default=1, help="interpreters releasing strips in parallel")
            p.add_argument("--whole-images", action="store_true", help="one call per chunk of images, no strips")
    args = parser.parse_args(argv)
    if args.cmd == "litert":
        if not args.serve:
            print(json.dumps(measure_litert(args.path, mode=args.mode, batch=args.batch, repeats=args.repeats,
                                            epsilon=args.epsilon, num_threads=args.threads, max_batch=args.max_batch,
                                            workers=args.workers, whole_images=args.whole_images,
                                            jpeg_dir=args.jpeg_dir)))
            return 0
        session = litert_session(args.path, mode=args.mode, batch=args.batch, repeats=args.repeats,
                                 epsilon=args.epsilon, num_threads=args.threads, max_batch=args.max_batch,
                                 workers=args.workers, whole_images=args.whole_images, jpeg_dir=args.jpeg_dir)
    else:
        if not args.serve:
            raise SystemExit("keras: use --serve (run_mobile_benchmark interleaves it with LiteRT)")
        session = keras_session(args.path, batch=args.batch, epsilon=args.epsilon, num_threads=args.threads,
                                jpeg_dir=args.jpeg_dir)
    from dpact_tf.repro import interleave

    interleave.serve(*session)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
