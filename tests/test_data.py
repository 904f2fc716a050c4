import os

import numpy as np
import pytest
from PIL import Image

from dpact_tf import data


def _write_tree(root, counts, size=24):
    rng = np.random.default_rng(0)
    for person, n in counts.items():
        os.makedirs(root / person, exist_ok=True)
        for i in range(1, n + 1):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / person / f"{person}_{i:04d}.jpg")
    return root


COUNTS = {"Alice_A": 10, "Bob_B": 12, "Carol_C": 20, "Dan_D": 2, "Eve_E": 5, "Frank_F": 1}


@pytest.fixture
def tree(tmp_path):
    return _write_tree(tmp_path / "lfw", COUNTS)


def _load(tree, tmp_path, **kw):
    args = dict(image_size=16, crop_fraction=1.0, strict=False, cache_dir=str(tmp_path / "cache"), progress=False)
    args.update(kw)
    return data.load_lfw(None if tree is None else str(tree), **args)


def test_protocol_on_fake_tree(tree, tmp_path):
    split = _load(tree, tmp_path)
    assert split.class_names == ("Alice_A", "Bob_B", "Carol_C")
    # 10 -> 1 test, 12 -> 1 test, 20 -> 2 test (round(n / 10), at least 1)
    assert len(split.test_labels) == 4 and len(split.train_labels) == 38
    assert set(split.train_labels) == set(split.test_labels) == {0, 1, 2}
    assert not set(split.train_files) & set(split.test_files)
    assert len(set(split.train_files) | set(split.test_files)) == 42
    assert split.train_images.dtype == np.uint8 and split.train_images.shape == (38, 16, 16, 3)
    for f, label in zip(split.train_files, split.train_labels):
        assert f.startswith(split.class_names[label] + "/")
    assert split.source == "lfw" and not split.is_synthetic


def test_strict_counts_message(tree, tmp_path):
    with pytest.raises(ValueError, match=r"found 3 people / 42 images.*158 / 4324.*strict=False"):
        _load(tree, tmp_path, strict=True)


def test_split_determinism(tree, tmp_path):
    a = _load(tree, tmp_path, seed=0)
    b = _load(tree, tmp_path, seed=0)
    c = _load(tree, tmp_path, seed=1)
    assert a.test_files == b.test_files
    np.testing.assert_array_equal(a.test_images, b.test_images)
    assert a.test_files != c.test_files


def test_public_set_is_disjoint(tree, tmp_path):
    ev = _load(tree, tmp_path)
    pub = data.load_lfw_public(str(tree), image_size=16, crop_fraction=1.0, strict=False,
                               cache_dir=str(tmp_path / "cache"), progress=False)
    assert pub.class_names == ("Dan_D", "Eve_E")  # 2..9 images; Frank (1 image) is in neither
    assert not set(pub.class_names) & set(ev.class_names)
    with pytest.raises(ValueError, match="overlap"):
        data.load_lfw_public(str(tree), max_images_per_person=10)


def test_cache_hit_does_not_decode(tree, tmp_path, monkeypatch):
    first = _load(tree, tmp_path)
    assert len(os.listdir(tmp_path / "cache")) == 1

    def boom(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data, "preprocess_image", boom)
    second = _load(tree, tmp_path)
    np.testing.assert_array_equal(first.train_images, second.train_images)


def test_corrupt_file_is_named(tree, tmp_path):
    (tree / "Bob_B" / "Bob_B_0003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="Bob_B/Bob_B_0003.jpg"):
        _load(tree, tmp_path)


def test_missing_directory_message(tmp_path, monkeypatch):
    monkeypatch.delenv("DPACT_LFW_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.LFWNotFoundError, match="fetch_lfw.py"):
        data.load_lfw()


def test_env_var_is_used(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("DPACT_LFW_DIR", str(tree))
    assert data.resolve_lfw_dir() == str(tree)
    assert _load(None, tmp_path).num_classes == 3


def test_crop_and_resize():
    img = np.zeros((10, 10, 3), np.uint8)
    img[3:7, 3:7] = 200  # a bright centre square
    import io
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    out = data.preprocess_image(buf.getvalue(), image_size=4, crop_fraction=0.4)  # the 4x4 centre
    assert out.shape == (4, 4, 3) and out.min() == 200


def test_tfds_records_conversion(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    records = [{"label": name.encode(), "image": rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)}
               for name, n in [("P_One", 10), ("P_Two", 11), ("P_Few", 3)] for _ in range(n)]
    people, images = data.people_from_records(records)
    assert {k: len(v) for k, v in people.items()} == {"P_One": 10, "P_Two": 11, "P_Few": 3}
    decoded = data.preprocess_image(images["P_One/P_One_0001"], image_size=20, crop_fraction=1.0)
    np.testing.assert_array_equal(decoded, records[0]["image"])  # PNG round trip is lossless
    monkeypatch.setattr(data, "_tfds_people", lambda root: (people, images))
    split = data.load_lfw(source="tfds", image_size=8, crop_fraction=1.0, strict=False, progress=False)
    assert split.class_names == ("P_One", "P_Two") and split.source == "lfw-tfds"
    assert len(split.test_labels) == 2 and len(split.train_labels) == 19


def test_make_dataset_scales_and_batches():
    images = np.full((5, 8, 8, 3), 255, np.uint8)
    ds = data.make_dataset(images, np.arange(5), batch_size=2, shuffle=True, seed=0)
    batches = list(ds)
    assert [int(b[0].shape[0]) for b in batches] == [2, 2, 1]
    assert float(batches[0][0].numpy().max()) == 1.0
    with pytest.raises(ValueError, match="uint8"):
        data.make_dataset(images.astype(np.float32), np.arange(5), batch_size=2)


def test_pipelines_run_without_the_autotuner():
    """tf.data's autotuner made every epoch's iterator teardown wait for its model thread (benchmarks/
    epoch_turnover.py): the library's pipelines turn it off and still yield their batches."""
    from dpact_tf.augment import Augmentation
    from dpact_tf.baselines.dssgd import interleave_shards

    images = np.zeros((10, 8, 8, 3), np.uint8)
    labels = np.arange(10) % 3
    for ds in (data.make_dataset(images, labels, batch_size=4),
               data.make_dataset(images, labels, batch_size=4, shuffle=True, augment=Augmentation()),
               interleave_shards(images.astype(np.float32), labels, [np.arange(5), np.arange(5, 10)], batch_size=2)):
        assert ds.options().autotune.enabled is False
        assert sum(1 for _ in ds) > 0


@pytest.mark.skipif(not os.environ.get("DPACT_LFW_DIR"), reason="DPACT_LFW_DIR not set: real LFW not available")
def test_real_lfw_protocol(tmp_path):
    split = data.load_lfw(image_size=32, crop_fraction=0.6, progress=False)
    assert (split.num_classes, len(split.train_labels) + len(split.test_labels)) == data.PAPER_COUNTS == (158, 4324)
    assert len(split.test_labels) == 429 and set(split.test_labels) == set(range(158))
    pub = data.load_lfw_public(image_size=32, crop_fraction=0.6, progress=False)
    assert (pub.num_classes, len(pub.train_labels) + len(pub.test_labels)) == data.PUBLIC_COUNTS
    assert not set(pub.class_names) & set(split.class_names)
