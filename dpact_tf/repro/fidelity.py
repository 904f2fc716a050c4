"""Why (not) reproduced: the studies that tell the method apart from our scale-down.

The ``small`` profile differs from the paper in three ways at once -- the training budget, the size of the
released activation (64x64x8 = 32,768 coordinates per image against the paper's 224x224x64 = 3,211,264) and the
public model of Fig. 4.  This module holds the studies that separate them:

* :func:`convergence_study` -- the no-noise baseline and a few epsilons trained with early stopping up to a
  common budget, and how many epochs each epsilon needs to reach a fraction of the baseline ("more epochs with
  higher noise", the paper's wording);
* :func:`ladder_study` -- utility at a fixed per-coordinate epsilon as the released activation grows (conv1
  channels, then input size) under the same small server, with a straight-line fit of the retained gain
  against log10(coordinates) and its prediction interval at the paper's size (:func:`fit_trend`);
* :func:`gpu_estimates` -- the ``paper`` profile's wall time per study on this CPU and on one GPU, estimated from
  the networks' FLOPs and the throughput measured here (labelled as estimates).
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpact_tf.repro import plots
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.results import record_metrics, relative_to_repo, study_dir
from dpact_tf.repro.runs import RunSpec, load_faces, run_training

__all__ = ["convergence_study", "convergence_spec", "ladder_study", "fit_trend", "epochs_to_reach", "retained_gain", "training_flops_per_image",
           "gpu_estimates", "profile_workload", "PAPER_COORDINATES", "REACH_FRACTIONS", "PREDICTION_LEVEL", "GPU_SUSTAINED_TFLOPS"]

#: coordinates the paper's client releases per image: conv1_1 of VGG-Face on 224x224 inputs
PAPER_COORDINATES = 224 * 224 * 64
#: "epochs to reach X% of the baseline": the fractions of the converged baseline's final test accuracy reported
REACH_FRACTIONS: Tuple[float, ...] = (0.5, 0.75, 0.9)
#: two-sided level of the prediction interval of the ladder's trend
PREDICTION_LEVEL = 0.9
#: an assumption, not a measurement: TFLOP/s that one modern data-centre GPU sustains when training VGG-16-sized
#: convolutional networks in TF32/mixed precision (about a tenth of an A100's or H100's tensor-core peak)
GPU_SUSTAINED_TFLOPS = 25.0


def _histories(runs) -> List[Dict[str, Any]]:
    return [{"epsilon": r.spec.epsilon, "history": r.history} for r in runs]


def retained_gain(accuracy: float, baseline: float, chance: float) -> float:
    """The share of the no-noise run's gain over chance that a noisy run keeps: (acc - chance) / (baseline -
    chance); 1 = as good as no noise, 0 = no better than always guessing the largest class (NaN if the baseline
    itself is at chance)."""
    return (accuracy - chance) / (baseline - chance) if baseline > chance else float("nan")


def epochs_to_reach(values: Sequence[float], target: float) -> Optional[int]:
    """The first (1-based) epoch whose value is >= ``target``, or None if none is."""
    for epoch, v in enumerate(values, start=1):
        if v >= target:
            return epoch
    return None


# --- convergence ---------------------------------------------------------------------------------------------
def convergence_spec(prof, dataset: str, epsilon: Optional[float], *, seed: int = 0, max_epochs: Optional[int] = None,
                     patience: Optional[int] = None, min_delta: Optional[float] = None) -> RunSpec:
    """The convergence study's run at ``epsilon`` (the profile's budgets unless given); its no-noise run is the
    book's best non-private model, which the attacks chapter uses as its identity oracle."""
    prof = get_profile(prof)
    max_epochs = int(max_epochs or prof.convergence_max_epochs)
    patience = int(patience or prof.convergence_patience)
    min_delta = float(prof.convergence_min_delta if min_delta is None else min_delta)
    # Not monitored before the sweep's own budget: a noisy run that sits near chance for its first epochs has not
    # converged.
    start = max(0, min(prof.epochs, max_epochs - patience))
    return RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=epsilon, epochs=max_epochs, seed=seed,
                   patience=patience, min_delta=min_delta, start_from_epoch=start)


def convergence_study(faces=None, *, profile: str, dataset: str, epsilons: Optional[Sequence[Optional[float]]] = None,
                      max_epochs: Optional[int] = None, patience: Optional[int] = None,
                      min_delta: Optional[float] = None, seed: int = 0, results_dir: Optional[str] = None,
                      force: bool = False, progress: bool = True) -> Dict[str, Any]:
    """The baseline and ``epsilons`` trained from scratch (Fig. 3's setting) with early stopping.

    Every run has the same budget (``max_epochs``, over which the learning rate decays by the profile's factor)
    and stops when its test accuracy has not improved by more than ``min_delta`` for ``patience`` epochs
    (:class:`dpact_tf.callbacks.EarlyStopping`), never before the profile's sweep budget (``epochs``) + patience.  Reported per epsilon: epochs trained, whether it stopped
    (converged by the rule) or ran out of budget, its final test accuracy, the epochs needed to reach each of
    :data:`REACH_FRACTIONS` of the baseline's final test accuracy, and :func:`retained_gain` of the final one.
    """
    from dpact_tf.repro.studies import resolve_epsilons

    prof = get_profile(profile)
    eps_list = resolve_epsilons(prof.convergence_epsilons if epsilons is None else epsilons)
    if None not in eps_list:
        raise ValueError("the convergence study compares with the no-noise baseline: include None in epsilons")
    max_epochs = int(max_epochs or prof.convergence_max_epochs)
    patience = int(patience or prof.convergence_patience)
    min_delta = float(prof.convergence_min_delta if min_delta is None else min_delta)
    if faces is None:
        faces = load_faces(prof, dataset, seed=seed, progress=progress)
    runs = [run_training(convergence_spec(prof, dataset, eps, seed=seed, max_epochs=max_epochs, patience=patience,
                                          min_delta=min_delta),
                         results_dir=results_dir, force=force, progress=progress, data=faces)
            for eps in eps_list]
    base = next(r for r in runs if r.spec.epsilon is None)
    # Every run is read at its final epoch: picking each run's best epoch by its test accuracy would select on the
    # test set (and favour the noisier runs, whose test accuracy fluctuates most).
    base_final = base.history["test_accuracy"][-1]
    chance = runs[0].info["majority_class_test_accuracy"]
    rows = []
    for r in runs:
        acc = r.history["test_accuracy"]
        n = len(acc)
        row = {"epsilon": r.spec.epsilon, "epochs_trained": n, "stopped_early": n < max_epochs,
               "final_test_accuracy": acc[-1], "final_train_accuracy": r.history["train_accuracy"][-1],
               "retained_gain": retained_gain(acc[-1], base_final, chance),
               "seconds": r.info.get("wall_seconds"), "run": relative_to_repo(r.path)}
        for f in REACH_FRACTIONS:
            row[f"epochs_to_{round(f * 100)}%"] = epochs_to_reach(acc, f * base_final)
        rows.append(row)
    fig = plots.training_curves(_histories(runs), dataset=dataset, chance=chance,
                                title=f"Trained to convergence: early stopping (patience {patience} epochs), "
                                      f"budget {max_epochs} epochs")
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), "convergence_curves",
                      {"rows": rows})
    base_row = next(q for q in rows if q["epsilon"] is None)
    metrics = {"rows": rows, "histories": _histories(runs), "max_epochs": max_epochs, "patience": patience,
               "min_delta": min_delta, "start_from_epoch": base.spec.start_from_epoch, "baseline_final": base_final, "baseline_converged": base_row["stopped_early"],
               "baseline_epochs": base_row["epochs_trained"],
               "reach_fractions": list(REACH_FRACTIONS), "majority_class_test_accuracy": chance}
    record_metrics(results_dir, prof.name, dataset, "convergence", metrics)
    return {"rows": rows, "figures": [fig], "metrics": metrics, "runs": runs}


# --- scale ladder ---------------------------------------------------------------------------------------------
def fit_trend(coordinates: Sequence[float], values: Sequence[float], *, at: float = PAPER_COORDINATES,
              level: float = PREDICTION_LEVEL) -> Dict[str, Any]:
    """Least-squares line ``value = a + b * log10(coordinates)`` and its prediction at ``at``.

    Returns slope, intercept, the slope's standard error and a two-sided ``level`` prediction interval (Student t,
    n - 2 degrees of freedom) of a new observation at ``at``; with fewer than three points the interval is None.
    """
    x = np.log10(np.asarray(coordinates, dtype=float))
    y = np.asarray(values, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"coordinates and values must be 1-D of the same length (got {x.shape} and {y.shape})")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 2 or np.ptp(x) == 0:
        raise ValueError(f"a trend needs at least two points at different sizes (got {n})")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    b, a = np.polyfit(x, y, 1)
    x0 = math.log10(at)
    pred = float(a + b * x0)
    out = {"slope_per_decade": float(b), "intercept": float(a), "n": n, "at": float(at), "prediction": pred,
           "slope_se": None, "lower": None, "upper": None, "level": level,
           "extrapolation_decades": float(x0 - x.max())}
    if n >= 3:
        from scipy import stats

        resid = y - (a + b * x)
        s = math.sqrt(float(resid @ resid) / (n - 2))
        sxx = float(((x - x.mean()) ** 2).sum())
        t = float(stats.t.ppf(0.5 + level / 2, n - 2))
        half = t * s * math.sqrt(1 + 1 / n + (x0 - x.mean()) ** 2 / sxx)
        out.update(slope_se=s / math.sqrt(sxx), lower=pred - half, upper=pred + half)
    return out


def ladder_study(*, profile: str, dataset: str, points: Optional[Sequence[Tuple[int, int]]] = None,
                 epsilons: Optional[Sequence[Optional[float]]] = None, epochs: Optional[int] = None, seed: int = 0,
                 results_dir: Optional[str] = None, force: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Accuracy at fixed per-coordinate epsilon as the released activation grows, the server unchanged.

    ``points``: (input side in pixels, conv1_1 channels) pairs, e.g. ``[(64, 8), (64, 16), (64, 32), (64, 64)]``;
    every other layer keeps the profile's width.  Every point trains the no-noise baseline and each epsilon for
    the same ``epochs``; utility is :func:`retained_gain` of the final test accuracy against the no-noise run at
    the same point, and :func:`fit_trend` extrapolates it to the paper's :data:`PAPER_COORDINATES` per epsilon.
    """
    from dpact_tf.repro.studies import resolve_epsilons

    prof = get_profile(profile)
    points = [(int(s), int(c)) for s, c in (prof.ladder_points if points is None else points)]
    eps_list = resolve_epsilons(prof.ladder_epsilons if epsilons is None else epsilons)
    if None not in eps_list or len(eps_list) < 2:
        raise ValueError("the ladder compares each epsilon with the no-noise run: epsilons must include None and "
                         "at least one epsilon")
    epochs = int(epochs or prof.ladder_epochs)
    from dpact_tf.vggface import layer_plan

    default_channels = layer_plan(prof.width)[0][2]

    def shape_fields(size: int, channels: int) -> Dict[str, Optional[int]]:
        # the profile's own shape is spelled as the defaults, so the point shares the Fig. 3 sweep's cached runs
        return {"image_size": None if size == prof.image_size else size,
                "conv1_channels": None if channels == default_channels else channels}

    faces_by_size: Dict[int, Any] = {}
    rows: List[Dict[str, Any]] = []
    for size, channels in points:
        spec0 = RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=None, epochs=epochs, seed=seed,
                        **shape_fields(size, channels))
        if size not in faces_by_size:
            faces_by_size[size] = load_faces(spec0.profile_obj(), dataset, seed=seed, progress=progress)
        point_rows = []
        for eps in eps_list:
            spec = RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=eps, epochs=epochs, seed=seed,
                           **shape_fields(size, channels))
            run = run_training(spec, results_dir=results_dir, force=force, progress=progress,
                               data=faces_by_size[size])
            point_rows.append({"image_size": size, "conv1_channels": channels, "coordinates": size * size * channels,
                               "epsilon": eps, "final_test_accuracy": run.history["test_accuracy"][-1],
                               "final_train_accuracy": run.history["train_accuracy"][-1],
                               "seconds": run.info.get("wall_seconds"), "run": relative_to_repo(run.path)})
        base = next(r["final_test_accuracy"] for r in point_rows if r["epsilon"] is None)
        chance = faces_by_size[size].majority_class_rate
        for r in point_rows:
            r["retained_gain"] = retained_gain(r["final_test_accuracy"], base, chance)
        rows.extend(point_rows)
    trends = {}
    for eps in eps_list:
        if eps is None:
            continue
        sel = [r for r in rows if r["epsilon"] == eps]
        if len({r["coordinates"] for r in sel}) >= 2:
            trends[f"{eps:g}"] = fit_trend([r["coordinates"] for r in sel], [r["retained_gain"] for r in sel])
    chance = faces_by_size[points[0][0]].majority_class_rate
    fig = plots.ladder_plot(rows, trends, paper_coordinates=PAPER_COORDINATES, dataset=dataset, epochs=epochs)
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), "ladder",
                      {"rows": rows, "trends": trends})
    metrics = {"rows": rows, "trends": trends, "epochs": epochs, "points": [list(p) for p in points],
               "paper_coordinates": PAPER_COORDINATES, "majority_class_test_accuracy": chance}
    record_metrics(results_dir, prof.name, dataset, "ladder", metrics)
    return {"rows": rows, "trends": trends, "figures": [fig], "metrics": metrics}


# --- paper profile on a GPU -----------------------------------------------------------------------------------
def training_flops_per_image(*, image_size: int, width: float, fc_units: int, num_classes: int,
                             conv1_channels: Optional[int] = None, trainable: str = "all") -> float:
    """FLOPs of one training step per image (2 per multiply-add; conv and dense layers): forward, plus backward
    (2x forward) for ``trainable="all"``; ``"output"`` (fine-tuning fc8 only) adds just fc8's weight gradient."""
    from dpact_tf.vggface import layer_plan

    if trainable not in ("all", "output"):
        raise ValueError(f"trainable must be 'all' or 'output' (got {trainable!r})")
    plan = layer_plan(width, {"conv1_1": conv1_channels} if conv1_channels else None)
    h, c, fwd = image_size, 3, 0.0
    for _, kind, ch in plan:
        if kind == "conv":
            fwd += h * h * ch * 2 * 9 * c
            c = ch
        else:
            h //= 2
    flat = h * h * c
    fc = 2 * (flat * fc_units + fc_units * fc_units)
    out = 2 * fc_units * num_classes
    fwd += fc + out
    # backward: 2x forward (gradients of inputs and weights); fc8 alone: its weight gradient only (1x its forward)
    return 3 * fwd if trainable == "all" else fwd + out


def gpu_estimates(*, measured_runs: Sequence[Dict[str, Any]], studies: Sequence[Dict[str, Any]],
                  gpu_tflops: float = GPU_SUSTAINED_TFLOPS) -> Dict[str, Any]:
    """Wall time of the ``paper`` profile's studies, estimated from FLOPs.

    ``measured_runs``: runs trained here, each ``{"flops_per_image", "images", "seconds"}`` (images = epochs x
    training images); their total FLOPs over total seconds is this CPU's measured throughput.  ``studies``: one
    dict per study ``{"study", "runs", "epochs", "images_per_epoch", "flops_per_image"}``.  Returns this CPU's
    throughput and, per study, its TFLOPs and the estimated hours on this CPU and on one GPU sustaining
    ``gpu_tflops``.
    """
    if not gpu_tflops > 0:
        raise ValueError(f"gpu_tflops must be > 0 (got {gpu_tflops})")
    seconds = sum(float(r["seconds"]) for r in measured_runs)
    if not measured_runs or seconds <= 0:
        raise ValueError("need at least one measured run with a positive wall time to estimate this CPU's throughput")
    cpu_flops = sum(float(r["flops_per_image"]) * float(r["images"]) for r in measured_runs) / seconds
    rows = []
    for s in studies:
        total = float(s["runs"]) * float(s["epochs"]) * float(s["images_per_epoch"]) * float(s["flops_per_image"])
        rows.append({"study": s["study"], "runs": int(s["runs"]), "epochs per run": int(s["epochs"]),
                     "training TFLOP": total / 1e12, "this CPU (hours, estimate)": total / cpu_flops / 3600,
                     "one GPU (hours, estimate)": total / (gpu_tflops * 1e12) / 3600})
    return {"cpu_gflops": cpu_flops / 1e9, "gpu_tflops": gpu_tflops, "rows": rows}


def profile_workload(profile: str, *, train_images: int, num_classes: int, public_images: Optional[int] = None,
                     public_classes: Optional[int] = None) -> List[Dict[str, Any]]:
    """The training work of ``profile``'s studies, one dict per study for :func:`gpu_estimates` (the attacks'
    decoder and the benchmarks are left out: minutes on a CPU).  Epsilon sweeps are the profile's defaults.
    Without ``public_images`` there is no pre-training (Fig. 4 starts from the real VGG-Face weights)."""
    from dpact_tf.repro.profiles import DEFAULT_EPSILONS

    prof = get_profile(profile)
    net = dict(image_size=prof.image_size, width=prof.width, fc_units=prof.fc_units)
    full = training_flops_per_image(num_classes=num_classes, **net)
    sweep = len(DEFAULT_EPSILONS)
    rows = [{"study": "Fig. 3 sweep (from scratch)", "runs": sweep, "epochs": prof.epochs,
             "images_per_epoch": train_images, "flops_per_image": full},
            {"study": "Fig. 4 fine-tuning (output layer)", "runs": sweep, "epochs": prof.finetune_epochs,
             "images_per_epoch": train_images,
             "flops_per_image": training_flops_per_image(num_classes=num_classes, trainable="output", **net)},
            {"study": "partition position", "runs": len(prof.partition_cuts) * len(prof.partition_epsilons),
             "epochs": prof.partition_epochs, "images_per_epoch": train_images, "flops_per_image": full},
            {"study": "convergence (upper bound: no early stop)", "runs": len(prof.convergence_epsilons),
             "epochs": prof.convergence_max_epochs, "images_per_epoch": train_images, "flops_per_image": full}]
    if public_images:
        if not public_classes:
            raise ValueError("public_classes (people of the public set) is needed with public_images")
        rows.insert(1, {"study": "Fig. 4 public model (pre-training)", "runs": 1, "epochs": prof.pretrain.epochs,
                        "images_per_epoch": public_images,
                        "flops_per_image": training_flops_per_image(num_classes=public_classes, **net)})
    ladder = sum(training_flops_per_image(num_classes=num_classes, image_size=size, width=prof.width,
                                          fc_units=prof.fc_units, conv1_channels=ch) for size, ch in prof.ladder_points)
    rows.append({"study": "scale ladder", "runs": len(prof.ladder_points) * len(prof.ladder_epsilons),
                 "epochs": prof.ladder_epochs, "images_per_epoch": train_images,
                 "flops_per_image": ladder / len(prof.ladder_points)})
    return rows
