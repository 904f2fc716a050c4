"""dpact_tf.repro.oracle and oracle_text: the attack chapters' identity judge, exactly on features that encode the
identity, its fallback said aloud, its cache keys covering its code, and its comparison with the book's models."""
import ast
import dataclasses
import types
from pathlib import Path

import numpy as np
import pytest

from dpact_tf.repro import attack_study, baselines, extractors, oracle, oracle_text
from dpact_tf.repro.extractors import FeatureExtractor
from dpact_tf.repro.results import REPO, record_metrics


def _faces(classes=4, per_class=10, test_per_class=3, size=8, seed=0):
    """Images whose colour names the person (channel c % 3 bright, brighter for c // 3); the test images are drawn
    apart from the training images."""
    rng = np.random.default_rng(seed)

    def draw(n):
        labels = np.repeat(np.arange(classes), n)
        images = rng.integers(0, 30, size=(len(labels), size, size, 3)).astype(np.uint8)
        for i, c in enumerate(labels):
            images[i, ..., c % 3] += np.uint8(100 + 100 * (c // 3))
        return images, labels

    (train, y), (test, ty) = draw(per_class), draw(test_per_class)
    return types.SimpleNamespace(train_images=train, train_labels=y, test_images=test, test_labels=ty,
                                 num_classes=classes)


# features: the mean of each channel (in [0, 1] units), which separates the four people exactly
_MEANS = FeatureExtractor(name="channel means", key="means-v1", features=lambda x: np.asarray(x).mean(axis=(1, 2)))


def test_feature_oracle_names_people_its_features_separate():
    data = _faces()
    judge = oracle.feature_oracle(_MEANS, data, grid=((0.5, 30),))
    assert judge.test_accuracy == 1.0 and judge.fallback is None
    images = data.test_images.astype(np.float32) / 255.0
    assert judge.accuracy(images, data.test_labels) == 1.0
    # another person's labels: exactly the share that happens to agree
    wrong = np.roll(data.test_labels, 3)
    assert judge.accuracy(images, wrong) == float(np.mean(wrong == data.test_labels))
    assert judge.for_labels(data.test_labels)(images) == 1.0
    assert "channel means" in judge.description and "means-v1" in judge.key


def test_feature_oracle_cannot_name_people_from_features_that_do_not_separate_them():
    blind = dataclasses.replace(_MEANS, key="blind", features=lambda x: np.zeros((len(x), 3)))
    assert oracle.feature_oracle(blind, _faces(), grid=((0.5, 30),)).test_accuracy <= 0.5


def test_feature_oracle_tunes_on_training_images_only():
    """The grid point is chosen on a validation split of the training images: shuffled test labels change the
    reported test accuracy, never the choice."""
    data = _faces()
    judge = oracle.feature_oracle(_MEANS, data)
    shuffled = types.SimpleNamespace(**{**vars(data), "test_labels": np.roll(data.test_labels, 3)})
    other = oracle.feature_oracle(_MEANS, shuffled)
    assert other.description == judge.description and other.key == judge.key
    assert other.test_accuracy == float(np.mean(np.roll(data.test_labels, 3) == data.test_labels))


def test_feature_oracle_and_accuracy_refuse_bad_input():
    data = _faces()
    with pytest.raises(ValueError, match="grid"):
        oracle.feature_oracle(_MEANS, data, grid=())
    judge = oracle.feature_oracle(_MEANS, data, grid=((0.5, 30),))
    with pytest.raises(ValueError, match="labels"):
        judge.accuracy(data.train_images[:3] / 255.0, data.train_labels[:2])


def test_key_names_the_features_without_dlib_the_network(monkeypatch):
    monkeypatch.setattr(extractors, "dlib_extractor", lambda profile: _MEANS)
    key = oracle.evaluation_oracle_key("tiny", "synthetic")
    assert key.startswith("features:means-v1")

    def missing(profile):
        raise FileNotFoundError("no model here")
    monkeypatch.setattr(extractors, "dlib_extractor", missing)
    fallback = oracle.evaluation_oracle_key("tiny", "synthetic")
    assert fallback.startswith("network:") and fallback != key


def _imported(module: str):
    tree = ast.parse(Path(REPO, *module.split(".")).with_suffix(".py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dpact_tf"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if Path(REPO, *full.split(".")).with_suffix(".py").exists() else node.module)
    return names


def test_the_studies_cache_keys_cover_the_oracles_code():
    """Every dpact_tf module the oracle and the extractors import (but the data, profile and result plumbing the
    training keys already cover) is in ORACLE_MODULES, and both studies that use the oracle hash them all."""
    plumbing = {"dpact_tf.data", "dpact_tf.repro.profiles", "dpact_tf.repro.results", "dpact_tf.repro.runs",
                "dpact_tf.repro.fidelity"}
    used = {"dpact_tf.repro.oracle", "dpact_tf.repro.extractors"}
    for module in ("dpact_tf.repro.oracle", "dpact_tf.repro.extractors", "dpact_tf.dlib_faces", "dpact_tf.dlib_keras",
                   "dpact_tf.dlib_resnet"):
        used |= _imported(module)
    assert used - plumbing <= set(oracle.ORACLE_MODULES)
    assert set(oracle.ORACLE_MODULES) <= set(attack_study.ATTACK_MODULES)
    assert set(oracle.ORACLE_MODULES) <= set(baselines.BASELINE_MODULES)


def test_the_chapters_say_when_the_oracle_is_the_fallback():
    from tests.test_attack_study import _study

    study = _study()
    assert "was not found" not in attack_study.attack_summary(study)
    study.oracle = {**study.oracle, "fallback": "dlib's face ResNet was not found"}
    text = attack_study.attack_summary(study)
    assert "**Identity.** **dlib's face ResNet was not found, so the oracle is an oracle.**" in text
    assert baselines.oracle_words(study.oracle).startswith("**dlib's face ResNet was not found")
    assert baselines.oracle_words({"description": "dlib + softmax", "fallback": None}) == \
        "the attacks chapter's: dlib + softmax"


def test_references_are_read_from_the_recorded_metrics(tmp_path):
    assert oracle_text.non_private_references(str(tmp_path), "tiny", "synthetic") == {}
    table = [{"epsilon": None, "final_test_accuracy": 0.5}, {"epsilon": 1.0, "final_test_accuracy": 0.1}]
    record_metrics(str(tmp_path), "tiny", "synthetic", "scratch", {"table": table})
    record_metrics(str(tmp_path), "tiny", "synthetic", "convergence", {"baseline_final": 0.6})
    record_metrics(str(tmp_path), "tiny", "synthetic", "frontier", {"references": {
        "dlib + the server's classifier": [0.8, 0.9], "the paper's network from scratch (one run)": [0.5]}})
    refs = oracle_text.non_private_references(str(tmp_path), "tiny", "synthetic")
    assert refs == {"the paper's network from scratch, no noise": 0.5,
                    "the paper's network trained to convergence, no noise": 0.6,
                    "dlib + the server's classifier, no noise (frontier chapter)": pytest.approx(0.85)}


def test_oracle_note_sets_the_oracle_against_the_best_reference():
    refs = {"stand-in": 0.6, "dlib": 0.89}
    strong = {"description": "dlib + softmax", "test_accuracy": 0.93}
    text = oracle_text.oracle_note(strong, refs)
    assert "names 93.0 % of the test images: at least as accurate as the best non-private model" in text
    assert "(dlib, 89.0 %; 2 compared)" in text
    assert "**less accurate than**" in oracle_text.oracle_note({**strong, "test_accuracy": 0.6}, refs)
    assert "no non-private model of the book is recorded yet" in oracle_text.oracle_note(strong, {})
    assert "No identity oracle is recorded" in oracle_text.oracle_note(None, refs)
