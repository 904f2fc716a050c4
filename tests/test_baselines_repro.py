"""The baselines chapter's runs: the PrivyNet-style frozen public head, the baseline RunSpecs, the studies."""
import h5py
import numpy as np
import pytest

from dpact_tf.repro.pretrain import pretrain
from dpact_tf.repro.runs import RunSpec, run_training


def _kernel(path, layer):
    with h5py.File(path) as fh:
        return fh[layer][layer]["kernel:0"][()]


@pytest.fixture(scope="module")
def results(tiny_pretrained_results):
    """One results directory for the frozen-head runs: the public model is pretrained once per test process.  (The
    PrivyNet study itself is checked on the tiny book's runs, tests/test_notebooks.py.)"""
    return tiny_pretrained_results


def test_frozen_head_is_the_public_models_layers_and_stays_frozen(results):
    pre = pretrain("tiny", "synthetic", results_dir=results, progress=False)
    epochs = 1
    spec = RunSpec(task="frozen_head", profile="tiny", dataset="synthetic", epsilon=None, epochs=epochs, cut="pool1",
                   init=pre.spec.key())
    run = run_training(spec, results_dir=results, progress=False)
    # conv1_1 comes from the public client file, conv1_2 from the public server file (split at conv1_1): both
    # are in the frozen client, unchanged by training
    assert np.array_equal(_kernel(run.client_weights, "conv1_1"), _kernel(pre.client_weights, "conv1_1"))
    assert np.array_equal(_kernel(run.client_weights, "conv1_2"), _kernel(pre.server_weights, "conv1_2"))
    # the server was trained from a fresh initialization, not the public model's
    assert not np.array_equal(_kernel(run.server_weights, "conv2_1"), _kernel(pre.server_weights, "conv2_1"))
    split = run.load_split()
    assert split.dp_layer.stddev == 0.0 and split.cut == "pool1"
    assert len(run.history["test_accuracy"]) == epochs


def test_baseline_specs_validate_their_options():
    ok = RunSpec(task="dssgd", profile="tiny", dataset="synthetic", epsilon=None, epochs=1,
                 options=(("momentum_at", "server"), ("participants", 2), ("standalone", False), ("theta_download", 1.0),
                          ("theta_upload", 0.1)))
    assert ok.option("participants") == 2 and "dssgd" in ok.label()
    other = RunSpec(task="dssgd", profile="tiny", dataset="synthetic", epsilon=None, epochs=1,
                    options=(("momentum_at", "server"), ("participants", 2), ("standalone", False), ("theta_download", 1.0),
                             ("theta_upload", 0.01)))
    assert ok.key() != other.key()
    with pytest.raises(ValueError, match="missing"):
        RunSpec(task="dpsgd", profile="tiny", dataset="synthetic", epsilon=None, epochs=1,
                options=(("l2_norm_clip", 1.0),))
    with pytest.raises(ValueError, match="sorted"):
        RunSpec(task="dpsgd", profile="tiny", dataset="synthetic", epsilon=None, epochs=1,
                options=(("noise_multiplier", 1.0), ("l2_norm_clip", 1.0)))
    with pytest.raises(ValueError, match="no noise"):
        RunSpec(task="dpsgd", profile="tiny", dataset="synthetic", epsilon=3.0, epochs=1,
                options=(("l2_norm_clip", 1.0), ("noise_multiplier", 1.0)))
    with pytest.raises(ValueError, match="init"):
        RunSpec(task="frozen_head", profile="tiny", dataset="synthetic", epsilon=None, epochs=1)
    with pytest.raises(ValueError, match="options"):
        RunSpec(task="scratch", profile="tiny", dataset="synthetic", epsilon=None, epochs=1,
                options=(("participants", 2),))
    # a scratch run's key did not change by the new field


def test_dssgd_run_saves_the_evaluated_global_model(tmp_path):
    import tensorflow as tf

    from dpact_tf.data import make_dataset
    from dpact_tf.repro.runs import load_faces

    spec = RunSpec(task="dssgd", profile="tiny", dataset="synthetic", epsilon=None, epochs=2,
                   options=(("momentum_at", "server"), ("participants", 2), ("standalone", False), ("theta_download", 1.0),
                            ("theta_upload", 0.1)))
    run = run_training(spec, results_dir=str(tmp_path), progress=False)
    t = run.info["trainer"]
    assert t["participants"] == 2 and t["upload_bytes_per_image"] == t["upload_bytes_per_turn"] / 32
    assert t["upload_bytes_per_turn"] == 8 * -(-t["num_parameters"] // 10)  # ceil(0.1 n) values + indices
    assert len(t["upload_bytes"]) == 2 and sum(t["turns"]) > 0
    # the saved client and server weights are the evaluated (global) model: re-evaluating gives the last accuracy
    split = run.load_split()
    faces = load_faces(spec.profile_obj(), "synthetic")
    model = split.monolithic()
    correct = 0
    for x, y in make_dataset(faces.test_images, faces.test_labels, batch_size=256):
        correct += int(tf.reduce_sum(tf.cast(tf.argmax(model(x), -1, output_type=tf.int32) == tf.cast(y, tf.int32),
                                             tf.int32)))
    assert correct / len(faces.test_labels) == pytest.approx(run.history["test_accuracy"][-1])


def test_dssgd_summary_measures_the_staleness_of_local_momentum():
    from dpact_tf.repro.baselines import dssgd_summary

    def study(local, server):
        rows = [{"participants": 4, "standalone": False, "theta_upload": t, "test_accuracy": a,
                 "momentum_at": "participant"} for t, a in ((0.01, 0.13), (0.1, 0.25), (1.0, local))]
        rows.append({"participants": 4, "standalone": False, "theta_upload": 1.0, "test_accuracy": server,
                     "momentum_at": "server"})
        rows.append({"participants": 4, "standalone": True, "theta_upload": None, "test_accuracy": 0.12,
                     "momentum_at": "participant"})
        return {"centralized": {"test_accuracy": 0.41}, "rows": rows}

    text = dssgd_summary(study(0.15, 0.40))
    assert "θ = 1 → 15.0 %" in text and "reaches 40.0 %: the local momentum's staleness costs 25.0 points" in text
    assert "sharing less (θ = 0.1) scores above full sharing" in text
    same = dssgd_summary(study(0.40, 0.40))
    assert "staleness changes" in same and "sharing less" not in same


def test_dpsgd_summary_says_when_no_run_learns():
    from dpact_tf.repro.baselines import dpsgd_summary

    def study(acc):
        rows = [{"matched_to": None, "epsilon": 1.0, "noise_multiplier": 2.0, "test_accuracy": acc,
                 "l2_norm_clip": 1.0},
                {"matched_to": 3.0, "epsilon": 2e8, "noise_multiplier": 0.0015, "test_accuracy": acc,
                 "l2_norm_clip": 1.0}]
        dp = [{"epsilon_per_coordinate": None, "test_accuracy": 0.4},
              {"epsilon_per_coordinate": 3.0, "test_accuracy": 0.12, "image_epsilon_per_run": 2.2e8,
               "releases_per_image": 64797}]
        return {"rows": rows, "dp_activations": dp, "majority_class_test_accuracy": 0.124}

    stuck = dpsgd_summary(study(0.124))
    assert "Every DP-SGD run stays at the majority class" in stuck and "220,000,000" in stuck
    assert "Every DP-SGD run stays" not in dpsgd_summary(study(0.2))
