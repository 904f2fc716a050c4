import json
import subprocess
import sys

from dpact_tf import build_split_vggface
from dpact_tf.export import convert_client_head
from dpact_tf.mobile import PAPER_NEXUS6P, measure_keras, upload_bytes


def test_upload_bytes():
    # the paper's conv1_1 activation: 224 * 224 * 64 = 3,211,264 values
    assert upload_bytes((224, 224, 64)) == {"float32": 12_845_056, "float16": 6_422_528, "uint8": 3_211_264}


def test_litert_measurement_is_tensorflow_free(tmp_path):
    split = build_split_vggface((32, 32, 3), 3, width=1 / 16, fc_units=8)
    path = str(tmp_path / "head.tflite")
    convert_client_head(split.client, path)
    out = subprocess.run([sys.executable, "-m", "dpact_tf.mobile", "litert", path, "--batch", "2", "--repeats", "3"],
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    res = json.loads(out)
    assert res["tensorflow_imported"] is False
    assert res["activation_shape"] == [32, 32, 4] and res["batch"] == 2
    for key in ("load_s", "forward_s", "backward_s_per_sample", "peak_rss_mb"):
        assert res[key] > 0
    keras = measure_keras(split.client, batch=2, repeats=3)
    assert keras["forward_s"] > 0 and keras["backward_s_per_sample"] > 0
    assert set(PAPER_NEXUS6P) == {"load_s", "forward_s", "backward_s_per_sample", "memory_mb"}
