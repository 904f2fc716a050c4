"""The server's membership test: its likelihood is the grid release's exact pmf, and it tells members apart."""
import numpy as np
import pytest

from dpact_tf import grid, membership


@pytest.mark.parametrize("releases", [1, 2, 3])
def test_summed_likelihood_is_the_release_pmf_convolved(releases):
    spec = grid.grid_spec(3.0, 1e-5)
    for clean in (0.0, 0.137, 0.5, 0.75):  # 0.75 > R: clamped to D
        n, p = grid.release_pmf(clean, spec)
        total, lo = p, n[0]
        for _ in range(releases - 1):  # independent dither and noise per copy: the pmf of the sum is a convolution
            total, lo = np.convolve(total, p), lo + n[0]
        support = np.arange(lo, lo + len(total))
        pick = support[total > 1e-12][::7]
        got = membership.summed_release_logpmf(pick[:, None], np.full((len(pick), 1), clean, np.float32), spec,
                                               releases)
        np.testing.assert_allclose(np.exp(got), total[pick - lo], rtol=1e-9)
    far = membership.summed_release_logpmf(np.array([[10 ** 6]]), np.zeros((1, 1), np.float32), spec, releases)
    assert far[0] == -np.inf


def test_server_tells_members_from_non_members():
    import tensorflow as tf

    from dpact_tf import build_split_vggface

    tf.keras.utils.set_random_seed(0)
    split = build_split_vggface((32, 32, 3), 2, width=1 / 8, fc_units=8, epsilon=20.0, noise_seed=1)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(60, 32, 32, 3)).astype(np.float32)
    members, outsiders = images[:30], images[30:]
    scores = membership.server_membership_scores(split.clean_client(), split.dp_layer, members,
                                                 np.concatenate([members, outsiders]), releases=3)
    # with 32 x 32 x 8 coordinates at epsilon 20 every member's own releases are far likelier than anyone else's
    assert scores[:30].min() > scores[30:].max()
    clean = membership.server_membership_scores(split.clean_client(), None, members, images, releases=3)
    # without noise a member's release is its clean activation: distance 0 up to float32 rounding
    assert np.allclose(clean[:30], 0, atol=0.05) and clean[:30].min() > clean[30:].max()
