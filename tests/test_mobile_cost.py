import json
import subprocess
import sys

import pytest

from dpact_tf import build_split_vggface, encoding
from dpact_tf.deploy.convert import convert_client_head
from dpact_tf.repro.mobile_cost import DEPLOYED, PAPER_NEXUS6P, VARIANTS, bare_process_mb, run_mobile_benchmark, upload_bytes



def test_upload_bytes():
    # the paper's conv1_1 activation: 224 * 224 * 64 = 3,211,264 values
    assert upload_bytes((224, 224, 64)) == {"float32": 12_845_056, "float16": 6_422_528, "uint8": 3_211_264}
    assert upload_bytes((8, 8, 4)) == {e: encoding.bytes_per_image((8, 8, 4), e) for e in encoding.ENCODINGS}


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


def test_benchmark_compares_variants_fairly(tmp_path):
    names = ["reference kernels, whole batch", DEPLOYED]
    res = run_mobile_benchmark([("tiny", 32, 1 / 16)], out_dir=str(tmp_path), batch=2, repeats=2, variants=names,
                               jpeg_dir="")
    assert json.load(open(tmp_path / "mobile_cost.json"))["configs"][0]["label"] == "tiny"
    conf = res["configs"][0]
    assert set(conf["variants"]) == set(names) and conf["litert"] is conf["variants"][DEPLOYED]
    for name, lite in conf["variants"].items():
        assert lite["noise_source"].startswith("the app's entropy only") and lite["builtin_ops_only"]
        assert lite["epsilon"] == conf["keras"]["epsilon"] == res["epsilon"] and lite["num_threads"] == res["num_threads"]
        assert lite["release_memory_mb"] > 0 and lite["train_memory_mb"] > 0
        assert lite["max_batch"] == VARIANTS[name]["max_batch"] and lite["workers"] == VARIANTS[name]["workers"]
        assert {"forward_s", "backward_s_per_sample"} <= set(conf["ratio_litert_over_keras"][name])
    assert conf["keras"]["forward_s"] > 0 and conf["keras"]["num_threads"] == res["num_threads"]
    # interleaved: every runtime timed once per round, the ratio also taken round by round
    assert res["interleaved"] and len(conf["keras"]["forward_all_s"]) == len(conf["litert"]["forward_all_s"]) == 2
    paired = conf["ratio_litert_over_keras"][DEPLOYED]["forward_paired"]
    ratios = sorted(a / b for a, b in zip(conf["litert"]["forward_all_s"], conf["keras"]["forward_all_s"]))
    assert paired["median"] == pytest.approx(sum(ratios) / 2) and paired["iqr"][0] <= paired["median"]
    assert conf["ratio_litert_over_keras"][DEPLOYED]["forward_cpu"] == pytest.approx(
        conf["litert"]["forward_cpu_s"] / conf["keras"]["forward_cpu_s"])
    assert conf["litert"]["tensorflow_imported"] is False
    assert conf["variants"]["reference kernels, whole batch"]["rows_per_call"] == 32
    assert res["bare_process_mb"] > 0 and "load_avg_start" in res
    assert set(PAPER_NEXUS6P) == {"load_s", "forward_s", "backward_s_per_sample", "memory_mb"}


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
