"""The fine-tuning chapter with real VGG-Face weights (the documented command for connected users), on a file of
the tiny profile's shapes; apart from the tiny book so that it runs beside it."""
import json

import pytest

from dpact_tf.repro.book import run_notebooks


def test_finetune_chapter_runs_with_vggface_weights(tmp_path, tiny_vggface_h5):
    """The documented command for connected users (`python -m dpact_tf.repro run --only 03_finetune
    --vggface-weights ...`), on a keras-vggface-layout file of the tiny profile's shapes."""
    path, _ = tiny_vggface_h5
    with pytest.raises(FileNotFoundError, match="fetch_vggface_weights"):
        run_notebooks(profile="tiny", dataset="synthetic", out_dir=str(tmp_path / "x"), only=["03_finetune"],
                      vggface_weights=str(tmp_path / "missing.h5"))
    run_notebooks(profile="tiny", dataset="synthetic", out_dir=str(tmp_path / "executed"), only=["03_finetune"],
                  results_dir=str(tmp_path / "results"), epsilons=[None, 3.0], vggface_weights=str(path))
    m = json.load(open(tmp_path / "results" / "tiny" / "synthetic" / "metrics" / "finetune.json"))
    assert m["pretrain"]["source"] == "vggface" and m["pretrain"]["people"] == 2622 and len(m["histories"]) == 2
    nb = json.loads((tmp_path / "executed" / "03_finetune.ipynb").read_text())
    assert nb["metadata"]["papermill"]["parameters"]["vggface_weights"] == str(path)
    text = "".join("".join(o.get("data", {}).get("text/markdown", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "Public model: VGG-Face (Parkhi et al. 2015)" in text
