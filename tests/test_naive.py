"""The naive references are themselves checked against PyTorch, so they can be trusted elsewhere."""

import numpy as np
import pytest

pytest.importorskip("torch")

import naive  # noqa: E402
import torch_ref  # noqa: E402
from conftest import assert_close  # noqa: E402

# (N, C_in, C_out, groups, spatial, kernel, stride, padding, dilation, padding_mode)
CONV_CASES = [
    (2, 3, 4, 1, (9,), (3,), 1, 1, 1, "zeros"),
    (1, 4, 6, 2, (10,), (4,), 2, 3, 1, "reflect"),
    (3, 2, 2, 2, (7,), (2,), 1, "same", 3, "circular"),
    (1, 3, 3, 1, (6,), (3,), 3, 2, 2, "replicate"),
    (2, 2, 3, 1, (7, 6), (3, 2), (2, 1), (1, 0), (1, 2), "zeros"),
    (1, 4, 4, 4, (6, 7), (3, 3), 1, "same", 1, "reflect"),
    (2, 4, 2, 2, (5, 6), (2, 3), 1, "same", (2, 1), "replicate"),
    (1, 3, 6, 3, (6, 5), (3, 2), (1, 2), (2, 1), 1, "circular"),
    (1, 2, 2, 1, (5, 6), (2, 2), 1, "valid", 1, "zeros"),
    (2, 2, 4, 2, (5, 4, 5), (2, 3, 2), (2, 1, 1), (1, 1, 0), (1, 1, 2), "zeros"),
    (1, 3, 3, 3, (4, 5, 4), (3, 3, 3), 1, 1, 1, "reflect"),
    (1, 2, 2, 1, (4, 4, 5), (2, 2, 3), 1, "same", (1, 2, 1), "circular"),
    (2, 2, 3, 1, (3, 4, 4), (2, 2, 2), (1, 2, 1), 2, 1, "replicate"),
]

# (N, C_in, C_out, groups, spatial, kernel, stride, padding, output_padding, dilation)
TRANSPOSE_CASES = [
    (2, 3, 2, 1, (5,), (3,), 2, 1, 1, 1),
    (1, 4, 6, 2, (4,), (2,), 3, 0, 2, 2),
    (3, 2, 2, 2, (6,), (4,), 1, 2, 0, 1),
    (1, 2, 3, 1, (3, 4), (3, 2), (2, 1), (1, 0), (1, 0), (1, 2)),
    (2, 4, 4, 4, (4, 3), (2, 2), 2, 0, 0, 1),
    (1, 6, 3, 3, (3, 3), (3, 3), (3, 1), (2, 1), (2, 0), 1),
    (1, 2, 4, 2, (3, 2, 3), (2, 3, 2), (2, 1, 2), (0, 1, 1), (1, 0, 0), (1, 1, 2)),
    (2, 3, 3, 1, (2, 3, 2), (3, 2, 2), 1, 1, 0, 1),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_matches_torch(case):
    n, c_in, c_out, groups, spatial, kernel, stride, padding, dilation, mode = case
    rng = np.random.default_rng(len(spatial) * 100 + c_in)
    x = rng.standard_normal((n, c_in) + spatial)
    w = rng.standard_normal((c_out, c_in // groups) + kernel)
    b = rng.standard_normal(c_out)
    y = naive.conv(x, w, b, stride, padding, dilation, groups, mode)
    go = rng.standard_normal(y.shape)
    y_t, gx_t, gw_t, gb_t = torch_ref.conv(x, w, b, stride, padding, dilation, groups, mode, grad_out=go)
    assert_close(y, y_t, what="forward")
    gx, gw, gb = naive.conv_backward(go, x, w, stride, padding, dilation, groups, mode)
    assert_close(gx, gx_t, what="grad_x")
    assert_close(gw, gw_t, what="grad_weight")
    assert_close(gb, gb_t, what="grad_bias")


@pytest.mark.parametrize("case", TRANSPOSE_CASES, ids=str)
def test_conv_transpose_matches_torch(case):
    n, c_in, c_out, groups, spatial, kernel, stride, padding, output_padding, dilation = case
    rng = np.random.default_rng(len(spatial) * 100 + c_in + 7)
    x = rng.standard_normal((n, c_in) + spatial)
    w = rng.standard_normal((c_in, c_out // groups) + kernel)
    b = rng.standard_normal(c_out)
    y = naive.conv_transpose(x, w, b, stride, padding, output_padding, groups, dilation)
    go = rng.standard_normal(y.shape)
    y_t, gx_t, gw_t, gb_t = torch_ref.conv_transpose(
        x, w, b, stride, padding, output_padding, groups, dilation, grad_out=go
    )
    assert_close(y, y_t, what="forward")
    gx, gw, gb = naive.conv_transpose_backward(go, x, w, stride, padding, output_padding, groups, dilation)
    assert_close(gx, gx_t, what="grad_x")
    assert_close(gw, gw_t, what="grad_weight")
    assert_close(gb, gb_t, what="grad_bias")


@pytest.mark.parametrize("mode", naive.PADDING_MODES)
def test_pad_adjoint_is_the_transpose_of_pad(mode):
    # <pad(x), g> == <x, pad_adjoint(g)> for every x, g: the definition of the adjoint
    rng = np.random.default_rng(3)
    pairs = ((2, 1), (0, 3))
    x = rng.standard_normal((2, 3, 4, 5))
    g = rng.standard_normal((2, 3, 7, 8))
    lhs = np.sum(naive.pad(x, pairs, mode) * g)
    rhs = np.sum(x * naive.pad_adjoint(g, pairs, mode))
    assert abs(lhs - rhs) <= 1e-12 * np.sum(np.abs(x)) * np.sum(np.abs(g))


def test_nan_and_inf_propagate_like_torch():
    x = np.random.default_rng(5).standard_normal((1, 2, 6, 6))
    w = np.random.default_rng(6).standard_normal((3, 2, 3, 3))
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 4, 4] = np.inf
    y = naive.conv(x, w, None, 1, 1, 1, 1, "zeros")
    y_t = torch_ref.conv(x, w, None, 1, 1, 1, 1, "zeros")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_t))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(y_t))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(y_t))
    assert np.isfinite(y).any() and np.isnan(y).any()
