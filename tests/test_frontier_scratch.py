"""(d) of the frontier chapter: DP-SGD from scratch, tuned on the validation split -- the choice reads validation
accuracies only, the tuning's epsilon composes every candidate, candidate runs are cached, and a profile
leaves (d) out and says so.  The tuning on the tiny book's own (d) runs: tests/test_notebooks.py."""
import dataclasses

import pytest

from dpact_tf.repro import frontier, frontier_scratch, frontier_text
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
    assert "searches more" not in ran and "searches more" not in frontier_text.scratch_schedule("tiny")
    # small runs (d) and says what medium's search adds
    monkeypatch.undo()
    small = frontier_text.scratch_schedule("small")
    assert "2 candidates per ε" in small and "`make book PROFILE=medium` searches more: 4 candidates per ε" in small
    assert all(c.label() in small for c in medium.scratch_candidates())
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
