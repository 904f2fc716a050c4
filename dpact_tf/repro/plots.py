"""Every figure of the book: each function draws one figure, saves it as PNG + SVG next to the JSON of
the numbers behind it, and returns the matplotlib figure (the notebook displays it).

Figures made from the synthetic stand-in say so in their title.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dpact_tf.jsonio import write_json

__all__ = ["save_figure", "close", "eps_label", "eps_set", "activation_grid", "similarity_plot", "training_curves", "accounting_plot",
           "reconstruction_grid", "reconstruction_pairs", "reconstruction_quality_plot", "identity_attack_plot",
           "membership_plot",
           "final_accuracy_plot", "partition_plot", "mobile_cost_plot", "ladder_plot", "dpsgd_plot", "privynet_plot",
           "dssgd_plot"]


def _plt():
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 130, "font.size": 10, "axes.grid": True,
                         "grid.alpha": 0.3, "svg.hashsalt": "dpact",
                         "svg.fonttype": "none"})  # keep SVG text as text (searchable, accessible)
    return plt


def close(fig) -> None:
    """Close ``fig`` so that a notebook shows it only where it is displayed explicitly (an open figure is shown a
    second time by the inline backend, with the same figure label: a duplicate target in the book)."""
    _plt().close(fig)


def eps_label(eps: Optional[float]) -> str:
    """"no noise" for None (or the NaN pandas makes of it), else "ε = 3"."""
    return "no noise" if eps is None or eps != eps else f"ε = {eps:g}"


def eps_set(values: Sequence[Optional[float]]) -> str:
    """The set "{no noise, 3, 5}" of a study's epsilons, for the chapters' prose."""
    return "{" + ", ".join("no noise" if e is None else f"{e:g}" for e in values) + "}"


def _title(text: str, dataset: str) -> str:
    return text + ("\n[SYNTHETIC data, not LFW]" if dataset == "synthetic" else "")


def _colors(n: int):
    plt = _plt()
    cmap = plt.get_cmap("viridis")
    return ["black"] + [cmap(i / max(1, n - 2)) for i in range(n - 1)]


def save_figure(fig, out_dir: str, name: str, data: Dict[str, Any]) -> Dict[str, str]:
    """Write ``name``.png, .svg and .json (the numbers) into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{name}.{ext}") for ext in ("png", "svg", "json")}
    fig.savefig(paths["png"], bbox_inches="tight")
    fig.savefig(paths["svg"], bbox_inches="tight", metadata={"Date": None})
    close(fig)  # the notebook displays the returned figure explicitly
    write_json(paths["json"], data)
    return paths


def activation_grid(clean: np.ndarray, noisy: Dict[Any, np.ndarray], faces: np.ndarray, *, channels: Sequence[int],
                    dataset: str):
    """Fig. 2: rows = (face, channel), columns = input, no noise, each epsilon; activation x 255, negatives removed."""
    plt = _plt()
    eps_keys = list(noisy)
    n_faces = clean.shape[0]
    rows = n_faces * len(channels)
    cols = 2 + len(eps_keys)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.3 * rows), squeeze=False)
    for f in range(n_faces):
        for ci, ch in enumerate(channels):
            r = f * len(channels) + ci
            panels = [faces[f]] + [clean[f, ..., ch]] + [noisy[e][f, ..., ch] for e in eps_keys]
            titles = ["input", "no noise"] + [eps_label(e) for e in eps_keys]
            for c, (panel, title) in enumerate(zip(panels, titles)):
                ax = axes[r, c]
                if c == 0:
                    if ci == 0:
                        ax.imshow(panel)
                    else:
                        ax.axis("off")
                else:
                    ax.imshow(np.clip(panel * 255.0, 0, 255), cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([]), ax.set_yticks([])
                ax.grid(False)
                if r == 0:
                    ax.set_title(title, fontsize=8)
                if c == 1:
                    ax.set_ylabel(f"ch {ch}", fontsize=7)
    fig.suptitle(_title("conv1_1 activations after the DP layer (×255, negatives removed)", dataset), fontsize=10)
    fig.tight_layout()
    return fig


def similarity_plot(table: List[Dict[str, Any]], *, dataset: str):
    plt = _plt()
    eps = [r["epsilon"] for r in table]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(eps, [r["ssim"] for r in table], "o-")
    a1.set_xlabel("ε (per coordinate)"), a1.set_ylabel("SSIM noisy vs clean"), a1.set_ylim(0, 1)
    a2.plot(eps, [r["psnr"] for r in table], "o-", color="C1")
    a2.set_xlabel("ε (per coordinate)"), a2.set_ylabel("PSNR noisy vs clean (dB)")
    fig.suptitle(_title("How much of the activation map survives the noise", dataset), fontsize=10)
    fig.tight_layout()
    return fig


def training_curves(runs: List[Dict[str, Any]], *, title: str, dataset: str, chance: Optional[float] = None):
    """Loss, training and test accuracy per epoch, one line per epsilon (Figs 3 and 4)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = _colors(len(runs))
    for run, color in zip(runs, colors):
        h = run["history"]
        style = dict(color=color, lw=2 if run["epsilon"] is None else 1.3, label=eps_label(run["epsilon"]),
                     ls="--" if run["epsilon"] is None else "-")
        axes[0].plot(h["epoch"], h["loss"], **style)
        axes[1].plot(h["epoch"], h["train_accuracy"], **style)
        axes[2].plot(h["epoch"], h["test_accuracy"], **style)
    for ax, lab in zip(axes, ["training loss (log scale)", "training accuracy", "test accuracy"]):
        ax.set_xlabel("epoch"), ax.set_ylabel(lab)
    axes[0].set_yscale("log")
    if chance is not None:
        for ax in axes[1:]:
            ax.axhline(chance, color="grey", ls=":", lw=1, label="majority class")
    axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(_title(title, dataset), fontsize=10)
    fig.tight_layout()
    return fig


def final_accuracy_plot(runs: List[Dict[str, Any]], *, title: str, dataset: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    noisy = [r for r in runs if r["epsilon"] is not None]
    base = [r for r in runs if r["epsilon"] is None]
    ax.plot([r["epsilon"] for r in noisy], [r["history"]["test_accuracy"][-1] for r in noisy], "o-", label="with DP noise")
    for b in base:
        ax.axhline(b["history"]["test_accuracy"][-1], color="black", ls="--", label="no noise")
    ax.set_xlabel("ε (per coordinate)"), ax.set_ylabel("final test accuracy"), ax.legend(fontsize=8)
    ax.set_title(_title(title, dataset), fontsize=10)
    fig.tight_layout()
    return fig


def partition_plot(rows: List[Dict[str, Any]], costs: List[Dict[str, Any]], *, dataset: str):
    """Accuracy vs epsilon per cut, and the client's cost per cut."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.8))
    cuts = list(dict.fromkeys(r["cut"] for r in rows))
    eps_values = sorted({r["epsilon"] for r in rows if r["epsilon"] is not None}, reverse=True)
    xs = ["no noise"] + [eps_label(e) for e in eps_values]
    for i, cut in enumerate(cuts):
        acc = {r["epsilon"]: r["test_accuracy"] for r in rows if r["cut"] == cut}
        ys = [acc.get(None, math.nan)] + [acc.get(e, math.nan) for e in eps_values]
        a1.plot(xs, ys, "o-", label=cut)
    a1.set_ylabel("final test accuracy"), a1.set_xlabel("noise level (decreasing ε →)"), a1.legend(fontsize=8)
    a1.set_title("accuracy by cut layer", fontsize=10)
    names = [c["cut"] for c in costs]
    x = np.arange(len(names))
    a2.bar(x - 0.2, [c["client_mflops"] for c in costs], 0.4, label="client MFLOPs / image")
    ax2 = a2.twinx()
    ax2.bar(x + 0.2, [c["activation_kib"] for c in costs], 0.4, color="C1", label="upload KiB / image (float32)")
    ax2.grid(False)
    a2.set_xticks(x, names)
    a2.set_ylabel("client MFLOPs per image"), ax2.set_ylabel("upload KiB per image")
    a2.legend(loc="upper left", fontsize=8), ax2.legend(loc="upper right", fontsize=8)
    a2.set_title("client cost by cut layer", fontsize=10)
    fig.suptitle(_title("Where to split the network", dataset), fontsize=10)
    fig.tight_layout()
    return fig


def mobile_cost_plot(results: Dict[str, Any]):
    """One row per head size: batch load vs model load, forward, backward and memory of each export variant
    and of Keras (same CPU, epsilon and threads), with the paper's Nexus 6P bounds as dashed lines."""
    plt = _plt()
    paper = results["paper_nexus6p"]
    configs = results["configs"]
    # two panels a row, two rows per head: readable at the book's width
    fig, grid = plt.subplots(2 * len(configs), 2, figsize=(10, 3.6 * 2 * len(configs)), squeeze=False)
    axes = [list(grid[2 * i]) + list(grid[2 * i + 1]) for i in range(len(configs))]
    panels = [("load (s)", [("batch_load_s", "batch load (8 JPEGs)"), ("model_load_s", "model load")], "load_s"),
              ("forward, batch of 8 (s)", [("forward_s", None)], "forward_s"),
              ("backward per sample (s)", [("backward_s_per_sample", None)], "backward_s_per_sample"),
              ("memory over a bare process (MB)", [("release_memory_mb", "release"), ("train_memory_mb", "train")],
               "memory_mb")]
    short = {"reference kernels, whole batch": "reference,\nwhole batch", "parallel strips": "parallel\nstrips",
             "parallel strips, inference only": "parallel strips,\ninference only", "keras": "Keras"}
    colors = {"reference kernels, whole batch": "C3", "parallel strips": "C0", "parallel strips, inference only": "C2",
              "keras": "C1"}
    for row, c in zip(axes, configs):
        runs = list(c.get("variants", {"litert": c["litert"]}).items()) + [("keras", c["keras"])]
        for ax, (label, keys, bound) in zip(row, panels):
            width = 0.8 / len(keys)
            for k, (key, part) in enumerate(keys):
                xs = [i + (k - (len(keys) - 1) / 2) * width for i, (_, m) in enumerate(runs) if m.get(key) is not None]
                ys = [m[key] for _, m in runs if m.get(key) is not None]
                cs = [colors.get(n, "C4") for n, m in runs if m.get(key) is not None]
                ax.bar(xs, ys, width=width, color=cs, hatch="//" if k else "", edgecolor="white" if k else None,
                       label=part)
            ax.axhline(paper[bound], color="grey", ls="--", lw=1, label=f"paper's bound < {paper[bound]:g}")
            ax.set_xticks(range(len(runs)), [short.get(n, n) for n, _ in runs], fontsize=9)
            ax.set_yscale("log"), ax.set_ylabel(label, fontsize=10)
            ax.set_title(f"{c['label']} head, {c['image_size']}×{c['image_size']}", fontsize=10)
            ax.legend(fontsize=8)
    fig.suptitle(f"Client cost: LiteRT exports and Keras on {results['hardware']['cpu']}\n"
                 f"({results.get('num_threads', results['hardware']['cores'])} threads, the grid release at ε = "
                 f"{results.get('epsilon', 5):g} in both) vs the paper's Nexus 6P bounds — different hardware",
                 fontsize=11)
    fig.tight_layout()
    return fig


def accounting_plot(tables: Dict[str, List[Dict[str, Any]]], *, dataset: str):
    """Per-coordinate epsilon vs what it means per image and per training run (log scale)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 3.8), squeeze=False)
    for ax, (label, rows) in zip(axes[0], tables.items()):
        eps = [r["epsilon_per_coordinate"] for r in rows]
        ax.plot(eps, eps, "k--", label="paper: per coordinate")
        ax.plot(eps, [r["paper_composition_epsilon"] for r in rows], "o-", label="paper's bound over 3×3 positions")
        ax.plot(eps, [r["paper_composition_epsilon_map"] for r in rows], "o--", color="C1",
                label="paper's bound over the H×W map")
        ax.fill_between(eps, [r["image_epsilon_lower"] for r in rows], [r["image_epsilon_exact"] for r in rows],
                        alpha=0.3, color="C2")
        ax.plot(eps, [r["image_epsilon_exact"] for r in rows], "s-", color="C2", label="per image, one release")
        ax.plot(eps, [r["image_epsilon_paper_bound"] for r in rows], ":", color="C2", label="(with S_f·√d)")
        ax.plot(eps, [r["frozen_epsilon_exact"] for r in rows], "^-", color="C3",
                label=f"conv1 frozen: {rows[0]['frozen_releases']} releases")
        ax.plot(eps, [r["trained_epsilon_exact"] for r in rows], "v-", color="C4",
                label=f"conv1 trained: {rows[0]['trained_releases']:,} releases")
        ax.plot(eps, [r["trained_epsilon_rdp"] for r in rows], "x", color="grey", label="(RDP bound)")
        ax.set_yscale("log"), ax.set_xlabel("ε per coordinate (the paper's)"), ax.set_ylabel("ε at δ = 1e-5")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(_title("The same noise, accounted per coordinate, per image and per training run", dataset),
                 fontsize=10)
    fig.tight_layout()
    return fig


def reconstruction_pairs(faces: np.ndarray, reconstructed: np.ndarray, *, title: str, dataset: str):
    """Two rows: the true faces above, their reconstructions below (one column per face)."""
    plt = _plt()
    n = len(faces)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.6), squeeze=False)
    for c in range(n):
        for r, (image, label) in enumerate(((faces[c], "true"), (reconstructed[c], "reconstructed"))):
            ax = axes[r, c]
            ax.imshow(np.clip(image, 0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            ax.grid(False)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(_title(title, dataset), fontsize=9)
    fig.tight_layout()
    return fig


def reconstruction_grid(faces: np.ndarray, recs: Dict[str, Dict[Any, np.ndarray]], *, dataset: str,
                        column_label=eps_label):
    """Rows: faces x attack; columns: the true face, then the reconstruction per epsilon (or per any key,
    titled by ``column_label``)."""
    plt = _plt()
    attacks = list(recs)
    eps_keys = list(next(iter(recs.values())))
    rows, cols = len(faces) * len(attacks), 1 + len(eps_keys)
    fig, axes = plt.subplots(rows, cols, figsize=(1.25 * cols, 1.3 * rows), squeeze=False)
    for f in range(len(faces)):
        for a, attack in enumerate(attacks):
            r = f * len(attacks) + a
            panels = [faces[f]] + [recs[attack][e][f] for e in eps_keys]
            for c, panel in enumerate(panels):
                ax = axes[r, c]
                ax.imshow(np.clip(panel, 0, 1))
                ax.set_xticks([]), ax.set_yticks([])
                ax.grid(False)
                if r == 0:
                    ax.set_title("true" if c == 0 else column_label(eps_keys[c - 1]), fontsize=7)
                if c == 0:
                    ax.set_ylabel(attack.split(" ")[0], fontsize=6)
    fig.suptitle(_title("What the server reconstructs (" + "; ".join(attacks) + ")", dataset), fontsize=9)
    fig.tight_layout()
    return fig


def _interval(ax, x, rows, key, **style):
    """Means with their 95 % interval as error bars (``key``, ``key_lo``, ``key_hi`` of each row)."""
    mean = np.array([r[key] for r in rows])
    err = np.array([[m - r[f"{key}_lo"] for m, r in zip(mean, rows)], [r[f"{key}_hi"] - m for m, r in zip(mean, rows)]])
    ax.errorbar(x, mean, yerr=err, capsize=3, marker="o", ms=4, **style)


def _eps_axis(ax, rows):
    """Epsilons as evenly spaced categories (the no-noise run last, labelled "none")."""
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(["none" if r["epsilon"] is None else f"{r['epsilon']:g}" for r in rows])
    ax.set_xlabel("ε per coordinate")


def _ordered(rows):
    return sorted(rows, key=lambda r: float("inf") if r["epsilon"] is None else r["epsilon"])


def reconstruction_quality_plot(rows: List[Dict[str, Any]], baselines: Dict[str, Dict[str, Any]], *, dataset: str):
    """SSIM to the true face per epsilon (95 % bootstrap intervals): the decoder, the inversion and the null decoder
    beside the guesses that use no release (grey image, public mean face: bands)."""
    plt = _plt()
    rows = _ordered(rows)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4.6))
    for key, label, color in (("decoder_ssim", "decoder, mean of E releases", "C0"),
                              ("inversion_avg_ssim", "inversion, mean of E", "C1"),
                              ("inversion_ssim", "inversion, one copy", "C2"),
                              ("null_decoder_ssim", "decoder fed another face's releases", "C3")):
        _interval(ax, x, rows, key, label=label, color=color, ls="-" if key != "null_decoder_ssim" else "--")
    for name, color in (("grey", "0.5"), ("mean_face", "0.2")):
        b = baselines[name]
        ax.axhspan(b["ssim_lo"], b["ssim_hi"], color=color, alpha=0.25, lw=0)
        ax.axhline(b["ssim"], color=color, lw=1, ls=":", label=f"{name.replace('_', ' ')} (no release)")
    _eps_axis(ax, rows)
    ax.set_ylabel("SSIM to the true face")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(_title("Reconstruction against guesses that use no release", dataset), fontsize=10)
    fig.tight_layout()
    return fig


def identity_attack_plot(rows: List[Dict[str, Any]], baselines: Dict[str, Dict[str, Any]], *, oracle: Dict[str, Any],
                         chance: float, dataset: str):
    """Left: the oracle's identification of reconstructions as a share of its ceiling on the true faces.  Right: the
    server's own classifier on noisy activations against always guessing the largest class."""
    plt = _plt()
    rows = _ordered(rows)
    x = np.arange(len(rows))
    ceiling = oracle["ceiling"] or float("nan")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9))
    for key, label in (("decoder_identity", "decoder"), ("inversion_avg_identity", "inversion, mean of E"),
                       ("null_decoder_identity", "decoder, another face's releases")):
        axes[0].plot(x, [r[key] / ceiling for r in rows], "o-", label=label, ms=4)
    for name, style in (("grey", ":"), ("mean_face", "--")):
        axes[0].axhline(baselines[name]["identity"] / ceiling, color="k", ls=style, lw=1,
                        label=f"{name.replace('_', ' ')} (no release)")
    axes[0].axhline(1.0, color="grey", lw=1, label="the true faces (ceiling)")
    axes[0].set_ylabel("named correctly, share of the ceiling"), axes[0].set_ylim(bottom=0)
    axes[0].set_title("Does the oracle recognize the reconstruction?", fontsize=9)
    axes[1].plot(x, [r["server_classifier_accuracy"] for r in rows], "s-", label="server's classifier (test images)")
    axes[1].axhline(chance, color="grey", ls=":", label="always the largest class")
    axes[1].set_ylabel("identification accuracy"), axes[1].set_ylim(bottom=0)
    axes[1].set_title("The server's own classifier as an identity attack", fontsize=9)
    for ax in axes:
        _eps_axis(ax, rows)
        ax.legend(fontsize=7)
    fig.suptitle(_title("Who is in the release?", dataset), fontsize=10)
    fig.tight_layout()
    return fig


def membership_plot(rows: List[Dict[str, Any]], *, dataset: str):
    """The server's membership test on held-out candidates: TPR (lower bound) and FPR (upper bound), and the
    per-image epsilon lower bound they imply."""
    plt = _plt()
    rows = _ordered(rows)
    x = np.arange(len(rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.9))
    axes[0].plot(x, [r["mia_tpr"] for r in rows], "o-", color="C0", label="true-positive rate")
    axes[0].plot(x, [r["mia_tpr_lower"] for r in rows], "o--", color="C0", alpha=0.6, label="its 97.5 % lower bound")
    axes[0].plot(x, [r["mia_fpr"] for r in rows], "s-", color="C3", label="false-positive rate")
    axes[0].plot(x, [r["mia_fpr_upper"] for r in rows], "s--", color="C3", alpha=0.6, label="its 97.5 % upper bound")
    axes[0].set_ylim(-0.02, 1.02), axes[0].set_ylabel("rate on held-out candidates")
    axes[0].set_title("Was this face a training release?", fontsize=9)
    axes[1].bar(x, [r["mia_epsilon_lower"] for r in rows], color="C0")
    axes[1].set_ylabel("per-image ε lower bound (95 %)")
    axes[1].set_title("What the test proves about ε", fontsize=9)
    for ax in axes:
        _eps_axis(ax, rows)
    axes[0].legend(fontsize=7)
    fig.suptitle(_title("Membership inference by the server", dataset), fontsize=10)
    fig.tight_layout()
    return fig


def ladder_plot(rows: List[Dict[str, Any]], trends: Dict[str, Dict[str, Any]], *, paper_coordinates: int,
                dataset: str, epochs: int):
    """The scale ladder: accuracy (left) and the share of no noise's gain over chance kept (right) against the coordinates an
    image releases; the right panel extends each epsilon's fitted line to the paper's size, with its prediction
    interval there."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    eps_values = sorted({r["epsilon"] for r in rows}, key=lambda e: -1 if e is None else e)
    colors = dict(zip(eps_values, _colors(len(eps_values))))
    for eps in eps_values:
        sel = [r for r in rows if r["epsilon"] == eps]
        x = sorted({r["coordinates"] for r in sel})
        mean = [float(np.mean([r["final_test_accuracy"] for r in sel if r["coordinates"] == c])) for c in x]
        style = dict(color=colors[eps], label=eps_label(eps), marker="o", ls="--" if eps is None else "-")
        axes[0].plot(x, mean, **style)  # the mean over seeds where a point has several
        if eps is None:
            continue
        for above, face in ((True, colors[eps]), (False, "none")):
            pts = [r for r in sel if bool(r.get("above_chance", True)) == above]
            axes[1].scatter([r["coordinates"] for r in pts], [r["retained_gain"] for r in pts], marker="o",
                            facecolors=face, edgecolors=colors[eps],
                            label=None if above else f"{eps_label(eps)}: at chance (left out of the fit)")
        t = trends.get(f"{eps:g}")
        if t:
            xs = np.logspace(math.log10(min(x)), math.log10(paper_coordinates), 50)
            axes[1].plot(xs, t["intercept"] + t["slope_per_decade"] * np.log10(xs), color=colors[eps], lw=1,
                         ls=":", label=f"{eps_label(eps)}: trend")
            if t["lower"] is not None:
                axes[1].errorbar([paper_coordinates], [t["prediction"]],
                                 yerr=[[t["prediction"] - t["lower"]], [t["upper"] - t["prediction"]]],
                                 color=colors[eps], marker="s", capsize=4, ls="none")
    for ax in axes:
        ax.set_xscale("log")
        ax.axvline(paper_coordinates, color="grey", ls="--", lw=1)
        ax.set_xlabel("coordinates released per image (log scale)")
    axes[0].text(paper_coordinates, axes[0].get_ylim()[1], " paper\n 224×224×64", fontsize=7, va="top",
                 ha="right", color="grey")
    axes[1].axhline(1.0, color="black", ls="--", lw=1)
    axes[1].axhline(0.0, color="grey", ls=":", lw=1)
    # keep the measured points readable: an interval wider than the plot is cut at its edge (the table has it)
    measured = [r["retained_gain"] for r in rows if r["epsilon"] is not None and r["retained_gain"] == r["retained_gain"]]
    lo, hi = min(measured + [0.0]), max(measured + [1.0])
    axes[1].set_ylim(max(-1.0, lo - 0.3), min(2.0, hi + 0.3))
    axes[0].set_ylabel(f"final test accuracy (early stopping, ≤ {epochs} epochs)")
    axes[1].legend(fontsize=7)
    axes[1].set_ylabel("(acc − chance) ÷ (no-noise acc − chance)")
    axes[0].legend(fontsize=8)
    axes[1].set_title("dotted: fitted trend; square: its prediction at the paper's size "
                      f"({round(100 * next(iter(trends.values()))['level']) if trends else 90}% interval)",
                      fontsize=8)
    fig.suptitle(_title("Scale ladder: utility at fixed ε as the released activation grows", dataset), fontsize=10)
    fig.tight_layout()
    return fig


def dpsgd_plot(dpsgd: List[Dict[str, Any]], dp_activations: List[Dict[str, Any]], *, chance: float, dataset: str):
    """Test accuracy vs epsilon: DP-SGD at its per-example epsilon over the run, and the DP-activation runs at
    the paper's per-coordinate epsilon and at their per-image epsilon over the run (the same privacy unit as
    DP-SGD's), joined by grey lines (one run, two readings)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    pts = sorted((r["epsilon"], r["test_accuracy"]) for r in dpsgd)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "s-", color="C3", label="DP-SGD (per example, whole run)")
    noisy = [r for r in dp_activations if r["epsilon_per_coordinate"] is not None]
    for r in noisy:
        ax.plot([r["epsilon_per_coordinate"], r["image_epsilon_per_run"]], [r["test_accuracy"]] * 2, color="0.7",
                lw=1, zorder=1)
    ax.plot([r["epsilon_per_coordinate"] for r in noisy], [r["test_accuracy"] for r in noisy], "o", mfc="white",
            color="C0", label="DP activations, per coordinate (the paper's ε)")
    ax.plot([r["image_epsilon_per_run"] for r in noisy], [r["test_accuracy"] for r in noisy], "o", color="C0",
            label="DP activations, per image over the run")
    for r in noisy:
        ax.annotate(f"ε = {r['epsilon_per_coordinate']:g}", (r["image_epsilon_per_run"], r["test_accuracy"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7, color="C0")
    base = next((r["test_accuracy"] for r in dp_activations if r["epsilon_per_coordinate"] is None), None)
    if base is not None:
        ax.axhline(base, color="black", ls="--", lw=1, label="no privacy (same budget)")
    ax.axhline(chance, color="0.5", ls=":", lw=1, label="majority class")
    ax.set_xscale("log")
    ax.set_xlabel("ε (log scale; δ = 1e-5)"), ax.set_ylabel("final test accuracy")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(_title("DP-SGD vs DP activations at matched ε", dataset), fontsize=10)
    fig.tight_layout()
    return fig


def privynet_plot(rows: List[Dict[str, Any]], *, chance: float, baselines: Dict[str, Dict[str, float]],
                  dp_reference: Optional[Dict[str, float]] = None, dataset: str):
    """Per cut of the frozen public head: test accuracy (left) and the decoder's SSIM on private faces (right),
    with the grey-image and mean-face scores a "reconstruction" gets without looking at anything."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    cuts = [r["cut"] for r in rows]
    a1.plot(cuts, [r["test_accuracy"] for r in rows], "o-", color="C2", label="frozen public head, no noise")
    if dp_reference:
        for name, acc in dp_reference.items():
            a1.axhline(acc, ls="--", lw=1, color="C0" if "ε" in name else "black", label=name)
    a1.axhline(chance, color="0.5", ls=":", lw=1, label="majority class")
    a1.set_xlabel("cut (last client layer)"), a1.set_ylabel("final test accuracy"), a1.legend(fontsize=7)
    a1.set_title("utility", fontsize=10)
    a2.plot(cuts, [r["decoder_ssim"] for r in rows], "o-", color="C3", label="decoder on what the server receives")
    for (name, b), style in zip(baselines.items(), (":", "-.")):
        a2.axhline(b["ssim"], color="0.4", ls=style, lw=1, label=f"{name.replace('_', ' ')} (no data looked at)")
    a2.set_xlabel("cut (last client layer)"), a2.set_ylabel("SSIM to the private face (1 = identical)")
    a2.set_ylim(0, 1), a2.legend(fontsize=7), a2.set_title("what the server reconstructs", fontsize=10)
    fig.suptitle(_title("PrivyNet-style: a frozen public head, privacy from the representation only", dataset),
                 fontsize=10)
    fig.tight_layout()
    return fig


def dssgd_plot(rows: List[Dict[str, Any]], *, centralized: Dict[str, Any], chance: float, dataset: str):
    """DSSGD test accuracy vs the uploaded fraction theta, one line per number of participants K; one
    participant alone and centralized training as references."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, k in enumerate(sorted({r["participants"] for r in rows})):
        shared = sorted((r["theta_upload"], r["test_accuracy"]) for r in rows
                        if r["participants"] == k and not r["standalone"] and r.get("momentum_at", "server") == "server")
        ax.plot([p[0] for p in shared], [p[1] for p in shared], "o-", color=f"C{i}",
                label=f"DSSGD, K = {k}, each participant's own momentum")
        local = [(r["theta_upload"], r["test_accuracy"]) for r in rows
                 if r["participants"] == k and not r["standalone"] and r.get("momentum_at") == "server"]
        if local:
            ax.plot([p[0] for p in local], [p[1] for p in local], "x", ms=9, mew=2, color=f"C{i}",
                    label=f"K = {k}, θ = 1, one momentum at the server")
        alone = [r["test_accuracy"] for r in rows if r["participants"] == k and r["standalone"]]
        if alone:
            ax.axhline(alone[0], color=f"C{i}", ls="-.", lw=1, label=f"one participant alone (1/{k} of the data)")
    ax.axhline(centralized["test_accuracy"], color="black", ls="--", lw=1, label="centralized (all data, no privacy)")
    ax.axhline(chance, color="0.5", ls=":", lw=1, label="majority class")
    ax.set_xscale("log"), ax.set_xlabel("θ: fraction of the gradient uploaded per turn (log scale)")
    ax.set_ylabel("final test accuracy"), ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(_title("DSSGD: selective gradient sharing", dataset), fontsize=10)
    fig.tight_layout()
    return fig


def frontier_plot(points: List[Dict[str, Any]], references: Dict[str, float], *, chance: float, dataset: str,
                  zoom: Tuple[float, float] = (0.5, 50.0)):
    """Test accuracy against per-image epsilon (log axis): one series per method (mean over seeds, bars: one
    standard deviation), hollow markers where the tuning's runs raise the epsilon, each setting's non-private
    accuracy as a horizontal line; the left panel spans every point, the right one the per-image epsilons
    ``zoom`` a person would accept."""
    plt = _plt()
    fig, (ax, near) = plt.subplots(2, 1, figsize=(9, 12), gridspec_kw={"height_ratios": [1, 1]})
    markers = {"release": "o", "activations_once": "D", "last_layer_dpsgd": "s", "scratch_dpsgd": "P",
               "paper_scratch": "^", "paper_finetune": "v"}
    for panel in (ax, near):
        for i, method in enumerate(dict.fromkeys(p["method"] for p in points)):
            pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["image_epsilon"])
            color = f"C{i}"
            base = method.removesuffix("_dlib")  # the same method over another public model: same marker, dashed
            panel.errorbar([p["image_epsilon"] for p in pts], [p["mean"] for p in pts],
                           yerr=[0.0 if p["spread"] != p["spread"] else p["spread"] for p in pts],
                           marker=markers.get(base, "o"), color=color, capsize=2, label=pts[0]["label"],
                           ls="--" if base != method else "-")
            tuned = [p for p in pts if p["epsilon_with_tuning"] > p["image_epsilon"] * (1 + 1e-6)]
            for p in tuned:
                panel.plot([p["image_epsilon"], p["epsilon_with_tuning"]], [p["mean"]] * 2, color=color, lw=0.8,
                           ls=":")
            if tuned:
                panel.plot([p["epsilon_with_tuning"] for p in tuned], [p["mean"] for p in tuned],
                           markers.get(base, "o"), mfc="white", color=color,
                           label=f"{pts[0]['label']}, tuning included")
        for j, (name, acc) in enumerate(references.items()):
            panel.axhline(acc, color="black", ls=("--", "-.", ":")[j % 3], lw=1, label=f"no noise: {name}")
        panel.axhline(chance, color="0.5", ls=":", lw=1, label="majority class")
        panel.set_xscale("log")
        panel.set_xlabel("per-image ε (log scale; δ = 1e-5)")
        panel.set_ylabel("test accuracy")
    ax.set_title("every point", fontsize=10)
    near.set_xlim(*zoom)
    near.set_title(f"per-image ε from {zoom[0]:g} to {zoom[1]:g}", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2)  # below both panels
    fig.suptitle(_title("Accuracy against the per-image ε of every method", dataset), fontsize=11)
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    return fig
