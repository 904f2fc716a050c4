"""(d) of the frontier chapter: DP-SGD from scratch, tuned on the validation split -- the choice reads validation
accuracies only, the tuning's epsilon composes every candidate, candidate runs are cached, and a profile
leaves (d) out and says so."""
import dataclasses

import numpy as np
import pytest

from dpact_tf.baselines.dpsgd import RunShape, composed_epsilon
from dpact_tf.data import validation_split
from dpact_tf.repro import frontier, frontier_scratch, frontier_text
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.runs import load_faces


def test_pick_is_the_argmax_of_validation_accuracy():
    assert frontier_scratch.pick([0.1, 0.3, 0.2]) == 1
    assert frontier_scratch.pick([0.2, 0.2, 0.1]) == 0  # the first on a tie
    assert frontier_scratch.pick([float("nan"), 0.05]) == 1  # a diverged run never wins
    with pytest.raises(ValueError, match="at least one"):
        frontier_scratch.pick([])


def test_candidates_are_checked():
    assert frontier_scratch.Candidate(0.1, 2.0, 256, 15).label() == "clip 0.1, lr 2, batch 256, 15 epochs"
    for bad in ((0.0, 1.0, 256, 1), (1.0, -1.0, 256, 1), (1.0, 1.0, 0, 1), (1.0, 1.0, 256, 1.5)):
        with pytest.raises(ValueError):
            frontier_scratch.Candidate(*bad)
    with pytest.raises(ValueError, match="grid"):
        dataclasses.replace(frontier.SCHEDULES["small"], scratch_dpsgd_epsilons=(1.0,), scratch_dpsgd_grid=())
    with pytest.raises(ValueError, match="epsilon"):
        dataclasses.replace(frontier.SCHEDULES["tiny"], scratch_dpsgd_epsilons=(0.0,))


def test_schedules_run_d_with_a_grid_per_epsilon():
    small, medium, tiny = (frontier.SCHEDULES[p] for p in ("small", "medium", "tiny"))
    assert small.scratch_dpsgd_epsilons == medium.scratch_dpsgd_epsilons == (1.0, 4.0, 16.0)
    assert len(small.scratch_candidates()) == 2 and 3 <= len(medium.scratch_candidates()) <= 4
    assert sum(c.epochs for c in small.scratch_candidates()) < sum(c.epochs for c in medium.scratch_candidates())
    assert frontier.SCHEDULES["paper"].scratch_dpsgd_epsilons == medium.scratch_dpsgd_epsilons
    assert len(tiny.scratch_dpsgd_epsilons) == 1 and [c.epochs for c in tiny.scratch_candidates()] == [2, 2]


def test_the_chapter_says_when_a_profile_leaves_d_out_and_what_medium_costs(monkeypatch):
    monkeypatch.setitem(frontier.SCHEDULES, "small", dataclasses.replace(
        frontier.SCHEDULES["small"], scratch_dpsgd_epsilons=(), scratch_dpsgd_grid=()))
    text = frontier_text.describe_schedule("small")
    assert "`small` leaves out (d)" in text and "`make book PROFILE=medium`" in text and "(estimated)" in text
    medium = frontier.SCHEDULES["medium"]
    hours = frontier_scratch.estimated_seconds(medium.scratch_dpsgd_epsilons, medium.scratch_candidates()) / 3600
    assert f"~{hours:.1f} h" in text
    ran = frontier_text.describe_schedule("medium")
    assert "leaves out (d)" not in ran and "per-image ε ∈ {1, 4, 16}, 4 candidates per ε" in ran
    assert "one seed: each run costs ~" in ran
    # an epoch of 37 s: 4 candidates of 15, 15, 30, 30 epochs at 3 epsilons
    assert frontier_scratch.estimated_seconds((1, 4, 16), medium.scratch_candidates(), 37.0) == 3 * 90 * 37.0


def _p(method, eps, acc):
    return {"method": method, "image_epsilon": eps, "epsilon_with_tuning": eps, "mean": acc, "spread": float("nan")}


def test_the_choice_says_whether_d_was_compared():
    without = {"points": [_p("release", 2.0, 0.3)], "chance": 0.1}
    assert "(d) DP-SGD on the whole network, from scratch, tuned is not compared" in \
        frontier_text.choice_from_metrics(without, profile="small")
    with_d = {"points": [_p("release", 2.0, 0.3), _p("scratch_dpsgd", 1.9, 0.4)], "chance": 0.1}
    text = frontier_text.choice_from_metrics(with_d, profile="tiny")
    assert "not compared" not in text and "**(d) DP-SGD on the whole network, from scratch, tuned**" in text
    (row,) = [r for r in frontier_text.privacy_units() if r["method"] == frontier.METHODS["scratch_dpsgd"]]
    assert "add or remove" in row["adjacency"] and row["labels"].startswith("covered")
    assert "Poisson sampling implemented and accounted" in row["accounted as implemented"]


@pytest.fixture(scope="module")
def tiny_faces():
    prof = get_profile("tiny")
    data = load_faces(prof, "synthetic", seed=0, progress=False)
    fit, val = validation_split(data.train_labels, frontier.SCHEDULES["tiny"].validation_fraction, seed=0)
    return prof, data, fit, val


def _run(faces, cache_dir, grid):
    prof, data, fit, val = faces
    return frontier_scratch.scratch_dpsgd_points(data, fit, val, epsilons=(16.0,), grid=grid, delta=1e-5,
                                                 model_kwargs=prof.model_kwargs(), seed=0,
                                                 cache_dir=str(cache_dir), progress=False)


def test_tuning_reads_validation_never_test(tiny_faces, tmp_path, monkeypatch):
    """Tiny's two candidates (they score apart, above chance, so a choice by any other score could differ); one
    trained again with the test labels shuffled has the same validation accuracy (the test labels are never read
    for it), and the choice is the argmax of the validation accuracies (so it never reads them either); the
    tuning's epsilon is the composition of both candidates' runs, at least the chosen run's, which meets the
    target; a second call reads every candidate from the cache."""
    prof, data, fit, val = tiny_faces
    grid = frontier.SCHEDULES["tiny"].scratch_candidates()
    (point,), seconds = _run(tiny_faces, tmp_path / "a", grid)
    cands = point["detail"]["candidates"]
    accs = [c["validation_accuracy"] for c in cands]
    assert len(cands) == 2 and seconds > 0
    assert len(set(accs)) == 2 and max(accs) > 1 / len(np.unique(data.train_labels))  # a choice to make
    assert point["configs"] == [cands[frontier_scratch.pick(accs)]["config"]]
    rng = np.random.default_rng(1)
    shuffled = dataclasses.replace(data, test_labels=rng.permutation(data.test_labels))
    assert not np.array_equal(shuffled.test_labels, data.test_labels)
    again = frontier_scratch.train_candidate(shuffled, fit, val, grid[0], target_epsilon=16.0, delta=1e-5,
                                             model_kwargs=prof.model_kwargs(), seed=0)
    assert again["validation_accuracy"] == accs[0] and again["history"]["validation_accuracy"][-1] == accs[0]
    total = composed_epsilon([RunShape(c["noise_multiplier"], g.batch_size, len(fit), g.epochs)
                              for c, g in zip(cands, grid)], delta=1e-5)
    assert point["epsilon_with_tuning"] == pytest.approx(total, rel=1e-12)
    assert point["image_epsilon"] <= 16.0 < point["epsilon_with_tuning"]
    assert point["image_epsilon"] == pytest.approx(16.0, rel=1e-2)  # calibrated to the target
    assert 0.0 <= point["accuracies"][0] <= 1.0 and point["method"] == "scratch_dpsgd"

    def no_training(*args, **kwargs):
        raise AssertionError("a cached candidate was trained again")

    monkeypatch.setattr(frontier_scratch, "train_candidate", no_training)
    (cached,), _ = _run(tiny_faces, tmp_path / "a", grid)
    assert cached == point
    with pytest.raises(ValueError, match="grid is empty"):
        _run(tiny_faces, tmp_path / "a", ())
