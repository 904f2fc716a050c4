"""The book's studies, one function per notebook: each trains (or loads cached) runs, draws its figures
with :mod:`dpact_tf.plots` and records its metrics as JSON under ``<results_dir>/<profile>/<dataset>/``.

Notebooks only narrate and call these functions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from dpact_tf import privacy
from dpact_tf.repro import claims as claims_mod
from dpact_tf.repro import plots
from dpact_tf.repro.profiles import DEFAULT_EPSILONS, get_profile
from dpact_tf.repro.results import cache_key, record_metrics, relative_to_repo, resolve_results_dir, study_dir
from dpact_tf.repro.runs import RunSpec, load_faces, run_training

__all__ = ["ActivationStudy", "ScratchStudy", "FinetuneStudy", "PartitionStudy", "MobileStudy", "resolve_epsilons", "activation_study", "split_summary", "scratch_runs", "record_scratch", "finetune_study",
           "partition_study", "mobile_study", "encoding_study", "runs_table", "cost_table", "measure_text"]


# --- typed results: each study's numbers and its figures keyed by the MyST name the chapter gives them ----------
@dataclasses.dataclass
class ActivationStudy:
    table: List[Dict[str, Any]]        # per epsilon: SSIM and PSNR of the released map against the clean one
    figures: Dict[str, Any]            # "fig-activations", "fig-activation-similarity"
    faces: List[str]                   # the test images shown
    clean_max: float                   # the largest clean activation (<= the LRN's true range)


@dataclasses.dataclass
class ScratchStudy:
    table: List[Dict[str, Any]]        # per run: epsilon, final and best accuracies, loss, time
    figures: Dict[str, Any]            # "fig-scratch-curves", "fig-scratch-final"
    chance: float                      # the majority class's test accuracy


@dataclasses.dataclass
class FinetuneStudy:
    runs: List[Any]
    table: List[Dict[str, Any]]
    figures: Dict[str, Any]            # "fig-finetune-curves"
    claims: List[Dict[str, str]]       # the paper's two claims about Fig. 4, checked
    pretrain: Dict[str, Any]           # the public model: source, people, held-out accuracy


@dataclasses.dataclass
class PartitionStudy:
    rows: List[Dict[str, Any]]         # per cut and epsilon: test accuracy
    costs: List[Dict[str, Any]]        # per cut at this profile: client FLOPs, parameters, upload
    paper_costs: List[Dict[str, Any]]  # the same at the paper's size
    figures: Dict[str, Any]            # "fig-partition"
    runs: List[Any]


@dataclasses.dataclass
class MobileStudy:
    results: Dict[str, Any]            # the benchmark's JSON (dpact_tf.repro.mobile_cost.run_mobile_benchmark)
    figures: Dict[str, Any]            # "fig-mobile-cost"


def resolve_epsilons(epsilons: Optional[Sequence[Optional[float]]]) -> List[Optional[float]]:
    """``None`` -> the paper's sweep (no noise, 1, 2, 3, 5, 10, 14, 20); validates the values."""
    values = list(DEFAULT_EPSILONS if epsilons is None else epsilons)
    out: List[Optional[float]] = []
    for e in values:
        if privacy.is_no_noise(e):
            out.append(None)
        else:
            e = float(e)
            if not e > 0 or math.isnan(e):
                raise ValueError(f"every epsilon must be > 0 or None for the baseline (got {e})")
            out.append(e)
    return out


def runs_table(runs) -> List[Dict[str, Any]]:
    """One row per run: final accuracies (the final epoch: no epoch is picked by its test accuracy), noise std,
    wall time."""
    rows = []
    for r in runs:
        h = r.history
        rows.append({"epsilon": r.spec.epsilon, "cut": r.spec.cut, "epochs": len(h["epoch"]),
                     "noise_std": r.info["noise_std"], "final_loss": h["loss"][-1],
                     "final_train_accuracy": h["train_accuracy"][-1], "final_test_accuracy": h["test_accuracy"][-1],
                     "seconds": r.info.get("wall_seconds"),
                     "cached": r.cached, "run": relative_to_repo(r.path)})
    return rows


def _run_dicts(runs) -> List[Dict[str, Any]]:
    return [{"epsilon": r.spec.epsilon, "cut": r.spec.cut, "history": r.history} for r in runs]


def _sweep(task: str, prof, dataset: str, epsilons, *, epochs: int, seed: int, results_dir: Optional[str] = None, force: bool,
           progress: bool, data, init: Optional[str] = None):
    """One cached run per epsilon."""
    runs = []
    for eps in resolve_epsilons(epsilons):
        spec = RunSpec(task=task, profile=prof.name, dataset=dataset, epsilon=eps, epochs=epochs, seed=seed, init=init)
        runs.append(run_training(spec, results_dir=results_dir, force=force, progress=progress, data=data))
    return runs


def _curves(runs, *, prof, dataset: str, results_dir: Optional[str] = None, name: str, title: str):
    chance = runs[0].info["majority_class_test_accuracy"]
    fig = plots.training_curves(_run_dicts(runs), title=title, dataset=dataset, chance=chance)
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), name, {"runs": _run_dicts(runs)})
    return fig, chance


# --- Fig 2 ----------------------------------------------------------------------------------------------
def activation_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, epsilons=None, seed: int = 0,
                     n_faces: int = 3, n_channels: int = 3, force: bool = False, progress: bool = True) -> ActivationStudy:
    """conv1_1 activations of real faces after the DP layer for each epsilon, and SSIM/PSNR vs the clean map.

    The first layer is the one pre-trained on the public identities (the fine-tuning setting, where conv1
    is public), applied to test faces of distinct evaluation identities.
    """
    import tensorflow as tf

    from dpact_tf.layers import DPActivation
    from dpact_tf.repro.pretrain import pretrain
    from dpact_tf.vggface import build_split_vggface

    prof = get_profile(profile)
    eps_list = [e for e in resolve_epsilons(epsilons) if e is not None]
    pre = pretrain(prof.name, dataset, results_dir=results_dir, seed=seed, force=force, progress=progress)
    data = load_faces(prof, dataset, seed=seed, progress=progress)
    idx = data.distinct_people_test_indices(n_faces)
    faces = data.test_images[idx]
    split = build_split_vggface(num_classes=2, **prof.model_kwargs())
    split.client.load_weights(pre.client_weights, by_name=True)
    conv = tf.keras.Model(split.client.input, split.client.get_layer("conv1_1").output)
    pre_act = conv(faces.astype(np.float32) / 255.0)
    clean = DPActivation(epsilon=None)(pre_act).numpy()
    channels = [int(c) for c in np.argsort(-clean.mean(axis=(0, 1, 2)))[:n_channels]]
    noisy, table = {}, []
    shown_clean = np.clip(clean * 255.0, 0, 255)
    maps_clean = np.transpose(shown_clean, (0, 3, 1, 2)).reshape(-1, *clean.shape[1:3], 1)
    for k, eps in enumerate(eps_list):
        layer = DPActivation(epsilon=eps, seed=seed + 100 + k)
        noisy[eps] = layer(pre_act).numpy()
        shown = np.clip(noisy[eps] * 255.0, 0, 255)
        maps = np.transpose(shown, (0, 3, 1, 2)).reshape(-1, *clean.shape[1:3], 1)
        ssim = float(tf.reduce_mean(tf.image.ssim(tf.constant(maps), tf.constant(maps_clean), max_val=255.0)))
        psnr = float(tf.reduce_mean(tf.image.psnr(tf.constant(maps), tf.constant(maps_clean), max_val=255.0)))
        table.append({"epsilon": eps, "noise_std": layer.stddev, "empirical_noise_std": float((noisy[eps] - clean).std()),
                      "ssim": ssim, "psnr": psnr})
    out_dir = study_dir(results_dir, prof.name, dataset, "figures")
    fig_grid = plots.activation_grid(clean, noisy, faces, channels=channels, dataset=dataset)
    plots.save_figure(fig_grid, out_dir, "fig2_activations", {"channels": channels, "faces": [data.test_files[i] for i in idx],
                                                               "epsilons": eps_list})
    fig_sim = plots.similarity_plot(table, dataset=dataset)
    plots.save_figure(fig_sim, out_dir, "fig2_similarity", {"table": table})
    record_metrics(results_dir, prof.name, dataset, "activations", {"table": table, "channels": channels,
                                                                   "activation_shape": list(clean.shape[1:])})
    return ActivationStudy(table=table, figures={"fig-activations": fig_grid, "fig-activation-similarity": fig_sim},
                           faces=[data.test_files[i] for i in idx], clean_max=float(clean.max()))


# --- Fig 3 ----------------------------------------------------------------------------------------------
def split_summary(split) -> List[Dict[str, Any]]:
    """One row per layer of a split network: which side runs it, its output shape and its parameters."""
    rows = []
    for side, model in (("client (phone)", split.client), ("server (edge)", split.server)):
        for layer in model.layers:
            if layer.__class__.__name__ == "InputLayer":
                continue
            shape = layer.output_shape if hasattr(layer, "output_shape") else None
            rows.append({"side": side, "layer": layer.name, "kind": layer.__class__.__name__,
                         "output shape": "×".join(str(d) for d in shape[1:]) if shape else "",
                         "trainable parameters": int(sum(int(np.prod(w.shape)) for w in layer.trainable_weights))})
    return rows


def scratch_runs(faces, *, profile: str, dataset: str, epsilons=None, epochs: Optional[int] = None,
                 cut: str = "conv1_1", seed: int = 0, results_dir: Optional[str] = None, force: bool = False,
                 progress: bool = True) -> list:
    """One cached :func:`~dpact_tf.repro.runs.run_training` per epsilon (split at ``cut``, trained from scratch)."""
    prof = get_profile(profile)
    return [run_training(RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=eps,
                                 epochs=epochs or prof.epochs, cut=cut, seed=seed),
                         results_dir=results_dir, force=force, progress=progress, data=faces)
            for eps in resolve_epsilons(epsilons)]


def record_scratch(runs, *, profile: str, dataset: str, results_dir: Optional[str] = None) -> ScratchStudy:
    """Fig. 3's figures (saved as PNG + SVG + JSON) and metrics for the discussion chapter."""
    prof = get_profile(profile)
    fig_c, chance = _curves(runs, prof=prof, dataset=dataset, results_dir=results_dir, name="fig3_scratch_curves",
                            title="Training from scratch with DP activations (Fig. 3)")
    table = runs_table(runs)
    fig_f = plots.final_accuracy_plot(_run_dicts(runs), title="From scratch: final test accuracy", dataset=dataset)
    plots.save_figure(fig_f, study_dir(results_dir, prof.name, dataset, "figures"), "fig3_scratch_final",
                      {"table": table})
    record_metrics(results_dir, prof.name, dataset, "scratch", {"table": table, "histories": _run_dicts(runs),
                                                               "majority_class_test_accuracy": chance,
                                                               "data": runs[0].info["data"]})
    return ScratchStudy(table=table, figures={"fig-scratch-curves": fig_c, "fig-scratch-final": fig_f}, chance=chance)


# --- Fig 4 ----------------------------------------------------------------------------------------------
def finetune_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, epsilons=None,
                   epochs: Optional[int] = None, seed: int = 0, vggface_weights: Optional[str] = None,
                   force: bool = False, progress: bool = True) -> FinetuneStudy:
    """Fine-tune only the output layer of a public model on the noisy activations (Fig. 4).

    The public model is the offline stand-in pre-trained on disjoint LFW identities, or -- with
    ``vggface_weights`` (the public Keras VGG-Face file; needs the ``paper`` profile's shapes) -- VGG-Face itself.
    """
    from dpact_tf.repro.pretrain import pretrain, public_model_info, vggface_init

    prof = get_profile(profile)
    data = load_faces(prof, dataset, seed=seed, progress=progress)
    if vggface_weights:
        pre = vggface_init(prof.name, dataset, vggface_weights, num_classes=data.num_classes,
                           results_dir=results_dir, force=force)
    else:
        pre = pretrain(prof.name, dataset, results_dir=results_dir, seed=seed, force=force, progress=progress)
    runs = _sweep("finetune", prof, dataset, epsilons, epochs=epochs or prof.finetune_epochs, seed=seed,
                  results_dir=results_dir, force=force, progress=progress, data=data, init=pre.spec.key())
    fig_c, chance = _curves(runs, prof=prof, dataset=dataset, results_dir=results_dir, name="fig4_finetune_curves",
                            title="Fine-tuning the output layer on DP activations (Fig. 4)")
    table = runs_table(runs)
    pretrain_info = public_model_info(pre)
    metrics = {"table": table, "histories": _run_dicts(runs), "pretrain": pretrain_info,
               "majority_class_test_accuracy": chance}
    record_metrics(results_dir, prof.name, dataset, "finetune", metrics)
    claims = [claims_mod.claim_fig4_eps3(metrics), claims_mod.claim_fig4_low_eps(metrics)]
    return FinetuneStudy(runs=runs, table=table, figures={"fig-finetune-curves": fig_c}, claims=claims,
                         pretrain=pretrain_info)


# --- partition position ----------------------------------------------------------------------------------
def partition_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, epsilons=None, cuts: Optional[Sequence[str]] = None,
                    epochs: Optional[int] = None, seed: int = 0, force: bool = False,
                    progress: bool = True) -> PartitionStudy:
    """Accuracy vs epsilon for each cut layer, and the client's cost per cut."""
    from dpact_tf.vggface import build_split_vggface

    prof = get_profile(profile)
    eps_list = resolve_epsilons(prof.partition_epsilons if epsilons is None else epsilons)
    cuts = list(cuts or prof.partition_cuts)
    data = load_faces(prof, dataset, seed=seed, progress=progress)
    costs, rows, runs = [], [], []
    for cut in cuts:
        split = build_split_vggface(num_classes=data.num_classes, cut=cut, **prof.model_kwargs())
        costs.append({"cut": cut, "client_mflops": split.client_flops / 1e6, "client_params": split.client_params,
                      "activation_shape": list(split.activation_shape), "activation_kib": split.activation_bytes / 1024})
        for eps in eps_list:
            spec = RunSpec(task="scratch", profile=prof.name, dataset=dataset, epsilon=eps, cut=cut,
                           epochs=epochs or prof.partition_epochs, seed=seed)
            run = run_training(spec, results_dir=results_dir, force=force, progress=progress, data=data)
            runs.append(run)
            rows.append({"cut": cut, "epsilon": eps, "test_accuracy": run.history["test_accuracy"][-1],
                         "train_accuracy": run.history["train_accuracy"][-1], "noise_std": run.info["noise_std"]})
    # cost at the paper's size too (no training needed)
    paper_costs = []
    for cut in cuts:
        s = build_split_vggface((224, 224, 3), 2, width=1.0, fc_units=8, cut=cut)
        paper_costs.append({"cut": cut, "client_mflops": s.client_flops / 1e6, "client_params": s.client_params,
                            "activation_shape": list(s.activation_shape), "activation_kib": s.activation_bytes / 1024})
    fig = plots.partition_plot(rows, costs, dataset=dataset)
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), "partition",
                      {"rows": rows, "costs": costs, "paper_costs": paper_costs})
    record_metrics(results_dir, prof.name, dataset, "partition", {"rows": rows, "costs": costs,
                                                                 "paper_costs": paper_costs,
                                                                 "majority_class_test_accuracy":
                                                                     runs[0].info["majority_class_test_accuracy"]})
    return PartitionStudy(rows=rows, costs=costs, paper_costs=paper_costs, figures={"fig-partition": fig}, runs=runs)


# --- mobile cost -------------------------------------------------------------------------------------------
# The code behind the mobile-cost benchmark (its cache key includes their source).
MOBILE_MODULES = ("dpact_tf.repro.mobile_cost", "dpact_tf.repro.interleave", "dpact_tf.deploy.convert", "dpact_tf.deploy.head", "dpact_tf.deploy.graph", "dpact_tf.deploy.entropy", "dpact_tf.deploy.lite_release", "dpact_tf.deploy.runtime", "dpact_tf.layers",
                  "dpact_tf.privacy", "dpact_tf.vggface", "dpact_tf.grid", "dpact_tf.grid_tf",
                  "dpact_tf.deploy.tflite_inspect")


def mobile_study(*, profile: str, dataset: str, results_dir: Optional[str] = None, force: bool = False,
                 repeats: Optional[int] = None, include_paper_size: bool = True) -> MobileStudy:
    """The TFLite head's cost (LiteRT vs Keras, this CPU) beside the paper's Nexus 6P numbers; cached.

    The benchmark does not depend on the dataset; its result is cached under ``<profile>/mobile/<key>/`` by a
    hash of its settings and code, and recorded as the ``mobile`` metrics of ``dataset`` for the discussion.
    """
    from dpact_tf.repro.mobile_cost import run_mobile_benchmark

    prof = get_profile(profile)
    configs = ([("paper", 224, 1.0)] if include_paper_size else []) + [(prof.name, prof.image_size, prof.width)]
    settings = {"configs": configs, "repeats": repeats or prof.benchmark_repeats}
    out_dir = os.path.join(resolve_results_dir(results_dir), prof.name, "mobile",
                           cache_key(settings, modules=MOBILE_MODULES))
    path = os.path.join(out_dir, "mobile_cost.json")
    if force or not os.path.exists(path):
        run_mobile_benchmark(configs, out_dir=out_dir, repeats=settings["repeats"])
    with open(path) as fh:
        results = json.load(fh)
    fig = plots.mobile_cost_plot(results)
    plots.save_figure(fig, study_dir(results_dir, prof.name, dataset, "figures"), "mobile_cost", results)
    record_metrics(results_dir, prof.name, dataset, "mobile", results)
    return MobileStudy(results=results, figures={"fig-mobile-cost": fig})


def encoding_study(faces=None, *, profile: str, dataset: str, epsilons: Optional[Sequence[Optional[float]]] = None,
                   seed: int = 0, results_dir: Optional[str] = None, force: bool = False,
                   progress: bool = True) -> Dict[str, Any]:
    """The accuracy cost of each upload encoding: test accuracy of trained Fig. 3 (scratch) models whose
    released activations are round-tripped through float32 / float16 / uint8 (:mod:`dpact_tf.encoding`).
    ``epsilons``: the runs of the from-scratch sweep to evaluate (``None``: the paper's sweep).

    No training beyond the (cached) Fig. 3 runs; the same noise draw goes through every encoding (a paired
    comparison).  Cached by the run keys and the code of the encoding.
    """
    from dpact_tf import encoding

    prof = get_profile(profile)
    if faces is None:
        faces = load_faces(prof, dataset, seed=seed, progress=progress)
    runs = scratch_runs(faces, profile=profile, dataset=dataset, epsilons=epsilons, seed=seed,
                        results_dir=results_dir, force=False, progress=progress)
    settings = {"runs": [r.spec.key() for r in runs], "encodings": list(encoding.ENCODINGS), "seed": seed}
    path = os.path.join(resolve_results_dir(results_dir), prof.name, dataset, "encoding",
                        cache_key(settings, modules=("dpact_tf.encoding", "dpact_tf.repro.studies")) + ".json")
    if force or not os.path.exists(path):
        rows = []
        for run in runs:
            split = run.load_split(noise_seed=seed + 7)
            correct = {e: 0 for e in encoding.ENCODINGS}
            for start in range(0, len(faces.test_labels), 256):
                x = faces.test_images[start:start + 256].astype(np.float32) / 255.0
                act = split.client(x).numpy()  # one noisy release, sent in each encoding
                for e in encoding.ENCODINGS:
                    logits = split.server(encoding.decode(encoding.encode(act, e))).numpy()
                    correct[e] += int(np.sum(np.argmax(logits, -1) == faces.test_labels[start:start + 256]))
            for e in encoding.ENCODINGS:
                rows.append({"epsilon": run.spec.epsilon, "encoding": e,
                             "bytes_per_image": encoding.bytes_per_image(run.info["activation_shape"], e),
                             "test_accuracy": correct[e] / len(faces.test_labels)})
        for r in rows:
            ref = next(q for q in rows if q["epsilon"] == r["epsilon"] and q["encoding"] == "float32")
            r["accuracy_change_vs_float32"] = r["test_accuracy"] - ref["test_accuracy"]
        from dpact_tf.jsonio import write_json

        write_json(path, {"settings": settings, "rows": rows, "n_test": int(len(faces.test_labels))})
    with open(path) as fh:
        result = json.load(fh)
    record_metrics(results_dir, prof.name, dataset, "encoding", result)
    return result


def ledger_replay(*, profile: str, dataset: str, epsilon: float, delta: float = 1e-5, train_conv1: bool = True,
                  seed: int = 0, directory: Optional[str] = None) -> Dict[str, Any]:
    """The ledger the edge client keeps for one run of ``profile``, written and read back.

    The run's releases (every training batch, then the test set, each epoch: :func:`dpact_tf.accounting.
    release_count`'s schedule) are recorded in a :class:`dpact_tf.ledger.PrivacyLedger` without a budget, one line
    per batch as the client writes them, and the largest per-image epsilon it reads back is set beside the
    accounting's for the same run.  Images are identified by their index (the ledger needs only identities).
    Also: whether the default budget lets the run's first batch through.
    """
    import tempfile

    from dpact_tf import accounting
    from dpact_tf.ledger import Budget, BudgetExceeded, PrivacyLedger
    from dpact_tf.repro.privacy_studies import split_counts
    from dpact_tf.vggface import layer_plan

    prof = get_profile(profile)
    counts = split_counts(prof, dataset, seed=seed)
    shape = (prof.image_size, prof.image_size, layer_plan(prof.width)[0][2])
    epochs = prof.epochs if train_conv1 else prof.finetune_epochs
    train = [f"train-{i}" for i in range(counts["n_train"])]
    test = [f"test-{i}" for i in range(counts["n_test"])]
    batch = prof.batch_size
    args = dict(epsilon=epsilon, delta=delta, activation_shape=shape, train_conv1=train_conv1, run="replay")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        with PrivacyLedger(os.path.join(tmp, "releases.jsonl"), budget=Budget(epsilon=math.inf)) as ledger:
            for _ in range(epochs):
                for start in range(0, len(train), batch):
                    ledger.record(train[start:start + batch], kind="train", **args)
                for start in range(0, len(test), batch):
                    ledger.record(test[start:start + batch], kind="evaluate", **args)
            records, read_back = ledger.records, ledger.max_image_epsilon(delta)
        with PrivacyLedger(os.path.join(tmp, "default.jsonl")) as default:
            try:
                default.record(train[:batch], kind="train", **args)
                first_batch_refused = False
            except BudgetExceeded:
                first_batch_refused = True
    count = accounting.release_count(train_conv1=train_conv1, n_train=len(train), n_test=len(test), epochs=epochs,
                                     batch_size=batch)
    z = accounting.image_noise_multiplier(epsilon, delta, shape, grid_rounding=True)
    return {"epsilon": float(epsilon), "records": int(records), "releases": int(count["per_image"]),
            "ledger_epsilon": float(read_back),
            "accounting_epsilon": float(accounting.image_epsilon(z, delta, releases=count["per_image"])),
            "default_budget": Budget().epsilon, "first_batch_refused": first_batch_refused,
            "train_conv1": bool(train_conv1), "shape": list(shape)}


def ledger_summary(replay: Mapping[str, Any]) -> str:
    """Markdown: what the ledger read back for the replayed run, beside the accounting (computed, not typed)."""
    case = "conv1 trained" if replay["train_conv1"] else "conv1 frozen"
    refused = ("refuses the run's first batch" if replay["first_batch_refused"]
               else "lets the run's first batch through")
    return (f"The ledger the edge client would keep for this profile's run at per-coordinate ε = "
            f"{replay['epsilon']:g} ({case}: {replay['records']:,} batches recorded, {replay['releases']:,} releases "
            f"composed for the worst-case image) reads back a per-image ε of {replay['ledger_epsilon']:,.0f}; the "
            f"accounting above gives {replay['accounting_epsilon']:,.0f} for the same run (with the grid's worst-case "
            f"rounding). Its default budget of ε = {replay['default_budget']:g} per image {refused}.")


def measure_text(value: Optional[float]) -> str:
    """A measurement for a table: three significant digits (whole numbers with thousands separators from 100 up),
    a dash where there is none (None or NaN)."""
    if value is None or value != value:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


_COST_COLUMNS = (("batch load (s)", "batch_load_s"), ("model load (s)", "model_load_s"),
                 ("forward, batch 8 (s)", "forward_s"), ("GFLOP/s", "conv1_1_gflop_per_s"),
                 ("backward / sample (s)", "backward_s_per_sample"), ("release (MB)", "release_memory_mb"),
                 ("train (MB)", "train_memory_mb"))


def cost_table(res: Mapping[str, Any]) -> List[Dict[str, str]]:
    """The cost chapter's table: per head and runtime (each exported variant, Keras, the paper's Nexus 6P bounds),
    every measurement of :data:`_COST_COLUMNS` as :func:`measure_text` (a dash where a runtime does not measure it)."""
    rows = []
    for c in res["configs"]:
        for name, m in list(c["variants"].items()) + [("Keras", c["keras"])]:
            rows.append({"head": f"{c['label']} {c['image_size']}×{c['image_size']}", "runtime": name,
                         **{col: measure_text(m.get(key)) for col, key in _COST_COLUMNS}})
    p = res["paper_nexus6p"]
    paper = {"batch_load_s": p["load_s"], "forward_s": p["forward_s"],
             "backward_s_per_sample": p["backward_s_per_sample"], "release_memory_mb": p["memory_mb"],
             "train_memory_mb": p["memory_mb"]}
    rows.append({"head": "paper 224×224", "runtime": "Nexus 6P (bounds)",
                 **{col: measure_text(paper.get(key)) for col, key in _COST_COLUMNS}})
    return rows


def mobile_summary(res: Mapping[str, Any], *, deployed: str, reference: str = "reference kernels, whole batch") -> str:
    """Markdown for the cost chapter, computed from :func:`mobile_study`'s results: whether every deployable LiteRT
    variant is at least as fast as Keras (forward), and the deployed head against the paper's bounds."""
    p = res["paper_nexus6p"]
    slower = [(c["label"], name, r["forward_s"]) for c in res["configs"]
              for name, r in c["ratio_litert_over_keras"].items()
              if name != reference and r.get("forward_s") is not None and r["forward_s"] > 1.0]
    paper = next((c for c in res["configs"] if c["label"] == "paper"), None)
    if paper is None:
        budget = "The paper-size head was not measured at this profile, so the paper's bounds are not checked here."
    else:
        lite = paper["variants"][deployed]
        within = lite["forward_s"] < p["forward_s"] and lite["memory_mb"] <= p["memory_mb"]
        threads = lite["threads_per_worker"]
        budget = (f"At the paper's size ({'×'.join(map(str, paper['activation_shape']))}, batch of {res['batch']}) "
                  f"the deployed release ({deployed}, {lite['workers']} interpreters of {threads} thread"
                  f"{'s' if threads > 1 else ''}) takes {lite['forward_s']:.2f} s per batch (interquartile range "
                  f"{lite['forward_iqr_s'][0]:.2f}–{lite['forward_iqr_s'][1]:.2f} s) and {lite['memory_mb']:.0f} MB "
                  f"over a bare process: **{'within' if within else 'outside'}** the paper's bounds (forward < "
                  f"{p['forward_s']:g} s, < {p['memory_mb']:g} MB) on this CPU. Its CPU time is "
                  f"{lite['forward_cpu_s']:.2f} s per batch: a busy shared CPU shows in the wall time, not in that.")
    words = (paper or res["configs"][0])["activation_shape"]
    target = ("**met** by every deployable variant, on every head size measured." if not slower else
              "**not met** for " + ", ".join(f"{head} {name} ({ratio:.2f})" for head, name, ratio in slower) + ".")
    warm = [(c["label"], c["ratio_litert_over_keras"][deployed]["forward_warm"]) for c in res["configs"]
            if c["ratio_litert_over_keras"].get(deployed, {}).get("forward_warm") is not None]
    warm_text = ("" if not warm else " Called back to back, as an app releasing a stream of batches calls it, the "
                 "deployed head's forward takes " + ", ".join(f"{ratio:.2f}× Keras' at {head}" for head, ratio in warm)
                 + " (the interleaved rounds time each call after idle, with its threads asleep and its caches "
                 "cold; `benchmarks/head_wakeup.py` times both kinds of call, after a sleep and back to back).")
    return ("Our target — the deployable LiteRT head at least as fast as the Keras client, both releasing on the grid "
            f"— is {target}{warm_text} The noise is the costly part of the head: per {words[0]}×{words[1]} image it looks up "
            f"{words[0] * words[1] * words[2]:,} secret 64-bit words in the noise table with TFLite's single-threaded "
            "int64 kernels, against one 3×3 convolution with 3 input channels; two interpreters share that work. "
            + budget)
