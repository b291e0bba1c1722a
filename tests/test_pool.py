"""Pooling: max, average, lp and adaptive pooling, forward and backward, 1-D to 3-D.

Randomized parity with the naive references and with PyTorch (strides, padding, ceil_mode,
dilation, count_include_pad, divisor_override, output sizes with None, float32 and float64, any
memory layout); PyTorch's tie-breaking and NaN rules; central finite differences of every
backward; bad arguments, in this process and in a fresh one.
"""

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import naive
import numbaconv
from numbaconv._geometry import pool_geometry
from conftest import DTYPES, LAYOUTS, assert_battery_survives, assert_close, int_or_tuple, make_array

MAX_SIZE = {1: 11, 2: 7, 3: 5}
EXAMPLES = settings(max_examples=80, deadline=None)
TORCH_EXAMPLES = settings(max_examples=40, deadline=None)
KINDS = ("max", "avg", "lp", "adaptive_avg", "adaptive_max")
NORM_TYPES = (1, 2, 3, 1.5, math.inf)


def fn(kind, nd, backward=False):
    return getattr(numbaconv, f"{kind}_pool{nd}d" + ("_backward" if backward else ""))


@dataclass(frozen=True)
class Case:
    """One pooling call: the op, its shape and arguments, and how to make its random arrays."""

    kind: str
    n: int
    c: int
    spatial: tuple
    kwargs: dict
    dtype: type
    layouts: tuple  # of x, grad_out
    seed: int

    @property
    def nd(self):
        return len(self.spatial)

    def x(self):
        x = make_array(np.random.default_rng(self.seed), (self.n, self.c) + self.spatial, self.dtype, self.layouts[0])
        if self.kind == "lp" and self.kwargs["norm_type"] not in (1, 2, math.inf):
            x = np.abs(x) + self.dtype(0.5)  # x ** p of a negative x is NaN for a fractional or odd p
        return x

    def grad_out(self, shape):
        return make_array(np.random.default_rng(self.seed + 1), shape, self.dtype, self.layouts[1])

    def forward(self, x, **extra):
        return fn(self.kind, self.nd)(x, **self.kwargs, **extra)

    def backward(self, grad_out, x, **extra):
        return fn(self.kind, self.nd, backward=True)(grad_out, x, **self.kwargs, **extra)

    def naive_forward(self, x):
        y = getattr(naive, f"{self.kind}_pool")(x, **self.kwargs)
        return y[0] if self.kind in ("max", "adaptive_max") else y

    def naive_backward(self, grad_out, x):
        return getattr(naive, f"{self.kind}_pool_backward")(grad_out, x, **self.kwargs)


@st.composite
def pool_cases(draw, kinds=KINDS, nd=None):
    kind = draw(st.sampled_from(kinds))
    nd = draw(st.sampled_from((1, 2, 3))) if nd is None else nd
    common = dict(
        kind=kind, n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), dtype=draw(st.sampled_from(DTYPES)),
        layouts=tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(2)), seed=draw(st.integers(0, 2**32 - 1)),
    )
    if kind.startswith("adaptive"):
        spatial = tuple(draw(st.integers(1, MAX_SIZE[nd])) for _ in range(nd))
        out = [draw(st.one_of(st.none(), st.integers(1, MAX_SIZE[nd] + 2))) for _ in range(nd)]
        output_size = out[0] if nd == 1 and draw(st.booleans()) else int_or_tuple(draw, out)
        return Case(spatial=spatial, kwargs=dict(output_size=output_size), **common)
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel) if kind != "lp" else (0,) * nd
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd)) if kind == "max" else (1,) * nd
    spatial = tuple(draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), max(1, d * (k - 1) + 1 - 2 * p, MAX_SIZE[nd])))
                    for k, p, d in zip(kernel, padding, dilation))
    kwargs = dict(kernel_size=int_or_tuple(draw, kernel),
                  stride=None if draw(st.booleans()) else int_or_tuple(draw, stride), ceil_mode=draw(st.booleans()))
    if kind != "lp":
        kwargs["padding"] = int_or_tuple(draw, padding)
    if kind == "max":
        kwargs["dilation"] = int_or_tuple(draw, dilation)
    if kind == "avg":
        kwargs["count_include_pad"] = draw(st.booleans())
        kwargs["divisor_override"] = draw(st.one_of(st.none(), st.sampled_from((1, 3, -2))))
    if kind == "lp":
        kwargs = dict(norm_type=draw(st.sampled_from(NORM_TYPES)), **kwargs)
    return Case(spatial=spatial, kwargs=kwargs, **common)


def _abs(a):
    return np.abs(np.asarray(a, dtype=np.float64))


def _scale(case, ref, x, grad_out=None):
    """Per element, the sum of the absolute terms that make it up (see conftest), where the op is
    a sum; else the largest magnitude of the reference."""
    if case.kind in ("avg", "adaptive_avg"):
        kw = dict(case.kwargs)
        if grad_out is None:
            return np.abs(getattr(naive, f"{case.kind}_pool")(_abs(x), **kw))
        return np.abs(getattr(naive, f"{case.kind}_pool_backward")(_abs(grad_out), x, **kw))
    if case.kind in ("max", "adaptive_max") and grad_out is not None:
        return np.maximum(1.0, case.naive_backward(_abs(grad_out), x))
    return None


def _check(got, ref, scale, dtype, what):
    assert_close(got, ref, scale, dtype, what)
    assert got.flags.c_contiguous, f"{what} is not C-contiguous"


# --------------------------------------------------------------------------- parity with the naive references


@EXAMPLES
@given(case=pool_cases())
def test_forward_matches_naive(case):
    x = case.x()
    copy = x.copy()
    ref = case.naive_forward(x)
    if case.kind in ("max", "adaptive_max"):
        y, idx = case.forward(x, return_indices=True)
        ref_y, ref_idx = getattr(naive, f"{case.kind}_pool")(x, **case.kwargs)
        assert idx.dtype == np.int64 and idx.flags.c_contiguous
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(case.forward(x), y)
    else:
        y = case.forward(x)
    if case.kind in ("max", "adaptive_max") or case.kwargs.get("norm_type") == math.inf:
        np.testing.assert_array_equal(y, ref.astype(case.dtype))  # a maximum is exact (and may be -inf)
        assert y.dtype == case.dtype and y.flags.c_contiguous
    else:
        _check(y, ref, _scale(case, ref, x), case.dtype, f"{case.kind}_pool{case.nd}d {case.kwargs}")
    np.testing.assert_array_equal(x, copy, err_msg="x was modified")


@EXAMPLES
@given(case=pool_cases())
def test_backward_matches_naive(case):
    x = case.x()
    y = case.forward(x)
    y = y[0] if isinstance(y, tuple) else y
    grad_out = case.grad_out(y.shape)
    copies = (x.copy(), grad_out.copy())
    ref = case.naive_backward(grad_out, x)
    gx = case.backward(grad_out, x)
    _check(gx, ref, _scale(case, ref, x, grad_out), case.dtype, f"{case.kind}_pool{case.nd}d_backward {case.kwargs}")
    if case.kind in ("max", "adaptive_max"):  # routed by the indices the forward returned
        idx = case.forward(x, return_indices=True)[1]
        np.testing.assert_array_equal(case.backward(grad_out, x, indices=idx), gx)
    np.testing.assert_array_equal(x, copies[0], err_msg="x was modified")
    np.testing.assert_array_equal(grad_out, copies[1], err_msg="grad_out was modified")


# --------------------------------------------------------------------------- finite differences


@settings(max_examples=25, deadline=None)
@given(case=pool_cases())
def test_backward_matches_finite_differences(case):
    """Central differences in float64; max pooling gets distinct values a step apart, no ties."""
    case = Case(**{**case.__dict__, "dtype": np.float64, "layouts": ("contiguous", "contiguous")})
    x = case.x()
    if case.kind in ("max", "adaptive_max") or (case.kind == "lp" and case.kwargs["norm_type"] == math.inf):
        rng = np.random.default_rng(case.seed)
        x = (rng.permutation(x.size).reshape(x.shape) - x.size / 2) * 0.01 + 0.001
    y = case.forward(x)
    y = y[0] if isinstance(y, tuple) else y
    grad_out = case.grad_out(y.shape)
    gx = case.backward(grad_out, x)
    h = 1e-6
    fd = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        yp, ym = case.forward(xp), case.forward(xm)
        fd[i] = np.sum(grad_out * np.where(yp == ym, 0, yp - ym)) / (2 * h)  # -inf (an empty window) stays put
    np.testing.assert_allclose(gx, fd, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(fd).max()))


# --------------------------------------------------------------------------- PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _torch_call(torch, case, x, return_indices=False):
    F = torch.nn.functional
    f = getattr(F, f"{case.kind}_pool{case.nd}d")
    kw = dict(case.kwargs)
    if case.kind == "lp":
        if case.nd == 1:  # torch's lp_pool1d multiplies by kernel_size: it takes ints only
            kw = {k: v[0] if isinstance(v, tuple) else v for k, v in kw.items()}
        return f(x, kw.pop("norm_type"), **kw)
    if return_indices:
        kw["return_indices"] = True
    if case.kind.startswith("adaptive"):  # torch takes None inside a tuple only
        out = kw["output_size"]
        out = (out,) * case.nd if out is None or isinstance(out, int) else out
        kw["output_size"] = tuple(n if o is None else o for n, o in zip(case.spatial, out))
    if case.kind == "avg" and case.nd == 1:  # torch's avg_pool1d has no divisor_override: run it as 2-D
        for name, fill in (("kernel_size", 1), ("stride", 1), ("padding", 0)):
            v = kw[name]
            kw[name] = None if v is None else (fill, v if isinstance(v, int) else v[0])
        return F.avg_pool2d(x[:, :, None], **kw)[:, :, 0]
    return f(x, **kw)


@TORCH_EXAMPLES
@given(case=pool_cases())
def test_forward_and_backward_match_torch(torch, case):
    if case.kind == "avg" and case.nd == 3:  # torch's avg_pool3d alone refuses an input smaller than the kernel
        kernel = case.kwargs["kernel_size"]
        assume(all(n >= k for n, k in zip(case.spatial, (kernel,) * 3 if isinstance(kernel, int) else kernel)))
    x = case.x()
    tx = torch.from_numpy(x.copy()).requires_grad_()
    got = case.forward(x, **({"return_indices": True} if case.kind in ("max", "adaptive_max") else {}))
    want = _torch_call(torch, case, tx, case.kind in ("max", "adaptive_max"))
    if isinstance(want, tuple):
        np.testing.assert_array_equal(got[1], want[1].numpy())
        got, want = got[0], want[0]
    rtol = 1e-5 if case.dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=rtol, atol=rtol)
    if case.kind == "max" and not _reads_input_everywhere(case):
        return  # a window of padding alone: see test_window_reading_no_input_matches_torch
    grad_out = case.grad_out(got.shape)
    want.backward(torch.from_numpy(grad_out.copy()))
    gx = case.backward(grad_out, x)
    assert gx.dtype == x.dtype
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=rtol, atol=rtol * max(1.0, float(np.abs(gx).max())))


@settings(max_examples=60, deadline=None)
@given(case=pool_cases(kinds=("max", "adaptive_max")), data=st.data())
def test_ties_nan_and_inf_match_torch(torch, case, data):
    """Few distinct values (ties everywhere), some NaN and -inf: values (with indices and
    without, whose loops differ), indices and gradients as PyTorch."""
    rng = np.random.default_rng(case.seed)
    shape = (case.n, case.c) + case.spatial
    x = rng.choice(np.array([0.0, 1.0, 2.0, -np.inf, np.nan]), size=shape,
                   p=data.draw(st.sampled_from([(0.3, 0.3, 0.3, 0.05, 0.05), (0.2, 0.2, 0.2, 0.2, 0.2),
                                                (0.5, 0.5, 0.0, 0.0, 0.0)]))).astype(case.dtype)
    y, idx = case.forward(x, return_indices=True)
    tx = torch.from_numpy(x).requires_grad_()
    ty, tidx = _torch_call(torch, case, tx, return_indices=True)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    np.testing.assert_array_equal(case.forward(x), y)  # without indices: separable passes past 2x2
    if not _reads_input_everywhere(case):
        # a window of padding alone: PyTorch's backward writes through its index -1, outside
        # the gradient (it aborted the process); see test_window_reading_no_input_matches_torch
        return
    grad_out = np.ones_like(y)
    ty.backward(torch.from_numpy(grad_out))
    np.testing.assert_array_equal(case.backward(grad_out, x), tx.grad.numpy())


def _reads_input_everywhere(case):
    if case.kind != "max":
        return True
    x = np.zeros((1, 1) + case.spatial)
    return bool(pool_geometry("max_pool", x, case.nd, **case.kwargs).nonempty().all())


def test_overlapping_pooling_alexnet_matches_torch(torch):
    """3x3 windows at stride 2 overlap: a maximum shared by two windows gets both gradients."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 13, 13)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_()
    ty, tidx = torch.nn.functional.max_pool2d(tx, 3, 2, return_indices=True)
    y, idx = numbaconv.max_pool2d(x, 3, 2, return_indices=True)
    assert y.shape == (2, 4, 6, 6)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    g = rng.standard_normal(y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(numbaconv.max_pool2d_backward(g, x, 3, 2), tx.grad.numpy(), rtol=1e-6, atol=1e-6)


def test_window_reading_no_input_matches_torch(torch):
    """Dilation can put every tap of a window in the padding: -inf and PyTorch's index. Such an
    output does not depend on x, so it routes no gradient (PyTorch routes it to its index, which
    can name an element outside the window)."""
    x = np.arange(1.0, 4.0).reshape(1, 1, 1, 3)
    kw = dict(kernel_size=(2, 1), stride=1, padding=(1, 0), dilation=(2, 1))
    y, idx = numbaconv.max_pool2d(x, return_indices=True, **kw)
    ty, tidx = torch.nn.functional.max_pool2d(torch.from_numpy(x), return_indices=True, **kw)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    np.testing.assert_array_equal(numbaconv.max_pool2d_backward(np.ones_like(y), x, indices=idx, **kw), 0)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("nd", (1, 2, 3))
def test_global_pooling_is_output_size_one(nd):
    x = np.random.default_rng(nd).standard_normal((2, 3) + (4,) * nd)
    axes = tuple(range(2, 2 + nd))
    np.testing.assert_allclose(fn("adaptive_avg", nd)(x, 1), x.mean(axis=axes, keepdims=True), rtol=1e-14)
    np.testing.assert_array_equal(fn("adaptive_max", nd)(x, 1), x.max(axis=axes, keepdims=True))


WHOLE_PLANE = [  # (nd, spatial, kind, kwargs): one window reading the whole plane
    (1, (7,), "adaptive_avg", dict(output_size=1)),
    (2, (7, 5), "adaptive_avg", dict(output_size=1)),
    (3, (3, 4, 5), "adaptive_avg", dict(output_size=(1, 1, 1))),
    (2, (4, 4), "avg", dict(kernel_size=4)),
    (2, (3, 3), "avg", dict(kernel_size=4, padding=1, stride=4, count_include_pad=True)),
    (2, (3, 3), "avg", dict(kernel_size=4, padding=1, stride=4, count_include_pad=False)),
    (3, (2, 3, 3), "avg", dict(kernel_size=(2, 3, 3), divisor_override=5)),
]


@pytest.mark.parametrize("route", ["serial", "parallel"])
@pytest.mark.parametrize("nd, spatial, kind, kwargs", WHOLE_PLANE)
def test_whole_plane_windows_match_naive(monkeypatch, route, nd, spatial, kind, kwargs):
    """Global pooling, and any average pooling whose one window reads the whole plane, takes a
    kernel of its own: its sum, divisor and gradient against the general references."""
    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1 << 40 if route == "serial" else 0)
    from numbaconv.kernels.cpu import pool as kernels

    def general(*args):
        raise AssertionError("the general window loops ran")

    monkeypatch.setattr(kernels, "_avg_forward", general)
    monkeypatch.setattr(kernels, "_avg_backward", general)
    rng = np.random.default_rng(len(spatial))
    for dtype in DTYPES:
        x = make_array(rng, (2, 3) + spatial, dtype)
        y = fn(kind, nd)(x, **kwargs)
        assert y.shape == (2, 3) + (1,) * nd
        assert_close(y, getattr(naive, f"{kind}_pool")(x, **kwargs), dtype=dtype, what=f"{kind} forward")
        g = make_array(rng, y.shape, dtype)
        assert_close(fn(kind, nd, backward=True)(g, x, **kwargs),
                     getattr(naive, f"{kind}_pool_backward")(g, x, **kwargs), dtype=dtype, what=f"{kind} backward")


def test_empty_batch():
    x = np.zeros((0, 3, 6, 6), np.float32)
    assert numbaconv.max_pool2d(x, 2).shape == (0, 3, 3, 3)
    assert numbaconv.avg_pool2d_backward(np.zeros((0, 3, 3, 3), np.float32), x, 2).shape == x.shape
    assert numbaconv.max_pool2d_backward(np.zeros((0, 3, 3, 3), np.float32), x, 2,
                                         indices=np.zeros((0, 3, 3, 3), np.int64)).shape == x.shape


def test_ceil_mode_drops_a_window_starting_in_the_right_padding():
    # 5 + 2 padding, kernel 2, stride 3: ceil gives 3 windows, the third would start at 6 - 1 = 5 (padding)
    x = np.zeros((1, 1, 5), np.float32)
    assert numbaconv.max_pool1d(x, 2, 3, padding=1, ceil_mode=True).shape == (1, 1, 2)
    assert numbaconv.avg_pool1d(x, 2, 3, ceil_mode=True).shape == (1, 1, 2)


# --------------------------------------------------------------------------- bad input

F32, F64 = np.float32, np.float64
X = np.zeros((1, 2, 6, 6), F32)
GO = np.zeros((1, 2, 3, 3), F32)  # output of 2x2 / 2 pooling of X
IDX = np.zeros((1, 2, 3, 3), np.int64)


def call(name, *args, **kw):
    return lambda: getattr(numbaconv, name)(*args, **kw)


VALUE, TYPE, EITHER = ValueError, TypeError, (ValueError, TypeError)

CASES = [
    ("x-list", call("max_pool2d", X.tolist(), 2), TYPE, r"\bx\b"),
    ("x-int", call("avg_pool2d", X.astype(np.int32), 2), TYPE, r"\bx\b"),
    ("x-float16", call("lp_pool2d", X.astype(np.float16), 2, 2), TYPE, r"\bx\b"),
    ("x-unbatched", call("max_pool2d", X[0], 2), VALUE, r"\bx\b.*unbatched"),
    ("x-ndim-1d", call("avg_pool1d", X, 2), VALUE, r"\bx\b"),
    ("x-ndim-3d", call("adaptive_avg_pool3d", X, 1), VALUE, r"\bx\b"),
    ("x-no-channels", call("max_pool2d", np.zeros((1, 0, 6, 6), F32), 2), VALUE, r"\bx\b"),
    ("x-empty-spatial", call("adaptive_max_pool2d", np.zeros((1, 2, 0, 6), F32), 1), VALUE, r"\bx\b"),
    ("kernel-zero", call("max_pool2d", X, 0), VALUE, r"kernel_size"),
    ("kernel-float", call("avg_pool2d", X, 2.0), TYPE, r"kernel_size"),
    ("kernel-none", call("max_pool2d", X, None), TYPE, r"kernel_size"),
    ("kernel-wrong-length", call("max_pool2d", X, (2, 2, 2)), EITHER, r"kernel_size"),
    ("kernel-larger-than-input", call("max_pool2d", X, 7), VALUE, r"kernel"),
    ("kernel-larger-than-padded-input", call("avg_pool2d", X, (9, 2), padding=(1, 0)), VALUE, r"kernel"),
    ("dilated-kernel-larger-than-input", call("max_pool2d", X, 3, dilation=3), VALUE, r"kernel"),
    ("stride-zero", call("max_pool2d", X, 2, 0), VALUE, r"stride"),
    ("stride-negative", call("avg_pool2d", X, 2, -1), VALUE, r"stride"),
    ("stride-str", call("lp_pool2d", X, 2, 2, "2"), TYPE, r"stride"),
    ("padding-negative", call("max_pool2d", X, 2, padding=-1), VALUE, r"padding"),
    ("padding-over-half-kernel", call("max_pool2d", X, 3, padding=2), VALUE, r"padding"),
    ("padding-over-half-kernel-avg", call("avg_pool2d", X, (2, 4), padding=(2, 1)), VALUE, r"padding"),
    ("padding-over-half-undilated-kernel", call("max_pool2d", X, 2, padding=2, dilation=4), VALUE, r"padding"),
    ("padding-float", call("avg_pool2d", X, 2, padding=0.5), TYPE, r"padding"),
    ("dilation-zero", call("max_pool2d", X, 2, dilation=0), VALUE, r"dilation"),
    ("ceil-mode-str", call("max_pool2d", X, 2, ceil_mode="yes"), TYPE, r"ceil_mode"),
    ("return-indices-int", call("max_pool2d", X, 2, return_indices=1), TYPE, r"return_indices"),
    ("count-include-pad-none", call("avg_pool2d", X, 2, count_include_pad=None), TYPE, r"count_include_pad"),
    ("divisor-zero", call("avg_pool2d", X, 2, divisor_override=0), VALUE, r"divisor_override"),
    ("divisor-float", call("avg_pool2d", X, 2, divisor_override=2.0), TYPE, r"divisor_override"),
    ("norm-type-zero", call("lp_pool2d", X, 0, 2), VALUE, r"norm_type"),
    ("norm-type-negative", call("lp_pool2d", X, -2.0, 2), VALUE, r"norm_type"),
    ("norm-type-minus-inf", call("lp_pool2d", X, -math.inf, 2), VALUE, r"norm_type"),
    ("norm-type-nan", call("lp_pool2d", X, math.nan, 2), VALUE, r"norm_type"),
    ("norm-type-str", call("lp_pool2d", X, "2", 2), TYPE, r"norm_type"),
    ("output-size-zero", call("adaptive_avg_pool2d", X, 0), VALUE, r"output_size"),
    ("output-size-negative", call("adaptive_max_pool2d", X, (2, -1)), VALUE, r"output_size"),
    ("output-size-float", call("adaptive_avg_pool2d", X, 2.5), TYPE, r"output_size"),
    ("output-size-wrong-length", call("adaptive_avg_pool2d", X, (2, 2, 2)), EITHER, r"output_size"),
    ("output-size-bool", call("adaptive_avg_pool1d", X[:, :, 0], True), TYPE, r"output_size"),
    ("grad-out-shape", call("max_pool2d_backward", GO[:, :, :2], X, 2), VALUE, r"grad_out"),
    ("grad-out-dtype", call("avg_pool2d_backward", GO.astype(F64), X, 2), TYPE, r"grad_out"),
    ("grad-out-list", call("lp_pool2d_backward", GO.tolist(), X, 2, 2), TYPE, r"grad_out"),
    ("grad-out-shape-adaptive", call("adaptive_avg_pool2d_backward", GO, X, 2), VALUE, r"grad_out"),
    ("grad-out-shape-lp-inf", call("lp_pool2d_backward", GO[:, :1], X, math.inf, 2), VALUE, r"grad_out"),
    ("indices-dtype", call("max_pool2d_backward", GO, X, 2, indices=IDX.astype(np.int32)), TYPE, r"indices"),
    ("indices-shape", call("max_pool2d_backward", GO, X, 2, indices=IDX[:, :1]), VALUE, r"indices"),
    ("indices-list", call("adaptive_max_pool2d_backward", GO, X, 3, indices=IDX.tolist()), TYPE, r"indices"),
    ("indices-out-of-plane", call("max_pool2d_backward", GO, X, 2, indices=IDX + 36), VALUE, r"indices"),
    ("indices-negative", call("adaptive_max_pool2d_backward", GO, X, 3, indices=IDX - 1), VALUE, r"indices"),
    ("backward-padding", call("avg_pool2d_backward", GO, X, 2, padding=2), VALUE, r"padding"),
]


def test_baselines_are_valid():
    """Each case changes one argument of a call that succeeds."""
    assert numbaconv.max_pool2d(X, 2).shape == GO.shape
    assert numbaconv.max_pool2d_backward(GO, X, 2, indices=IDX + 35).shape == X.shape
    assert numbaconv.adaptive_max_pool2d_backward(GO, X, 3, indices=IDX).shape == X.shape
    assert numbaconv.lp_pool2d_backward(GO, X, 2, 2).shape == X.shape
    assert numbaconv.lp_pool2d(X, math.inf, 2).shape == GO.shape
    assert numbaconv.avg_pool2d(X, (8, 4), padding=(1, 2)).shape == (1, 2, 1, 2)
    assert numbaconv.adaptive_avg_pool2d(X, (None, 2)).shape == (1, 2, 6, 2)


@pytest.mark.parametrize("call, exception, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_the_argument(call, exception, match):
    with pytest.raises(exception, match=match):
        call()



@pytest.mark.parametrize("route", ["serial", "parallel"])
def test_one_index_outside_the_plane_is_refused_on_either_route(monkeypatch, route):
    """Max pooling's indices are checked by the backward's kernel as it reads them, on its serial
    twin for small arrays and in parallel above the threshold: one index outside the plane,
    anywhere, is refused either way, and the error gives the range found (``index_range``)."""
    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1 << 40 if route == "serial" else 0)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    y, idx = numbaconv.max_pool2d(x, 2, return_indices=True)
    go = np.ones_like(y)
    assert numbaconv.max_pool2d_backward(go, x, 2, indices=idx).shape == x.shape
    for bad in (-1, 64):
        broken = idx.copy()
        broken[1, 2, 3, 1] = bad
        found = f"{broken.min()} to {broken.max()}"
        with pytest.raises(ValueError, match=rf"indices must lie in \[0, 64\).*{found}"):
            numbaconv.max_pool2d_backward(go, x, 2, indices=broken)
    assert broken[1, 2, 3, 1] == bad and np.array_equal(broken[0], idx[0])  # inputs are never modified


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("args", [dict(kernel_size=2), dict(kernel_size=2, stride=1, padding=1),
                                  dict(kernel_size=(1, 2), ceil_mode=True), dict(kernel_size=(2, 1), stride=(1, 2)),
                                  dict(kernel_size=2, dilation=2, padding=1)])
def test_small_windows_over_large_planes_pool_in_separable_passes(monkeypatch, dtype, args):
    """Max pooling without indices over output planes of more than ``WINDOW_MAX_OUTPUTS``
    positions runs the separable passes even for 2x2 windows and fewer: the same values as the
    window loops (which the indices still come from), as the naive reference, NaN, infinities
    and ties included; and the other way with the bound raised."""
    from numbaconv.kernels.cpu import pool

    rng = np.random.default_rng(4)
    x = rng.choice(np.array([0.0, 1.0, 2.5, -np.inf, np.inf, np.nan]), size=(2, 3, 41, 36),
                   p=(0.3, 0.3, 0.3, 0.04, 0.03, 0.03)).astype(dtype)
    ran = []
    separable = pool._max_separable
    monkeypatch.setattr(pool, "_max_separable", lambda *a: (ran.append(True), separable(*a))[1])
    y, idx = numbaconv.max_pool2d(x, return_indices=True, **args)
    assert math.prod(y.shape[2:]) > pool.WINDOW_MAX_OUTPUTS and not ran  # indices: the window loops
    np.testing.assert_array_equal(numbaconv.max_pool2d(x, **args), y)
    assert ran
    np.testing.assert_array_equal(y, naive.max_pool(x, **args)[0])
    monkeypatch.setattr(pool, "WINDOW_MAX_OUTPUTS", 1 << 20)
    ran.clear()
    np.testing.assert_array_equal(numbaconv.max_pool2d(x, **args), y)
    assert not ran


def test_battery_in_a_subprocess():
    assert_battery_survives("test_pool")


@pytest.mark.parametrize("route", ["serial", "parallel"])
def test_both_kernel_routes_match_naive(monkeypatch, route):
    """Each kernel runs as its serial twin below a size and in parallel above it; tests use small
    arrays, so both routes are forced here, through the threshold, on padded, dilated windows."""
    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1 << 40 if route == "serial" else 0)
    rng = np.random.default_rng(3)
    x = make_array(rng, (2, 3, 9, 8), np.float64)
    args = dict(kernel_size=3, stride=2, padding=1)
    y, idx = numbaconv.max_pool2d(x, dilation=2, return_indices=True, **args)
    ref, ref_idx = naive.max_pool(x, dilation=2, **args)
    assert_close(y, ref, what=f"{route} max_pool2d")
    np.testing.assert_array_equal(idx, ref_idx)
    g = make_array(rng, y.shape, np.float64)
    assert_close(numbaconv.max_pool2d_backward(g, x, dilation=2, indices=idx, **args),
                 naive.max_pool_backward(g, x, dilation=2, **args), what=f"{route} max_pool2d_backward")
    a = numbaconv.avg_pool2d(x, count_include_pad=False, **args)
    assert_close(a, naive.avg_pool(x, count_include_pad=False, **args), what=f"{route} avg_pool2d")
    g = make_array(rng, a.shape, np.float64)
    assert_close(numbaconv.avg_pool2d_backward(g, x, count_include_pad=False, **args),
                 naive.avg_pool_backward(g, x, count_include_pad=False, **args), what=f"{route} avg_pool2d_backward")
