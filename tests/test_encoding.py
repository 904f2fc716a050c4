import numpy as np
import pytest

from dpact_tf.encoding import EncodedActivation, bytes_per_image, decode, decode_levels, encode


def _act(seed=0):
    return np.random.default_rng(seed).normal(0.3, 2.0, (2, 4, 4, 8)).astype(np.float32)


def test_float32_round_trip_is_exact():
    x = _act()
    enc = encode(x, "float32")
    assert enc.nbytes == x.size * 4 == 2 * bytes_per_image(x.shape[1:], "float32")
    np.testing.assert_array_equal(decode(enc), x)


def test_float16_error_is_half_precision():
    x = _act(1)
    enc = encode(x, "float16")
    assert enc.nbytes == x.size * 2
    # float16 has an 11-bit significand: relative rounding error <= 2^-11
    np.testing.assert_allclose(decode(enc), x, rtol=2.0 ** -11, atol=1e-7)


def test_uint8_error_is_half_a_step():
    x = _act(2)
    enc = encode(x, "uint8")
    assert enc.nbytes == x.size
    step = (x.max() - x.min()) / 255.0
    assert enc.scale == pytest.approx(step) and enc.offset == pytest.approx(x.min())
    err = np.abs(decode(enc) - x)
    assert err.max() <= step / 2 + 1e-6
    assert err.max() > step / 10  # it is really quantized, not passed through


def test_constant_tensor_uint8():
    x = np.full((1, 2, 2, 3), 0.25, np.float32)
    np.testing.assert_allclose(decode(encode(x, "uint8")), x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(bad):
    x = _act()
    x[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        encode(x, "float16")


def test_payload_shape_mismatch_and_bad_scale():
    enc = encode(_act(), "uint8")
    with pytest.raises(ValueError, match="needs"):
        decode(EncodedActivation(enc.data[:-1], "uint8", enc.shape, enc.scale, enc.offset))
    with pytest.raises(ValueError, match="scale"):
        decode(EncodedActivation(enc.data, "uint8", enc.shape, float("nan"), enc.offset))
    with pytest.raises(ValueError, match="encoding must be one of"):
        encode(_act(), "int4")


def test_grid_round_trip_is_exact_with_hand_derived_values():
    # step 0.25 is a power of two: every level times it is exact in float32
    levels = np.array([[-3, 0], [5, 127]], np.int32).reshape(1, 2, 2, 1)
    enc = encode(levels, "grid", step=0.25)
    assert enc.encoding == "grid" and enc.scale == 0.25 and enc.nbytes == 4  # int8: one byte per level
    assert enc.data == bytes([0xFD, 0x00, 0x05, 0x7F])  # -3 is 0xFD in two's complement
    np.testing.assert_array_equal(decode(enc), np.array([-0.75, 0.0, 1.25, 31.75], np.float32).reshape(1, 2, 2, 1))
    got, step = decode_levels(enc)
    assert got.dtype == np.int32 and step == 0.25
    np.testing.assert_array_equal(got, levels)


def test_grid_decode_is_the_float64_product_rounded_once():
    # 0.1 is not a float32: levels * 0.1 rounded once to float32, e.g. 3 * 0.1 = 0.30000000000000004 -> 0.3f
    levels = np.array([-7, 1, 3, 1000], np.int64).reshape(1, 1, 1, 4)
    enc = encode(levels, "grid", step=0.1)
    assert enc.nbytes == 8  # 1000 needs int16
    np.testing.assert_array_equal(decode(enc), (levels * 0.1).astype(np.float32))
    assert decode(enc).dtype == np.float32


@pytest.mark.parametrize("lo, hi, width", [(-128, 127, 1), (-129, 0, 2), (0, 128, 2), (-32768, 32767, 2),
                                           (0, 32768, 4), (-2**31, 2**31 - 1, 4)])
def test_grid_packs_in_the_smallest_integer_type(lo, hi, width):
    levels = np.array([lo, hi], np.int64).reshape(1, 1, 1, 2)
    enc = encode(levels, "grid", step=1.0)
    assert enc.nbytes == 2 * width == bytes_per_image((1, 1, 2), "grid", level_range=(lo, hi))
    np.testing.assert_array_equal(decode_levels(enc)[0], levels)


@pytest.mark.parametrize("levels, match", [
    (np.array([0.0, 1.0]), "integer levels"),                 # floats, even integral ones, are not levels
    (np.array([0.0, np.nan]), "integer levels"),
    (np.array([0, 2**31], np.int64), "fit in int32"),
    (np.array([-2**31 - 1, 0], np.int64), "fit in int32"),
])
def test_grid_refuses_what_is_not_an_int32_level(levels, match):
    with pytest.raises(ValueError, match=match):
        encode(levels.reshape(1, 1, 1, 2), "grid", step=0.5)


@pytest.mark.parametrize("step", [0.0, -0.5, np.nan, np.inf, None])
def test_grid_refuses_a_bad_step(step):
    with pytest.raises(ValueError, match="step"):
        encode(np.zeros((1, 1, 1, 2), np.int32), "grid", step=step)


def test_grid_refuses_inconsistent_payloads_and_float_steps():
    enc = encode(np.arange(6, dtype=np.int32).reshape(1, 1, 2, 3), "grid", step=0.5)
    for data in (enc.data[:-1], enc.data * 3, b""):  # 5 bytes, 3 bytes per level, nothing
        with pytest.raises(ValueError, match="1, 2 or 4 bytes per level"):
            decode(EncodedActivation(data, "grid", enc.shape, enc.scale))
    for scale in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="step"):
            decode(EncodedActivation(enc.data, "grid", enc.shape, scale))
    with pytest.raises(ValueError, match="for the grid encoding only"):
        encode(_act(), "float32", step=0.5)
    with pytest.raises(ValueError, match="level_range"):
        bytes_per_image((1, 2, 3), "grid")
