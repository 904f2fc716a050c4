"""The server step under tf.distribute.MirroredStrategy (two logical CPU devices, in a fresh process) behind
the same gRPC front equals the single-device step: dL/d(activation), loss, correct count and weights."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from dpact_tf.edge.client import EdgeClient
from dpact_tf.edge.model import ServerHalf
from dpact_tf.edge.server import EdgeService
from tests.edge_util import ACTIVATION, CLASSES, CONFIG, batch, running, tiny_server

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    server = tiny_server()
mirrored = ServerHalf(server, CONFIG, 10, strategy=strategy)
single = ServerHalf(tiny_server(), CONFIG, 10)
service = EdgeService(mirrored, num_classes=CLASSES, cut="conv1_1", activation_shape=ACTIVATION)
out = {"replicas": strategy.num_replicas_in_sync, "grad": 0.0, "loss": 0.0, "correct": [], "weights": 0.0}
with running(service) as address:
    client = EdgeClient(address, client_id="phone", epsilon=None, delta=1e-5, cut="conv1_1",
                        activation_shape=ACTIVATION, timeout=20.0)
    for step, n in enumerate((5, 8), start=1):  # 5: an uneven split over the two replicas
        x, y = batch(n=n, seed=step)
        grad, loss, correct, _ = client.train_step(step, x, y)
        ref_grad, ref_loss, ref_correct = single.train_step(x, y)
        out["grad"] = max(out["grad"], float(np.max(np.abs(grad - ref_grad))))
        out["loss"] = max(out["loss"], abs(loss - ref_loss))
        out["correct"].append([correct, ref_correct])
    client.close()
out["weights"] = max(float(np.max(np.abs(a.numpy() - b.numpy())))
                     for a, b in zip(mirrored.model.weights, single.model.weights))
out["steps"] = [mirrored.steps, single.steps]
out["grad_scale"] = float(np.max(np.abs(ref_grad)))
print("RESULT " + json.dumps(out))
"""


def test_server_step_under_mirrored_strategy_equals_single_device():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.split("RESULT ", 1)[1])
    assert out["replicas"] == 2 and out["steps"] == [2, 2]
    assert out["grad_scale"] > 1e-4  # the comparison below is not between zeros
    assert out["grad"] < 1e-6 and out["loss"] < 1e-5 and out["weights"] < 1e-5, out
    assert all(a == b for a, b in out["correct"]), out
