"""Forward and backward against PyTorch itself, float32 and float64, every algorithm.

Padding modes go through torch.nn.Conv{n}d. The tolerance is the one of conftest.assert_close,
per element, scaled by the sum of absolute terms (computed by the naive reference on |inputs|);
in float32 both torch and numbaconv round, and the bound still holds with room to spare.
"""

import numpy as np
import pytest

pytest.importorskip("torch")

import naive  # noqa: E402
import numbaconv  # noqa: E402
import torch_ref  # noqa: E402
from conftest import DTYPES, assert_close  # noqa: E402

ALGORITHMS = ("direct", "im2col")

# (x shape, weight shape, keyword arguments)
CONV_CASES = [
    ((2, 3, 11), (4, 3, 3), dict(stride=2, padding=1, dilation=2)),
    ((1, 4, 8), (6, 2, 4), dict(padding=3, groups=2, padding_mode="reflect")),
    ((3, 2, 7), (2, 1, 2), dict(padding="same", dilation=3, groups=2, padding_mode="circular")),
    ((1, 3, 6), (3, 3, 3), dict(stride=3, padding=2, padding_mode="replicate")),
    ((2, 2, 7, 6), (3, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))),
    ((1, 4, 6, 7), (4, 1, 3, 3), dict(padding="same", groups=4, padding_mode="reflect")),
    ((2, 4, 5, 6), (2, 2, 2, 3), dict(padding="same", dilation=(2, 1), groups=2, padding_mode="replicate")),
    ((1, 3, 6, 5), (6, 1, 3, 2), dict(stride=(1, 2), padding=(2, 1), groups=3, padding_mode="circular")),
    ((1, 2, 5, 6), (2, 2, 2, 2), dict(padding="valid")),
    ((1, 2, 4, 4), (3, 2, 1, 1), dict()),  # pointwise
    ((2, 2, 5, 4, 5), (4, 1, 2, 3, 2), dict(stride=(2, 1, 1), padding=(1, 1, 0), dilation=(1, 1, 2), groups=2)),
    ((1, 3, 4, 5, 4), (3, 3, 3, 3, 3), dict(padding=1, padding_mode="reflect")),
    ((1, 2, 4, 4, 5), (2, 2, 2, 2, 3), dict(padding="same", dilation=(1, 2, 1), padding_mode="circular")),
    ((2, 2, 3, 4, 4), (3, 2, 2, 2, 2), dict(stride=(1, 2, 1), padding=2, padding_mode="replicate")),
]

TRANSPOSE_CASES = [
    ((2, 3, 5), (3, 2, 3), dict(stride=2, padding=1, output_padding=1)),
    ((1, 4, 4), (4, 3, 2), dict(stride=3, output_padding=2, groups=2, dilation=2)),
    ((3, 2, 6), (2, 1, 4), dict(padding=2, groups=2)),
    ((1, 2, 3, 4), (2, 3, 3, 2), dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), dilation=(1, 2))),
    ((2, 4, 4, 3), (4, 1, 2, 2), dict(stride=2, groups=4)),
    ((1, 6, 3, 3), (6, 1, 3, 3), dict(stride=(3, 1), padding=(2, 1), output_padding=(2, 0), groups=3)),
    ((1, 2, 3, 2, 3), (2, 2, 2, 3, 2), dict(stride=(2, 1, 2), padding=(0, 1, 1), output_padding=(1, 0, 0),
                                           dilation=(1, 1, 2))),
    ((2, 3, 2, 3, 2), (3, 3, 3, 2, 2), dict(padding=1)),
]


def _arrays(x_shape, w_shape, bias_size, dtype):
    rng = np.random.default_rng(sum(x_shape) * 7 + sum(w_shape))
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(bias_size).astype(dtype)
    return x, w, b


def _abs(*arrays):
    return [np.abs(a.astype(np.float64)) for a in arrays]


def _compare(got, want, scales, dtype):
    for name, g, t, s in zip(("forward", "grad_x", "grad_weight", "grad_bias"), got, want, scales):
        assert_close(g, t.astype(np.float64), s, dtype, what=name)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", CONV_CASES, ids=str)
def test_conv_matches_torch(x_shape, w_shape, kwargs, dtype, algorithm):
    nd = len(x_shape) - 2
    x, w, b = _arrays(x_shape, w_shape, w_shape[0], dtype)
    y_t = torch_ref.conv(x, w, b, **kwargs)
    go = np.random.default_rng(1).standard_normal(y_t.shape).astype(dtype)
    want = torch_ref.conv(x, w, b, **kwargs, grad_out=go)

    y = getattr(numbaconv, f"conv{nd}d")(x, w, b, algorithm=algorithm, **kwargs)
    grads = getattr(numbaconv, f"conv{nd}d_backward")(go, x, w, algorithm=algorithm, **kwargs)
    ax, aw, ab, ago = _abs(x, w, b, go)
    scales = (naive.conv(ax, aw, ab, **kwargs),) + naive.conv_backward(ago, ax, aw, **kwargs)
    _compare((y,) + tuple(grads), want, scales, dtype)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", TRANSPOSE_CASES, ids=str)
def test_conv_transpose_matches_torch(x_shape, w_shape, kwargs, dtype, algorithm):
    nd = len(x_shape) - 2
    x, w, b = _arrays(x_shape, w_shape, w_shape[1] * kwargs.get("groups", 1), dtype)
    y_t = torch_ref.conv_transpose(x, w, b, **kwargs)
    go = np.random.default_rng(2).standard_normal(y_t.shape).astype(dtype)
    want = torch_ref.conv_transpose(x, w, b, **kwargs, grad_out=go)

    y = getattr(numbaconv, f"conv_transpose{nd}d")(x, w, b, algorithm=algorithm, **kwargs)
    grads = getattr(numbaconv, f"conv_transpose{nd}d_backward")(go, x, w, algorithm=algorithm, **kwargs)
    ax, aw, ab, ago = _abs(x, w, b, go)
    scales = (naive.conv_transpose(ax, aw, ab, **kwargs),) + naive.conv_transpose_backward(ago, ax, aw, **kwargs)
    _compare((y,) + tuple(grads), want, scales, dtype)


# 3x3 convolutions at unit stride, where algorithm="winograd" runs (a ResNet block's, odd sizes)
WINOGRAD_CASES = [
    ((2, 8, 11, 9), (6, 8, 3, 3), dict(padding=1)),
    ((1, 3, 7, 10), (5, 3, 3, 3), dict(padding=(2, 0), padding_mode="reflect")),
    ((1, 4, 2, 6, 5), (3, 4, 1, 3, 3), dict(padding=(0, 1, 2), padding_mode="circular")),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", WINOGRAD_CASES, ids=str)
def test_winograd_matches_torch(x_shape, w_shape, kwargs, dtype):
    test_conv_matches_torch(x_shape, w_shape, kwargs, dtype, "winograd")


@pytest.mark.parametrize("algorithm", ALGORITHMS + ("winograd",))
@pytest.mark.parametrize("mode", naive.PADDING_MODES)
def test_nan_and_inf_propagate_like_torch(mode, algorithm):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 2, 6, 7)).astype(np.float32)
    w = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    x[0, 0, 0, 3] = np.nan
    x[0, 1, 4, 0] = np.inf
    y_t = torch_ref.conv(x, w, padding=1, padding_mode=mode)
    y = numbaconv.conv2d(x, w, padding=1, padding_mode=mode, algorithm=algorithm)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_t))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(y_t))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(y_t))
