"""The edge client's run state: the same run resumes under its id, another run does not, and the outbox keeps
exactly the requests a restart may have to resend."""
import os

import pytest

from dpact_tf.edge.resume import RunState

SETTINGS = {"server": "edge:50051", "epsilon": 5.0, "shape": (32, 32, 8)}


def test_an_unfinished_run_resumes_under_its_id(tmp_path):
    first = RunState(str(tmp_path), settings=SETTINGS)
    assert not first.resumed and first.step == 0 and len(first.client_id) == 32
    first.put("train-00000001", ["h1", "h2"], b"\x08\x01request")
    again = RunState(str(tmp_path), settings=dict(SETTINGS))  # tuples come back as lists: still the same run
    assert again.resumed and again.client_id == first.client_id
    assert again.pending("train-00000001") == (["h1", "h2"], b"\x08\x01request")
    assert again.pending("train-00000002") is None


def test_other_settings_do_not_resume_and_a_new_run_starts_clean(tmp_path):
    first = RunState(str(tmp_path), settings=SETTINGS)
    first.put("train-00000001", ["h"], b"r")
    with pytest.raises(ValueError, match="unfinished run .* with other settings \\(epsilon differ\\)"):
        RunState(str(tmp_path), settings={**SETTINGS, "epsilon": 3.0})
    other = RunState(str(tmp_path), settings={**SETTINGS, "epsilon": 3.0}, new_run=True)
    assert not other.resumed and other.client_id != first.client_id and other.pending("train-00000001") is None


def test_acknowledged_steps_and_finished_evaluations_leave_the_outbox(tmp_path):
    state = RunState(str(tmp_path), settings=SETTINGS)
    for name in ("train-00000001", "eval-0001-000000", "eval-0001-000001", "eval-0002-000000"):
        state.put(name, ["h"], b"r")
    for step in (1, 2):  # a head checkpoint is two files per step (index and data)
        for suffix in (".index", ".data-00000-of-00001"):
            open(state.head_prefix(step) + suffix, "w").close()
    state.acknowledge(1, state.head_prefix(1))
    assert state.pending("train-00000001") is None and state.step == 1
    assert sorted(os.listdir(state.head_dir)) == ["step-00000001.data-00000-of-00001", "step-00000001.index"]
    assert RunState(str(tmp_path), settings=SETTINGS).head_checkpoint == state.head_prefix(1)
    state.evaluated(1)
    assert sorted(os.listdir(state.outbox)) == ["eval-0002-000000"] and state.evaluated_epoch == 1
    state.finish()
    after = RunState(str(tmp_path), settings=SETTINGS)
    assert not after.resumed and after.client_id != state.client_id and after.step == 0
    assert os.listdir(after.outbox) == [] and os.listdir(after.head_dir) == []


def test_a_write_cut_short_leaves_the_last_complete_state(tmp_path):
    state = RunState(str(tmp_path), settings=SETTINGS)
    state.acknowledge(3)
    with open(os.path.join(str(tmp_path), "run.json.tmp"), "w") as fh:  # killed while writing the next one
        fh.write('{"client_id": "x", "st')
    again = RunState(str(tmp_path), settings=SETTINGS)
    assert again.resumed and again.step == 3 and again.client_id == state.client_id
