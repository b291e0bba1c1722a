"""Backward against central finite differences of the forward, in float64.

The loss is sum(out * R) for a fixed random R, so dloss/dout = R and the backward under test is
called with grad_out = R. The loss is linear in each of x, weight and bias separately, so the
central difference has no truncation error: what is left is rounding, about
2**-53 * S / eps with S = sum|R| * conv(|x|, |w|, |b|), the sum of the absolute terms of the loss.
The tolerance is 1e-8 * S, i.e. about 100 times that estimate, and far below any real gradient
error (one missing term moves a gradient by O(1)).
"""

import numpy as np
import pytest

import naive
import numbaconv
from conftest import numerical_grad

ALGORITHMS = ("direct", "im2col")

# (x shape, weight shape, keyword arguments)
CONV_CASES = [
    ((2, 3, 9), (4, 3, 3), dict(stride=2, padding=1, dilation=2)),
    ((1, 4, 7), (2, 2, 2), dict(padding=2, groups=2, padding_mode="reflect")),
    ((2, 2, 6), (4, 1, 3), dict(padding="same", dilation=2, groups=2, padding_mode="circular")),
    ((2, 4, 6, 5), (4, 2, 3, 3), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2,
                                      padding_mode="replicate")),
    ((1, 3, 5, 6), (3, 1, 3, 3), dict(padding=1, groups=3, padding_mode="reflect")),
    ((2, 2, 5, 4), (3, 2, 2, 3), dict(padding="same", padding_mode="circular")),
    ((1, 2, 5, 5), (2, 2, 2, 2), dict(padding="valid", stride=2)),
    ((2, 4, 4, 5, 4), (2, 2, 3, 2, 2), dict(stride=2, padding=1, groups=2)),
    ((1, 2, 3, 4, 4), (2, 2, 2, 3, 2), dict(padding=(1, 0, 1), dilation=(1, 1, 2), padding_mode="circular")),
    ((1, 1, 4, 3, 4), (2, 1, 3, 2, 2), dict(padding=(2, 1, 1), padding_mode="reflect")),
]

TRANSPOSE_CASES = [
    ((2, 3, 4), (3, 2, 3), dict(stride=3, padding=1, output_padding=2)),
    ((1, 4, 5), (4, 1, 2), dict(stride=1, padding=1, dilation=3, output_padding=2, groups=4)),
    ((1, 4, 3, 3), (4, 1, 3, 2), dict(stride=2, padding=1, output_padding=1, groups=2, dilation=(2, 1))),
    ((2, 2, 3, 2), (2, 3, 2, 3), dict(stride=(1, 2), padding=(0, 1))),
    ((1, 2, 2, 3, 2), (2, 2, 2, 2, 3), dict(stride=(2, 1, 2), padding=(1, 0, 0), output_padding=(1, 0, 0))),
    ((1, 4, 2, 2, 2), (4, 1, 2, 2, 2), dict(stride=2, groups=2, dilation=2, output_padding=1)),
]



def _check(forward, backward, ref_forward, x, w, b, kwargs, algorithm):
    rng = np.random.default_rng(x.size)
    R = rng.standard_normal(forward(x, w, b, algorithm=algorithm, **kwargs).shape)

    def loss():
        return float(np.sum(forward(x, w, b, algorithm=algorithm, **kwargs) * R))

    numerical = [numerical_grad(loss, a) for a in (x, w, b)]
    analytic = backward(R, x, w, algorithm=algorithm, **kwargs)
    S = float(np.sum(np.abs(R) * ref_forward(np.abs(x), np.abs(w), np.abs(b), **kwargs)))
    for name, num, got in zip(("grad_x", "grad_weight", "grad_bias"), numerical, analytic):
        assert got.shape == num.shape and got.dtype == np.float64, name
        err = np.max(np.abs(got - num))
        assert err <= 1e-8 * S, f"{name}: max |analytic - numerical| = {err:.3g} > {1e-8 * S:.3g}"


def _arrays(x_shape, w_shape, bias_size):
    rng = np.random.default_rng(sum(x_shape) + 10 * sum(w_shape))
    return rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(bias_size)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", CONV_CASES, ids=str)
def test_conv_gradients_match_finite_differences(x_shape, w_shape, kwargs, algorithm):
    nd = len(x_shape) - 2
    x, w, b = _arrays(x_shape, w_shape, w_shape[0])
    _check(getattr(numbaconv, f"conv{nd}d"), getattr(numbaconv, f"conv{nd}d_backward"), naive.conv,
           x, w, b, kwargs, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("x_shape, w_shape, kwargs", TRANSPOSE_CASES, ids=str)
def test_conv_transpose_gradients_match_finite_differences(x_shape, w_shape, kwargs, algorithm):
    nd = len(x_shape) - 2
    groups = kwargs.get("groups", 1)
    x, w, b = _arrays(x_shape, w_shape, w_shape[1] * groups)
    _check(getattr(numbaconv, f"conv_transpose{nd}d"), getattr(numbaconv, f"conv_transpose{nd}d_backward"),
           naive.conv_transpose, x, w, b, kwargs, algorithm)


# Winograd's tiles run 3x3 convolutions at unit stride (one group), forward and input gradient
WINOGRAD_CASES = [
    ((2, 3, 6, 9), (4, 3, 3, 3), dict(padding=1)),
    ((1, 2, 7, 5), (3, 2, 3, 3), dict(padding=(2, 0), padding_mode="reflect")),
    ((1, 2, 2, 5, 6), (2, 2, 1, 3, 3), dict(padding=(0, 1, 1))),
]


@pytest.mark.parametrize("x_shape, w_shape, kwargs", WINOGRAD_CASES, ids=str)
def test_winograd_gradients_match_finite_differences(x_shape, w_shape, kwargs):
    nd = len(x_shape) - 2
    x, w, b = _arrays(x_shape, w_shape, w_shape[0])
    _check(getattr(numbaconv, f"conv{nd}d"), getattr(numbaconv, f"conv{nd}d_backward"), naive.conv,
           x, w, b, kwargs, "winograd")
    # and the convolution it transposes
    xt, wt, bt = _arrays(x_shape, (x_shape[1],) + w_shape[:1] + w_shape[2:], w_shape[0])
    kwargs_t = {k: v for k, v in kwargs.items() if k != "padding_mode"}
    _check(getattr(numbaconv, f"conv_transpose{nd}d"), getattr(numbaconv, f"conv_transpose{nd}d_backward"),
           naive.conv_transpose, xt, wt, bt, kwargs_t, "winograd")
