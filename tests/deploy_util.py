"""The head the deploy tests share: a tiny client exported once per test module."""
import numpy as np
import pytest
import tensorflow as tf

from dpact_tf import build_split_vggface
from dpact_tf.deploy.convert import convert_client_head

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tf.keras.utils.set_random_seed(0)
    split = build_split_vggface(SHAPE, 3, width=1 / 8, fc_units=8, epsilon=5.0, noise_seed=0)
    out = str(tmp_path_factory.mktemp("head") / "head.tflite")
    meta = convert_client_head(split.client, out)
    return split, out, meta


def _images(n=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE, dtype=np.uint8)


def _clean(split, images):
    return split.clean_client()(images.astype(np.float32) / 255.0).numpy()
