"""The fidelity chapter's maths: trend fit and prediction interval, retained gain, FLOPs and time estimates."""
import math

import numpy as np
import pytest

from dpact_tf.repro import fidelity as f


def test_fit_trend_recovers_a_line_exactly_and_has_no_interval_with_two_points():
    x = [1e4, 1e5, 1e6]
    t = f.fit_trend(x, [0.1, 0.3, 0.5], at=1e7)
    assert t["slope_per_decade"] == pytest.approx(0.2) and t["prediction"] == pytest.approx(0.7)
    assert t["lower"] == pytest.approx(0.7) and t["upper"] == pytest.approx(0.7)  # no residual, no width
    assert t["extrapolation_decades"] == pytest.approx(1.0)
    two = f.fit_trend(x[:2], [0.1, 0.3], at=1e7)
    assert two["prediction"] == pytest.approx(0.7) and two["lower"] is None
    with pytest.raises(ValueError, match="two points"):
        f.fit_trend([1e4, 1e4], [0.1, 0.2])


def test_fit_trend_interval_matches_the_textbook_formula_and_covers():
    from scipy import stats

    rng = np.random.default_rng(0)
    x = np.array([3e4, 6e4, 1.3e5, 2.6e5])
    lx = np.log10(x)
    covered, trials = 0, 400
    for _ in range(trials):
        y = 0.2 + 0.3 * lx + rng.normal(0, 0.05, lx.size)
        t = f.fit_trend(x, y, at=3.2e6, level=0.9)
        new = 0.2 + 0.3 * math.log10(3.2e6) + rng.normal(0, 0.05)
        covered += t["lower"] <= new <= t["upper"]
    assert 0.84 <= covered / trials <= 0.96  # a 90% prediction interval covers ~90% of new observations
    # the half-width is t * s * sqrt(1 + 1/n + (x0 - mean)^2 / Sxx)
    y = np.array([0.1, 0.25, 0.28, 0.5])
    t = f.fit_trend(x, y, at=3.2e6, level=0.9)
    b, a = np.polyfit(lx, y, 1)
    s = math.sqrt(((y - a - b * lx) ** 2).sum() / 2)
    half = stats.t.ppf(0.95, 2) * s * math.sqrt(1 + 1 / 4 + (math.log10(3.2e6) - lx.mean()) ** 2
                                                  / ((lx - lx.mean()) ** 2).sum())
    assert t["upper"] - t["prediction"] == pytest.approx(half)


def test_retained_gain_and_epochs_to_reach():
    assert f.retained_gain(0.5, 0.5, 0.1) == 1.0
    assert f.retained_gain(0.1, 0.5, 0.1) == 0.0
    assert f.retained_gain(0.3, 0.5, 0.1) == pytest.approx(0.5)
    assert math.isnan(f.retained_gain(0.3, 0.1, 0.1))
    assert f.epochs_to_reach([0.1, 0.2, 0.4, 0.3], 0.35) == 3
    assert f.epochs_to_reach([0.1, 0.2], 0.35) is None


def test_training_flops_of_vgg16_at_224():
    # VGG-16's 13 conv layers: 15.35 G multiply-adds at 224x224 (the commonly quoted 15.5 G includes the fc layers)
    fwd = f.training_flops_per_image(image_size=224, width=1.0, fc_units=4096, num_classes=2622) / 3
    conv = fwd - 2 * (7 * 7 * 512 * 4096 + 4096 * 4096 + 4096 * 2622)
    assert conv / 2 == pytest.approx(15.35e9, rel=0.01)
    out = f.training_flops_per_image(image_size=224, width=1.0, fc_units=4096, num_classes=2622, trainable="output")
    assert out == pytest.approx(fwd + 2 * 4096 * 2622)
    wide = f.training_flops_per_image(image_size=64, width=1 / 8, fc_units=256, num_classes=158, conv1_channels=64)
    narrow = f.training_flops_per_image(image_size=64, width=1 / 8, fc_units=256, num_classes=158)
    assert wide > narrow


def test_gpu_estimates_arithmetic():
    measured = [{"flops_per_image": 1e9, "images": 1000, "seconds": 10.0}]  # 100 GFLOP/s
    est = f.gpu_estimates(measured_runs=measured, gpu_tflops=10.0, studies=[
        {"study": "a", "runs": 2, "epochs": 3, "images_per_epoch": 100, "flops_per_image": 6e9}])
    assert est["cpu_gflops"] == pytest.approx(100.0)
    row = est["rows"][0]
    assert row["training TFLOP"] == pytest.approx(3.6)
    assert row["this CPU (hours, estimate)"] == pytest.approx(36.0 / 3600)
    assert row["one GPU (hours, estimate)"] == pytest.approx(0.36 / 3600)
    with pytest.raises(ValueError):
        f.gpu_estimates(measured_runs=[], studies=[])


def test_profile_workload_counts_the_profiles_runs():
    from dpact_tf.repro.profiles import DEFAULT_EPSILONS, get_profile

    prof = get_profile("paper")
    rows = {r["study"]: r for r in f.profile_workload("paper", train_images=3890, num_classes=158)}
    assert rows["Fig. 3 sweep (from scratch)"]["runs"] == len(DEFAULT_EPSILONS)
    ladder = rows["scale ladder (upper bound: no early stop)"]
    assert ladder["runs"] == (len(prof.ladder_points) + prof.ladder_largest_seeds - 1) * len(prof.ladder_epsilons)
    assert ladder["epochs"] == prof.convergence_max_epochs
    assert not any("pre-training" in k for k in rows)
    with_public = f.profile_workload("small", train_images=3890, num_classes=158, public_images=1000,
                                     public_classes=265)
    assert any("pre-training" in r["study"] for r in with_public)


def test_a_ladder_point_at_the_profiles_shape_is_the_sweeps_run():
    from dpact_tf.repro.runs import RunSpec

    # RunSpec.activation_size agrees with the ladder's coordinates, and default fields keep the sweep's key
    spec = RunSpec(task="scratch", profile="small", dataset="lfw", epsilon=3.0, epochs=15)
    assert spec.activation_size() == 64 * 64 * 8
    wide = RunSpec(task="scratch", profile="small", dataset="lfw", epsilon=3.0, epochs=15, conv1_channels=64,
                   image_size=96)
    assert wide.activation_size() == 96 * 96 * 64 and wide.key() != spec.key()
    assert wide.model_kwargs()["channels"] == {"conv1_1": 64} and wide.model_kwargs()["input_shape"] == (96, 96, 3)


def test_medium_is_small_with_the_fidelity_budgets():
    # make book PROFILE=medium costs small's chapters plus its fidelity chapter: every other field equal
    import dataclasses

    from dpact_tf.repro.profiles import MEDIUM_FIELDS, get_profile

    small, medium = get_profile("small"), get_profile("medium")
    differ = {f.name for f in dataclasses.fields(small) if getattr(small, f.name) != getattr(medium, f.name)}
    assert "name" in differ and differ - {"name"} <= set(MEDIUM_FIELDS)
    assert medium.training_settings() == small.training_settings()
    # medium's ladder: conv1 channels up to the paper's 64, a larger input than the profile's, two seeds at the top
    assert max(c for _, c in medium.ladder_points) == 64
    assert max(s for s, _ in medium.ladder_points) > medium.image_size
    assert set(small.ladder_points) < set(medium.ladder_points)
    assert medium.convergence_max_epochs > small.convergence_max_epochs
    assert medium.ladder_largest_seeds >= 2 and {5.0, 10.0} <= set(medium.ladder_epsilons)


def test_above_chance_is_an_exact_one_sided_binomial_test():
    from scipy import stats

    n, chance = 432, 0.124
    # the smallest count that is significant at 95 %, found independently of the function
    k = next(k for k in range(n + 1) if stats.binomtest(k, n, chance, alternative="greater").pvalue < 0.05)
    assert f.above_chance(k / n, chance, n) and not f.above_chance((k - 1) / n, chance, n)
    assert not f.above_chance(chance, chance, n) and f.above_chance(0.5, chance, n)
    with pytest.raises(ValueError):
        f.above_chance(0.5, 1.5, n)


def _row(coords, eps, acc_gain, above, seed=0):
    return {"coordinates": coords, "epsilon": eps, "retained_gain": acc_gain, "above_chance": above, "seed": seed}


def test_ladder_trends_leave_runs_at_chance_out_and_say_why_there_is_no_trend():
    rows = [_row(c, None, 1.0, True) for c in (1e4, 1e5, 1e6)]
    rows += [_row(1e4, 3.0, 0.0, False), _row(1e5, 3.0, 0.0, False), _row(1e6, 3.0, 0.0, False)]  # the floor
    rows += [_row(1e4, 5.0, 0.0, False), _row(1e5, 5.0, 0.2, True), _row(1e6, 5.0, 0.4, True)]
    rows += [_row(1e4, 10.0, 0.0, False), _row(1e5, 10.0, 0.0, False), _row(1e6, 10.0, 0.5, True),
             _row(1e6, 10.0, 0.6, True, seed=1)]
    trends, why = f.ladder_trends(rows)
    assert set(trends) == {"5"} and trends["5"]["n"] == 2 and trends["5"]["censored"] == 1
    assert trends["5"]["slope_per_decade"] == pytest.approx(0.2)  # fitted through the two points above chance only
    assert why == {"3": "at chance at every size (3 runs)",
                   "10": "above chance at one size only (2 of 4 runs): a trend needs two"}
    text = f.trend_lines({"trends": trends, "no_trend": why})
    assert "ε = 3: no trend — at chance at every size" in text and "0.00–0.00" not in text
    assert "above 1" not in text
    steep = {"5": {**trends["5"], "prediction": 1.09, "lower": -0.09, "upper": 2.27}}
    assert "a share above 1, more than the no-noise run gains, is the straight line's" in f.trend_lines(
        {"trends": steep, "no_trend": {}})


def test_a_ladder_run_at_the_profiles_shape_is_the_convergence_studys_run():
    from dpact_tf.repro.profiles import get_profile
    from dpact_tf.repro.runs import RunSpec

    prof = get_profile("small")
    spec = f.ladder_runs_spec(prof, size=64, channels=8, epsilon=10.0, seed=0, dataset="lfw")
    conv = f.convergence_spec(prof, "lfw", 10.0, seed=0)
    assert spec.key() == conv.key() and spec.validation_fraction == f.VALIDATION_FRACTION
    assert f.ladder_runs_spec(prof, size=64, channels=16, epsilon=10.0, seed=0, dataset="lfw").key() != conv.key()
    with pytest.raises(ValueError, match="validation split"):
        RunSpec(task="scratch", profile="small", dataset="lfw", epsilon=10.0, epochs=30, patience=8)


def test_convergence_text_reads_the_recorded_rows():
    rows = [{"epsilon": None, "epochs_trained": 21, "stopped_early": True, "final_test_accuracy": 0.585,
             "retained_gain": 1.0, "epochs_to_90%": 18},
            {"epsilon": 5.0, "epochs_trained": 30, "stopped_early": False, "final_test_accuracy": 0.291,
             "retained_gain": 0.36, "epochs_to_90%": None}]
    metrics = {"rows": rows, "reach_fractions": [0.5, 0.9]}
    text = f.convergence_text(metrics)
    assert "stopped at epoch 21" in text and "**0.585**" in text and "keeps 36%" in text
    assert "never reached 90%" in text and "sweep" not in text
    sweep = {"histories": [{"epsilon": None, "history": {"epoch": [1, 2], "test_accuracy": [0.2, 0.41]}},
                           {"epsilon": 5.0, "history": {"epoch": [1, 2], "test_accuracy": [0.1, 0.124]}}]}
    assert "(2 epochs) the same network ended at 0.410" in f.convergence_text(metrics, sweep)
    assert "the sweep's 2 epochs gave 0.124" in f.convergence_text(metrics, sweep)


def test_the_notes_name_seeds_only_where_there_are_several():
    from dpact_tf.repro.profiles import get_profile

    small, medium, paper = (get_profile(n) for n in ("small", "medium", "paper"))
    assert f.seeds_note(small) == "one seed per run"
    assert f.seeds_note(medium).endswith(f"({medium.ladder_largest_seeds} seeds)")
    note = f.cut_note(small, medium, paper)
    assert "one seed per run." in note and "96×96×8" in note and "at most 60 epochs" in note
    assert "The `medium` profile" not in f.cut_note(medium, medium, paper)
    assert "Left out" not in f.cut_note(small, medium, paper, rows=[])  # small leaves nothing out of its own


def _timed(size, channels, eps, seconds, epochs, seed=0):
    return {"image_size": size, "conv1_channels": channels, "epsilon": eps, "seconds": seconds,
            "epochs_trained": epochs, "seed": seed}


def test_left_out_runs_are_estimated_from_the_same_channels_scaled_by_area():
    rows = [_timed(64, 64, None, 600.0, 30), _timed(64, 64, 5.0, 1200.0, 40), _timed(64, 64, 10.0, 1800.0, 20),
            _timed(64, 64, 10.0, None, 60), _timed(64, 64, 5.0, 1e6, None),  # untimed: left out
            _timed(64, 8, 5.0, 60.0, 20)]
    # no noise: 20 s/epoch at 64x64 -> x (96/64)^2 at 96x96, 30 epochs, 2 runs
    assert f.left_out_minutes(rows, size=96, channels=64, noisy=False, runs=2) == pytest.approx(
        2 * 20 * (96 / 64) ** 2 * 30 / 60)
    # noisy: the median of 30 and 90 s/epoch, times the median of 40 and 20 epochs
    assert f.left_out_minutes(rows, size=64, channels=64, noisy=True) == pytest.approx(60 * 30 / 60)
    # an epoch's time growing as the area to the power 0.5
    assert f.left_out_minutes(rows, size=128, channels=64, noisy=False, area_exponent=0.5) == pytest.approx(
        20 * 2 * 30 / 60)
    assert f.left_out_minutes(rows, size=64, channels=16, noisy=True) is None  # nothing with 16 channels timed
    with pytest.raises(ValueError, match="positive"):
        f.left_out_minutes(rows, size=96, channels=64, noisy=True, runs=0)


def test_the_size_exponent_is_measured_on_pairs_of_the_same_run_at_two_sizes():
    rows = [_timed(64, 8, 5.0, 100.0, 10), _timed(128, 8, 5.0, 200.0, 10),  # twice the time for 4x the area: 0.5
            _timed(64, 8, None, 100.0, 10), _timed(128, 8, None, 400.0, 10, seed=1),  # another seed: no pair
            _timed(64, 16, 5.0, 100.0, 10)]
    assert f.size_exponent(rows) == pytest.approx(0.5)
    assert f.size_exponent(rows[2:]) is None


def test_the_medium_cut_note_names_what_it_leaves_out_and_its_estimated_cost():
    from dpact_tf.repro.profiles import get_profile

    small, medium, paper = (get_profile(n) for n in ("small", "medium", "paper"))
    # every epoch costs in proportion to the area: 10 s/epoch at 64x64 without noise, twice that with
    rows = [_timed(s, c, e, 10.0 * 30 * (s / 64) ** 2 * (2 if e else 1), 30) for s, c in medium.ladder_points
            for e in medium.ladder_epsilons]
    assert f.size_exponent(rows) == pytest.approx(1.0)
    note = f.cut_note(medium, medium, paper, rows=rows)
    # 96x96x64 at {none, 5, 10}, 2 seeds: 2 x (1 + 2 + 2) x 300 s x (96/64)^2
    minutes = 2 * (1 + 2 + 2) * 300 * (96 / 64) ** 2 / 60
    assert f"96×96×64 (about {minutes / 60:.1f} h for 6 runs: ε ∈ {{no noise, 5, 10}}, 2 seeds)" in note
    assert "the lower end" not in note  # a measured growth in proportion to the area: one number
    # epsilon 3 at the points without it (the convergence study trains it at 64x64x8), two seeds at the largest
    eps3 = sum(600 * (s / 64) ** 2 * (2 if c == 64 else 1) for s, c in medium.ladder_points if c != 8 or s != 64) / 60
    others = len(medium.ladder_points) - 1
    assert f"ε = 3 at {others} of the ladder's points (about {f._hours(eps3)} for {others + 1} runs" in note
    assert "trains it at 64×64×8" in note
    assert "Left out" not in f.cut_note(medium, medium, paper)  # without the ladder's rows: nothing to estimate
    no_64 = [r for r in rows if r["conv1_channels"] != 64]
    assert "96×96×64 (not estimated: no run with 64 channels was timed)" in f.cut_note(medium, medium, paper,
                                                                                         rows=no_64)
    # an epoch that grows slower than the area gives a range
    slower = [dict(r, seconds=r["seconds"] * (64 / r["image_size"])) for r in rows]
    assert "the lower end" in f.cut_note(medium, medium, paper, rows=slower)


def test_every_left_out_point_is_a_point_the_ladder_can_train():
    from dpact_tf.repro.profiles import get_profile

    for name, left in f.LEFT_OUT.items():
        prof = get_profile(name)
        for size, channels in left.get("points", ()):
            assert (size, channels) not in prof.ladder_points
            f.ladder_runs_spec(prof, size=size, channels=channels, epsilon=5.0, seed=0, dataset="lfw")
        assert not set(left.get("epsilons", ())) & set(prof.ladder_epsilons)


def test_the_earliest_stop_is_the_stopping_rule_on_a_run_that_never_moves():
    # the convergence studies' epsilon-3 runs, at chance throughout, stopped at these epochs: 26 at medium, 24 at small
    assert f.earliest_stop({"start_from_epoch": 15, "patience": 10, "min_delta": 0.005}) == 26
    assert f.earliest_stop({"start_from_epoch": 15, "patience": 8, "min_delta": 0.005}) == 24
    assert f.earliest_stop({"start_from_epoch": 0, "patience": 3, "min_delta": 0.0}) == 4


def test_the_medium_note_names_what_medium_changes():
    from dpact_tf.repro.profiles import get_profile

    note = f.medium_note(get_profile("medium"))
    assert "60-epoch convergence runs" in note and "up to 64 conv1 channels and 96×96 inputs" in note
    assert "up to 128×128×64" in note
