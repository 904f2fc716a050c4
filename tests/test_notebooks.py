"""Smoke runs of every notebook at the tiny profile (papermill), assertions on what they recorded, and a
build of the book from those executed notebooks with warnings as errors."""
import dataclasses
import json
import math
import os
import re
from pathlib import Path
import shutil

import numpy as np
import pytest

from dpact_tf import privacy
from dpact_tf.repro import claims, frontier
from dpact_tf.repro.book import NEEDS, NOTEBOOKS, REPO, build_book, run_notebooks
from dpact_tf.repro.mobile_cost import DEPLOYED, PAPER_NEXUS6P, VARIANTS
from dpact_tf.repro.profiles import get_profile

EPSILONS = [None, 1.0, 3.0, 20.0]
# Per chapter, what replaces the book's sweep: the partition chapter sweeps its profile's own epsilons (its conv1_1
# runs are then the baselines chapter's references); the attacks chapter attacks the ends of the sweep and no noise
# (each epsilon costs a decoder, two inversions and the membership tests at two sizes).
ATTACK_EPSILONS = [None, 1.0, 20.0]
OVERRIDES = {"04_partition": {"epsilons": None}, "07_attacks": {"epsilons": ATTACK_EPSILONS}}


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinybook")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(os.path.join(REPO, name), root / name)
    shutil.copytree(os.path.join(REPO, "book"), root / "book", ignore=shutil.ignore_patterns("executed", "_build"))
    shutil.copytree(os.path.join(REPO, "_static"), root / "_static")
    results = root / "results"
    # two at once: the tiny chapters are mostly single-threaded (tracing, kernels starting), and the scheduler that
    # keeps a chapter after the ones it needs is itself under test here
    run_notebooks(profile="tiny", dataset="synthetic", out_dir=str(root / "book" / "executed"),
                  results_dir=str(results), epsilons=EPSILONS, jobs=2, overrides=OVERRIDES)
    return root, results / "tiny" / "synthetic"


def _outputs_text(root, name):
    """Everything an executed chapter shows as output (streams, text, HTML, markdown), as one string."""
    nb = json.loads((root / "book" / "executed" / f"{name}.ipynb").read_text())
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append("".join(out["text"]))
            for mime, data in out.get("data", {}).items():
                if mime.startswith("text/"):
                    parts.append("".join(data))
    return "\n".join(parts)


def _metrics(base, name):
    with open(base / "metrics" / f"{name}.json") as fh:
        return json.load(fh)


def test_activation_notebook(tiny_book):
    _, base = tiny_book
    m = _metrics(base, "activations")
    assert m["synthetic"] is True
    table = {r["epsilon"]: r for r in m["table"]}
    assert sorted(table) == [1.0, 3.0, 20.0]
    n = 3 * 32 * 32 * 8  # 3 faces x 32 x 32 x 8 channels of noise
    for eps, row in table.items():
        expected = privacy.noise_std(eps, 1e-5)
        assert row["noise_std"] == pytest.approx(expected, rel=1e-12)
        assert abs(row["empirical_noise_std"] - expected) < 4 * expected / math.sqrt(2 * n)
    assert table[20.0]["ssim"] > table[1.0]["ssim"]
    assert table[20.0]["psnr"] > table[1.0]["psnr"]


def test_scratch_notebook(tiny_book):
    _, base = tiny_book
    m = _metrics(base, "scratch")
    hist = {h["epsilon"]: h["history"] for h in m["histories"]}
    assert list(hist) == EPSILONS and all(len(h["epoch"]) == 8 for h in hist.values())
    base_acc = hist[None]["train_accuracy"]
    assert base_acc[-1] > base_acc[0] + 0.2, f"the no-noise baseline did not learn: {base_acc}"
    for row in m["table"]:
        expected = 0.0 if row["epsilon"] is None else privacy.noise_std(row["epsilon"], 1e-5)
        assert row["noise_std"] == pytest.approx(expected)
    svg = (base / "figures" / "fig3_scratch_curves.svg").read_text()
    assert "SYNTHETIC" in svg


def test_finetune_notebook(tiny_book):
    root, base = tiny_book
    m = _metrics(base, "finetune")
    assert m["pretrain"]["people"] == 8 and len(m["histories"]) == len(EPSILONS)
    assert [len(h["history"]["epoch"]) for h in m["histories"]] == [4] * len(EPSILONS)
    # the chapter states both Fig. 4 claims with the rules the discussion applies
    text = _outputs_text(root, "03_finetune")
    assert claims.claim_fig4_eps3(m)["rule"] in text and claims.claim_fig4_low_eps(m)["rule"] in text


def test_partition_notebook(tiny_book):
    root, base = tiny_book
    prof = get_profile("tiny")
    m = _metrics(base, "partition")
    cuts = [c["cut"] for c in m["costs"]]
    assert cuts == ["conv1_1", "pool1", "conv2_2"] == list(prof.partition_cuts)
    # the override reached the chapter: the profile's epsilons, not the book's sweep
    assert [(r["cut"], r["epsilon"]) for r in m["rows"]] == [(c, e) for c in cuts for e in prof.partition_epsilons]
    assert prof.partition_epsilons != tuple(EPSILONS)
    nb = json.loads((root / "book" / "executed" / "04_partition.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["epsilons"] is None
    cost = {c["cut"]: c for c in m["paper_costs"]}
    assert cost["conv1_1"]["client_mflops"] < cost["pool1"]["client_mflops"] < cost["conv2_2"]["client_mflops"]
    # pool1 halves conv1_2's 224 x 224 x 64 output, the same shape as conv1_1's
    assert cost["pool1"]["activation_shape"] == [112, 112, 64] and cost["conv1_1"]["activation_shape"] == [224, 224, 64]
    assert cost["pool1"]["activation_kib"] == cost["conv1_1"]["activation_kib"] / 4
    # the paper's cuts left out at tiny are named in the chapter
    assert "`conv1_2`" in _outputs_text(root, "04_partition")


def test_mobile_notebook(tiny_book):
    root, base = tiny_book
    res = _metrics(base, "mobile")
    (conf,) = res["configs"]
    assert conf["label"] == "tiny" and conf["litert"]["tensorflow_imported"] is False
    assert conf["litert"]["forward_s"] > 0 and conf["upload_bytes_per_image"]["float32"] == 4 * 32 * 32 * 8
    assert set(conf["variants"]) == {"reference kernels, whole batch", "parallel strips",
                                     "parallel strips, inference only"}
    assert conf["litert"]["workers"] == 2 and conf["keras"]["epsilon"] == res["epsilon"]
    assert conf["litert"]["noise_source"].startswith("the app's entropy only")
    assert conf["litert"]["batch_load_s"] > 0 and conf["litert"]["release_memory_mb"] > 0
    # every variant measured as the deployed one: the app's entropy, builtin ops, the same epsilon and threads
    assert conf["litert"] == conf["variants"][DEPLOYED]
    for name, lite in conf["variants"].items():
        assert lite["noise_source"].startswith("the app's entropy only") and lite["builtin_ops_only"]
        assert lite["epsilon"] == conf["keras"]["epsilon"] == res["epsilon"] and lite["num_threads"] == res["num_threads"]
        assert lite["max_batch"] == VARIANTS[name]["max_batch"] and lite["workers"] == VARIANTS[name]["workers"]
        assert lite["release_memory_mb"] > 0 and "forward_s" in conf["ratio_litert_over_keras"][name]
        if VARIANTS[name]["with_train"]:  # the on-device backward is measured too
            assert lite["train_memory_mb"] > 0 and "backward_s_per_sample" in conf["ratio_litert_over_keras"][name]
        else:
            assert "train_memory_mb" not in lite and "backward_s_per_sample" not in conf["ratio_litert_over_keras"][name]
        assert lite["tensorflow_imported"] is False
    assert conf["keras"]["forward_s"] > 0 and conf["keras"]["num_threads"] == res["num_threads"]
    # and called back to back (warm), in every process that releases
    for name, lite in conf["variants"].items():
        assert lite["forward_warm_s"] > 0 and conf["ratio_litert_over_keras"][name]["forward_warm"] == pytest.approx(
            lite["forward_warm_s"] / conf["keras"]["forward_warm_s"])
    assert "Called back to back" in _outputs_text(root, "05_mobile_cost")
    # interleaved: every runtime timed once per round, the ratio also taken round by round
    repeats = get_profile("tiny").benchmark_repeats
    assert res["interleaved"] and len(conf["keras"]["forward_all_s"]) == len(conf["litert"]["forward_all_s"]) == repeats
    paired = conf["ratio_litert_over_keras"][DEPLOYED]["forward_paired"]
    ratios = [a / b for a, b in zip(conf["litert"]["forward_all_s"], conf["keras"]["forward_all_s"])]
    assert paired["median"] == pytest.approx(float(np.median(ratios))) and paired["iqr"][0] <= paired["median"]
    assert conf["ratio_litert_over_keras"][DEPLOYED]["forward_cpu"] == pytest.approx(
        conf["litert"]["forward_cpu_s"] / conf["keras"]["forward_cpu_s"])
    assert conf["variants"]["reference kernels, whole batch"]["rows_per_call"] == 32
    assert res["bare_process_mb"] > 0 and "load_avg_start" in res
    assert set(PAPER_NEXUS6P) == {"load_s", "forward_s", "backward_s_per_sample", "memory_mb"}
    enc = _metrics(base, "encoding")
    assert {(r["epsilon"], r["encoding"]) for r in enc["rows"]} == {(e, k) for e in EPSILONS
                                                                   for k in ("float32", "float16", "uint8")}
    assert all(r["bytes_per_image"] == {"float32": 4, "float16": 2, "uint8": 1}[r["encoding"]] * 32 * 32 * 8
               for r in enc["rows"])


def test_accounting_notebook(tiny_book):
    _, base = tiny_book
    m = _metrics(base, "accounting")
    paper, tiny = m["tables"].values()
    assert [r["epsilon_per_coordinate"] for r in paper] == [1.0, 3.0, 20.0]
    assert paper[0]["activation_coordinates"] == 224 * 224 * 64 and tiny[0]["activation_coordinates"] == 32 * 32 * 8
    for r in paper + tiny:
        assert r["image_epsilon_lower"] <= r["image_epsilon_exact"] <= r["image_epsilon_rdp"]
        assert r["image_epsilon_exact"] < r["image_epsilon_paper_bound"]
        for tag in ("image", "frozen", "trained"):
            if r[f"{tag}_epsilon_pld"] is not None:  # PLD is not run above 1e6, and then reported as None
                assert r[f"{tag}_epsilon_exact"] <= r[f"{tag}_epsilon_pld"] * (1 + 1e-6) <= r[f"{tag}_epsilon_rdp"] * (1 + 1e-6)
            else:
                assert r["pld_note"] and r[f"{tag}_epsilon_exact"] > 1e6
        assert r["trained_epsilon_exact"] > r["frozen_epsilon_exact"] > r["image_epsilon_exact"] > r["epsilon_per_coordinate"]
        assert r["trained_releases"] > r["frozen_releases"] == r["finetune_epochs"]
    assert tiny[0]["image_epsilon_pld"] is not None


def test_attacks_notebook(tiny_book):
    root, base = tiny_book
    m = _metrics(base, "attacks")
    rows = {r["epsilon"]: r for r in m["rows"]}
    assert list(rows) == ATTACK_EPSILONS
    # without noise the server reconstructs and tells members apart better than at epsilon = 1
    assert rows[None]["inversion_avg_ssim"] > rows[1.0]["inversion_avg_ssim"]
    assert rows[None]["mia_tpr"] - rows[None]["mia_fpr"] > rows[1.0]["mia_tpr"] - rows[1.0]["mia_fpr"]
    # intervals hold their means; the guesses without a release and the oracle's ceiling are recorded
    assert all(r["decoder_ssim_lo"] <= r["decoder_ssim"] <= r["decoder_ssim_hi"] for r in m["rows"])
    assert set(m["baselines"]) == {"grey", "mean_face"} and m["releases_averaged"] == 4  # tiny: finetune_epochs
    assert m["oracle"]["ceiling"] > 1 / m["people"]
    text = _outputs_text(root, "07_attacks")
    assert "understate the paper-scale leakage" in text and "Clopper–Pearson" in text
    # the oracle is dlib's features + softmax, or (without dlib's model) the no-noise network, said in bold
    if m["oracle"]["fallback"]:
        assert m["oracle"]["key"].startswith("network:") and "so the oracle is the no-noise network" in text
    else:
        assert m["oracle"]["key"].startswith("features:dlib") and "was not found" not in text
    assert "The identity oracle (" in text  # set beside the book's non-private models
    # the membership test at larger activations: every noisy epsilon at each of tiny's points, smallest first
    scale = _metrics(base, "attack_scale")
    known = [r for r in scale["rows"] if r["conv1"] == "known"]
    assert [r["epsilon"] for r in known] == [e for e in ATTACK_EPSILONS if e is not None] * 2
    assert known[0]["noise_multiplier"] > known[-1]["noise_multiplier"] and scale["seconds"] > 0
    assert "**At larger activations.**" in text and "standard deviations" in text

def test_fidelity_notebook(tiny_book):
    from dpact_tf.callbacks import stopping_epoch
    from dpact_tf.repro.profiles import get_profile

    prof = get_profile("tiny")
    _, base = tiny_book
    conv = _metrics(base, "convergence")
    rows = {r["epsilon"]: r for r in conv["rows"]}
    assert list(rows) == list(prof.convergence_epsilons)
    for h in conv["histories"]:
        acc, watched = h["history"]["test_accuracy"], h["history"]["validation_accuracy"]
        stop = stopping_epoch(watched, patience=conv["patience"], min_delta=conv["min_delta"],
                              start_from_epoch=conv["start_from_epoch"])
        # a run ends exactly where the stated rule, applied to the held-out training images, says, or at the budget
        assert len(acc) == len(watched) == (stop if stop is not None else conv["max_epochs"])
        # every run is read at its final epoch, never at the epoch of its best test accuracy
        assert rows[h["epsilon"]]["final_test_accuracy"] == acc[-1] and "best_test_accuracy" not in rows[h["epsilon"]]
    ladder = _metrics(base, "ladder")
    sizes = {(r["image_size"], r["conv1_channels"]): r["coordinates"] for r in ladder["rows"]}
    assert sizes == {(s, c): s * s * c for s, c in prof.ladder_points}
    largest = max(prof.ladder_points, key=lambda p: p[0] * p[0] * p[1])
    seeds = {(r["image_size"], r["conv1_channels"]): set() for r in ladder["rows"]}
    for r in ladder["rows"]:
        seeds[(r["image_size"], r["conv1_channels"])].add(r["seed"])
        assert r["epochs_trained"] <= ladder["max_epochs"]
        if r["epsilon"] is None:  # the no-noise run keeps all of its own gain (undefined when it is at chance)
            assert (r["retained_gain"] == pytest.approx(1.0) if r["above_chance"] else math.isnan(r["retained_gain"]))
    assert {p: len(s) for p, s in seeds.items()} == {p: prof.ladder_largest_seeds if p == largest else 1
                                                      for p in prof.ladder_points}
    # every epsilon has a trend fitted through its runs above chance, or the reason it has none
    assert set(ladder["trends"]) | set(ladder["no_trend"]) == {f"{e:g}" for e in prof.ladder_epsilons if e is not None}
    for eps, t in ladder["trends"].items():
        assert t["n"] == sum(r["above_chance"] for r in ladder["rows"] if r["epsilon"] == float(eps))
    assert ladder["paper_coordinates"] == 224 * 224 * 64


def test_baselines_notebook(tiny_book):
    root, base = tiny_book
    prof = get_profile("tiny")
    text = _outputs_text(root, "09_baselines")
    for method in ("(c) features released once per image", "(e) DP-SGD on the last layer",
                   "(b) DP activations (conv1) released once per image", "(a) DP activations as the paper trains",
                   "Which method at which per-image ε", "add or remove one example",
                   "(d) DP-SGD on the whole network, from scratch, tuned"):
        assert method in text, f"the chapter lacks {method!r}"
    assert "The identity oracle (" in text and ("the attacks chapter's: " in text or "so the oracle is" in text)
    for fig in ("frontier", "baseline_privynet", "baseline_dssgd"):
        assert (base / "figures" / f"{fig}.png").exists()
    front = _metrics(base, "frontier")
    sched = frontier.SCHEDULES["tiny"]
    methods = {p["method"] for p in front["points"]}
    core = {"release", "last_layer_dpsgd", "activations_once", "paper_scratch", "paper_finetune", "scratch_dpsgd"}
    if "dlib's face ResNet is not available" in text:  # said in the chapter; its points are then missing
        assert methods == core
    else:
        assert methods == core | {"release_dlib", "last_layer_dpsgd_dlib"}
    for p in front["points"]:
        if p["method"] == "activations_once":  # one release at most the per-image target
            assert p["image_epsilon"] <= max(sched.activation_epsilons) and len(p["accuracies"]) == sched.activation_seeds
        if p["method"] == "scratch_dpsgd":  # (d): the chosen candidate's run meets the target; the search composes
            assert p["image_epsilon"] <= max(sched.scratch_dpsgd_epsilons) < p["epsilon_with_tuning"]
        if p["method"] == "paper_scratch":  # the from-scratch chapter's runs, read, at their per-image epsilon
            scratch = {r["epsilon"]: r for r in _metrics(base, "scratch")["table"]}
            assert p["accuracies"] == [scratch[p["detail"]["epsilon_per_coordinate"]]["final_test_accuracy"]]
    assert front["counts"]["n_fit"] + front["counts"]["n_validation"] == front["counts"]["n_train"]
    dssgd = _metrics(base, "baseline_dssgd")
    # per K: every theta with local momentum, full sharing with the server's momentum, one participant alone
    assert len(dssgd["rows"]) == len(prof.baselines.dssgd_participants) * (len(prof.baselines.dssgd_thetas) + 2)
    assert sorted((r["theta_upload"] or 0, r["momentum_at"]) for r in dssgd["rows"] if not r["standalone"]) == \
        sorted([(t, "participant") for t in prof.baselines.dssgd_thetas] + [(1.0, "server")])
    uploads = {r["theta_upload"]: r["upload_bytes_per_image"] for r in dssgd["rows"] if not r["standalone"]}
    assert uploads[0.1] < uploads[1.0]
    # the DP-activation references are the partition chapter's conv1_1 runs (same budget and epsilons): read, not
    # retrained, which is why the baselines chapter waits for it (NEEDS)
    from dpact_tf.repro.runs import RunSpec
    partition = {RunSpec(task="scratch", profile="tiny", dataset="synthetic", epsilon=e, epochs=prof.partition_epochs,
                         cut="conv1_1").key() for e in prof.partition_epsilons}
    assert {r["run"] for r in _metrics(base, "baseline_privynet")["dp_activations"]} == partition
    assert "04_partition" in NEEDS["09_baselines"]
    spnn = _metrics(base, "baseline_spnn")
    assert spnn["max_abs_error_z"] < 1e-3 and spnn["test_accuracy"] == pytest.approx(spnn["float_test_accuracy"],
                                                                                      abs=2 / 40)
    assert spnn["float_test_accuracy"] == pytest.approx(spnn["run_test_accuracy"], abs=0.01)
    assert spnn["upload_bytes_per_image"] > spnn["dp_activation_upload_bytes_per_image"]


def test_d_tuning_reads_validation_never_test(tiny_book, monkeypatch):
    """(d) as the baselines chapter ran it, asked again with its arguments: every candidate read from the chapter's
    cache.  Tiny's two candidates score apart, above chance (a choice by any other score could differ); the first,
    trained again here with the test labels shuffled, has the chapter's validation accuracy (the test labels are
    never read for it, and the run is reproducible across processes); the choice is the argmax of the validation
    accuracies (so it never reads them either); the tuning's epsilon is the composition of both candidates' runs,
    at least the chosen run's, which meets the target."""
    from dpact_tf.baselines.dpsgd import RunShape, composed_epsilon
    from dpact_tf.data import validation_split
    from dpact_tf.repro import frontier_scratch
    from dpact_tf.repro.runs import load_faces

    _, base = tiny_book
    prof, sched = get_profile("tiny"), frontier.SCHEDULES["tiny"]
    data = load_faces(prof, "synthetic", seed=0, progress=False)
    fit, val = validation_split(data.train_labels, sched.validation_fraction, seed=0)
    grid = sched.scratch_candidates()
    train = frontier_scratch.train_candidate

    def no_training(*args, **kwargs):
        raise AssertionError("a candidate the chapter ran was trained again")

    monkeypatch.setattr(frontier_scratch, "train_candidate", no_training)

    def points(candidates):
        return frontier_scratch.scratch_dpsgd_points(
            data, fit, val, epsilons=sched.scratch_dpsgd_epsilons, grid=candidates, delta=1e-5,
            model_kwargs=prof.model_kwargs(), seed=0, cache_dir=str(base / "frontier" / "scratch_dpsgd"),
            progress=False)

    (point,), seconds = points(grid)
    (target,) = sched.scratch_dpsgd_epsilons
    cands = point["detail"]["candidates"]
    accs = [c["validation_accuracy"] for c in cands]
    assert len(cands) == 2 and seconds > 0
    assert len(set(accs)) == 2 and max(accs) > 1 / len(np.unique(data.train_labels))  # a choice to make
    assert point["configs"] == [cands[frontier_scratch.pick(accs)]["config"]]
    total = composed_epsilon([RunShape(c["noise_multiplier"], g.batch_size, len(fit), g.epochs)
                              for c, g in zip(cands, grid)], delta=1e-5)
    assert point["epsilon_with_tuning"] == pytest.approx(total, rel=1e-12)
    assert point["image_epsilon"] <= target < point["epsilon_with_tuning"]
    assert point["image_epsilon"] == pytest.approx(target, rel=1e-2)  # calibrated to the target
    assert 0.0 <= point["accuracies"][0] <= 1.0 and point["method"] == "scratch_dpsgd"
    with pytest.raises(ValueError, match="grid is empty"):
        points(())
    rng = np.random.default_rng(1)
    shuffled = dataclasses.replace(data, test_labels=rng.permutation(data.test_labels))
    assert not np.array_equal(shuffled.test_labels, data.test_labels)
    again = train(shuffled, fit, val, grid[0], target_epsilon=target, delta=1e-5, model_kwargs=prof.model_kwargs(),
                  seed=0)
    assert again["validation_accuracy"] == accs[0] and again["history"]["validation_accuracy"][-1] == accs[0]


def test_privynet_study_reads_the_chapters_runs(tiny_book):
    """The PrivyNet study the baselines chapter ran, asked again with the chapter's arguments: read from the cache
    (no training), and what it holds is coherent."""
    from dpact_tf.repro import baselines

    _, base = tiny_book
    def cached():  # runs and study caches; the study records its metrics and figures again on every call
        return {p: p.stat().st_mtime_ns for p in base.rglob("*")
                if p.is_file() and p.parent.name not in ("metrics", "figures")}

    files, recorded = cached(), _metrics(base, "baseline_privynet")
    study = baselines.privynet_study(profile="tiny", dataset="synthetic", seed=0, results_dir=str(base.parent.parent),
                                     progress=False)
    assert cached() == files  # nothing trained, nothing cached afresh
    assert _metrics(base, "baseline_privynet") == recorded  # recorded again, the same
    cuts = get_profile("tiny").baselines.cuts
    assert study["rows"] == recorded["rows"]
    assert [r["cut"] for r in study["rows"]] == list(cuts)
    for r in study["rows"]:
        assert 0 <= r["test_accuracy"] <= 1 and -1 <= r["decoder_ssim"] <= 1
        assert r["client_mflops_per_step"] > 0 and r["upload_bytes_per_image"] == 4 * math.prod(r["activation_shape"])
    # a later cut costs the client more and (after pooling) uploads less
    assert study["rows"][1]["client_mflops_per_step"] > study["rows"][0]["client_mflops_per_step"]
    assert study["rows"][1]["upload_bytes_per_image"] < study["rows"][0]["upload_bytes_per_image"]
    assert set(study["shown"]) == set(cuts) and len({v.shape[0] for v in study["shown"].values()}) == 1
    assert study["shown"][cuts[0]].shape[0] >= 1
    assert {r["epsilon_per_coordinate"] for r in study["dp_activations"]} == {None, 5.0}
    noisy = next(r for r in study["dp_activations"] if r["epsilon_per_coordinate"] == 5.0)
    assert noisy["image_epsilon_per_run"] > noisy["image_epsilon_per_release"] > 5.0


def test_discussion_notebook(tiny_book):
    root, _ = tiny_book
    with open(root / "book" / "executed" / "10_discussion.ipynb") as fh:
        text = fh.read()
    assert "SYNTHETIC data, not LFW" in text and "not run" not in text


def test_the_front_page_opens_with_every_claims_verdict(tiny_book):
    root, base = tiny_book
    text = _outputs_text(root, "00_intro")
    table = claims.claims_table(results_dir=str(base.parent.parent), profile="tiny", dataset="synthetic")
    assert "SYNTHETIC data, not LFW" in text
    for row in table:
        assert f"*{row['verdict']}*" in text
    assert "Which private training to choose, per image" in text and "has not been run" not in text


def test_overrides_name_known_notebooks_and_their_own_parameters(tmp_path):
    with pytest.raises(ValueError, match="unknown notebooks"):
        run_notebooks(profile="tiny", dataset="synthetic", out_dir=str(tmp_path), overrides={"04_partitions": {}})
    with pytest.raises(ValueError, match="every chapter shares"):
        run_notebooks(profile="tiny", dataset="synthetic", out_dir=str(tmp_path),
                      overrides={"04_partition": {"results_dir": str(tmp_path)}})
    # a misspelt parameter is refused before the chapter runs (papermill would drop it silently)
    with pytest.raises(ValueError, match=r"declares no parameter \['epsilon'\]"):
        run_notebooks(profile="tiny", dataset="synthetic", out_dir=str(tmp_path), only=["06_accounting"],
                      overrides={"06_accounting": {"epsilon": [1.0]}})
    assert not list(tmp_path.glob("*.ipynb"))  # nothing executed, nothing left behind


def test_needs_name_only_earlier_chapters():
    """The parallel runner's dependency table: every chapter listed, each needing only chapters before it (so the
    sequential order satisfies it too), and the discussion after every study."""
    assert list(NEEDS) == NOTEBOOKS
    for name, needs in NEEDS.items():
        assert all(NOTEBOOKS.index(d) < NOTEBOOKS.index(name) for d in needs), name
    studies = [n for n in NOTEBOOKS if n not in ("10_discussion", "00_intro")]
    assert set(NEEDS["10_discussion"]) == set(NEEDS["00_intro"]) == set(studies)


def test_chapters_wait_for_the_earlier_metrics_they_read():
    """A chapter that reads an earlier chapter's metrics (``load_metrics(..., "name")``, or the oracle's
    comparison, which reads the from-scratch and fine-tuning metrics) needs that chapter, so the parallel runner
    never lets it read them half-written or missing."""
    produced = {"scratch": "02_scratch", "finetune": "03_finetune", "attacks": "07_attacks",
                "convergence": "08_fidelity", "ladder": "08_fidelity", "frontier": "09_baselines"}
    for name in NOTEBOOKS:
        text = Path(REPO, "notebooks", f"{name}.md").read_text()
        read = set(re.findall(r'load_metrics\([^)]*?"(\w+)"\)', text))
        if "non_private_references" in text:  # the convergence run's metrics only when recorded (see NEEDS)
            read |= {"scratch", "finetune"}
        for metrics in read & set(produced):
            producer = produced[metrics]
            if NOTEBOOKS.index(producer) < NOTEBOOKS.index(name):
                assert producer in NEEDS[name], f"{name} reads {metrics!r} but does not wait for {producer}"


def test_every_notebook_ran(tiny_book):
    root, _ = tiny_book
    for name in NOTEBOOKS:
        nb = json.loads((root / "book" / "executed" / f"{name}.ipynb").read_text())
        assert nb["metadata"]["papermill"]["parameters"]["profile"] == "tiny"
        errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors


LOG_PATTERNS = [re.compile(p) for p in (r"\d+it/s|s/it\]", r"epoch \d+/\d+", r"\d+%\|", r"local_xla|cuda|TensorRT",
                                          r"Warning|WARNING", r"^\s*File \"/", r"INFO:tensorflow")]


def test_chapters_show_no_logs_and_no_local_paths(tiny_book):
    root, _ = tiny_book
    for name in NOTEBOOKS:
        text = _outputs_text(root, name)
        for pattern in LOG_PATTERNS:
            assert not pattern.search(text), f"{name} shows a log line matching {pattern.pattern!r}"
        for path in (REPO, str(root), os.path.expanduser("~")):
            assert path not in text, f"{name} shows the local path {path}"
        nb = json.loads((root / "book" / "executed" / f"{name}.ipynb").read_text())
        hidden = [c for c in nb["cells"] if {"parameters", "injected-parameters"} & set(c["metadata"].get("tags", []))]
        assert hidden and all("remove-cell" in c["metadata"]["tags"] for c in hidden)
        note = "".join(nb["cells"][-1]["source"])
        assert "Re-run this chapter" in note
        for path in (REPO, str(root), os.path.expanduser("~")):  # the note is shown too
            assert path not in note, f"{name}'s re-run note shows the local path {path}"


def test_the_log_check_catches_logs():
    # the patterns above do match what training and TensorFlow print
    samples = ["scratch ε = 1 epoch 3/8:  40%|####      | 2/5 [00:01<00:01,  2.10it/s]",
               "scratch ε = 1 epoch 3/8: loss 4.0", "E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:9261]",
               "UserWarning: something", "INFO:tensorflow:Assets written to: /tmp/tmpabc/assets"]
    for line in samples:
        assert any(p.search(line) for p in LOG_PATTERNS), line


def test_every_parameter_is_used():
    import jupytext

    for name in NOTEBOOKS:
        nb = jupytext.read(os.path.join(REPO, "notebooks", f"{name}.md"))
        (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        names = re.findall(r"^(\w+)\s*=", params.source, re.M)
        rest = "\n".join(c.source for c in nb.cells if c.cell_type == "code" and c is not params)
        unused = [n for n in names if not re.search(rf"\b{n}\b", rest)]
        assert names and not unused, f"notebooks/{name}.md declares unused parameters {unused}"


def test_book_builds_with_warnings_as_errors(tiny_book):
    root, _ = tiny_book
    html = build_book(root=str(root))
    assert os.path.exists(os.path.join(html, "book", "executed", "02_scratch.html"))
    page = open(os.path.join(html, "book", "executed", "10_discussion.html")).read()
    for name in ("fig-activations", "fig-scratch-curves", "fig-finetune-curves", "fig-accounting", "fig-attacks",
                 "fig-convergence", "fig-ladder"):
        assert f'#{name}"' in page, f"numref to {name} not resolved into a link"
    # The math renders without a network: MathJax is served from the book's own _static, not a CDN.
    method = open(os.path.join(html, "book", "method.html")).read()
    assert "_static/mathjax/tex-chtml.js" in method and "cdn.jsdelivr.net" not in method
    assert os.path.getsize(os.path.join(html, "_static", "mathjax", "tex-chtml.js")) > 100_000
    # code cells wrap at the page's width (the book's stylesheet is served and linked)
    assert "_static/dpact.css" in page and "pre-wrap" in open(os.path.join(html, "_static", "dpact.css")).read()


def test_book_stops_without_lfw(tmp_path, monkeypatch):
    from dpact_tf.repro.book import resolve_dataset
    monkeypatch.delenv("DPACT_LFW_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="DATASET=synthetic"):
        resolve_dataset("auto")
    assert resolve_dataset("synthetic") == "synthetic"


def test_attacks_are_cached(tiny_book, monkeypatch):
    from dpact_tf import attacks
    from dpact_tf.repro import attack_study
    root, base = tiny_book

    def boom(*a, **k):
        raise AssertionError("the attacks ran again although cached")

    monkeypatch.setattr(attacks, "invert", boom)
    recorded = _metrics(base, "attacks")
    # the scale note is the accounting's sensitivity bound, computed afresh, never cached (seconds of NumPy at the
    # paper's 64 channels; tests/test_attack_study.py checks it): the chapter's own value stands in for it here
    monkeypatch.setattr(attack_study, "scale_note", lambda profile: recorded["scale"])
    study = attack_study.attack_study(profile="tiny", dataset="synthetic", results_dir=str(root / "results"),
                                      epsilons=ATTACK_EPSILONS, progress=False)
    assert study.rows == recorded["rows"] and set(study.figures) == set(attack_study.FIGURES)
    assert _metrics(base, "attacks") == recorded  # recorded again, the same
