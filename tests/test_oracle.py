"""dpact_tf.repro.oracle: the attack chapters' identity judge, exactly on features that encode the identity, and its
fallback said aloud."""
import dataclasses
import types

import numpy as np
import pytest

from dpact_tf.repro import attack_study, oracle
from dpact_tf.repro.frontier import FeatureExtractor


def _faces(classes=4, per_class=10, size=8, seed=0):
    """Images whose colour names the person (channel c bright for person c % 3, brightness by c // 3)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    images = rng.integers(0, 30, size=(len(labels), size, size, 3)).astype(np.uint8)
    for i, c in enumerate(labels):
        images[i, ..., c % 3] += np.uint8(100 + 100 * (c // 3))
    test = rng.permutation(len(labels))[: 2 * classes]
    return types.SimpleNamespace(train_images=images, train_labels=labels, test_images=images[test],
                                 test_labels=labels[test], num_classes=classes)


# features: the mean of each channel (in [0, 1] units), which separates the four people exactly
_MEANS = FeatureExtractor(name="channel means", key="means-v1", features=lambda x: np.asarray(x).mean(axis=(1, 2)))


def test_feature_oracle_names_people_its_features_separate():
    data = _faces()
    judge = oracle.feature_oracle(_MEANS, data, grid=((0.5, 30),), progress=False)
    assert judge.test_accuracy == 1.0 and judge.fallback is None
    images = data.train_images.astype(np.float32) / 255.0
    assert judge.accuracy(images, data.train_labels) == 1.0
    # another person's labels: exactly the share that happens to agree
    wrong = np.roll(data.train_labels, 10)
    assert judge.accuracy(images, wrong) == float(np.mean(wrong == data.train_labels))
    assert judge.for_labels(data.train_labels)(images) == 1.0
    assert "channel means" in judge.description and "means-v1" in judge.key


def test_feature_oracle_cannot_name_people_from_features_that_do_not_separate_them():
    data = _faces()
    blind = dataclasses.replace(_MEANS, key="blind", features=lambda x: np.zeros((len(x), 3)))
    judge = oracle.feature_oracle(blind, data, grid=((0.5, 30),), progress=False)
    assert judge.test_accuracy <= 0.5


def test_feature_oracle_and_accuracy_refuse_bad_input():
    data = _faces()
    with pytest.raises(ValueError, match="grid"):
        oracle.feature_oracle(_MEANS, data, grid=(), progress=False)
    judge = oracle.feature_oracle(_MEANS, data, grid=((0.5, 30),), progress=False)
    with pytest.raises(ValueError, match="labels"):
        judge.accuracy(data.train_images[:3] / 255.0, data.train_labels[:2])


def test_key_names_the_features_without_dlib_the_network(monkeypatch):
    from dpact_tf.repro import frontier

    monkeypatch.setattr(frontier, "dlib_extractor", lambda profile: _MEANS)
    key = oracle.evaluation_oracle_key("tiny", "synthetic")
    assert key.startswith("features:means-v1")

    def missing(profile):
        raise FileNotFoundError("no model here")
    monkeypatch.setattr(frontier, "dlib_extractor", missing)
    fallback = oracle.evaluation_oracle_key("tiny", "synthetic")
    assert fallback.startswith("network:") and fallback != key


def test_the_chapter_says_when_the_oracle_is_the_weaker_fallback():
    from tests.test_attack_study import _study

    study = _study()
    assert "weaker" not in attack_study.attack_summary(study)
    study.oracle = {**study.oracle, "fallback": "dlib's face ResNet is not available (no model here)"}
    text = attack_study.attack_summary(study)
    assert "**The oracle is weaker than the book's best non-private model: dlib's face ResNet is not available" in text
