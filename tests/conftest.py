import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest


@pytest.fixture
def tiny_vggface_h5(tmp_path):
    """A weights file in the keras-vggface layout (random weights) with the ``tiny`` profile's shapes and VGG-Face's
    2,622-way fc8: what data_scripts/fetch_vggface_weights.py downloads, shrunk.  Returns (path, weights)."""
    import numpy as np

    from dpact_tf import build_split_vggface
    from dpact_tf.repro.profiles import get_profile
    from dpact_tf.weights import write_keras_h5_weights

    shapes = build_split_vggface(num_classes=2622, **get_profile("tiny").model_kwargs())
    rng = np.random.default_rng(0)
    weights = {layer.name: [rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.weights]
               for layer in shapes.client.layers + shapes.server.layers if layer.name.startswith(("conv", "fc"))}
    path = tmp_path / "vggface.h5"
    write_keras_h5_weights(str(path), weights)
    return path, weights


@pytest.fixture(scope="session")
def tiny_pretrained_results(tmp_path_factory):
    """A results directory holding the ``tiny`` public model pretrained on synthetic faces, shared by the tests
    that start from it (tests/test_repro_runs.py, tests/test_baselines_repro.py): one pretraining per process.
    Their runs are cached there by key, so a test finds the others' runs, never other settings'."""
    from dpact_tf.repro.pretrain import pretrain

    results = str(tmp_path_factory.mktemp("tiny_pretrained"))
    pretrain("tiny", "synthetic", results_dir=results, progress=False)
    return results


# Files that take minutes, run first: `make test` spreads files over two processes (pytest-xdist, --dist loadfile
# --no-loadscope-reorder keeps this order), so the other process works through the quick files meanwhile instead of
# waiting at the end for the tiny book.
_SLOW_FIRST = ("test_notebooks.py",)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
