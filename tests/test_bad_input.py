"""Bad arguments raise ValueError or TypeError naming the argument, before any kernel runs.

Every case is also run in a fresh interpreter (``test_battery_in_a_subprocess``), so a crash in
compiled code (segfault, abort) on bad input fails the suite instead of killing it.
"""


import numpy as np
import pytest

import numbaconv
from conftest import assert_battery_survives

F32, F64 = np.float32, np.float64


def arr(*shape, dtype=F32):
    return np.zeros(shape, dtype)


# Valid baselines; every case below changes exactly one thing.
X = arr(1, 4, 5, 5)
W = arr(6, 2, 3, 3)  # groups=2
B = arr(6)
GO = arr(1, 6, 3, 3)  # output of conv2d(X, W, groups=2)
TX = arr(1, 4, 3, 3)
TW = arr(4, 3, 2, 2)  # conv_transpose2d weight, groups=2: output channels 6
TGO = arr(1, 6, 6, 6)  # output of conv_transpose2d(TX, TW, stride=2, groups=2)


def conv(**kw):
    args = dict(x=X, weight=W, bias=B, groups=2)
    args.update(kw)
    return lambda: numbaconv.conv2d(**args)


def conv_bw(**kw):
    args = dict(grad_out=GO, x=X, weight=W, groups=2)
    args.update(kw)
    return lambda: numbaconv.conv2d_backward(**args)


def tconv(**kw):
    args = dict(x=TX, weight=TW, bias=B, stride=2, groups=2)
    args.update(kw)
    return lambda: numbaconv.conv_transpose2d(**args)


def tconv_bw(**kw):
    args = dict(grad_out=TGO, x=TX, weight=TW, stride=2, groups=2)
    args.update(kw)
    return lambda: numbaconv.conv_transpose2d_backward(**args)


VALUE, TYPE, EITHER = ValueError, TypeError, (ValueError, TypeError)

# (id, call, exception, regex the message must match)
CASES = [
    # arrays: type, dtype, ndim
    ("x-list", conv(x=X.tolist()), TYPE, r"\bx\b"),
    ("weight-list", conv(weight=W.tolist()), TYPE, r"weight"),
    ("bias-list", conv(bias=[0.0] * 6), TYPE, r"bias"),
    ("x-int", conv(x=X.astype(np.int32)), TYPE, r"\bx\b"),
    ("x-float16", conv(x=X.astype(np.float16)), TYPE, r"\bx\b"),
    ("x-complex", conv(x=X.astype(np.complex64)), TYPE, r"\bx\b"),
    ("weight-other-float", conv(weight=W.astype(F64)), TYPE, r"weight"),
    ("bias-other-float", conv(bias=B.astype(F64)), TYPE, r"bias"),
    ("x-ndim", conv(x=X[0]), VALUE, r"\bx\b"),
    ("weight-ndim", conv(weight=W[0]), VALUE, r"weight"),
    ("x-ndim-conv1d", lambda: numbaconv.conv1d(arr(1, 2, 3, 3), arr(2, 2, 3)), VALUE, r"\bx\b"),
    ("weight-ndim-conv3d", lambda: numbaconv.conv3d(arr(1, 2, 3, 3, 3), arr(2, 2, 3, 3)), VALUE, r"weight"),
    # channels and groups
    ("channel-mismatch", conv(x=arr(1, 6, 5, 5)), VALUE, r"channel"),
    ("channel-mismatch-no-groups", conv(x=arr(1, 3, 5, 5), weight=arr(6, 2, 3, 3), groups=1), VALUE, r"channel"),
    ("groups-not-dividing-in", conv(x=arr(1, 3, 5, 5), weight=arr(6, 1, 3, 3), groups=2), VALUE, r"groups"),
    ("groups-not-dividing-out", conv(weight=arr(5, 2, 3, 3), bias=arr(5)), VALUE, r"groups"),
    ("groups-zero", conv(groups=0), VALUE, r"groups"),
    ("groups-negative", conv(groups=-2), VALUE, r"groups"),
    ("groups-float", conv(groups=2.0), TYPE, r"groups"),
    # stride, dilation, padding values
    ("stride-zero", conv(stride=0), VALUE, r"stride"),
    ("stride-tuple-zero", conv(stride=(1, 0)), VALUE, r"stride"),
    ("stride-negative", conv(stride=-1), VALUE, r"stride"),
    ("dilation-zero", conv(dilation=0), VALUE, r"dilation"),
    ("dilation-tuple-zero", conv(dilation=(0, 1)), VALUE, r"dilation"),
    ("padding-negative", conv(padding=-1), VALUE, r"padding"),
    ("padding-tuple-negative", conv(padding=(1, -1)), VALUE, r"padding"),
    ("kernel-larger-than-input", conv(x=arr(1, 4, 4, 4), dilation=2), VALUE, r"kernel"),
    ("kernel-larger-than-padded-input", conv(x=arr(1, 4, 1, 5), padding=(0, 1)), VALUE, r"kernel"),
    ("same-with-stride", conv(padding="same", stride=2), VALUE, r"same|padding"),
    ("same-with-tuple-stride", conv(padding="same", stride=(1, 2)), VALUE, r"same|padding"),
    ("bias-shape", conv(bias=arr(5)), VALUE, r"bias"),
    ("bias-ndim", conv(bias=arr(6, 1)), VALUE, r"bias"),
    # argument types
    ("stride-float", conv(stride=1.0), TYPE, r"stride"),
    ("stride-str", conv(stride="1"), TYPE, r"stride"),
    ("stride-bool", conv(stride=True), TYPE, r"stride"),
    ("stride-tuple-float", conv(stride=(1, 1.5)), TYPE, r"stride"),
    ("stride-wrong-length", conv(stride=(1, 1, 1)), EITHER, r"stride"),
    ("dilation-float", conv(dilation=2.0), TYPE, r"dilation"),
    ("dilation-str", conv(dilation="2"), TYPE, r"dilation"),
    ("padding-float", conv(padding=1.5), TYPE, r"padding"),
    ("padding-wrong-length", conv(padding=(1,)), EITHER, r"padding"),
    ("padding-unknown-string", conv(padding="full"), VALUE, r"padding"),
    ("padding-mode-unknown", conv(padding_mode="mirror"), VALUE, r"padding_mode"),
    ("padding-mode-none", conv(padding_mode=None), EITHER, r"padding_mode"),
    ("algorithm-unknown", conv(algorithm="fft"), VALUE, r"algorithm"),
    ("algorithm-none", conv(algorithm=None), EITHER, r"algorithm"),
    # padding modes (PyTorch's rules)
    ("reflect-padding-equal-to-size", conv(x=arr(1, 4, 3, 5), padding=3, padding_mode="reflect"), VALUE,
     r"reflect|padding"),
    ("reflect-same-padding-too-large", conv(x=arr(1, 4, 1, 5), padding="same", padding_mode="reflect"), VALUE,
     r"reflect|padding"),
    ("circular-padding-larger-than-size", conv(x=arr(1, 4, 3, 5), padding=4, padding_mode="circular"), VALUE,
     r"circular|padding"),
    # backward
    ("needs-two", conv_bw(needs=(True, True)), EITHER, r"needs"),
    ("needs-ints", conv_bw(needs=(1, 1, 1)), EITHER, r"needs"),
    ("needs-str", conv_bw(needs="xwb"), EITHER, r"needs"),
    ("grad-out-shape", conv_bw(grad_out=arr(1, 6, 3, 4)), VALUE, r"grad_out"),
    ("grad-out-channels", conv_bw(grad_out=arr(1, 5, 3, 3)), VALUE, r"grad_out"),
    ("grad-out-dtype", conv_bw(grad_out=GO.astype(F64)), TYPE, r"grad_out"),
    ("grad-out-list", conv_bw(grad_out=GO.tolist()), TYPE, r"grad_out"),
    ("backward-stride-zero", conv_bw(stride=0), VALUE, r"stride"),
    ("backward-padding-mode", conv_bw(padding_mode="mirror"), VALUE, r"padding_mode"),
    ("backward-algorithm", conv_bw(algorithm="fft"), VALUE, r"algorithm"),
    ("backward-channel-mismatch", conv_bw(x=arr(1, 6, 5, 5)), VALUE, r"channel"),
    # transposed convolution
    ("transpose-output-padding-equal-stride", tconv(output_padding=2), VALUE, r"output_padding"),
    ("transpose-output-padding-stride-1", tconv(stride=1, output_padding=1), VALUE, r"output_padding"),
    ("transpose-output-padding-negative", tconv(output_padding=-1), VALUE, r"output_padding"),
    ("transpose-output-padding-float", tconv(output_padding=1.0), TYPE, r"output_padding"),
    ("transpose-channel-mismatch", tconv(x=arr(1, 3, 3, 3)), VALUE, r"channel"),
    ("transpose-groups-not-dividing", tconv(groups=3), VALUE, r"groups"),
    ("transpose-groups-zero", tconv(groups=0), VALUE, r"groups"),
    ("transpose-stride-zero", tconv(stride=0), VALUE, r"stride"),
    ("transpose-dilation-zero", tconv(dilation=0), VALUE, r"dilation"),
    ("transpose-padding-negative", tconv(padding=-1), VALUE, r"padding"),
    ("transpose-padding-string", tconv(padding="same"), EITHER, r"padding"),
    ("transpose-bias-shape", tconv(bias=arr(3)), VALUE, r"bias"),
    ("transpose-x-ndim", tconv(x=TX[0]), VALUE, r"\bx\b"),
    ("transpose-weight-dtype", tconv(weight=TW.astype(F64)), TYPE, r"weight"),
    ("transpose-algorithm", tconv(algorithm="winograd"), VALUE, r"algorithm"),
    ("transpose-output-empty", tconv(x=arr(1, 4, 1, 1), stride=1, padding=1), VALUE, r"padding|output"),
    ("transpose-needs", tconv_bw(needs=(True, False)), EITHER, r"needs"),
    ("transpose-grad-out-shape", tconv_bw(grad_out=arr(1, 6, 6, 7)), VALUE, r"grad_out"),
    ("transpose-grad-out-dtype", tconv_bw(grad_out=TGO.astype(F64)), TYPE, r"grad_out"),
]


def test_baselines_are_valid():
    """The cases differ from these calls in one argument only, so each error is that argument's."""
    assert conv()().shape == (1, 6, 3, 3)
    assert all(g.shape == a.shape for g, a in zip(conv_bw()(), (X, W, B)))
    assert tconv()().shape == TGO.shape
    assert all(g.shape == a.shape for g, a in zip(tconv_bw()(), (TX, TW, B)))
    # the boundaries of the padding-mode rules are accepted
    assert numbaconv.conv2d(arr(1, 4, 3, 5), W, groups=2, padding=2, padding_mode="reflect").shape == (1, 6, 5, 7)
    assert numbaconv.conv2d(arr(1, 4, 3, 5), W, groups=2, padding=3, padding_mode="circular").shape == (1, 6, 7, 9)
    assert tconv(stride=1, dilation=2, output_padding=1)().shape == (1, 6, 6, 6)


@pytest.mark.parametrize("call, exception, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_the_argument(call, exception, match):
    with pytest.raises(exception, match=match):
        call()



def test_memoized_geometry_keeps_every_check():
    """Geometries are memoized on plain arguments (``_geometry._memoized``): a valid call first
    must not let a bool (equal to 1) through afterwards, a failing call must not be remembered,
    and arguments the cache does not take (lists, NumPy integers) give the same result."""
    good = numbaconv.conv2d(X, W, B, stride=1, groups=2)
    for stride in (True, (1, True)):
        with pytest.raises(TypeError, match="stride"):
            numbaconv.conv2d(X, W, B, stride=stride, groups=2)
    with pytest.raises(ValueError, match="groups"):
        numbaconv.conv2d(X, W, B, groups=3)
    for stride in ([1, 1], np.int64(1), (np.int64(1), 1)):
        np.testing.assert_array_equal(numbaconv.conv2d(X, W, B, stride=stride, groups=2), good)
    with pytest.raises(TypeError, match="padding"):
        numbaconv.conv_transpose2d(TX, TW, stride=2, groups=2, padding=(0, False))
    assert numbaconv.conv_transpose2d(TX, TW, stride=2, groups=2).shape == TGO.shape
    pooled = numbaconv.max_pool2d(X, 2)
    for kernel_size in (True, (2, True)):
        with pytest.raises(TypeError, match="kernel_size"):
            numbaconv.max_pool2d(X, kernel_size)
    np.testing.assert_array_equal(numbaconv.max_pool2d(X, [2, 2]), pooled)
    assert numbaconv.adaptive_avg_pool2d(X, (2, None)).shape == (1, 4, 2, 5)
    with pytest.raises(TypeError, match="output_size"):
        numbaconv.adaptive_avg_pool2d(X, (2, True))


def test_battery_in_a_subprocess():
    assert_battery_survives("test_bad_input")
