"""The noise of a deployed client, tested the way the server would attack it.

The server holds the model file and every message.  If two processes that load the same artefact and run the
same input draw the same noise, the server runs the artefact itself, subtracts its own noise from the phone's
release and gets the clean activation back.  Every deployable Keras artefact of a ``seed=None`` client
(SavedModel, ``.keras``, a client rebuilt from the same code and weights) is therefore run in two separate
processes -- both calling ``set_random_seed(0)``, as the reproduction code does -- and their noise must be
independent.  An ``int`` seed is the opposite contract: reproducible across processes.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import dpact_tf
from dpact_tf import DPActivation, build_split_vggface, privacy

SHAPE = (32, 32, 3)
EPSILON = 5.0

# Run in a fresh interpreter: load every artefact, release the same input twice through each path, and write
# the noise (release minus the clean activation, which the attacker can compute from the model file).
_LOADER = r"""
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf
from dpact_tf import build_split_vggface
from dpact_tf.layers import normalize_activations

folder, out = sys.argv[1], sys.argv[2]
spec = json.load(open(os.path.join(folder, "spec.json")))
tf.keras.utils.set_random_seed(0)  # a global seed in the loading process must not fix the noise either
x = np.load(os.path.join(folder, "x.npy"))
pre = np.load(os.path.join(folder, "pre.npy"))  # conv1 output before clip + Eq. (1)
clean = normalize_activations(tf.constant(pre)).numpy()
noise = {}
for tag in ("fresh", "seeded"):
    sm = tf.saved_model.load(os.path.join(folder, tag + "_savedmodel"))
    keras_model = tf.keras.models.load_model(os.path.join(folder, tag + ".keras"))
    graph = tf.function(lambda t: keras_model(t))
    for path, fn in (("savedmodel", lambda: sm(tf.constant(x))), ("keras_eager", lambda: keras_model(x)),
                     ("keras_graph", lambda: graph(tf.constant(x))),
                     ("keras_predict", lambda: keras_model.predict(x, verbose=0))):
        noise[f"{tag}/{path}"] = np.stack([np.asarray(fn()) - clean for _ in range(2)])
# The client rebuilt from the same code and the same initialization seed, with seed=None.
rebuilt = build_split_vggface(tuple(spec["shape"]), 3, width=1 / 16, fc_units=8, epsilon=spec["epsilon"]).client
rebuilt.set_weights([np.load(os.path.join(folder, f"w{i}.npy")) for i in range(spec["weights"])])
noise["fresh/rebuilt"] = np.stack([rebuilt(x).numpy() - clean for _ in range(2)])
# The compiled SplitClient, as the edge client runs it: its training forward and its integer release.
from dpact_tf.split import SplitClient
phone = SplitClient(rebuilt, None, trainable=False)
noise["fresh/splitclient"] = np.stack([phone.release(x).numpy() - clean for _ in range(2)])
levels = [phone.release_levels(x) for _ in range(2)]
noise["fresh/splitclient_levels"] = np.stack([lv * np.float32(step) - clean for lv, step in levels])
np.savez(out, **noise)
"""


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("artefacts")
    tf.keras.utils.set_random_seed(0)  # the global seed set before saving must not end up in the artefact
    split = build_split_vggface(SHAPE, 3, width=1 / 16, fc_units=8, epsilon=EPSILON)
    seeded = build_split_vggface(SHAPE, 3, width=1 / 16, fc_units=8, epsilon=EPSILON, noise_seed=7).client
    seeded.set_weights(split.client.get_weights())
    x = np.random.default_rng(0).uniform(size=(1,) + SHAPE).astype(np.float32)
    for tag, model in (("fresh", split.client), ("seeded", seeded)):
        model(x)  # a release before saving: the saved state is not the initial one
        tf.saved_model.save(model, str(folder / f"{tag}_savedmodel"))
        model.save(str(folder / f"{tag}.keras"))
    np.save(folder / "x.npy", x)
    pre = tf.keras.Model(split.client.input, split.client.get_layer("dp_activation").input)(x).numpy()
    np.save(folder / "pre.npy", pre)
    weights = split.client.get_weights()
    for i, w in enumerate(weights):
        np.save(folder / f"w{i}.npy", w)
    (folder / "spec.json").write_text(json.dumps({"shape": list(SHAPE), "epsilon": EPSILON, "weights": len(weights)}))
    outs = [folder / f"p{i}.npz" for i in (1, 2)]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(dpact_tf.__file__)))  # same dpact_tf as here
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _LOADER, str(folder), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for out in outs]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    std = split.dp_layer.stddev
    return [dict(np.load(out)) for out in outs], std


FRESH_PATHS = ["fresh/savedmodel", "fresh/keras_eager", "fresh/keras_graph", "fresh/keras_predict", "fresh/rebuilt",
               "fresh/splitclient", "fresh/splitclient_levels"]


@pytest.mark.parametrize("path", FRESH_PATHS)
def test_seed_none_artefacts_draw_fresh_noise_per_process(two_processes, path):
    (p1, p2), std = two_processes
    a, b = p1[path], p2[path]
    n = a[0].size  # 1 x 32 x 32 x 4 = 4,096 coordinates
    # Independent noise: the sample correlation is ~ N(0, 1/n); 6 / sqrt(n) ~ 0.094 fails 1 run in 5e8.
    bound = 6 / math.sqrt(n)
    assert abs(_corr(a[0], b[0])) < bound, f"{path}: two processes replay the same noise"
    assert abs(_corr(a[0], a[1])) < bound, f"{path}: two releases in one process share noise"
    # And it is the noise the layer promises (std of a sample std ~ std / sqrt(2n)).
    assert abs(a[0].std() - std) < 6 * std / math.sqrt(2 * n)


@pytest.mark.parametrize("path", FRESH_PATHS)
def test_attacker_with_the_model_file_cannot_subtract_the_noise(two_processes, path):
    # The attacker's process runs the artefact on the same input and subtracts its own noise from the phone's
    # release: with independent noise what is left is off by sqrt(2) noise stds, not by float rounding.
    (phone, attacker), std = two_processes
    error = phone[path][0] - attacker[path][0]  # (clean + n_phone) - (clean + n_attacker) = n_phone - n_attacker
    assert error.std() > 0.9 * math.sqrt(2) * std


@pytest.mark.parametrize("path", ["seeded/savedmodel", "seeded/keras_eager", "seeded/keras_graph",
                                  "seeded/keras_predict"])
def test_int_seed_is_reproducible_across_processes(two_processes, path):
    (p1, p2), _ = two_processes
    np.testing.assert_allclose(p1[path], p2[path], atol=1e-6)
    assert not np.allclose(p1[path][0], p1[path][1]), "a second release must get fresh noise"


def test_seed_none_graph_has_no_seeded_random_op():
    # The traced graph itself: every stateful random op is unseeded, even under a global seed.
    tf.keras.utils.set_random_seed(0)
    layer = DPActivation(epsilon=EPSILON)
    concrete = tf.function(lambda t: layer(t)).get_concrete_function(tf.TensorSpec((1, 2, 2, 4)))
    random_ops = [op for op in concrete.graph.get_operations() if op.type.startswith("Random")]
    assert random_ops, "expected an unseeded random op in the graph"
    for op in random_ops:
        assert (op.get_attr("seed"), op.get_attr("seed2")) == (0, 0), op


def _calibration_markdown(rows):
    lines = ["| $\\epsilon$ | classic noise std $S_f\\sigma$ | classic $\\delta$ if a coordinate moved by $S_f$ "
             "| classic $\\delta$ for the true range $1/\\sqrt{3}$ | analytic noise std |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['epsilon']:g} | {r['classic_noise_std']:.4f} | {r['classic_delta_at_sensitivity']:.2e} "
                     f"| {r['classic_delta_at_true_range']:.2e} | {r['analytic_noise_std']:.4f} |")
    return "\n".join(lines)


def test_method_chapter_calibration_table_is_the_librarys():
    # book/method.md is plain markdown: its table of achieved deltas must be what the library computes.
    chapter = open(os.path.join(os.path.dirname(__file__), "..", "book", "method.md")).read()
    table = _calibration_markdown(privacy.calibration_table([1, 2, 3, 5, 10, 14, 20, 25]))
    assert table in chapter, f"regenerate the table in book/method.md:\n{table}"
    limit = privacy.classic_valid_max_epsilon(1e-5, true_range=privacy.PAPER_ACTIVATION_RANGE)
    assert f"{limit:.2f}" in chapter and f"{privacy.classic_valid_max_epsilon(1e-5, sensitivity=1.0):.2f}" in chapter
