import json

import numpy as np

from dpact_tf.jsonio import write_json


def test_numpy_values_and_atomic_replace(tmp_path):
    path = tmp_path / "sub" / "x.json"
    write_json(str(path), {"a": np.float32(1.5), "b": np.arange(3), "c": None})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": None}
    write_json(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]  # no temporary file left behind
