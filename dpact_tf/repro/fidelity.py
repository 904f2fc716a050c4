"""Why (not) reproduced: the studies that tell the method apart from our scale-down.

The ``small`` profile differs from the paper in three ways at once -- the training budget, the size of the
released activation (64x64x8 = 32,768 coordinates per image against the paper's 224x224x64 = 3,211,264) and the
public model of Fig. 4.  This module holds the studies that separate them:

* :func:`convergence_study` -- the no-noise baseline and a few epsilons trained with early stopping up to a
  common budget, and how many epochs each epsilon needs to reach a fraction of the baseline ("more epochs with
  higher noise", the paper's wording);
* :func:`ladder_study` -- utility at a fixed per-coordinate epsilon as the released activation grows (conv1
  channels, then input size) under the same small server, each run trained until it stops improving, with a
  straight-line fit of the retained gain against log10(coordinates) through the runs above chance and its
  prediction interval at the paper's size (:func:`fit_trend`, :func:`ladder_trends`);
* :func:`gpu_estimates` -- the ``paper`` profile's wall time per study on this CPU and on one GPU, estimated from
  the networks' FLOPs and the throughput measured here (labelled as estimates).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from dpact_tf.repro import plots
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.results import record_metrics, relative_to_repo, study_dir
from dpact_tf.repro.runs import RunSpec, load_faces, run_training

__all__ = ["ConvergenceStudy", "LadderStudy", "convergence_study", "convergence_spec", "ladder_study",
           "ladder_runs_spec", "ladder_trends", "ladder_note", "trend_lines", "cut_note", "ladder_table",
           "convergence_text", "seeds_note", "left_out_minutes", "size_exponent", "LEFT_OUT", "earliest_stop",
           "medium_note", "above_chance", "fit_trend", "epochs_to_reach", "retained_gain",
           "training_flops_per_image", "gpu_estimates", "profile_workload", "PAPER_COORDINATES", "REACH_FRACTIONS",
           "PREDICTION_LEVEL", "CHANCE_LEVEL", "GPU_SUSTAINED_TFLOPS"]

#: coordinates the paper's client releases per image: conv1_1 of VGG-Face on 224x224 inputs
PAPER_COORDINATES = 224 * 224 * 64
#: "epochs to reach X% of the baseline": the fractions of the converged baseline's final test accuracy reported
REACH_FRACTIONS: Tuple[float, ...] = (0.5, 0.75, 0.9)
#: two-sided level of the prediction interval of the ladder's trend
PREDICTION_LEVEL = 0.9
#: confidence of the one-sided binomial test that a run's test accuracy is above the majority class
CHANCE_LEVEL = 0.95
#: an assumption, not a measurement: TFLOP/s that one modern data-centre GPU sustains when training VGG-16-sized
#: convolutional networks in TF32/mixed precision (about a tenth of an A100's or H100's tensor-core peak)
GPU_SUSTAINED_TFLOPS = 25.0
#: what a profile's ladder leaves out for its time budget, so that its chapter can say what each would cost:
#: "points", (input side, conv1_1 channels) pairs (sides are multiples of 32: the network pools five times), and
#: "epsilons", each trained at every point
LEFT_OUT: Dict[str, Dict[str, Tuple[Any, ...]]] = {"medium": {"points": ((96, 64), (128, 64)), "epsilons": (3.0,)}}


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


@dataclasses.dataclass
class ConvergenceStudy:
    rows: List[Dict[str, Any]]         # per epsilon: epochs trained, stopped or not, final accuracy, ...
    figures: Dict[str, Any]            # "fig-convergence"
    metrics: Dict[str, Any]            # what the discussion reads (recorded as the "convergence" metrics)
    runs: List[Any]


@dataclasses.dataclass
class LadderStudy:
    rows: List[Dict[str, Any]]         # per point, seed and epsilon: accuracy, above chance, gain kept, epochs
    trends: Dict[str, Dict[str, Any]]  # per epsilon with a trend: fit_trend of the runs above chance
    no_trend: Dict[str, str]           # per epsilon without one: why
    figures: Dict[str, Any]            # "fig-ladder"
    metrics: Dict[str, Any]            # what the discussion reads (recorded as the "ladder" metrics)


#: per person, the share of the training images held out for early stopping to watch (never the test images)
VALIDATION_FRACTION = 0.1


# --- convergence ---------------------------------------------------------------------------------------------
def convergence_spec(prof, dataset: str, epsilon: Optional[float], *, seed: int = 0, max_epochs: Optional[int] = None,
                     patience: Optional[int] = None, min_delta: Optional[float] = None) -> RunSpec:
    """The convergence study's run at ``epsilon`` (the profile's budgets unless given); its no-noise run is the
    paper's network at its best without noise (and the attacks chapter's identity oracle when dlib's model is
    missing: :func:`dpact_tf.repro.oracle.evaluation_oracle`)."""
    prof = get_profile(prof)
    max_epochs = int(max_epochs or prof.convergence_max_epochs)
    patience = int(patience or prof.convergence_patience)
    min_delta = float(prof.convergence_min_delta if min_delta is None else min_delta)
    # Not monitored before the sweep's own budget: a noisy run that sits near chance for its first epochs has not
    # converged.
    start = max(0, min(prof.epochs, max_epochs - patience))
    return RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=epsilon, epochs=max_epochs, seed=seed,
                   patience=patience, min_delta=min_delta, start_from_epoch=start,
                   validation_fraction=VALIDATION_FRACTION)


def convergence_study(faces=None, *, profile: str, dataset: str, epsilons: Optional[Sequence[Optional[float]]] = None,
                      max_epochs: Optional[int] = None, patience: Optional[int] = None,
                      min_delta: Optional[float] = None, seed: int = 0, results_dir: Optional[str] = None,
                      force: bool = False, progress: bool = True) -> ConvergenceStudy:
    """The baseline and ``epsilons`` trained from scratch (Fig. 3's setting) with early stopping.

    Every run has the same budget (``max_epochs``, over which the learning rate decays by the profile's factor)
    and stops when its accuracy on :data:`VALIDATION_FRACTION` of the training images, held out (never the test
    images), has not improved by more than ``min_delta`` for ``patience`` epochs
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
               "min_delta": min_delta, "start_from_epoch": base.spec.start_from_epoch,
               "validation_fraction": base.spec.validation_fraction, "baseline_final": base_final, "baseline_converged": base_row["stopped_early"],
               "baseline_epochs": base_row["epochs_trained"],
               "reach_fractions": list(REACH_FRACTIONS), "majority_class_test_accuracy": chance}
    record_metrics(results_dir, prof.name, dataset, "convergence", metrics)
    return ConvergenceStudy(rows=rows, figures={"fig-convergence": fig}, metrics=metrics, runs=runs)


def convergence_text(metrics: Mapping[str, Any], sweep: Optional[Mapping[str, Any]] = None) -> str:
    """The convergence study in words (Markdown): where the baseline stopped, and per epsilon its final accuracy, the
    share of the baseline's gain over chance it keeps and when it reached the largest reach fraction; with the Fig. 3
    sweep's metrics (``sweep``), what its shorter budget gave."""
    rows = {r["epsilon"]: r for r in metrics["rows"]}
    base = rows[None]
    frac = max(metrics["reach_fractions"])
    key = f"epochs_to_{round(frac * 100)}%"
    state = (f"stopped at epoch {base['epochs_trained']}" if base["stopped_early"]
             else f"was still improving at the end of the budget ({base['epochs_trained']} epochs)")
    lines = [f"The baseline {state} with a final test accuracy of **{base['final_test_accuracy']:.3f}**."]
    finals: Dict[Any, float] = {}
    if sweep:
        finals = {h["epsilon"]: h["history"]["test_accuracy"][-1] for h in sweep["histories"]}
        n = len(sweep["histories"][0]["history"]["epoch"])
        lines.append(f"In the Fig. 3 sweep ({n} epochs) the same network ended at {finals.get(None, float('nan')):.3f}.")
    for eps, r in rows.items():
        if eps is None:
            continue
        reach = (f"reached {frac:.0%} of the baseline's final accuracy at epoch {r[key]}" if r[key] is not None
                 else f"never reached {frac:.0%} of the baseline's final accuracy")
        lines.append(f"At ε = {eps:g} the final test accuracy is {r['final_test_accuracy']:.3f} "
                     f"(it keeps {r['retained_gain']:.0%} of the baseline's gain over chance); it {reach}"
                     + (f" (the sweep's {n} epochs gave {finals[eps]:.3f})" if eps in finals else "") + ".")
    return " ".join(lines)


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


def above_chance(accuracy: float, chance: float, n_test: int, *, level: float = CHANCE_LEVEL) -> bool:
    """Whether a test accuracy is above always guessing the largest class: a one-sided exact binomial test of
    ``round(accuracy * n_test)`` correct answers out of ``n_test`` against the rate ``chance`` at ``level``.

    A run that fails it sits on the chance floor: its accuracy says only that the run learned nothing measurable,
    not how much it would have kept -- the value is censored, and a trend fitted through it is not a measurement.
    """
    from scipy import stats

    if not 0 <= chance <= 1 or n_test < 1:
        raise ValueError(f"chance must be in [0, 1] and n_test >= 1 (got {chance}, {n_test})")
    correct = int(round(float(accuracy) * n_test))
    return bool(stats.binom.sf(correct - 1, n_test, chance) < 1 - level)


def _own_channels(prof) -> int:
    """conv1_1's channels at the profile's own width (the point the convergence study trains)."""
    from dpact_tf.vggface import layer_plan

    return layer_plan(prof.width)[0][2]


def _largest(points: Sequence[Tuple[int, int]]) -> Tuple[int, int]:
    """The ladder point with the most coordinates per image (the larger input on a tie): the one trained with
    ``ladder_largest_seeds`` seeds."""
    return max(points, key=lambda p: (p[0] * p[0] * p[1], p[0]))


def _seeds(prof, point: Tuple[int, int], points: Sequence[Tuple[int, int]]) -> int:
    """Seeds a ladder of ``points`` trains at ``point``."""
    return prof.ladder_largest_seeds if tuple(point) == _largest(points) else 1


def ladder_runs_spec(prof, *, size: int, channels: int, epsilon: Optional[float], seed: int, dataset: str) -> RunSpec:
    """The run of one ladder point: trained from scratch with the convergence study's early stopping and budget
    (so a point stops when it no longer improves, and the profile's own shape shares the convergence study's runs)."""
    patience, max_epochs = prof.convergence_patience, prof.convergence_max_epochs
    default_channels = _own_channels(prof)
    return RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=epsilon, epochs=max_epochs, seed=seed,
                   patience=patience, min_delta=prof.convergence_min_delta,
                   start_from_epoch=max(0, min(prof.epochs, max_epochs - patience)),
                   validation_fraction=VALIDATION_FRACTION, image_size=None if size == prof.image_size else size,
                   conv1_channels=None if channels == default_channels else channels)


def ladder_trends(rows: Sequence[Mapping[str, Any]]) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, str]]:
    """Per epsilon, :func:`fit_trend` of the retained gain over the runs *above chance* only, and for every epsilon
    that cannot have a trend, why: at chance at every size, or above chance at a single size only.

    Runs at chance are censored at the floor (see :func:`above_chance`); a line through them would report a
    certainty that the data do not give (three zeros make a zero-width interval)."""
    trends: Dict[str, Dict[str, Any]] = {}
    why_not: Dict[str, str] = {}
    for eps in sorted({r["epsilon"] for r in rows if r["epsilon"] is not None}):
        sel = [r for r in rows if r["epsilon"] == eps]
        kept = [r for r in sel if r["above_chance"] and r["retained_gain"] == r["retained_gain"]]
        sizes = {r["coordinates"] for r in kept}
        key = f"{eps:g}"
        if not kept:
            why_not[key] = f"at chance at every size ({len(sel)} runs)"
        elif len(sizes) < 2:
            why_not[key] = (f"above chance at one size only ({len(kept)} of {len(sel)} runs): a trend needs two")
        else:
            t = fit_trend([r["coordinates"] for r in kept], [r["retained_gain"] for r in kept])
            t["censored"] = len(sel) - len(kept)
            trends[key] = t
    return trends, why_not


def ladder_study(*, profile: str, dataset: str, points: Optional[Sequence[Tuple[int, int]]] = None,
                 epsilons: Optional[Sequence[Optional[float]]] = None, seed: int = 0,
                 results_dir: Optional[str] = None, force: bool = False, progress: bool = True) -> LadderStudy:
    """Accuracy at fixed per-coordinate epsilon as the released activation grows, the server unchanged.

    ``points``: (input side in pixels, conv1_1 channels) pairs, e.g. ``[(64, 8), (64, 16), (64, 32), (64, 64)]``;
    every other layer keeps the profile's width.  Every point trains the no-noise baseline and each epsilon until it
    stops improving (:func:`ladder_runs_spec`); the largest point trains ``profile.ladder_largest_seeds`` seeds.
    Utility is :func:`retained_gain` of the final test accuracy against the no-noise run of the same point and
    seed; :func:`ladder_trends` extrapolates it to the paper's :data:`PAPER_COORDINATES` per epsilon from the runs
    above chance only.
    """
    from dpact_tf.repro.studies import resolve_epsilons

    prof = get_profile(profile)
    points = [(int(s), int(c)) for s, c in (prof.ladder_points if points is None else points)]
    eps_list = resolve_epsilons(prof.ladder_epsilons if epsilons is None else epsilons)
    if None not in eps_list or len(eps_list) < 2:
        raise ValueError("the ladder compares each epsilon with the no-noise run: epsilons must include None and "
                         "at least one epsilon")
    faces_by_size: Dict[int, Any] = {}
    rows: List[Dict[str, Any]] = []
    for size, channels in points:
        if size not in faces_by_size:
            spec0 = ladder_runs_spec(prof, size=size, channels=channels, epsilon=None, seed=seed, dataset=dataset)
            faces_by_size[size] = load_faces(spec0.profile_obj(), dataset, seed=seed, progress=progress)
        faces = faces_by_size[size]
        chance, n_test = faces.majority_class_rate, int(len(faces.test_labels))
        seeds = range(seed, seed + _seeds(prof, (size, channels), points))
        for s in seeds:
            point_rows = []
            for eps in eps_list:
                spec = ladder_runs_spec(prof, size=size, channels=channels, epsilon=eps, seed=s, dataset=dataset)
                run = run_training(spec, results_dir=results_dir, force=force, progress=progress, data=faces)
                acc = run.history["test_accuracy"]
                point_rows.append({"image_size": size, "conv1_channels": channels,
                                   "coordinates": size * size * channels, "epsilon": eps, "seed": s,
                                   "final_test_accuracy": acc[-1],
                                   "final_train_accuracy": run.history["train_accuracy"][-1],
                                   "epochs_trained": len(acc), "stopped_early": len(acc) < spec.epochs,
                                   "above_chance": above_chance(acc[-1], chance, n_test),
                                   "seconds": run.info.get("wall_seconds"), "run": relative_to_repo(run.path)})
            base = next(r for r in point_rows if r["epsilon"] is None)
            for r in point_rows:
                r["retained_gain"] = (retained_gain(r["final_test_accuracy"], base["final_test_accuracy"], chance)
                                      if base["above_chance"] else float("nan"))
            rows.extend(point_rows)
    trends, why_not = ladder_trends(rows)
    chance = faces_by_size[points[0][0]].majority_class_rate
    max_epochs = prof.convergence_max_epochs
    fig = plots.ladder_plot(rows, trends, paper_coordinates=PAPER_COORDINATES, dataset=dataset, epochs=max_epochs)
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), "ladder",
                      {"rows": rows, "trends": trends})
    metrics = {"rows": rows, "trends": trends, "no_trend": why_not, "max_epochs": max_epochs,
               "patience": prof.convergence_patience, "points": [list(p) for p in points],
               "paper_coordinates": PAPER_COORDINATES, "majority_class_test_accuracy": chance}
    record_metrics(results_dir, prof.name, dataset, "ladder", metrics)
    return LadderStudy(rows=rows, trends=trends, no_trend=why_not, figures={"fig-ladder": fig}, metrics=metrics)


def _shapes(points) -> str:
    return ", ".join(f"{s}×{s}×{c}" for s, c in points)


def seeds_note(prof) -> str:
    n = prof.ladder_largest_seeds
    return "one seed per run" + (f" except the ladder's largest point ({n} seeds)" if n > 1 else "")


def _medium_adds(prof, medium) -> bool:
    return prof.name != medium.name and bool(set(medium.ladder_points) - set(prof.ladder_points))


def _medium_ladder(medium) -> str:
    return (f"{_shapes(medium.ladder_points)} at ε ∈ {plots.eps_set(medium.ladder_epsilons)} (at most "
            f"{medium.convergence_max_epochs} epochs, {medium.ladder_largest_seeds} seeds at its largest point)")


def ladder_note(prof, medium) -> str:
    """What this profile's ladder trains, and what ``medium``'s adds (Markdown)."""
    note = (f"This profile's ladder: {_shapes(prof.ladder_points)} at ε ∈ {plots.eps_set(prof.ladder_epsilons)}, "
            f"each run until it stops improving (patience {prof.convergence_patience} epochs, at most "
            f"{prof.convergence_max_epochs}).")
    if _medium_adds(prof, medium):
        note += (f" The `medium` profile trains {_medium_ladder(medium)}; this profile leaves the larger points out "
                 "to keep `make book` within its time budget on a 2-core CPU.")
    return note


def _per_epoch(row: Mapping[str, Any]) -> float:
    return row["seconds"] / row["epochs_trained"]


def _timed(rows: Sequence[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
    return [r for r in rows if r.get("seconds") and r.get("epochs_trained")]


def size_exponent(rows: Sequence[Mapping[str, Any]]) -> Optional[float]:
    """How an epoch's time grows with the input's area, measured on the ladder: the median over pairs of timed runs
    of the same conv1_1 channels, epsilon and seed at two input sizes of log(time ratio) / log(area ratio) (1:
    in proportion to the area; less where fixed costs weigh).  None without such a pair."""
    timed = _timed(rows)
    ks = [math.log(_per_epoch(b) / _per_epoch(a)) / math.log((b["image_size"] / a["image_size"]) ** 2)
          for a in timed for b in timed
          if (a["conv1_channels"], a["epsilon"], a["seed"]) == (b["conv1_channels"], b["epsilon"], b["seed"])
          and b["image_size"] > a["image_size"]]
    return float(np.median(ks)) if ks else None


def left_out_minutes(rows: Sequence[Mapping[str, Any]], *, size: int, channels: int, noisy: bool,
                     runs: int = 1, area_exponent: float = 1.0) -> Optional[float]:
    """Estimated minutes of ``runs`` ladder runs at (``size``, ``channels``), with noise or without, from the
    measured ``rows`` (:func:`ladder_study`'s) of the same conv1_1 channels and the same kind (noise or none): each
    one's seconds per epoch scaled by the ratio of input areas to the power ``area_exponent`` (1: every layer's work
    in proportion to the area; :func:`size_exponent` measures it), their median, times the median epochs those runs
    trained.  None when no such run was timed."""
    if size <= 0 or channels <= 0 or runs < 1:
        raise ValueError(f"size, channels and runs must be positive (got {size}, {channels}, {runs})")
    same = [r for r in _timed(rows) if r["conv1_channels"] == channels and (r["epsilon"] is not None) == noisy]
    if not same:
        return None
    per_epoch = float(np.median([_per_epoch(r) * ((size / r["image_size"]) ** 2) ** area_exponent for r in same]))
    return runs * per_epoch * float(np.median([r["epochs_trained"] for r in same])) / 60


def _hours(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min"


def _left_out_note(prof, rows: Sequence[Mapping[str, Any]]) -> str:
    """What ``prof``'s ladder leaves out for time (:data:`LEFT_OUT`) and what it would cost, estimated from ``rows``:
    points larger than the measured ones between the area-proportional estimate (at most) and the ladder's own
    measured growth with the input size (:func:`size_exponent`, at least), when it grows slower."""
    left = LEFT_OUT.get(prof.name)
    if not left:
        return ""
    eps = list(prof.ladder_epsilons)
    k = size_exponent(rows)
    exponents = (1.0,) + ((k,) if k is not None and k < 1 else ())
    parts = []
    for point in left.get("points", ()):
        size, channels = point
        seeds = _seeds(prof, point, [*prof.ladder_points, point])
        totals = []
        for a in exponents:
            est = [left_out_minutes(rows, size=size, channels=channels, noisy=e is not None, runs=seeds,
                                    area_exponent=a) for e in eps]
            totals.append(None if None in est else sum(est))
        if None in totals:
            parts.append(f"{size}×{size}×{channels} (not estimated: no run with {channels} channels was timed)")
            continue
        span = _hours(totals[0]) if len(totals) == 1 else f"{_hours(totals[1])} to {_hours(totals[0])}"
        parts.append(f"{size}×{size}×{channels} (about {span} for {len(eps) * seeds} runs: ε ∈ {plots.eps_set(eps)}, "
                     f"{seeds} seed{'s' if seeds > 1 else ''})")
    own = (prof.image_size, _own_channels(prof))  # the convergence study trains this point at its ε
    for e in left.get("epsilons", ()):
        if e in eps:
            continue
        runs = {p: _seeds(prof, p, prof.ladder_points) for p in prof.ladder_points
                if not (p == own and e in prof.convergence_epsilons)}
        est = {p: left_out_minutes([r for r in rows if (r["image_size"], r["conv1_channels"]) == p], size=p[0],
                                   channels=p[1], noisy=True, runs=n) for p, n in runs.items()}
        timed = {p: m for p, m in est.items() if m is not None}
        text = f"ε = {e:g} at {len(runs)} of the ladder's points ("
        if not timed:
            text += "not estimated: no noisy run was timed"
        else:
            text += f"about {_hours(sum(timed.values()))} for {sum(runs[p] for p in timed)} runs"
            if len(timed) < len(runs):
                text += f", {_shapes([p for p in runs if p not in timed])} not estimated: no noisy run of theirs was timed"
        if len(runs) < len(prof.ladder_points):
            text += f"; the convergence study trains it at {own[0]}×{own[0]}×{own[1]}"
        parts.append(text + ")")
    how = (" These are estimates from this profile's timed runs: seconds per epoch of the runs with the same "
           "channels (for a new ε, the noisy runs of the same point) times their epochs; for a larger input, scaled "
           "by its area")
    if len(exponents) > 1:
        how += (f" (the upper end) or as this ladder's larger input did cost (the lower end: an epoch's time grew "
                f"as the area to the power {k:.2f})")
    return (f" Left out at `{prof.name}` for time: " + ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "")
            + parts[-1] + "." + how + ". The minutes of every run are in the ladder's table above.")


def earliest_stop(metrics: Mapping[str, Any]) -> int:
    """The first epoch at which the convergence study's stopping rule (``metrics``: its recorded ``patience``,
    ``min_delta`` and ``start_from_epoch``) can end a run: a run whose monitored accuracy never moves, as one at
    chance, stops there (:func:`dpact_tf.callbacks.stopping_epoch` on a constant history)."""
    from dpact_tf.callbacks import stopping_epoch

    never_moves = [0.0] * (metrics["start_from_epoch"] + metrics["patience"] + 2)
    return stopping_epoch(never_moves, patience=metrics["patience"], min_delta=metrics["min_delta"],
                          start_from_epoch=metrics["start_from_epoch"])


def medium_note(medium) -> str:
    """What the ``medium`` profile changes from ``small`` (Markdown, one sentence)."""
    side = max(s for s, _ in medium.ladder_points)
    attack = _largest(medium.attack_scale_points)
    return (f"the `small` book with the budgets this chapter's questions want: {medium.convergence_max_epochs}-epoch "
            f"convergence runs and a ladder up to {max(c for _, c in medium.ladder_points)} conv1 channels and "
            f"{side}×{side} inputs; besides, the attacks' membership test runs up to "
            f"{attack[0]}×{attack[0]}×{attack[1]} and the frontier chapter searches DP-SGD from scratch longer; "
            "every other study is the `small` one")


def cut_note(prof, medium, paper, rows: Optional[Sequence[Mapping[str, Any]]] = None) -> str:
    """What the fidelity studies of ``prof`` leave to ``medium`` and ``paper`` (Markdown); with the ladder's
    ``rows``, also what ``prof`` leaves out for time (:data:`LEFT_OUT`) and its estimated cost."""
    text = (f"At `{prof.name}`: convergence runs for ε ∈ {plots.eps_set(prof.convergence_epsilons)} "
            f"with a {prof.convergence_max_epochs}-epoch budget; the ladder at {_shapes(prof.ladder_points)}, "
            f"ε ∈ {plots.eps_set(prof.ladder_epsilons)}, each run until it stops improving; {seeds_note(prof)}.")
    if _medium_adds(prof, medium):
        text += (f" The `medium` profile runs the convergence study (ε ∈ {plots.eps_set(medium.convergence_epsilons)}) "
                 f"and the ladder at {_medium_ladder(medium)}.")
    if rows is not None:
        text += _left_out_note(prof, rows)
    if prof.name != paper.name:
        text += (f" Larger points (the paper's {paper.image_size}×{paper.image_size} input) are the `paper` "
                 f"profile's ladder, {_shapes(paper.ladder_points)}, for a GPU.")
    return text


def ladder_table(rows: Sequence[Mapping[str, Any]]):
    """One line per ladder run: its shape, seed, epsilon, final test accuracy, whether it is above chance, the
    share of the no-noise gain it keeps, its epochs and its minutes (a pandas DataFrame)."""
    import pandas as pd

    out = pd.DataFrame([{
        "released per image": f"{r['image_size']}×{r['image_size']}×{r['conv1_channels']} = {r['coordinates']:,}",
        "seed": r["seed"], "ε": plots.eps_label(r["epsilon"]), "final test acc.": round(r["final_test_accuracy"], 3),
        "above chance": "yes" if r["above_chance"] else "no",
        "gain kept": "—" if r["epsilon"] is None else round(r["retained_gain"], 3),
        "epochs": r["epochs_trained"],
        "minutes": None if r.get("seconds") is None else round(r["seconds"] / 60, 1)} for r in rows])
    return out.set_index(["released per image", "seed", "ε"])


def trend_lines(ladder) -> str:
    """The ladder's predictions at the paper's size, one bullet per epsilon, and for the epsilons without a
    trend, why (Markdown)."""
    trends, no_trend = ((ladder.trends, ladder.no_trend) if isinstance(ladder, LadderStudy)
                        else (ladder["trends"], ladder.get("no_trend", {})))
    lines = []
    for eps, t in trends.items():
        interval = (f"{round(100 * t['level'])}% prediction interval {t['lower']:.2f} to {t['upper']:.2f}"
                    if t["lower"] is not None else "no interval (fewer than three runs above chance)")
        censored = f"; {t['censored']} run(s) at chance left out" if t.get("censored") else ""
        beyond = (" (a share above 1, more than the no-noise run gains, is the straight line's, not a prediction a "
                  "noisy run can meet)" if t["prediction"] > 1 else "")
        lines.append(f"* ε = {eps}: {t['slope_per_decade']:+.3f} per tenfold more coordinates; at the paper's size "
                     f"the line predicts that **{t['prediction']:.2f}** of the no-noise gain is kept ({interval}), "
                     f"{t['extrapolation_decades']:.1f} decades beyond the largest point measured{censored}{beyond}.")
    for eps, why in no_trend.items():
        lines.append(f"* ε = {eps}: no trend — {why}; nothing can be extrapolated to the paper's size.")
    return "\n".join(lines)


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
    runs = (len(prof.ladder_points) + prof.ladder_largest_seeds - 1) * len(prof.ladder_epsilons)
    rows.append({"study": "scale ladder (upper bound: no early stop)", "runs": runs,
                 "epochs": prof.convergence_max_epochs, "images_per_epoch": train_images,
                 "flops_per_image": ladder / len(prof.ladder_points)})
    return rows
