"""The frontier chapter's study: validation split, per-image calibration of the grid release, the method choice, and
a tiny run with a stand-in extractor."""
import dataclasses
import math

import numpy as np
import pytest

from dpact_tf import accounting
from dpact_tf.repro import frontier, frontier_text
from dpact_tf.repro.results import load_metrics, record_metrics


def test_validation_split_is_per_person_and_disjoint():
    labels = np.repeat(np.arange(4), [10, 5, 2, 1])
    fit, val = frontier.validation_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == len(labels)
    per_person = np.bincount(labels[val], minlength=4)
    assert per_person.tolist() == [2, 1, 1, 0]  # round(0.2 n), at least one of two or more, none of one
    again, _ = frontier.validation_split(labels, 0.2, seed=0)
    assert np.array_equal(fit, again)
    with pytest.raises(ValueError, match="fraction"):
        frontier.validation_split(labels, 1.0)


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_coordinate_epsilon_gives_at_most_the_per_image_target(target):
    shape = (32, 32, 8)
    coord, per_image = frontier.coordinate_epsilon_for_image(target, shape)
    z = accounting.image_noise_multiplier(coord, 1e-5, shape, grid_rounding=True)
    assert per_image == pytest.approx(accounting.image_epsilon(z, 1e-5)) and per_image <= target
    assert per_image > target / 4  # the scan lands near the target (the grid's jumps leave gaps)


def _p(method, eps, accs, tuned=None):
    return {"method": method, "image_epsilon": eps, "epsilon_with_tuning": tuned or eps,
            "mean": float(np.mean(accs)), "spread": float(np.std(accs, ddof=1)) if len(accs) > 1 else float("nan")}


def test_method_choice_both_sides():
    pts = [_p("release", 1.0, [0.30, 0.31, 0.32]), _p("last_layer_dpsgd", 1.0, [0.10, 0.11, 0.12], tuned=3.0),
           _p("last_layer_dpsgd", 0.9, [0.50, 0.51, 0.52], tuned=6.0), _p("paper_scratch", 1e6, [0.2])]
    rows = {r["target"]: r for r in frontier_text.method_choice(pts, [0.5, 1.0, 4.0, 8.0])}
    assert rows[0.5]["method"] is None
    assert rows[1.0]["method"] == "release" and rows[1.0]["runner_up"] is None and not rows[1.0]["clear"]
    assert rows[4.0]["method"] == "release" and rows[4.0]["runner_up"] == "last_layer_dpsgd" and rows[4.0]["clear"]
    assert rows[8.0]["method"] == "last_layer_dpsgd" and rows[8.0]["clear"]  # its ε with tuning counts, not 0.9
    close = [_p("release", 1.0, [0.30, 0.35, 0.40]), _p("last_layer_dpsgd", 1.0, [0.29, 0.34, 0.39])]
    (row,) = frontier_text.method_choice(close, [1.0])
    assert row["method"] == "release" and not row["clear"]
    text = frontier_text.method_choice_text([row], chance=0.25)
    assert "not a clear lead" in text and "majority class" not in text
    # 0.35 is above 0.3, but not by more than its spread over seeds (0.05)
    assert "no method beats the majority class (30.0 %) by more than its spread" in \
        frontier_text.method_choice_text([row], chance=0.3)
    assert text.startswith("Each method counts at its per-image ε *with its tuning composed*")
    assert frontier_text.method_choice_text([], chance=0.3) == ""
    assert "no method beats the majority class (50.0 %)" in frontier_text.method_choice_text([row], chance=0.5)


def test_choice_from_metrics_states_the_paper_family():
    assert "not been run" in frontier_text.choice_from_metrics(None, profile="tiny")
    m = {"points": [_p("release", 2.0, [0.3, 0.3]), _p("paper_scratch", 5e4, [0.2])], "chance": 0.1}
    text = frontier_text.choice_from_metrics(m, profile="tiny")
    assert "at least 5e+04" in text and "(c) features released once per image" in text
    m["chance"] = 0.25
    assert "at no per-image ε" in frontier_text.choice_from_metrics(m, profile="tiny")


def test_study_with_a_given_extractor(tmp_path, monkeypatch):
    """The study at tiny on synthetic faces with a fixed random projection as the public extractor (no (b): it
    has no head), the paper's points read from recorded metrics.  (d) is left out here: its runs are tested in
    tests/test_frontier_scratch.py, and the tiny book runs the whole chapter."""
    # one per-image epsilon (each costs DP-SGD calibrations), no (d)
    monkeypatch.setitem(frontier.SCHEDULES, "tiny", dataclasses.replace(
        frontier.SCHEDULES["tiny"], image_epsilons=(16.0,), scratch_dpsgd_epsilons=(), scratch_dpsgd_grid=()))
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(32 * 32 * 3, 16)).astype(np.float32)
    extractor = frontier.FeatureExtractor(name="random projection", key="proj-0",
                                          features=lambda x: np.maximum(x.reshape(len(x), -1) @ proj, 0))
    table = [{"epsilon": None, "epochs": 2, "final_test_accuracy": 0.5, "run": "a"},  # 2 epochs: quick to account
             {"epsilon": 1.0, "epochs": 2, "final_test_accuracy": 0.125, "run": "b"}]
    for study in ("scratch", "finetune"):
        record_metrics(str(tmp_path), "tiny", "synthetic", study, {"table": table})
    study = frontier.frontier_study(profile="tiny", dataset="synthetic", results_dir=str(tmp_path),
                                    extractor=extractor, progress=False)
    sched = frontier.SCHEDULES["tiny"]
    by = {}
    for p in study.points:
        by.setdefault(p.method, []).append(p)
    assert sorted(by) == ["last_layer_dpsgd", "paper_finetune", "paper_scratch", "release"]
    assert "scratch_dpsgd" not in study.seconds
    for p in by["release"] + by["last_layer_dpsgd"]:
        assert len(p.accuracies) == sched.seeds and all(0 <= a <= 1 for a in p.accuracies)
    # the release spends 1 - selection_share of each per-image epsilon, the private choice of classifier the rest
    assert [p.image_epsilon for p in by["release"]] == pytest.approx([0.9 * e for e in sched.image_epsilons])
    assert [p.epsilon_with_tuning for p in by["release"]] == pytest.approx(list(sched.image_epsilons))
    assert all("report-noisy-max at ε" in c for p in by["release"] for c in p.configs)
    for p in by["last_layer_dpsgd"]:  # the final run meets its target; the tuning's runs and choice raise the total
        assert p.image_epsilon <= max(sched.image_epsilons) and p.epsilon_with_tuning > p.image_epsilon
        assert p.detail["selection_epsilon"] == pytest.approx(sched.selection_share * max(sched.image_epsilons))
        assert all("report-noisy-max at ε" in c for c in p.configs)
    (scratch,) = by["paper_scratch"]
    assert scratch.accuracies == (0.125,) and scratch.image_epsilon > 1e3
    assert study.counts["n_fit"] + study.counts["n_validation"] == study.counts["n_train"]
    assert "fig-frontier" in study.figures and len(study.labels) == len(sched.label_epsilons)
    saved = load_metrics(str(tmp_path), "tiny", "synthetic", "frontier")
    assert saved["points"][0]["accuracies"] == list(study.points[0].accuracies)
    again = frontier.frontier_study(profile="tiny", dataset="synthetic", results_dir=str(tmp_path),
                                    extractor=extractor, progress=False)  # from the cache: the same numbers
    assert [p.accuracies for p in again.points] == [p.accuracies for p in study.points]
    assert not math.isnan(by["release"][0].spread)
    # a second public model adds its own (c) and (e) points, reference and labels study
    other = frontier.FeatureExtractor(name="other projection", key="proj-1", method_suffix="_dlib",
                                      features=lambda x: np.maximum(x.reshape(len(x), -1) @ proj[:, ::-1], 0))
    both = frontier.frontier_study(profile="tiny", dataset="synthetic", results_dir=str(tmp_path),
                                   extractor=extractor, more_extractors=[other], progress=False)
    methods = {p.method for p in both.points}
    assert {"release_dlib", "last_layer_dpsgd_dlib"} <= methods and "activations_once_dlib" not in methods
    assert [p.accuracies for p in both.points if p.method == "release"] == [p.accuracies for p in by["release"]]
    assert set(both.references) >= {f"{name} projection + the server's classifier" for name in ("random", "other")}
    assert [r for r in both.labels if r["features"] == "random projection"] == study.labels
    assert [r["features"] for r in both.labels].count("other projection") == len(frontier.SCHEDULES["tiny"].label_epsilons)
    assert all(frontier.METHODS[m] for m in methods)


def test_the_dlib_extractor_says_how_to_get_the_model(monkeypatch, tmp_path):
    import importlib.util

    if importlib.util.find_spec("face_recognition_models") is not None:
        pytest.skip("face-recognition-models is installed: the model is found there")
    monkeypatch.setenv("DPACT_DLIB_MODEL", str(tmp_path / "missing.dat"))
    monkeypatch.chdir(tmp_path)  # no data/dlib/ here
    with pytest.raises(FileNotFoundError, match="fetch_dlib_model|face-recognition-models"):
        frontier.dlib_extractor("tiny")


def test_summary_and_table_read_the_numbers():
    paper = {**_p("paper_scratch", 2.5e7, [0.124]), "detail": {"epsilon_per_coordinate": 1.0}}
    best = {**_p("paper_scratch", 4.8e9, [0.221]), "detail": {"epsilon_per_coordinate": 14.0}}
    dpsgd = {**_p("last_layer_dpsgd", 1.0, [0.16, 0.17, 0.18], tuned=2.1), "detail": {}}
    release = {**_p("release", 16.0, [0.124, 0.124]), "detail": {}}
    m = {"points": [paper, best, dpsgd, release], "chance": 0.124}
    for p in m["points"]:
        p["accuracies"], p["configs"] = [p["mean"]], ["c"]
    text = frontier_text.frontier_summary(m)
    assert "at best 22.1 %" in text and "4.8e+09" in text and "smallest per-image ε above the majority class" in text
    assert "beats the majority class (by more than one standard deviation over seeds) is 2.1: (e) DP-SGD on the " \
        "last layer" in text and "17.0 % (± 1.0" in text
    assert ("Not above the majority class by more than one standard deviation over seeds at any per-image ε (tuning "
            "included) they were run at: (c) features released once per image (up to 16).") in text
    rows = frontier_text.points_table(m)
    assert [r["test accuracy"] for r in rows] == [0.17, 0.124, 0.221, 0.124]  # sorted by method, then ε
    assert "`medium`" in frontier_text.describe_schedule("small")
    assert "`medium`" not in frontier_text.describe_schedule("medium")


def test_schedule_refuses_bad_values():
    small = frontier.SCHEDULES["small"]
    for bad in ({"image_epsilons": (0.0,)}, {"seeds": 0}, {"projection_dims": 0}, {"validation_fraction": 1.0}):
        with pytest.raises(ValueError):
            dataclasses.replace(small, **bad)


def test_the_measured_time_separates_dpsgd_from_scratch_and_counts_its_candidates():
    cands = [{"config": "a"}, {"config": "b"}]
    metrics = {"seconds": {"scratch_dpsgd": 2 * 3600.0, "no noise": 30.0, "release": 90.0},
               "points": [{"method": "scratch_dpsgd", "detail": {"candidates": cands}}] * 3
               + [{"method": "features_once", "detail": {}}]}
    text = frontier_text.measured_time(metrics)
    assert "took 2 min together" in text and "(d)'s 6 candidate runs 2.0 h of training" in text
    del metrics["seconds"]["scratch_dpsgd"]
    assert "(d)" not in frontier_text.measured_time(metrics).split("together")[1]
    assert frontier_text.measured_time({"points": []}) == ""


def test_the_frontier_figure_zooms_on_the_epsilons_a_person_would_accept():
    from dpact_tf.repro import plots

    pts = [{"method": "release", "label": "(c)", "image_epsilon": e, "epsilon_with_tuning": e, "mean": 0.2,
            "spread": 0.01} for e in (1.0, 16.0)]
    pts += [{"method": "paper_scratch", "label": "(a)", "image_epsilon": 1e9, "epsilon_with_tuning": 1e9,
             "mean": 0.3, "spread": float("nan")}]
    fig = plots.frontier_plot(pts, {"no noise": 0.5}, chance=0.1, dataset="lfw", zoom=(0.5, 50.0))
    every, near = fig.axes[:2]
    assert every.get_xlim()[1] > 1e9 and near.get_xlim() == pytest.approx((0.5, 50.0))
    assert len(fig.legends) == 1 and "(c)" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_class_means_is_the_nearest_mean_rule_with_posterior_logits():
    x = np.array([[0.0, 0.0], [0.2, 0.0], [2.0, 2.0], [2.2, 1.8]])
    y = np.array([0, 0, 2, 2])  # class 1 has no example
    m = frontier.class_means(x, y, classes=3)
    means = np.array([[0.1, 0.0], [0.0, 0.0], [2.1, 1.9]])
    s2 = (4 * 0.01 + 2 * 0.01) / (2 * (4 - 2))  # squared residuals over d (n - classes present)
    np.testing.assert_allclose(m.weights.T * s2, means, atol=1e-12)
    queries = np.array([[0.3, -0.1], [1.9, 2.1], [1.0, 0.9], [-0.05, 0.0]])
    nearest = np.argmin(((queries[:, None, :] - means[[0, 2]][None]) ** 2).sum(-1), axis=1) * 2
    np.testing.assert_array_equal(np.argmax(m.logits(queries), -1), nearest)  # never the empty class
    # the logits are the posterior's: a point at a mean is that class's with near certainty here
    logits = m.logits(means[[0, 2]])
    prior = np.exp(logits - logits.max(axis=1, keepdims=True))
    prior /= prior.sum(axis=1, keepdims=True)
    assert prior[0, 0] > 0.99 and prior[1, 2] > 0.99


def test_choose_says_when_candidates_tie():
    assert frontier.choose([0.1, 0.3, 0.2]) == (1, "")
    index, note = frontier.choose([0.2, 0.1, 0.2, 0.2])
    assert index == 0 and "tied with 2 of 4 candidates" in note


def test_beats_needs_more_than_one_spread():
    assert frontier_text.beats({"mean": 0.2, "spread": 0.05}, 0.14)
    assert not frontier_text.beats({"mean": 0.2, "spread": 0.07}, 0.14)
    assert frontier_text.beats({"mean": 0.2, "spread": float("nan")}, 0.19)  # one run: its mean
    assert not frontier_text.beats({"mean": 0.19}, 0.19)


def _clusters(k=10, n=30, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    y, ty = np.repeat(np.arange(k), n), np.repeat(np.arange(k), 5)
    return (centres[y] + rng.normal(size=(len(y), d)) * 0.3, y,
            centres[ty] + rng.normal(size=(len(ty), d)) * 0.3, ty)


def test_server_retrains_what_validates_best_and_says_ties(monkeypatch):
    x, y, tx, ty = _clusters()
    fit, val = frontier.validation_split(y, 0.2, seed=0)
    sched = frontier.SCHEDULES["tiny"]  # one softmax configuration and the class means
    acc, cfg, cand = frontier._server_tuned(x, y, fit, val, x[val], tx, ty, sched=sched, classes=10, seed=0,
                                            select_epsilon=None)
    assert acc == 1.0 and "tied with 1 of 2 candidates on validation; the first is kept" in cfg
    assert cand == sched.server_grid[0] and cfg.startswith("softmax, lr 0.5, 10 epochs")
    # a softmax that always names person 0 loses to the class means, which are then trained on every image
    always_0 = lambda *a, classes, **kw: frontier.linear_dpsgd.SoftmaxModel(  # noqa: E731
        np.zeros((x.shape[1], classes)), np.eye(classes)[0])
    monkeypatch.setattr(frontier, "_fit", always_0)
    acc, cfg, cand = frontier._server_tuned(x, y, fit, val, x[val], tx, ty, sched=sched, classes=10, seed=0,
                                            select_epsilon=None)
    assert cand == frontier.CLASS_MEANS and cfg == "class means"
    # chosen privately (a count apart of 48 validation images, Gumbel noise of scale 2 / 10): the same choice
    acc, cfg, cand = frontier._server_tuned(x, y, fit, val, x[val], tx, ty, sched=sched, classes=10, seed=0,
                                            select_epsilon=10.0)
    assert cand == frontier.CLASS_MEANS and cfg == "class means (report-noisy-max at ε 10)"
    assert acc == frontier.class_means(x, y, classes=10).accuracy(tx, ty) == 1.0


def test_label_prior_from_the_class_means_keeps_more_labels_than_plain_rr():
    """(f) with the class means (fixed in advance): the first half's labels by plain RR keep e^eps / (e^eps + k - 1) of them
    correct; the posterior prior of the class means trained on them keeps far more of the second half's."""
    x, y, tx, ty = _clusters()
    sched = dataclasses.replace(frontier.SCHEDULES["tiny"], label_epsilons=(2.0,), label_feature_epsilon=None)
    (row,) = frontier._label_study(x, y, tx, ty, sched=sched, classes=10, delta=1e-5, seeds=[0])
    plain = math.exp(2.0) / (math.exp(2.0) + 9)
    assert row["labels_correct"] > plain + 0.15 and row["mean"] > 0.8


def test_noisy_max_is_the_exponential_mechanism():
    """P(index) is proportional to exp(epsilon * count / 2): for counts (0, 1) at epsilon 2, e / (1 + e)."""
    picks = np.array([frontier.noisy_max([0, 1], epsilon=2.0, seed=s) for s in range(4000)])
    expected = math.e / (1 + math.e)
    assert abs(picks.mean() - expected) < 4 * math.sqrt(expected * (1 - expected) / 4000)
    assert frontier.noisy_max([0, 500, 3], epsilon=1.0, seed=0) == 1
    with pytest.raises(ValueError, match="epsilon"):
        frontier.noisy_max([1, 2], epsilon=0.0, seed=0)


def test_noisy_max_follows_the_exponential_mechanism_over_three_candidates():
    counts, eps = [0, 1, 3], 1.0
    weights = np.exp(eps * np.array(counts) / 2)
    picks = np.bincount([frontier.noisy_max(counts, epsilon=eps, seed=s) for s in range(6000)], minlength=3) / 6000
    np.testing.assert_allclose(picks, weights / weights.sum(), atol=4 * math.sqrt(0.25 / 6000))


def test_method_choice_takes_each_methods_largest_epsilon_not_its_best_test_score():
    pts = [_p("release", 2.0, [0.50, 0.50]), _p("release", 3.0, [0.30, 0.30])]
    (row,) = frontier_text.method_choice(pts, [4.0])
    assert row["mean"] == pytest.approx(0.30)


def test_each_private_choice_draws_its_own_noise():
    seeds = {frontier.choice_seed(0, e, tag) for e in (0.1, 0.2) for tag in ("release", "release_dlib")}
    assert len(seeds) == 4 and frontier.choice_seed(0, 0.1, "release") == frontier.choice_seed(0, 0.1, "release")
    assert frontier.choice_seed(1, 0.1, "release") not in seeds


def test_last_layer_total_adds_the_choice_to_the_composed_runs():
    x, y, tx, ty = _clusters()
    fit, val = frontier.validation_split(y, 0.2, seed=0)
    sched = frontier.SCHEDULES["tiny"]
    acc, cfg, final, total, z, select_eps = frontier._dpsgd_tuned(x, y, fit, val, tx, ty, target=4.0, sched=sched,
                                                                  classes=10, delta=1e-5, seed=0, tag="t")
    lin = frontier.linear_dpsgd
    runs = []
    for clip, lr, epochs in sched.dpsgd_grid:
        q, steps = min(1.0, sched.batch_size / len(fit)), lin.steps_for(len(fit), sched.batch_size, epochs)
        runs.append((lin.calibrate_noise_multiplier(4.0, sampling_rate=q, steps=steps, delta=1e-5), q, steps))
    chosen = next(g for g in sched.dpsgd_grid if cfg.startswith(f"clip {g[0]:g}, lr {g[1]:g}, {g[2]} epochs"))
    q, steps = min(1.0, sched.batch_size / len(x)), lin.steps_for(len(x), sched.batch_size, chosen[2])
    runs.append((z, q, steps))
    assert select_eps == pytest.approx(0.4) and total == pytest.approx(lin.composed_epsilon(runs, delta=1e-5) + 0.4)
