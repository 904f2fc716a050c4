import json
import subprocess
import sys

import pytest

from dpact_tf import build_split_vggface, encoding
from dpact_tf.deploy.convert import convert_client_head
from dpact_tf.repro.mobile_cost import bare_process_mb, save_keras_twin, upload_bytes


def test_upload_bytes():
    # the paper's conv1_1 activation: 224 * 224 * 64 = 3,211,264 values
    assert upload_bytes((224, 224, 64)) == {"float32": 12_845_056, "float16": 6_422_528, "uint8": 3_211_264}
    assert upload_bytes((8, 8, 4)) == {e: encoding.bytes_per_image((8, 8, 4), e) for e in encoding.ENCODINGS}


def test_the_keras_twin_has_the_clients_weights_and_no_noise(tmp_path):
    import numpy as np
    import tensorflow as tf

    noisy = build_split_vggface((32, 32, 3), 2, width=1 / 16, fc_units=2, epsilon=5.0).client
    twin = tf.keras.models.load_model(save_keras_twin(noisy, str(tmp_path / "twin.keras"), image_size=32,
                                                      width=1 / 16))
    assert all(np.array_equal(a, b) for a, b in zip(twin.get_weights(), noisy.get_weights()))
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
    once, again = twin(x, training=True).numpy(), twin(x, training=True).numpy()
    assert np.array_equal(once, again)  # no noise: the same output twice
    assert not np.array_equal(noisy(x, training=True).numpy(), noisy(x, training=True).numpy())


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    split = build_split_vggface((32, 32, 3), 3, width=1 / 16, fc_units=8)
    path = str(tmp_path_factory.mktemp("mobile") / "head.tflite")
    convert_client_head(split.client, path)
    return path


@pytest.mark.parametrize("mode", ["release", "train"])
def test_litert_measurement_imports_neither_tensorflow_nor_scipy(head, mode):
    res = subprocess.run([sys.executable, "-m", "dpact_tf.repro.mobile_cost", "litert", head, "--mode", mode, "--batch", "2", "--repeats", "2",
                          "--workers", "2"],
                         check=True, capture_output=True, text=True, timeout=300).stdout.strip().splitlines()[-1]
    res = json.loads(res)
    # the measured process is a phone app's: no TensorFlow, no SciPy
    assert res["tensorflow_imported"] is False and res["scipy_imported"] is False
    assert res["batch"] == 2 and res["batch_load_s"] > 0 and res["peak_rss_mb_process"] > 0
    if mode == "release":
        assert res["activation_shape"] == [32, 32, 4] and res["workers"] == 2 and res["forward_s"] > 0 and res["model_load_s"] > 0
        lo, hi = res["forward_iqr_s"]
        assert lo <= res["forward_s"] <= hi
    else:
        assert res["backward_s_per_sample"] > 0


def test_bare_process_is_the_baseline():
    assert 10 < bare_process_mb() < 400


def test_cost_table_shows_three_digits_and_a_dash_for_what_a_runtime_does_not_measure():
    from dpact_tf.repro.studies import cost_table, measure_text

    assert [measure_text(v) for v in (None, float("nan"), 0.012345, 2.5, 99.94, 1234.5)] == \
        ["—", "—", "0.0123", "2.5", "99.9", "1,234"]
    res = {"configs": [{"label": "small", "image_size": 64,
                        "variants": {"parallel strips": {"forward_s": 0.01234, "model_load_s": 0.5}},
                        "keras": {"forward_s": 0.02, "backward_s_per_sample": 0.001}}],
           "paper_nexus6p": {"load_s": 1.0, "forward_s": 2.0, "backward_s_per_sample": 3.0, "memory_mb": 150.0}}
    rows = cost_table(res)
    assert [(r["head"], r["runtime"]) for r in rows] == [("small 64×64", "parallel strips"), ("small 64×64", "Keras"),
                                                         ("paper 224×224", "Nexus 6P (bounds)")]
    assert rows[0]["forward, batch 8 (s)"] == "0.0123" and rows[0]["model load (s)"] == "0.5"
    assert rows[0]["backward / sample (s)"] == "—" and rows[1]["backward / sample (s)"] == "0.001"
    assert rows[2]["release (MB)"] == rows[2]["train (MB)"] == "150" and rows[2]["model load (s)"] == "—"
    assert len({len(r) for r in rows}) == 1  # every row has every column
