"""What the book runner removes from an executed chapter (fast: no kernel)."""
import os

import nbformat

from dpact_tf.repro.book import clean_executed, rerun_note
from dpact_tf.repro.results import REPO


def test_clean_executed_drops_logs_hides_parameters_and_adds_the_rerun_note(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = 'small'", metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell("profile = 'tiny'\nresults_dir = '/abs/path'",
                                         metadata={"tags": ["injected-parameters"]})
    work = nbformat.v4.new_code_cell("train()")
    work.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="epoch 1/8: 40%|####  | 2/5 [00:01, 2.1it/s]\n"),
        nbformat.v4.new_output("stream", name="stdout",
                               text="WARNING:tensorflow:5 out of the last 9 calls triggered retracing\nData: 158 people\n"),
        nbformat.v4.new_output("stream", name="stdout", text="W1123 11:02:03.123 absl line\n"),
        nbformat.v4.new_output("display_data", data={"text/plain": "a table"}),
    ]
    nb.cells = [params, injected, work]
    path = tmp_path / "02_scratch.ipynb"
    nbformat.write(nb, str(path))
    report = clean_executed(str(path), name="02_scratch", parameters={"profile": "tiny", "epsilons": [None, 3.0]})
    out = nbformat.read(str(path), as_version=4)
    assert report["stderr_outputs_dropped"] == 3
    assert [o.get("text", o.get("data")) for o in out.cells[2].outputs] == ["Data: 158 people\n", {"text/plain": "a table"}]
    assert "remove-cell" in out.cells[0].metadata.tags and "remove-cell" in out.cells[1].metadata.tags
    assert out.cells[-1].cell_type == "markdown" and "--only 02_scratch --profile tiny" in out.cells[-1].source


def test_rerun_note_is_a_command_a_reader_can_paste():
    note = rerun_note("04_partition", {"profile": "small", "dataset": "lfw", "epsilons": [None, 2.0]})
    assert "jupytext --to ipynb notebooks/04_partition.md -o - | papermill - book/executed/04_partition.ipynb" in note
    assert "-p profile 'small'" in note and "-y 'epsilons: [null, 2.0]'" in note
    local = rerun_note("04_partition", {"profile": "small", "results_dir": "/home/me/results",
                                        "vggface_weights": "/home/me/vgg.h5"})
    assert "/home/me" not in local and "results_dir" not in local and "-p profile 'small'" in local


def test_clean_executed_names_no_place_on_this_machine(tmp_path, monkeypatch):
    lfw, results = tmp_path / "faces" / "lfw", tmp_path / "runs"
    monkeypatch.setenv("DPACT_LFW_DIR", str(lfw))
    nb = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell(f"results_dir = {str(results)!r}", metadata={"tags": ["injected-parameters"]})
    work = nbformat.v4.new_code_cell("load()")
    work.outputs = [
        nbformat.v4.new_output("display_data", data={"text/markdown": f"LFW ({lfw}), 158 people",
                                                     "text/plain": f"see {REPO}/book and {results}/small"}),
        nbformat.v4.new_output("stream", name="stdout", text=f"cached in {os.path.expanduser('~')}/x\n"),
    ]
    nb.cells = [injected, work]
    nb.metadata["papermill"] = {"input_path": f"{REPO}/book/executed/x.source.ipynb",
                                "parameters": {"results_dir": str(results)}}
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, str(path))
    clean_executed(str(path), name="02_scratch", parameters={"profile": "tiny", "results_dir": str(results)})
    out = nbformat.read(str(path), as_version=4)
    data = out.cells[1].outputs[0].data
    assert data["text/markdown"] == "LFW (DPACT_LFW_DIR), 158 people"
    assert data["text/plain"] == "see ./book and DPACT_RESULTS_DIR/small"
    assert out.cells[1].outputs[1].text == "cached in ~/x\n"
    assert out.cells[0].source == "results_dir = 'DPACT_RESULTS_DIR'"
    assert out.metadata.papermill == {"input_path": "./book/executed/x.source.ipynb",
                                      "parameters": {"results_dir": "DPACT_RESULTS_DIR"}}
