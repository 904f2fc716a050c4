import json
import os

import pytest

from dpact_tf.repro.pretrain import pretrain, pretrain_spec, public_model_info
from dpact_tf.repro.profiles import get_profile
from dpact_tf.repro.runs import RunSpec, run_training


def test_scratch_run_is_cached(tmp_path):
    spec = RunSpec(task="scratch", profile="tiny", dataset="synthetic", epsilon=5.0, epochs=1)
    first = run_training(spec, results_dir=str(tmp_path), progress=False)
    assert not first.cached and os.path.exists(first.client_weights)
    saved = json.loads(open(first.path).read())
    assert saved["complete"] and saved["info"]["synthetic"] is True
    assert saved["spec"]["epsilon"] == 5.0 and len(saved["history"]["test_accuracy"]) == 1
    assert "SYNTHETIC" in saved["info"]["data"]["description"]
    second = run_training(spec, results_dir=str(tmp_path), progress=False)
    assert second.cached and second.history == first.history
    third = run_training(spec, results_dir=str(tmp_path), progress=False, force=True)
    assert not third.cached


def test_keys_differ_by_configuration():
    a = RunSpec(task="scratch", profile="tiny", dataset="synthetic", epsilon=5.0, epochs=1)
    assert a.key() == RunSpec(task="scratch", profile="tiny", dataset="synthetic", epsilon=5.0, epochs=1).key()
    assert a.key() != RunSpec(task="scratch", profile="tiny", dataset="synthetic", epsilon=3.0, epochs=1).key()
    assert a.key() != RunSpec(task="scratch", profile="tiny", dataset="synthetic", epsilon=5.0, epochs=1, cut="pool1").key()


def test_finetune_from_pretrained(tiny_pretrained_results):
    results = tiny_pretrained_results  # the public model pretrained there once (tests/conftest.py)
    pre = pretrain("tiny", "synthetic", results_dir=results, progress=False)
    assert pre.spec == pretrain_spec("tiny", "synthetic") and pre.info["data"]["people"] == 8
    assert pre.cached and os.path.exists(pre.client_weights)
    info = public_model_info(pre)
    assert info["augmentation"] is True and info["epochs"] == get_profile("tiny").pretrain.epochs
    # Augmentation is for training only: the held-out accuracy of every epoch is measured on the images as they
    # are, so the last one equals a plain prediction of the saved model on them.
    assert info["final_heldout_accuracy"] == pre.info["heldout"]["accuracy"]
    assert info["heldout_by_min_images"][0]["accuracy"] == pre.info["heldout"]["accuracy"]
    assert info["final_heldout_accuracy"] > 2 * info["heldout_chance"], "the public model did not learn"
    spec = RunSpec(task="finetune", profile="tiny", dataset="synthetic", epsilon=None, epochs=1, init=pre.spec.key())
    result = run_training(spec, results_dir=results, progress=False)
    import h5py
    # the client (conv1_1) was frozen: its saved weights equal the pre-trained ones
    with h5py.File(pre.client_weights) as a, h5py.File(result.client_weights) as b:
        ka = a["conv1_1"]["conv1_1"]["kernel:0"][()]
        kb = b["conv1_1"]["conv1_1"]["kernel:0"][()]
    assert (ka == kb).all()


def test_bad_specs():
    with pytest.raises(ValueError, match="init"):
        RunSpec(task="finetune", profile="tiny", dataset="synthetic", epsilon=None, epochs=1)
    with pytest.raises(ValueError, match="task"):
        RunSpec(task="other", profile="tiny", dataset="synthetic", epsilon=None, epochs=1)
    with pytest.raises(ValueError, match="profile"):
        RunSpec(task="scratch", profile="huge", dataset="synthetic", epsilon=None, epochs=1)


def test_the_pretraining_recipe_is_in_the_public_model_key_only(monkeypatch):
    import dataclasses

    from dpact_tf.repro import profiles as config
    from dpact_tf.repro import results

    tiny = config.PROFILES["tiny"]
    scratch = RunSpec(task="scratch", profile="tiny", dataset="synthetic", epsilon=5.0, epochs=1)
    keys = (pretrain_spec("tiny", "synthetic").key(), scratch.key())
    for change in ({"augment": False}, {"min_images": 5}, {"learning_rate": 3e-4}, {"data_init": False}):
        monkeypatch.setitem(config.PROFILES, "tiny", dataclasses.replace(
            tiny, pretrain=dataclasses.replace(tiny.pretrain, **change)))
        assert pretrain_spec("tiny", "synthetic").key() != keys[0], change
        assert scratch.key() == keys[1], change  # runs that do not use the public model keep their cache
    monkeypatch.setitem(config.PROFILES, "tiny", tiny)
    assert pretrain_spec("tiny", "synthetic").key() == keys[0]
    # ... and so is the code that trains it: editing the augmentation retrains the public model (only)
    real = results._module_source_hash
    monkeypatch.setattr(results, "_module_source_hash",
                        lambda m: "edited" if m == "dpact_tf.augment" else real(m))
    assert pretrain_spec("tiny", "synthetic").key() != keys[0] and scratch.key() == keys[1]
    with pytest.raises(ValueError, match="pretrain"):
        run_training(pretrain_spec("tiny", "synthetic"))


def test_public_people_are_disjoint_from_the_evaluation_people():
    from dpact_tf.repro.runs import load_faces

    prof = get_profile("tiny")
    assert prof.pretrain.min_images == get_profile("small").pretrain.min_images == 2  # all 1,522 public people
    public = load_faces(prof, "synthetic", public=True, progress=False)
    private = load_faces(prof, "synthetic", progress=False)
    assert not set(public.class_names) & set(private.class_names)


@pytest.mark.skipif(not os.environ.get("DPACT_LFW_DIR"), reason="DPACT_LFW_DIR not set: real LFW not available")
def test_public_lfw_people_are_disjoint_from_the_158():
    from dpact_tf.data import PAPER_COUNTS, PUBLIC_COUNTS
    from dpact_tf.repro.runs import load_faces

    prof = get_profile("tiny")
    public = load_faces(prof, "lfw", public=True, progress=False)
    private = load_faces(prof, "lfw", progress=False)
    assert (public.num_classes, len(public.train_labels) + len(public.test_labels)) == PUBLIC_COUNTS
    assert private.num_classes == PAPER_COUNTS[0] and not set(public.class_names) & set(private.class_names)
    # no image of an evaluation person anywhere in the public set, and one held-out image per public person
    people = {f.split("/")[0] for f in public.train_files + public.test_files}
    assert people == set(public.class_names) and not people & set(private.class_names)
    assert len(public.test_labels) == public.num_classes and not set(public.train_files) & set(public.test_files)


def test_sweep_settings_do_not_invalidate_runs(monkeypatch):
    import dataclasses

    from dpact_tf.repro import profiles as config
    spec = RunSpec(task="scratch", profile="tiny", dataset="synthetic", epsilon=5.0, epochs=1)
    key = spec.key()
    tiny = config.PROFILES["tiny"]
    monkeypatch.setitem(config.PROFILES, "tiny", dataclasses.replace(tiny, partition_epsilons=(None, 3.0)))
    assert spec.key() == key
    monkeypatch.setitem(config.PROFILES, "tiny", dataclasses.replace(tiny, learning_rate=0.02))
    assert spec.key() != key


def test_finetune_from_a_vggface_weights_file(tmp_path, tiny_vggface_h5):
    """Fig. 4 with public weights: a synthetic file in the keras-vggface layout at the tiny profile's shapes."""
    import numpy as np

    from dpact_tf.repro import studies
    from dpact_tf.weights import fold_preprocessing, write_keras_h5_weights

    path, weights = tiny_vggface_h5
    study = studies.finetune_study(profile="tiny", dataset="synthetic", results_dir=str(tmp_path / "r"),
                                   epsilons=[None], epochs=1, vggface_weights=str(path), progress=False)
    assert study.pretrain["source"] == "vggface" and study.pretrain["people"] == 2622
    split = study.runs[0].load_split()
    kernel, bias = fold_preprocessing(*weights["conv1_1"])
    # conv1 is frozen during fine-tuning: the client still holds VGG-Face's (folded) first layer
    np.testing.assert_allclose(split.client.get_layer("conv1_1").get_weights()[0], kernel, rtol=1e-6)
    np.testing.assert_allclose(split.server.get_layer("conv3_1").get_weights()[0], weights["conv3_1"][0])
    assert split.server.get_layer("fc8").get_weights()[0].shape[1] == 8  # a new output layer, not VGG-Face's 2622
    # a file of other shapes is refused with the layer named
    write_keras_h5_weights(str(path), {**weights, "conv2_1": [w[..., :3] for w in weights["conv2_1"]]})
    with pytest.raises(ValueError, match="conv2_1"):
        studies.finetune_study(profile="tiny", dataset="synthetic", results_dir=str(tmp_path / "r2"),
                               epsilons=[None], epochs=1, vggface_weights=str(path), progress=False)
