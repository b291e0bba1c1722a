"""Randomized parity of every algorithm with the naive reference: conv and conv_transpose,
forward and backward, 1-D to 3-D, every padding form and mode, groups, strides, dilations,
float32 and float64, contiguous or not."""

from dataclasses import dataclass

import numpy as np
import pytest
from numba import njit
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
import numbaconv
from numbaconv.kernels.cpu import conv_direct, conv_im2col
from numbaconv.kernels.cpu._simd import lanes
from conftest import (DTYPES, LAYOUTS, assert_close, assert_unmodified, check, int_or_tuple, make_array, snapshot,
                      tile_scale)

ALGORITHMS = ("direct", "im2col", "auto")
MAX_SIZE = {1: 12, 2: 8, 3: 5}  # largest spatial size of a conv input
MAX_TRANSPOSE_SIZE = {1: 6, 2: 4, 3: 3}  # a transposed conv's input; its output is larger
EXAMPLES = settings(max_examples=300, deadline=None)


def conv_fn(nd):
    return getattr(numbaconv, f"conv{nd}d")


def conv_backward_fn(nd):
    return getattr(numbaconv, f"conv{nd}d_backward")


def conv_transpose_fn(nd):
    return getattr(numbaconv, f"conv_transpose{nd}d")


def conv_transpose_backward_fn(nd):
    return getattr(numbaconv, f"conv_transpose{nd}d_backward")


@dataclass(frozen=True)
class Case:
    """One call: shapes and arguments, plus how to make its random arrays."""

    n: int
    c_in: int
    c_out: int
    spatial: tuple
    weight_shape: tuple
    kwargs: dict
    bias: bool
    dtype: type
    layouts: tuple  # of x, weight, grad_out
    seed: int

    @property
    def nd(self):
        return len(self.spatial)

    def arrays(self):
        rng = np.random.default_rng(self.seed)
        x = make_array(rng, (self.n, self.c_in) + self.spatial, self.dtype, self.layouts[0])
        w = make_array(rng, self.weight_shape, self.dtype, self.layouts[1])
        b = make_array(rng, (self.c_out,), self.dtype) if self.bias else None
        return x, w, b

    def grad_out(self, shape):
        rng = np.random.default_rng(self.seed + 1)
        return make_array(rng, shape, self.dtype, self.layouts[2])


def _common(draw, nd):
    groups = draw(st.integers(1, 3))
    c_in_g = 1 if draw(st.booleans()) else draw(st.integers(1, 2))  # 1: depthwise when groups == C_in
    c_out_g = draw(st.integers(1, 2))
    return dict(
        groups=groups,
        c_in_g=c_in_g,
        c_out_g=c_out_g,
        n=draw(st.integers(1, 3)),
        kernel=tuple(draw(st.integers(1, 3)) for _ in range(nd)),
        dilation=tuple(draw(st.integers(1, 2)) for _ in range(nd)),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(DTYPES)),
        layouts=tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(3)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def conv_cases(draw, nd=None):
    nd = draw(st.sampled_from((1, 2, 3))) if nd is None else nd
    c = _common(draw, nd)
    kernel, dilation = c["kernel"], c["dilation"]
    mode = draw(st.sampled_from(naive.PADDING_MODES))
    form = draw(st.sampled_from(("int", "tuple", "same", "valid")))
    if form == "same":
        stride = (1,) * nd
    else:
        stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    if form == "int":
        padding = draw(st.integers(0, 2))
    elif form == "tuple":
        padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    else:
        padding = form
    spatial = []
    for k, d, (before, after) in zip(kernel, dilation, naive.padding_pairs(padding, kernel, stride, dilation)):
        low = max(1, d * (k - 1) + 1 - before - after)  # the dilated kernel fits the padded input
        if mode == "reflect":
            low = max(low, before + 1, after + 1)
        if mode == "circular":
            low = max(low, before, after)
        spatial.append(draw(st.integers(low, MAX_SIZE[nd])))
    kwargs = dict(
        stride=int_or_tuple(draw, stride),
        padding=padding,
        dilation=int_or_tuple(draw, dilation),
        groups=c["groups"],
        padding_mode=mode,
    )
    return Case(
        n=c["n"], c_in=c["groups"] * c["c_in_g"], c_out=c["groups"] * c["c_out_g"], spatial=tuple(spatial),
        weight_shape=(c["groups"] * c["c_out_g"], c["c_in_g"]) + kernel, kwargs=kwargs,
        bias=c["bias"], dtype=c["dtype"], layouts=c["layouts"], seed=c["seed"],
    )


@st.composite
def conv_transpose_cases(draw, nd=None):
    nd = draw(st.sampled_from((1, 2, 3))) if nd is None else nd
    c = _common(draw, nd)
    kernel, dilation = c["kernel"], c["dilation"]
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nd))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    spatial = []
    for k, s, d, p, op in zip(kernel, stride, dilation, padding, output_padding):
        # output size (L - 1) * s - 2p + d(k - 1) + op + 1 must be >= 1
        shortfall = 2 * p - d * (k - 1) - op
        low = 1 + max(0, -(-shortfall // s))
        spatial.append(draw(st.integers(low, max(low, MAX_TRANSPOSE_SIZE[nd]))))
    kwargs = dict(
        stride=int_or_tuple(draw, stride),
        padding=int_or_tuple(draw, padding),
        output_padding=int_or_tuple(draw, output_padding),
        groups=c["groups"],
        dilation=int_or_tuple(draw, dilation),
    )
    c_in, c_out = c["groups"] * c["c_in_g"], c["groups"] * c["c_out_g"]
    return Case(
        n=c["n"], c_in=c_in, c_out=c_out, spatial=tuple(spatial),
        weight_shape=(c_in, c["c_out_g"]) + kernel, kwargs=kwargs,
        bias=c["bias"], dtype=c["dtype"], layouts=c["layouts"], seed=c["seed"],
    )


def _abs(a):
    return None if a is None else np.abs(a.astype(np.float64))


# --------------------------------------------------------------------------- convolution


@EXAMPLES
@given(case=conv_cases())
def test_conv_forward_matches_naive(case):
    x, w, b = case.arrays()
    copies = snapshot(x, w, b)
    ref = naive.conv(x, w, b, **case.kwargs)
    scale = naive.conv(_abs(x), _abs(w), _abs(b), **case.kwargs)
    for algorithm in ALGORITHMS:
        y = conv_fn(case.nd)(x, w, b, algorithm=algorithm, **case.kwargs)
        check(y, ref, scale, case.dtype, f"conv{case.nd}d forward, algorithm={algorithm}")
        assert_unmodified((x, w, b), copies)


@EXAMPLES
@given(case=conv_cases(), needs=st.sampled_from([(True, True, True), (True, False, False),
                                                 (False, True, False), (False, False, True),
                                                 (False, True, True)]))
def test_conv_backward_matches_naive(case, needs):
    x, w, _ = case.arrays()
    out_shape = naive.conv(x, w, None, **case.kwargs).shape
    go = case.grad_out(out_shape)
    copies = snapshot(go, x, w)
    refs = naive.conv_backward(go, x, w, **case.kwargs)
    scales = naive.conv_backward(_abs(go), _abs(x), _abs(w), **case.kwargs)
    for algorithm in ALGORITHMS:
        grads = conv_backward_fn(case.nd)(go, x, w, needs=needs, algorithm=algorithm, **case.kwargs)
        assert isinstance(grads, tuple) and len(grads) == 3
        for name, need, got, ref, scale in zip(("grad_x", "grad_weight", "grad_bias"), needs, grads, refs, scales):
            if need:
                check(got, ref, scale, case.dtype, f"conv{case.nd}d_backward {name}, algorithm={algorithm}")
            else:
                assert got is None, f"{name} not asked for but returned"
        assert_unmodified((go, x, w), copies)


# --------------------------------------------------------------------------- transposed convolution


@EXAMPLES
@given(case=conv_transpose_cases())
def test_conv_transpose_forward_matches_naive(case):
    x, w, b = case.arrays()
    copies = snapshot(x, w, b)
    ref = naive.conv_transpose(x, w, b, **case.kwargs)
    scale = naive.conv_transpose(_abs(x), _abs(w), _abs(b), **case.kwargs)
    for algorithm in ALGORITHMS:
        y = conv_transpose_fn(case.nd)(x, w, b, algorithm=algorithm, **case.kwargs)
        check(y, ref, scale, case.dtype, f"conv_transpose{case.nd}d forward, algorithm={algorithm}")
        assert_unmodified((x, w, b), copies)


@EXAMPLES
@given(case=conv_transpose_cases(), needs=st.sampled_from([(True, True, True), (True, False, True),
                                                           (False, True, False)]))
def test_conv_transpose_backward_matches_naive(case, needs):
    x, w, _ = case.arrays()
    out_shape = naive.conv_transpose(x, w, None, **case.kwargs).shape
    go = case.grad_out(out_shape)
    copies = snapshot(go, x, w)
    refs = naive.conv_transpose_backward(go, x, w, **case.kwargs)
    scales = naive.conv_transpose_backward(_abs(go), _abs(x), _abs(w), **case.kwargs)
    for algorithm in ALGORITHMS:
        grads = conv_transpose_backward_fn(case.nd)(go, x, w, needs=needs, algorithm=algorithm, **case.kwargs)
        assert isinstance(grads, tuple) and len(grads) == 3
        for name, need, got, ref, scale in zip(("grad_x", "grad_weight", "grad_bias"), needs, grads, refs, scales):
            if need:
                check(got, ref, scale, case.dtype,
                              f"conv_transpose{case.nd}d_backward {name}, algorithm={algorithm}")
            else:
                assert got is None, f"{name} not asked for but returned"
        assert_unmodified((go, x, w), copies)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("nd, spatial", [(1, (61,)), (2, (19, 18)), (3, (8, 7, 6))])
def test_medium_sizes_match_naive(nd, spatial, algorithm):
    """Larger than the randomized cases: enough work for threads and for "auto" to pick im2col."""
    rng = np.random.default_rng(sum(spatial))
    x = rng.standard_normal((4, 8) + spatial).astype(np.float32)
    w = rng.standard_normal((12, 4) + (3,) * nd).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    kw = dict(stride=1, padding=1, dilation=1, groups=2, padding_mode="zeros")
    y = conv_fn(nd)(x, w, b, algorithm=algorithm, **kw)
    check(y, naive.conv(x, w, b, **kw), naive.conv(_abs(x), _abs(w), _abs(b), **kw), np.float32, "forward")
    go = rng.standard_normal(y.shape).astype(np.float32)
    grads = conv_backward_fn(nd)(go, x, w, algorithm=algorithm, **kw)
    refs = naive.conv_backward(go, x, w, **kw)
    scales = naive.conv_backward(_abs(go), _abs(x), _abs(w), **kw)
    for name, got, ref, scale in zip(("grad_x", "grad_weight", "grad_bias"), grads, refs, scales):
        check(got, ref, scale, np.float32, name)


POINTWISE = [("conv", kw) for kw in (dict(), dict(stride=2), dict(padding=1), dict(groups=2),
                                      dict(dilation=3, padding=1))] + \
            [("transpose", kw) for kw in (dict(), dict(stride=2), dict(stride=2, output_padding=1),
                                           dict(dilation=2, output_padding=1), dict(padding=1, groups=2))]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind, kw", POINTWISE, ids=[f"{kind}-{kw}" for kind, kw in POINTWISE])
def test_pointwise_kernels(kind, kw, nd, algorithm):
    """1x1 kernels, which an implementation may treat as a plain matrix product, in every geometry."""
    transpose = kind == "transpose"
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 4) + (3,) * nd)
    w = rng.standard_normal((4, 3 if transpose else 2) + (1,) * nd)
    kw = dict(kw, groups=kw.get("groups", 1 if transpose else 2))
    if transpose:
        forward, backward = conv_transpose_fn(nd), conv_transpose_backward_fn(nd)
        ref_forward, ref_backward = naive.conv_transpose, naive.conv_transpose_backward
    else:
        forward, backward = conv_fn(nd), conv_backward_fn(nd)
        ref_forward, ref_backward = naive.conv, naive.conv_backward
    ref = ref_forward(x, w, None, **kw)
    assert_close(forward(x, w, algorithm=algorithm, **kw), ref, what="forward")
    go = rng.standard_normal(ref.shape)
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"),
                               backward(go, x, w, algorithm=algorithm, **kw), ref_backward(go, x, w, **kw)):
        assert_close(got, want, what=name)


#: (nd, kernel, stride, dilation, padding, depth multiplier, size): depthwise geometries beyond
#: the randomized cases' 3-tap kernels: kernels that are not whole 3x3 blocks (1, 2, 4, 5, 7),
#: strides and dilations together, a multiplier, and sizes that run the parallel kernels.
DEPTHWISE = [
    (2, 3, 1, 1, 1, 1, 12), (2, 5, 1, 1, 2, 1, 9), (2, 7, 1, 1, 3, 1, 8), (2, 4, 2, 1, 1, 2, 11),
    (2, 2, 3, 2, 0, 1, 13), (2, 1, 1, 1, 1, 1, 6), (2, 5, 2, 2, 4, 2, 15), (1, 7, 1, 1, 3, 2, 40),
    (1, 4, 3, 2, 2, 1, 33), (3, 3, 1, 1, 1, 1, 6), (3, 4, 2, 1, 1, 2, 7), (2, 3, 2, 1, 1, 1, 40),
    (2, 3, 1, 1, 1, 1, 40),
]


@pytest.mark.parametrize("nd, k, stride, dilation, padding, m, size", DEPTHWISE,
                         ids=[f"{nd}d-k{k}-s{s}-d{d}-p{p}-m{m}-{n}" for nd, k, s, d, p, m, n in DEPTHWISE])
def test_depthwise_kernels(monkeypatch, nd, k, stride, dilation, padding, m, size):
    """groups == C_in runs conv_direct's depthwise loops (kernels/cpu/depthwise.py) for the
    forward pass, both gradients, and the transposed convolution built on them."""
    rng = np.random.default_rng(k * 100 + size)
    c = 24 if size >= 40 else 3
    if size >= 40:  # the parallel kernels (the others run their one-thread twins)
        monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1)
    x = rng.standard_normal((2, c) + (size,) * nd).astype(np.float32)
    w = rng.standard_normal((c * m, 1) + (k,) * nd).astype(np.float32)
    b = rng.standard_normal(c * m).astype(np.float32)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=c)
    y = conv_fn(nd)(x, w, b, algorithm="direct", **kw)
    check(y, naive.conv(x, w, b, **kw), naive.conv(_abs(x), _abs(w), _abs(b), **kw), np.float32, "forward")
    go = rng.standard_normal(y.shape).astype(np.float32)
    grads = conv_backward_fn(nd)(go, x, w, algorithm="direct", **kw)
    refs, scales = naive.conv_backward(go, x, w, **kw), naive.conv_backward(_abs(go), _abs(x), _abs(w), **kw)
    for name, got, ref, scale in zip(("grad_x", "grad_weight", "grad_bias"), grads, refs, scales):
        check(got, ref, scale, np.float32, name)
    # transposed: (C * m) -> C channels in C groups, weight (C * m, 1, *k) read as (C_in, C_out / g, *k)
    tkw = dict(stride=stride, padding=padding, dilation=dilation, groups=c,
               output_padding=min(stride, dilation) - 1)
    if m == 1:
        t = conv_transpose_fn(nd)(x, w, b[:c], algorithm="direct", **tkw)
        check(t, naive.conv_transpose(x, w, b[:c], **tkw),
              naive.conv_transpose(_abs(x), _abs(w), _abs(b[:c]), **tkw), np.float32, "transposed forward")
        gt = rng.standard_normal(t.shape).astype(np.float32)
        tgrads = conv_transpose_backward_fn(nd)(gt, x, w, algorithm="direct", **tkw)
        trefs = naive.conv_transpose_backward(gt, x, w, **tkw)
        tscales = naive.conv_transpose_backward(_abs(gt), _abs(x), _abs(w), **tkw)
        for name, got, ref, scale in zip(("grad_x", "grad_weight", "grad_bias"), tgrads, trefs, tscales):
            check(got, ref, scale, np.float32, "transposed " + name)


@njit  # not cached: Numba's cache would not see a change to the inlined _taps in another module
def _taps_into(xf, wf, rows, cols, b, ks, offs, base, stride, n, chunk):
    accf = np.full(conv_direct.QUAD * stride, np.nan, xf.dtype)
    for t0 in range(0, cols.shape[0], chunk):
        conv_direct._taps(xf, wf, rows, cols, b, ks, offs, base, accf, stride, n, t0, min(cols.shape[0], t0 + chunk))
    return accf.reshape(conv_direct.QUAD, stride)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(0, 200), taps=st.integers(1, 12),
       channels=st.integers(1, 6), chunk=st.integers(1, 13), seed=st.integers(0, 2**16))
def test_direct_register_blocked_taps_match_numpy(dtype, n, taps, channels, chunk, seed):
    """``conv_direct._taps``, the stride-1 loops' register-blocked sums, for every count of
    positions around its vector sizes (six vectors, three, one, a last vector partly past n,
    fewer positions than a vector) and any four channels of the weight (one of them repeated,
    as a group's last quad has it), the weight read through any rows and columns of a flat
    buffer, the columns added in chunks of any size onto the bias: each sum at each position
    against NumPy, and nothing written past the last vector, which ends before n + lanes - 1."""
    rng = np.random.default_rng(seed)
    V = lanes(np.empty(1, dtype))
    xf = rng.standard_normal(420).astype(dtype)
    offs = rng.integers(0, 420 - 200 - 9, taps)
    base = int(rng.integers(0, 10))
    wf, b = rng.standard_normal(channels * taps).astype(dtype), rng.standard_normal(channels).astype(dtype)
    rows, cols = rng.permutation(channels) * taps, rng.permutation(taps)
    w = wf[rows[:, None] + cols[None, :]]
    ks = tuple(int(k) for k in rng.integers(0, channels, conv_direct.QUAD))
    stride = n + V + 5
    acc = _taps_into(xf, wf, rows, cols, b, ks, offs, base, stride, n, chunk)
    window = xf[base + offs[:, None] + np.arange(n)[None, :]].astype(np.float64)  # (taps, n)
    ref = b[list(ks)][:, None] + w[list(ks)].astype(np.float64) @ window
    scale = np.abs(b[list(ks)])[:, None] + np.abs(w[list(ks)]).astype(np.float64) @ np.abs(window)
    assert np.all(np.abs(acc[:, :n] - ref) <= 8 * np.finfo(dtype).eps * (scale + 1e-30)), "a sum is wrong"
    assert np.isnan(acc[:, n + V - 1:]).all(), "a sum was written past the last vector"


@settings(max_examples=30, deadline=None)
@given(nd=st.integers(1, 3), n=st.integers(1, 3), c_in_g=st.integers(2, 9), c_out_g=st.integers(1, 9),
       groups=st.integers(1, 3), size=st.integers(1, 23), dilation=st.integers(1, 2),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_direct_pointwise_weight_gradient_takes_channels_as_taps(nd, n, c_in_g, c_out_g, groups, size, dilation,
                                                                 dtype, seed):
    """The direct weight gradient of a 1x1 kernel without padding sums each group's input
    channels as the taps of one row (``conv_direct.grad_weight``): the loops run with one
    channel of Cg taps, and the result matches the naive reference for any batch, groups,
    channel counts (around the loops' quads and passes of taps) and plane. (One input channel a
    group takes the depthwise loops.)"""
    rng = np.random.default_rng(seed)
    spatial = (size,) + (max(1, size // 3),) * (nd - 1)
    x = rng.standard_normal((n, groups * c_in_g) + spatial).astype(dtype)
    w = rng.standard_normal((groups * c_out_g, c_in_g) + (1,) * nd).astype(dtype)
    go = rng.standard_normal((n, groups * c_out_g) + spatial).astype(dtype)
    shapes = []
    stacked = conv_direct._grad_weight_stacked
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv_direct, "_grad_weight_stacked", lambda gs, xs, gw, *a: shapes.append(gw.shape) or stacked(gs, xs, gw, *a))
        _, gw, _ = conv_backward_fn(nd)(go, x, w, groups=groups, dilation=dilation, algorithm="direct")
    assert shapes == [(groups * c_out_g, 1, c_in_g)]
    _, ref, _ = naive.conv_backward(go, x, w, groups=groups, dilation=dilation)
    _, scale, _ = naive.conv_backward(_abs(go), _abs(x), _abs(w), groups=groups, dilation=dilation)
    check(gw, ref, scale, dtype, "pointwise weight gradient")


@settings(max_examples=40, deadline=None)
@given(K=st.integers(1, 8), Cg=st.integers(1, 5), T=st.integers(1, 9), groups=st.integers(1, 3))
def test_direct_weight_index_reads_the_flipped_kernel_in_place(K, Cg, T, groups):
    """``conv_direct.weight_index``: where the stride-1 loops read their kernel in the weight as
    it is, unflipped (the weight itself) and flipped (``conv_direct.flipped``'s copy, which
    the input gradient once made on every call), groups included, and which input channel and
    tap each column multiplies."""
    from numbaconv._geometry import conv_geometry

    K *= groups
    w = np.arange(K * Cg * T, dtype=np.float64).reshape(K, Cg, 1, 1, T)
    x = np.zeros((1, Cg * groups, 1, 1, T + 2))
    geom = conv_geometry("conv3d", x, w, None, 1, 0, 1, groups, "zeros", 3)
    for flip, want in ((False, w.reshape(K, -1)), (True, conv_direct.flipped(w, geom).reshape(groups * Cg, -1))):
        rows, cols, chans, taps = conv_direct.weight_index(K, Cg, T, groups, flip)
        np.testing.assert_array_equal(w.reshape(-1)[rows[:, None] + cols[None, :]], want)
        np.testing.assert_array_equal(chans * T + taps, np.arange(want.shape[1]))  # column j: channel j // T, tap j % T


@pytest.mark.parametrize("kernel, stride, dilation, count, reach", [
    ((1, 7, 7), (1, 2, 2), (1, 1, 1), 4, (1, 4, 4)),  # ResNet's stem
    ((1, 11, 11), (1, 4, 4), (1, 1, 1), 16, (1, 3, 3)),  # AlexNet's
    ((1, 3, 3), (1, 2, 2), (1, 1, 1), 4, (1, 2, 2)),
    ((1, 1, 1), (1, 2, 2), (1, 1, 1), 1, (1, 1, 1)),  # pointwise: the input subsampled
    ((1, 1, 3), (1, 1, 2), (1, 1, 2), 1, (1, 1, 3)),  # dilation 2 at stride 2: every tap on phase 0
    ((3, 3, 3), (2, 3, 1), (1, 2, 1), 6, (2, 2, 3)),  # taps at 0, 2, 4 on 3 phases of stride 3
])
def test_direct_strided_phases(kernel, stride, dilation, count, reach):
    """``conv_direct.phases``: how many phases a channel a strided convolution becomes and the
    taps each is left with; the phases and their gradient (``to_phases``, ``from_phases``) are
    each other's adjoint, so the input gradient taken back through them is exact; and a strided
    direct convolution runs the stride-1 loops on them, against the naive reference."""
    from numbaconv._geometry import conv_geometry

    rng = np.random.default_rng(sum(kernel) + sum(stride))
    x = rng.standard_normal((2, 2, 5, 9, 10))
    w = rng.standard_normal((3, 2, *kernel))
    kw = dict(stride=stride, padding=tuple(k // 2 for k in kernel), dilation=dilation)
    geom = conv_geometry("conv3d", x, w, None, kw["stride"], kw["padding"], kw["dilation"], 1, "zeros", 3)
    plan = conv_direct.phases(geom)
    assert (plan.count, plan.geom.kernel, plan.geom.stride) == (count, reach, (1, 1, 1))
    xp = conv_direct.to_phases(x, plan)
    g = rng.standard_normal(xp.shape)
    gx = np.empty_like(x)
    conv_direct.from_phases(g, gx, plan)
    assert np.isclose(np.vdot(xp, g), np.vdot(x, gx), rtol=1e-12), "from_phases is not to_phases' adjoint"
    stride1, calls = conv_direct._correlate_stacked, []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(conv_direct, "_correlate_stacked", lambda *a: calls.append(1) or stride1(*a))
        y = numbaconv.conv3d(x, w, algorithm="direct", **kw)
    assert calls, "the strided convolution did not run the stride-1 loops"
    check(y, naive.conv(x, w, **kw), naive.conv(_abs(x), _abs(w), **kw), np.float64, "strided forward")


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_depthwise_strided_input_gradient_by_phases(data):
    """A strided depthwise convolution's input gradient runs one stride phase at a time
    (depthwise._gather_phases): strides differing per dimension, phases no tap reaches (stride
    past the dilated kernel), dilation, a depth multiplier, batches, and odd sizes, on the
    serial and the parallel kernel, against the naive reference; float64, so that the sums must
    agree to rounding."""
    from numbaconv.kernels.cpu import depthwise

    nd = data.draw(st.integers(1, 3), "nd")
    k = data.draw(st.lists(st.integers(1, 4), min_size=nd, max_size=nd), "kernel")
    stride = data.draw(st.lists(st.integers(1, 3), min_size=nd, max_size=nd).filter(lambda s: max(s) > 1), "stride")
    dilation = data.draw(st.lists(st.integers(1, 2), min_size=nd, max_size=nd), "dilation")
    size = [data.draw(st.integers(d * (kk - 1) + 1, 9 if nd == 3 else 14), "size") for kk, d in zip(k, dilation)]
    padding = [data.draw(st.integers(0, d * (kk - 1) // 2), "padding") for kk, d in zip(k, dilation)]
    c, m, n = data.draw(st.integers(1, 3), "c"), data.draw(st.integers(1, 2), "m"), data.draw(st.integers(1, 2), "n")
    parallel = data.draw(st.booleans(), "parallel")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), "seed"))
    x = rng.standard_normal((n, c, *size))
    w = rng.standard_normal((c * m, 1, *k))
    kw = dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation), groups=c)
    go = rng.standard_normal(naive.conv(x, w, None, **kw).shape)
    ran, kernel = [], depthwise._gather_phases
    with pytest.MonkeyPatch.context() as mp:
        if parallel:
            mp.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1)
        mp.setattr(depthwise, "_gather_phases", lambda *a: (ran.append(1), kernel(*a))[1])
        grad_x = conv_backward_fn(nd)(go, x, w, algorithm="direct", needs=(True, False, False), **kw)[0]
    ref = naive.conv_backward(go, x, w, **kw)[0]
    check(grad_x, ref, naive.conv_backward(_abs(go), _abs(x), _abs(w), **kw)[0], np.float64, "grad_x")
    assert ran, "the strided input gradient did not run by phases"


@pytest.mark.parametrize("route", ["serial", "parallel"])
@pytest.mark.parametrize("kw, dw", [(1, 1), (2, 3), (3, 1), (4, 2), (5, 1), (6, 2), (7, 3)])
def test_direct_flat_loops_take_taps_in_threes(monkeypatch, route, kw, dw):
    """The stride-1 direct loops take a kernel row's taps three per pass (the forward and the
    weight gradient on three accumulators, the input gradient gathered from grad_out with a
    margin of zeros): every row width from 1 to 7 (whole triples, one or two left over), width
    dilations up to 3, padding, on the serial and the parallel kernels, against the naive
    reference."""
    if route == "parallel":
        monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1)
    rng = np.random.default_rng(kw * 10 + dw)
    x = rng.standard_normal((2, 3, 7, 6 + kw * dw))
    w = rng.standard_normal((4, 3, 2, kw))
    b = rng.standard_normal(4)
    kw_ = dict(padding=(1, dw), dilation=(2, dw))
    y = numbaconv.conv2d(x, w, b, algorithm="direct", **kw_)
    check(y, naive.conv(x, w, b, **kw_), naive.conv(_abs(x), _abs(w), _abs(b), **kw_), np.float64, "forward")
    go = rng.standard_normal(y.shape)
    grads = numbaconv.conv2d_backward(go, x, w, algorithm="direct", **kw_)
    refs, scales = naive.conv_backward(go, x, w, **kw_), naive.conv_backward(_abs(go), _abs(x), _abs(w), **kw_)
    for name, got, ref, scale in zip(("grad_x", "grad_weight", "grad_bias"), grads, refs, scales):
        check(got, ref, scale, np.float64, name)


@pytest.mark.parametrize("block", [1, 5, 13, 64])
@pytest.mark.parametrize("spatial, kernel, padding", [((40,), 5, 2), ((6, 23), 3, 1), ((3, 4, 9), 2, (1, 0, 1))])
def test_direct_blocks_that_split_grid_rows_match_naive(monkeypatch, block, spatial, kernel, padding):
    """With ``STACK_BLOCK`` under a grid row, the stride-1 loops split each row into blocks of
    equal parts (``conv_direct.block_length``: a long 1-D signal), the outputs of a row written
    by several tasks: forward with a bias, and both gradients, against the naive reference on
    the parallel kernels, blocks of every size from one position to a few rows."""
    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(conv_direct, "STACK_BLOCK", block)
    nd = len(spatial)
    rng = np.random.default_rng(block + nd)
    x = rng.standard_normal((3, 4) + spatial)
    w = rng.standard_normal((5, 4) + (kernel,) * nd)
    b = rng.standard_normal(5)
    y = conv_fn(nd)(x, w, b, padding=padding, algorithm="direct")
    check(y, naive.conv(x, w, b, padding=padding), naive.conv(_abs(x), _abs(w), _abs(b), padding=padding),
          np.float64, "forward")
    go = rng.standard_normal(y.shape)
    grads = conv_backward_fn(nd)(go, x, w, padding=padding, algorithm="direct")
    refs = naive.conv_backward(go, x, w, padding=padding)
    scales = naive.conv_backward(_abs(go), _abs(x), _abs(w), padding=padding)
    for name, got, ref, scale in zip(("grad_x", "grad_weight", "grad_bias"), grads, refs, scales):
        check(got, ref, scale, np.float64, name)


#: stride-1 forward passes whose samples interleave (``conv_direct.samples_interleaved``):
#: (spatial, kernel, padding, dilation, groups, padding_mode, c_in, c_out, batch, samples a grid):
#: 1-D to 3-D, a crop-free margin on one side only, dilation, groups with an odd channel count a
#: group (a quad's last channel repeated), the whole batch on one grid or in groups of a few.
INTERLEAVED_DIRECT = [
    ((9,), 3, 0, 1, 1, "zeros", 2, 3, 6, 6), ((7, 6), 3, (1, 0), 2, 1, "zeros", 3, 4, 6, 3),
    ((6, 5), (2, 3), (0, 1), (2, 1), 2, "zeros", 4, 6, 5, 5), ((4, 5, 6), 2, (1, 0, 1), 1, 1, "zeros", 2, 5, 4, 2),
    ((8, 8), 5, 2, 1, 3, "reflect", 6, 9, 6, 2), ((10, 10), 5, 0, 1, 1, "zeros", 6, 16, 8, 8),
]


@pytest.mark.parametrize("route", ["serial", "parallel"])
@pytest.mark.parametrize("spatial, kernel, padding, dilation, groups, mode, c_in, c_out, batch, m",
                         INTERLEAVED_DIRECT)
def test_direct_forward_with_interleaved_samples_matches_naive(monkeypatch, route, spatial, kernel, padding,
                                                              dilation, groups, mode, c_in, c_out, batch, m):
    """The stride-1 forward pass with m samples interleaved on each grid row, over every output
    row's positions alone: the result, and the same pass with a fused epilogue (leaky slope
    0.1, clipped to [-1, 2]) and a residual, against the naive reference."""
    from numbaconv._geometry import conv_geometry

    if route == "parallel":
        monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(conv_direct, "INTERLEAVE_MIN_ROW", 1)  # whatever the rows and the margin
    monkeypatch.setattr(conv_direct, "INTERLEAVE_BELOW_FILL", 2.0)
    nd = len(spatial)
    rng = np.random.default_rng(sum(spatial) + c_out)
    kernel = (kernel,) * nd if isinstance(kernel, int) else kernel
    x = rng.standard_normal((batch, c_in) + spatial)
    w = rng.standard_normal((c_out, c_in // groups) + kernel)
    b = rng.standard_normal(c_out)
    kw = dict(padding=padding, dilation=dilation, groups=groups, padding_mode=mode)
    geom = conv_geometry(f"conv{nd}d", x, w, b, 1, padding, dilation, groups, mode, nd)
    grid_row = conv_direct._grid_shape(geom)[2]
    monkeypatch.setattr(conv_direct, "STACK_BLOCK", grid_row * m)  # at most m samples a grid
    assert conv_direct.samples_interleaved(geom) == m
    placed, calls = conv_direct._place, []  # records how many samples share each grid
    monkeypatch.setattr(conv_direct, "_place", lambda a, xs, *r: calls.append(a.shape[0] // xs.shape[1]) or placed(a, xs, *r))
    ref = naive.conv(x, w, b, **kw)
    check(conv_fn(nd)(x, w, b, algorithm="direct", **kw), ref, naive.conv(_abs(x), _abs(w), _abs(b), **kw),
          np.float64, "forward")
    assert calls == [m], "the samples were not interleaved"
    if mode == "zeros":  # the kernel entry point itself, as an inference graph calls it
        out, r = np.empty((*ref.shape[:2], *geom.out_size)), rng.standard_normal((*ref.shape[:2], *geom.out_size))
        conv_direct.forward(x.reshape(*x.shape[:2], *geom.in_size), w.reshape(*w.shape[:2], *geom.kernel), b, out,
                            geom, None, (0.1, -1.0, 2.0), r)
        y = ref.reshape(out.shape) + r
        assert_close(out, np.clip(np.where(y < 0, 0.1 * y, y), -1.0, 2.0), what="epilogue")
        conv_direct.forward(x.reshape(*x.shape[:2], *geom.in_size), w.reshape(*w.shape[:2], *geom.kernel), b, out,
                            geom, None, (0.1, -1.0, 2.0))
        assert_close(out, np.clip(np.where(ref < 0, 0.1 * ref, ref), -1.0, 2.0).reshape(out.shape),
                     what="fused epilogue")


#: one input channel into several at stride 1 (nd, kernel, dilation, padding, batch, outputs):
#: a 1x9 and a 5x5 kernel (not whole 3x3 blocks), dilation with padding, 3-D, and LeNet's c1.
SINGLE_INPUT_CHANNEL = [(1, 9, 1, 0, 2, 4), (2, 5, 1, 0, 3, 6), (2, 3, 2, 2, 2, 5), (3, 3, 1, 1, 2, 3),
                        (2, 5, 1, 0, 4, 6)]


@pytest.mark.parametrize("nd, k, dilation, padding, batch, c_out", SINGLE_INPUT_CHANNEL)
def test_single_input_channel_weight_gradient_runs_the_stacked_loops(monkeypatch, nd, k, dilation, padding, batch,
                                                                  c_out):
    """A single input channel into several at stride 1 (``conv_direct._single_input_channel``)
    takes its weight gradient from the stacked grids' loops, never the depthwise ones; so does the weight
    gradient of the transposed convolution back to one channel. Both gradients of each against
    the naive reference, on the serial and the parallel kernels."""
    def refuse(*args):
        raise AssertionError("the depthwise weight gradient ran")

    flat, calls = conv_direct._grad_weight_stacked, []
    monkeypatch.setattr(conv_direct.depthwise, "grad_weight", refuse)
    monkeypatch.setattr(conv_direct, "_grad_weight_stacked", lambda *a: calls.append(1) or flat(*a))
    rng = np.random.default_rng(k * 10 + nd)
    size = 32 if batch == 4 else {1: 40, 2: 11, 3: 6}[nd]
    x = rng.standard_normal((batch, 1) + (size,) * nd)
    w = rng.standard_normal((c_out, 1) + (k,) * nd)
    kw = dict(padding=padding, dilation=dilation)
    for threshold in (1 << 30, 1):  # the one-thread twin, then the parallel kernel
        monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", threshold)
        y = conv_fn(nd)(x, w, algorithm="direct", **kw)
        go = rng.standard_normal(y.shape)
        grads = conv_backward_fn(nd)(go, x, w, algorithm="direct", **kw)
        refs, scales = naive.conv_backward(go, x, w, **kw), naive.conv_backward(_abs(go), _abs(x), _abs(w), **kw)
        for name, got, ref, scale in zip(("grad_x", "grad_weight", "grad_bias"), grads, refs, scales):
            check(got, ref, scale, np.float64, name)
        # transposed: c_out -> 1 channel, weight (c_out, 1, *k) read as (C_in, C_out, *k)
        gt = rng.standard_normal(x.shape)
        tgrads = conv_transpose_backward_fn(nd)(gt, y, w, algorithm="direct", **kw)
        trefs = naive.conv_transpose_backward(gt, y, w, **kw)
        tscales = naive.conv_transpose_backward(_abs(gt), _abs(y), _abs(w), **kw)
        for name, got, ref, scale in zip(("grad_x", "grad_weight", "grad_bias"), tgrads, trefs, tscales):
            check(got, ref, scale, np.float64, "transposed " + name)
    assert len(calls) == 4


@pytest.mark.parametrize("route", ["serial", "parallel"])
def test_bias_gradient_sums_each_channel_in_float64(monkeypatch, route):
    """The bias gradient, grad_out summed over the batch and every position of a channel, is
    accumulated in float64 (``kernels.cpu.norm.plane_totals``) on either route and rounded once:
    float32 planes of ones after a 2^24, to which a float32 sum would add nothing (as NumPy's
    did to one in eight of them), give the float64 sum rounded to float32; conv1d to conv3d and
    a transposed convolution, and float64 data within a few units in the last place."""
    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1 << 40 if route == "serial" else 1)
    rng = np.random.default_rng(8)
    for ndim in (1, 2, 3, "transposed"):
        size = {1: (4000,), 2: (50, 80), 3: (10, 20, 20), "transposed": (40, 30)}[ndim]
        n = len(size)
        x = rng.standard_normal((3, 2, *size)).astype(np.float32)
        go = np.ones((3, 4, *size), np.float32)
        go.reshape(3, 4, -1)[:, :, 0] = 2.0 ** 24
        go[1, 2] *= -1  # a channel of opposite signs
        exact = go.astype(np.float64).sum(axis=(0, *range(2, n + 2)))
        if ndim == "transposed":
            _, _, gb = numbaconv.conv_transpose2d_backward(go, x, rng.standard_normal((2, 4, 1, 1)).astype(np.float32),
                                                           needs=(False, False, True))
        else:
            w = rng.standard_normal((4, 2, *(1,) * n)).astype(np.float32)
            _, _, gb = getattr(numbaconv, f"conv{n}d_backward")(go, x, w, needs=(False, False, True))
        assert gb.dtype == np.float32 and gb.shape == (4,)
        np.testing.assert_array_equal(gb, exact.astype(np.float32), err_msg=f"conv{ndim}d")
        go64 = 1000 + rng.standard_normal(go.shape)
        gb = numbaconv.conv1d_backward(go64.reshape(3, 4, -1), x.reshape(3, 2, -1).astype(np.float64),
                                       rng.standard_normal((4, 2, 1)), needs=(False, False, True))[2]
        np.testing.assert_allclose(gb, go64.sum(axis=(0, *range(2, n + 2))), rtol=4 * np.finfo(np.float64).eps)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's inf * 0
@pytest.mark.parametrize("route", ["serial", "parallel"])
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("column", ["first", "last"])
def test_depthwise_same_size_3x3_pads_the_taps_past_a_row(monkeypatch, route, m, column):
    """MobileNet's depthwise 3x3 (stride 1, padding 1) runs on whole flat planes, where the taps
    left of a row's first column and right of its last read the neighbouring row: an inf placed
    there must reach only the outputs whose windows hold it, as in the naive reference, in the
    forward pass and both gradients (the input gradient runs the same kernel, flipped); an inf
    weight on that column times the padding is NaN there, as in the reference (and PyTorch)."""
    from numbaconv.kernels.cpu import depthwise

    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1 << 40 if route == "serial" else 1)
    ran = []
    for name in ("_same3", "_weight_same3"):
        kernel = getattr(depthwise, name)
        monkeypatch.setattr(depthwise, name, lambda *a, _k=kernel, _n=name: (ran.append(_n), _k(*a))[1])
    rng = np.random.default_rng(m)
    c, H, W = 3, 5, 7
    x = rng.standard_normal((2, c, H, W))
    w = rng.standard_normal((c * m, 1, 3, 3))
    b = rng.standard_normal(c * m)
    x[1, 2, 2, 0 if column == "first" else W - 1] = np.inf
    kw = dict(padding=1, groups=c)

    def same(got, ref, what):
        finite = np.isfinite(ref)
        np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=f"{what}: where the result is finite")
        np.testing.assert_array_equal(got[~finite], ref[~finite], err_msg=f"{what}: the infinite results")
        assert_close(np.where(finite, got, 0), np.where(finite, ref, 0), what=what)

    y = numbaconv.conv2d(x, w, b, algorithm="direct", **kw)
    same(y, naive.conv(x, w, b, **kw), "forward")
    w_inf = w.copy()
    w_inf[m - 1, 0, 1, 0 if column == "first" else 2] = np.inf
    same(numbaconv.conv2d(x, w_inf, b, algorithm="direct", **kw), naive.conv(x, w_inf, b, **kw), "forward, inf weight")
    go = rng.standard_normal(y.shape)
    x[1, 2, 2] = 0  # finite inputs for the gradients: grad_weight sums every position
    go[0, 0, 1, 0 if column == "first" else W - 1] = np.inf
    for name, got, ref in zip(("grad_x", "grad_weight", "grad_bias"), numbaconv.conv2d_backward(go, x, w, algorithm="direct", **kw),
                              naive.conv_backward(go, x, w, **kw)):
        same(got, ref, name)
    assert set(ran) == {"_same3", "_weight_same3"}


@pytest.mark.parametrize("route", ["serial", "parallel"])
@pytest.mark.parametrize("stack", [1, 4])
@pytest.mark.parametrize("depth", [2, 3])
def test_depthwise_3d_with_planar_3x3_kernel_keeps_depths_apart(monkeypatch, route, stack, depth):
    """A 3-D depthwise convolution whose kernel is (1, 3, 3) with padding (0, 1, 1) runs the
    planar 3x3 kernel on every depth's plane, forward and input gradient: each depth's outputs
    must read its own plane only (it once ran on the depths' planes laid end to end, the last
    row of one reading the first of the next), one plane a task or several stacked, across
    samples and depths. The weight gradient takes the general depthwise loops."""
    from numbaconv.kernels.cpu import depthwise

    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1 << 40 if route == "serial" else 1)
    monkeypatch.setattr(depthwise, "STACK_POSITIONS", stack * 20)
    ran = []
    for name in ("_same3", "_weight_same3"):
        kernel = getattr(depthwise, name)
        monkeypatch.setattr(depthwise, name, lambda *a, _k=kernel, _n=name: (ran.append(_n), _k(*a))[1])
    rng = np.random.default_rng(depth)
    x = rng.standard_normal((2, 3, depth, 4, 5))
    w = rng.standard_normal((6, 1, 1, 3, 3))
    b = rng.standard_normal(6)
    kw = dict(padding=(0, 1, 1), groups=3)
    assert_close(numbaconv.conv3d(x, w, b, algorithm="direct", **kw), naive.conv(x, w, b, **kw), what="forward")
    go = rng.standard_normal((2, 6, depth, 4, 5))
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"),
                               numbaconv.conv3d_backward(go, x, w, algorithm="direct", **kw),
                               naive.conv_backward(go, x, w, **kw)):
        assert_close(got, want, what=name)
    assert ran == ["_same3", "_same3"]


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's inf * 0
@pytest.mark.parametrize("route", ["serial", "parallel"])
@pytest.mark.parametrize("stack", [2, 3, 5])
@pytest.mark.parametrize("m", [1, 2])
def test_depthwise_same3_stacks_the_samples_of_a_channel(monkeypatch, route, stack, m):
    """Small planes of MobileNet's depthwise 3x3 run several samples of a channel as one loop,
    their planes one below the other with a row of zeros between. A batch of five in groups
    of two and three leaves a last group short. An inf in a plane's first or last row, next to
    the row between planes, must reach only its own plane's outputs: in the forward pass, with
    the fused epilogue, and in the input gradient (the same kernel, flipped, m planes a task)."""
    from numbaconv._geometry import conv_geometry
    from numbaconv.kernels.cpu import depthwise

    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 1 << 40 if route == "serial" else 1)
    rng = np.random.default_rng(stack * 10 + m)
    N, c, H, W = 5, 3, 4, 6
    monkeypatch.setattr(depthwise, "STACK_POSITIONS", stack * H * W)
    x = rng.standard_normal((N, c, H, W))
    w = rng.standard_normal((c * m, 1, 3, 3))
    b = rng.standard_normal(c * m)
    x[1, 0, 0, 2] = np.inf
    x[2, 1, H - 1, W - 1] = np.inf
    x[3, 2, H - 1, 0] = -np.inf
    kw = dict(padding=1, groups=c)
    geom = conv_geometry("conv2d", x, w, b, 1, 1, 1, c, "zeros", 2)
    assert depthwise._stacked(geom) == stack
    ran, kernel = [], depthwise._same3
    monkeypatch.setattr(depthwise, "_same3", lambda *a: (ran.append(a[6]), kernel(*a))[1])  # its stack

    def same(got, ref, what):
        finite = np.isfinite(ref)
        np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=f"{what}: where the result is finite")
        np.testing.assert_array_equal(got[~finite], ref[~finite], err_msg=f"{what}: the infinite results")
        assert_close(np.where(finite, got, 0), np.where(finite, ref, 0), what=what)

    ref = naive.conv(x, w, b, **kw)
    same(numbaconv.conv2d(x, w, b, algorithm="direct", **kw), ref, "forward")
    out = np.empty((N, c * m, 1, H, W))
    conv_direct.forward(x.reshape(N, c, 1, H, W), w.reshape(c * m, 1, 1, 3, 3), b, out, geom, None, (0.1, -1.0, 2.0))
    same(out.reshape(ref.shape), np.clip(np.where(ref < 0, 0.1 * ref, ref), -1.0, 2.0), "fused epilogue")
    go = rng.standard_normal(ref.shape)
    go[2, m * 1, 0, 3] = np.inf  # channel 1's first output, in the middle sample of a stack
    x = np.where(np.isfinite(x), x, 0)
    gx = numbaconv.conv2d_backward(go, x, w, algorithm="direct", **kw)[0]
    same(gx, naive.conv_backward(go, x, w, **kw)[0], "grad_x")
    assert ran == [stack] * 3


# --------------------------------------------------------------------------- workspace chunking


@pytest.mark.parametrize("transposed", [0, 1 << 16])
@pytest.mark.parametrize("columns", [25, 120, 400, 1 << 20])
@pytest.mark.parametrize("workspace", [1, 3000, 30000, 150000])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_im2col_chunks_give_the_same_result(monkeypatch, workspace, nd, columns, transposed):
    """A tiny workspace forces the batch through im2col one sample (or a few) at a time, the
    grid layout's GEMMs take one sample, two or the whole chunk side by side (the exact
    columns interleave the chunk's samples), and the weight gradient's products run in either orientation."""
    rng = np.random.default_rng(nd)
    spatial = {1: (11,), 2: (7, 6), 3: (4, 5, 4)}[nd]
    x = rng.standard_normal((5, 4) + spatial)
    w = rng.standard_normal((6, 2) + (3,) * nd)
    b = rng.standard_normal(6)
    kw = dict(stride=1, padding=1, dilation=1, groups=2, padding_mode="reflect")
    ref = naive.conv(x, w, b, **kw)
    go = rng.standard_normal(ref.shape)
    grads = naive.conv_backward(go, x, w, **kw)
    tw = rng.standard_normal((4, 3) + (2,) * nd)
    tkw = dict(stride=2, padding=1, output_padding=1, groups=1, dilation=1)
    tref = naive.conv_transpose(x, tw, None, **tkw)
    tgo = rng.standard_normal(tref.shape)
    tgrads = naive.conv_transpose_backward(tgo, x, tw, **tkw)

    # strided: exact columns, the chunk's samples interleaved (one, two, three or all six)
    xs = rng.standard_normal((6, 4) + spatial)
    skw = dict(stride=2, padding=1, dilation=1, groups=2)
    sref = naive.conv(xs, w, b, **skw)
    sgo = rng.standard_normal(sref.shape)
    sgrads = naive.conv_backward(sgo, xs, w, **skw)

    monkeypatch.setattr(numbaconv.config, "WORKSPACE_BYTES", workspace)
    monkeypatch.setattr(conv_im2col, "GRID_GEMM_COLUMNS", columns)
    monkeypatch.setattr(conv_im2col, "TRANSPOSED_WEIGHT_GRAD_MAX", transposed)
    assert_close(conv_fn(nd)(xs, w, b, algorithm="im2col", **skw), sref, what="strided forward")
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"),
                               conv_backward_fn(nd)(sgo, xs, w, algorithm="im2col", **skw), sgrads):
        assert_close(got, want, what=f"strided {name}")
    assert_close(conv_fn(nd)(x, w, b, algorithm="im2col", **kw), ref, what="forward")
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"),
                               conv_backward_fn(nd)(go, x, w, algorithm="im2col", **kw), grads):
        assert_close(got, want, what=name)
    assert_close(conv_transpose_fn(nd)(x, tw, None, algorithm="im2col", **tkw), tref, what="transpose forward")
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"),
                               conv_transpose_backward_fn(nd)(tgo, x, tw, algorithm="im2col", **tkw), tgrads):
        assert_close(got, want, what=f"transpose {name}")


#: (spatial, kernel, stride, padding, dilation, groups): exact im2col columns (strided, or more
#: output channels a group than the grid layout takes), rows narrower than INTERLEAVE_MAX_WIDTH.
INTERLEAVED = [
    ((9,), 3, 2, 1, 1, 1), ((7, 6), 3, 2, (1, 0), 1, 2), ((6, 5), (2, 3), 1, 1, (2, 1), 1),
    ((4, 5, 6), 2, (1, 2, 1), 1, 1, 1), ((8, 8), 3, 3, 2, 1, 1),
]


def _im2col_matches_naive(x, w, b, kw, geom, workspace, rng):
    """im2col's forward, both gradients, and the forward with a fused epilogue (leaky slope 0.1,
    clipped to [-1, 2]) and a residual, each against the naive reference."""
    nd = x.ndim - 2
    ref = naive.conv(x, w, b, **kw)
    assert_close(conv_fn(nd)(x, w, b, algorithm="im2col", **kw), ref, what="forward")
    go = rng.standard_normal(ref.shape)
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"),
                               conv_backward_fn(nd)(go, x, w, algorithm="im2col", **kw),
                               naive.conv_backward(go, x, w, **kw)):
        assert_close(got, want, what=name)
    out, r = np.empty((*ref.shape[:2], *geom.out_size)), rng.standard_normal((*ref.shape[:2], *geom.out_size))
    conv_im2col.forward(x.reshape(*x.shape[:2], *geom.in_size), w.reshape(*w.shape[:2], *geom.kernel), b, out,
                        geom, workspace, (0.1, -1.0, 2.0), r)
    y = ref.reshape(out.shape) + r
    assert_close(out, np.clip(np.where(y < 0, 0.1 * y, y), -1.0, 2.0), what="epilogue")


@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("workspace", [1, 9000, 1 << 24])
@pytest.mark.parametrize("spatial, kernel, stride, padding, dilation, groups", INTERLEAVED)
def test_im2col_interleaved_samples_match_naive(monkeypatch, interleave, workspace, spatial, kernel, stride,
                                                padding, dilation, groups):
    """The exact columns with a chunk's samples interleaved (one sample per chunk, a few, or the
    whole batch of five) and one by one: the forward with its fused epilogue and a residual,
    both gradients, against the naive reference."""
    from numbaconv._geometry import conv_geometry

    nd = len(spatial)
    rng = np.random.default_rng(sum(spatial))
    c_in, c_out = 2 * groups, 36 * groups  # 36 a group: past the grid layout's 32
    x = rng.standard_normal((5, c_in) + spatial)
    kernel = (kernel,) * nd if isinstance(kernel, int) else kernel
    w = rng.standard_normal((c_out, c_in // groups) + kernel)
    b = rng.standard_normal(c_out)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    monkeypatch.setattr(numbaconv.config, "WORKSPACE_BYTES", workspace)
    monkeypatch.setattr(conv_im2col, "INTERLEAVE_MAX_WIDTH", 1 << 20 if interleave else 0)
    geom = conv_geometry(f"conv{nd}d", x, w, b, stride, padding, dilation, groups, "zeros", nd)
    assert conv_im2col._interleaves(geom) == interleave and not conv_im2col._on_grid_layout(geom)
    _im2col_matches_naive(x, w, b, kw, geom, workspace, rng)


#: (kernel, padding, dilation, groups, padding_mode, c_out): 3-D kernels more than one deep whose
#: im2col columns stack the depth (``conv_im2col._stacks_depth``), with a crop (padding past the
#: kernel's reach, so the input gradient takes exact columns) and a depth dilation among them.
STACKED = [
    ((3, 3, 3), 1, 1, 1, "zeros", 4), ((2, 3, 1), (1, 0, 2), (2, 1, 1), 1, "zeros", 3),
    ((3, 2, 2), (3, 1, 0), 1, 2, "zeros", 4), ((3, 3, 3), 1, 1, 1, "reflect", 2),
    ((5, 1, 1), (2, 0, 0), 1, 3, "circular", 6), ((3, 1, 2), "same", (2, 1, 1), 1, "replicate", 2),
]


@pytest.mark.parametrize("workspace", [1, 1 << 24])
@pytest.mark.parametrize("kernel, padding, dilation, groups, mode, c_out", STACKED)
def test_im2col_stacked_depth_matches_naive(monkeypatch, workspace, kernel, padding, dilation, groups, mode, c_out):
    """The forward pass, both gradients and the transposed convolution built on them, through
    the stacked-depth columns (one sample per chunk, or the whole batch), against the naive
    reference; and the forward's fused epilogue with a residual."""
    from numbaconv._geometry import conv_geometry

    rng = np.random.default_rng(sum(kernel) * 10 + c_out)
    c_in = 2 * groups
    x = rng.standard_normal((3, c_in, 6, 7, 5))
    w = rng.standard_normal((c_out * groups, c_in // groups) + kernel)
    b = rng.standard_normal(c_out * groups)
    kw = dict(padding=padding, dilation=dilation, groups=groups, padding_mode=mode)
    geom = conv_geometry("conv3d", x, w, b, 1, padding, dilation, groups, mode, 3)
    assert conv_im2col._stacks_depth(geom), "the case must take the stacked columns"
    monkeypatch.setattr(numbaconv.config, "WORKSPACE_BYTES", workspace)
    ref = naive.conv(x, w, b, **kw)
    assert_close(numbaconv.conv3d(x, w, b, algorithm="im2col", **kw), ref, what="forward")
    go = rng.standard_normal(ref.shape)
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"),
                               numbaconv.conv3d_backward(go, x, w, algorithm="im2col", **kw),
                               naive.conv_backward(go, x, w, **kw)):
        assert_close(got, want, what=name)
    if mode == "zeros" and padding != "same":
        tkw = dict(padding=padding, dilation=dilation, groups=groups)
        wt = rng.standard_normal((c_out * groups, c_in // groups) + kernel)
        assert_close(numbaconv.conv_transpose3d(ref, wt, None, algorithm="im2col", **tkw),
                     naive.conv_transpose(ref, wt, None, **tkw), what="transposed forward")
    if mode == "zeros":  # the kernel's epilogue: a residual, then leaky ReLU clipped, on the same passes
        out, r = np.empty(ref.shape), rng.standard_normal(ref.shape)
        conv_im2col.forward(x, w, b, out, geom, workspace, (0.1, -1.0, 2.0), r)
        y = ref + r
        assert_close(out, np.clip(np.where(y < 0, 0.1 * y, y), -1.0, 2.0), what="epilogue")


# --------------------------------------------------------------------------- edge cases


EMPTY_OPS = ("conv", "conv_backward", "conv_transpose", "conv_transpose_backward")


@pytest.mark.parametrize("op", EMPTY_OPS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_empty_batch(nd, dtype, algorithm, op):
    """N = 0 gives empty results of the right shape and dtype, and zero weight/bias gradients."""
    x = np.zeros((0, 4) + (5,) * nd, dtype)
    if op.startswith("conv_transpose"):
        w = np.ones((4, 3) + (2,) * nd, dtype)
        kw = dict(stride=2, algorithm=algorithm)
        out_shape = (0, 3) + (10,) * nd
        forward, backward = conv_transpose_fn(nd), conv_transpose_backward_fn(nd)
    else:
        w = np.ones((6, 2) + (3,) * nd, dtype)
        kw = dict(stride=2, padding=1, groups=2, algorithm=algorithm)
        out_shape = (0, 6) + (3,) * nd
        forward, backward = conv_fn(nd), conv_backward_fn(nd)
    if op.endswith("backward"):
        gx, gw, gb = backward(np.zeros(out_shape, dtype), x, w, **kw)
        assert gx.shape == x.shape and gx.dtype == dtype
        assert gw.shape == w.shape and gw.dtype == dtype and not gw.any()
        assert gb.shape == out_shape[1:2] and gb.dtype == dtype and not gb.any()
    else:
        y = forward(x, w, np.ones(out_shape[1], dtype), **kw)
        assert y.shape == out_shape and y.dtype == dtype


def assert_same_nonfinite(y, ref):
    """NaN, inf and -inf exactly where the reference has them; the rest close to it."""
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(ref))
    finite = np.isfinite(ref)
    assert finite.any()
    assert_close(y[finite], ref[finite], what="finite outputs")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("mode", naive.PADDING_MODES)
def test_nan_and_inf_propagate(algorithm, mode):
    """NaN and inf reach exactly the outputs whose window covers them, as in the reference."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 2, 7, 7))
    w = rng.standard_normal((3, 2, 3, 3))
    x[0, 0, 1, 2] = np.nan
    x[1, 1, 5, 5] = np.inf
    x[1, 0, 0, 6] = -np.inf
    with np.errstate(invalid="ignore"):  # inf * w summed over both signs of w gives NaN
        ref = naive.conv(x, w, None, 1, 1, 1, 1, mode)
    for dtype in DTYPES:
        y = numbaconv.conv2d(x.astype(dtype), w.astype(dtype), padding=1, padding_mode=mode, algorithm=algorithm)
        assert_same_nonfinite(y, ref)


@pytest.mark.parametrize("name", [
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "conv1d_backward", "conv2d_backward", "conv3d_backward",
    "conv_transpose1d_backward", "conv_transpose2d_backward", "conv_transpose3d_backward",
])
def test_functional_exports_the_same_functions(name):
    from numbaconv import functional

    assert getattr(functional, name) is getattr(numbaconv, name)


def test_dtype_is_preserved_and_float64_is_computed_in_float64():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((2, 2, 3, 3))
    ref = naive.conv(x, w)
    y32 = numbaconv.conv2d(x.astype(np.float32), w.astype(np.float32))
    y64 = numbaconv.conv2d(x, w)
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    assert_close(y64, ref)
    # float64 must really be computed in float64: far closer than float32 could get
    assert np.max(np.abs(y64 - ref)) < 1e-12


@pytest.mark.parametrize(
    "c_in, c_out, groups, stride, direction, expected",
    [
        (64, 64, 64, 1, "forward", "direct"),  # depthwise: direct in every direction
        (64, 128, 64, 2, "grad_weight", "direct"),
        (64, 64, 32, 1, "grad_input", "direct"),
        (1, 6, 1, 1, "forward", "direct"),  # LeNet c1
        ((256, 1), 6, 1, 1, "grad_input", "direct"),  # one channel produced from few
        ((256, 1), 48, 1, 1, "grad_input", "im2col"),  # ... but not from 48: the quad would repeat it
        ((256, 1), 48, 1, 1, "grad_weight", "direct"),
        ((256, 1), 6, 1, 2, "forward", "direct"),  # strided: the forward pass on the stride phases
        ((256, 1), 6, 1, 2, "grad_input", "im2col"),  # ... its gradients not: 16/9 of the work
        (6, 16, 1, 1, "forward", "direct"),  # LeNet c2
        (6, 16, 1, 1, "grad_input", "direct"),
        ((64, 6), 16, 1, 1, "grad_input", "direct"),
        (6, 16, 1, 2, "grad_weight", "im2col"),  # ... but strided
        ((64, 64), 64, 4, 1, "grad_input", "direct"),  # grouped, 16 x 16
        ((64, 64), 64, 8, 2, "grad_input", "im2col"),  # grouped, but a 3x3 strided
        ((64, 64), 64, 2, 1, "forward", "direct"),  # grouped: not Winograd's
        ((32, 64), 64, 1, 1, "forward", {"avx512": "direct", "avx2": "winograd"}),  # 64 x 64 channels: enough
        # for Winograd's transforms only against AVX2's loops
        ((32, 64), 128, 1, 1, "forward", "winograd"),  # 64 x 128 over 288 tiles of 4x4 outputs (9 a sample)
        ((32, 64), 128, 1, 1, "grad_input", "winograd"),
        ((32, 64), 128, 1, 1, "grad_weight", "direct"),  # ... never the weight gradient
        ((21, 64), 128, 1, 1, "forward", {"avx512": "direct", "avx2": "blocked"}),  # 189 tiles: too few (with
        # AVX2 the blocked loops: 980 thousand elements of im2col's columns, the weight packed on the call)
        ((16, 256), 256, 1, 1, "forward", "winograd"),  # 144 tiles, enough for 256 x 256 channels
        ((12, 256), 256, 1, 1, "forward", {"avx512": "direct", "avx2": "winograd"}),  # 108: with AVX2 enough
        ((6, 128), 128, 1, 1, "forward", {"avx512": "direct", "avx2": "winograd"}),  # 54 for 128 x 128, with AVX2
        ((6, 128), 128, 1, 1, "grad_input", {"avx512": "im2col", "avx2": "winograd"}),  # (AVX-512: a short plane)
        ((5, 128), 128, 1, 1, "forward", {"avx512": "direct", "avx2": "blocked"}),  # 45: too few (AVX2: the
        # blocked loops, 405 positions)
        ((2, 128), 128, 1, 1, "forward", {"avx512": "direct", "avx2": "im2col"}),  # ... not over 162: a short plane
        ((6, 96), 96, 1, 1, "forward", {"avx512": "direct", "avx2": "blocked"}),  # 96 x 96 channels: too few for 54
        # tiles
        ((2048, 32), 64, 1, 1, "forward", "direct"),  # 32 channels in: too few for Winograd's
        ((2, 256), 256, 1, 1, "grad_weight", "im2col"),  # 162 positions for 256 x 256 channels
        ((2, 256), 256, 1, 1, "grad_input", "im2col"),  # ... its input gradient with it
        ((2, 256), 256, 1, 1, "forward", {"avx512": "direct", "avx2": "im2col"}),  # ... and with AVX2 its forward pass
        ((7, 256), 256, 1, 1, "forward", {"avx512": "direct", "avx2": "winograd"}),
        ((6, 256), 256, 1, 1, "grad_weight", "im2col"),  # 486
        ((7, 256), 256, 1, 1, "grad_weight", "direct"),  # 567
        ((2, 32), 64, 1, 1, "grad_weight", "direct"),  # 32 x 64 channels: the loops on any plane
    ],
)
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_auto_rule(monkeypatch, isa, c_in, c_out, groups, stride, direction, expected):
    """algorithm="auto" follows the per-direction rules documented in choose_algorithm, under
    each host's rule set (``Rules``): an expectation given by name is that set's."""
    from numbaconv._geometry import conv_geometry
    from numbaconv.functional import conv
    from numbaconv.functional.conv import choose_algorithm

    monkeypatch.setattr(conv, "RULES", {"avx512": conv.AVX512_RULES, "avx2": conv.AVX2_RULES}[isa])
    expected = expected[isa] if isinstance(expected, dict) else expected
    n, c_in = c_in if isinstance(c_in, tuple) else (1, c_in)  # (batch, channels) where the batch matters
    x = np.zeros((n, c_in, 9, 9), np.float32)
    w = np.zeros((c_out, c_in // groups, 3, 3), np.float32)
    geom = conv_geometry("conv2d", x, w, None, stride, 1, 1, groups, "zeros", 2)
    assert choose_algorithm(geom, direction) == expected


@pytest.mark.parametrize(
    "x_shape, c_out, k, stride, padding, expected",
    [
        ((64, 3, 32, 32), 16, 5, 1, 2, "direct"),
        ((64, 6, 14, 14), 16, 5, 1, 0, {"avx512": "direct", "avx2": ("blocked", "direct", "direct")}),  # LeNet's
        # c2, half its grid margin; with AVX2 its forward pass on the blocked loops (150 channel-taps)
        ((64, 1, 32, 32), 6, 5, 1, 0, "direct"),  # ... but not its c1 (25 channel-taps)
        ((8, 64, 28, 28), 64, 5, 1, 2, "direct"),
        ((1, 128, 1, 4000), 128, (1, 9), 1, (0, 4), "direct"),
        ((1, 3, 224, 224), 64, 3, 1, 1, ("direct", "im2col", "direct")),  # VGG's first layer: 3
        # input channels, too few for the input gradient's quads of them
        ((8, 1, 1, 16000), 64, (1, 9), 1, (0, 4), ("direct", "im2col", "direct")),  # one into 64
        ((1, 8, 1, 16000), 64, (1, 9), 1, (0, 4), "direct"),
        ((8, 16, 32, 32), 16, 1, 1, 0, "im2col"),  # pointwise: a GEMM on the input itself
        ((1, 512, 14, 14), 512, 3, 1, 1, {"avx512": ("direct", "im2col", "im2col"), "avx2": "im2col"}),  # a short
        # plane's gradients, and with AVX2 its forward pass
        ((1, 128, 112, 112), 128, 3, 1, 1, ("winograd", "winograd", "direct")),
        ((1, 96, 27, 27), 256, 5, 1, 2, {"avx512": "direct", "avx2": ("im2col", "im2col", "direct")}),  # AlexNet's
        # c2: with AVX2, into 256 channels a GEMM beats the loops
        ((1, 96, 27, 27), 128, 5, 1, 2, "direct"),  # ... not into 128
        ((1, 3, 224, 224), 64, 7, 2, 3, {"avx512": "direct", "avx2": ("blocked", "im2col", "im2col")}),  # ResNet's
        # stem, on 4 phases under 4x4 taps; with AVX2 its forward pass on the blocked loops (147 channel-taps
        # into 4 blocks of 16 channels), its gradients not on the phases
        ((1, 3, 227, 227), 64, 11, 4, 2, {"avx512": "direct", "avx2": ("blocked", "im2col", "im2col")}),  # AlexNet's,
        # on 16 phases under 3x3 (with AVX2: the blocked loops, 363 channel-taps)
        ((1, 3, 227, 227), 40, 11, 4, 2, {"avx512": "direct", "avx2": "im2col"}),  # ... into 40 channels, not
        # whole blocks (and phase blocks of 156,000 too large)
        ((64, 6, 28, 28), 16, 5, 2, 2, {"avx512": "direct", "avx2": ("blocked", "im2col", "im2col")}),  # 4 phases
        # under 3x3: 36/25 of the work; with AVX2 the blocked loops (150 channel-taps)
        ((64, 24, 28, 28), 16, 5, 2, 2, {"avx512": ("direct", "im2col", "im2col"), "avx2": "im2col"}),  # 600
        # channel-taps: not the blocked loops (with AVX2, blocks of phases too large); gradients of 24 channels
        ((8, 32, 28, 28), 64, 5, 2, 2, {"avx512": ("direct", "im2col", "im2col"), "avx2": "im2col"}),  # ... but its gradients
        # not with 32 input channels
        ((1, 64, 56, 56), 128, 3, 2, 1, {"avx512": ("direct", "im2col", "im2col"), "avx2": ("blocked", "im2col", "im2col")}),
        # a 3x3 at stride 2: the forward pass on the phases (AVX2: the blocked loops, the weight packed on the call),
        # the gradients not (16/9 of the work)
        ((8, 256, 14, 14), 512, 3, 2, 1, {"avx512": ("direct", "im2col", "im2col"), "avx2": "im2col"}),  # ... not
        # for 1.2 million weights to pack on every call
        ((1, 256, 14, 14), 512, 3, 2, 1, {"avx512": ("direct", "im2col", "im2col"), "avx2": "im2col"}),  # ... nor
        # over 49 positions
        ((8, 64, 56, 56), 128, 3, 2, 1, "im2col"),  # ... at batch 8, blocks of 256 x 4096 too large
        ((8, 8, 56, 56), 128, 1, 2, 0, "im2col"),  # 1x1 at stride 2
    ],
)
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_auto_rule_by_shape(monkeypatch, isa, x_shape, c_out, k, stride, padding, expected):
    """Shapes of real layers take the direction-by-direction choices that choose_algorithm's
    rules document: the stride-1 direct loops but for pointwise kernels, Winograd's tiles where
    they pay, the input gradient of fewer than a quad of channels, the gradients of a short
    plane; at larger strides, the forward pass on the stride phases while a block of them
    fits, and the gradients there for a few channels under a large kernel; under each host's
    rule set (``Rules``), an expectation given by name being that set's."""
    from numbaconv._geometry import conv_geometry
    from numbaconv.functional import conv
    from numbaconv.functional.conv import choose_algorithm

    monkeypatch.setattr(conv, "RULES", {"avx512": conv.AVX512_RULES, "avx2": conv.AVX2_RULES}[isa])
    expected = expected[isa] if isinstance(expected, dict) else expected

    kernel = k if isinstance(k, tuple) else (k, k)
    x = np.zeros(x_shape, np.float32)
    w = np.zeros((c_out, x_shape[1], *kernel), np.float32)
    geom = conv_geometry("conv2d", x, w, None, stride, padding, 1, 1, "zeros", 2)
    expected = (expected,) * 3 if isinstance(expected, str) else expected
    assert tuple(choose_algorithm(geom, d) for d in ("forward", "grad_input", "grad_weight")) == expected


@pytest.mark.parametrize("nd, k, dilation, padding, batch, c_out", SINGLE_INPUT_CHANNEL)
def test_single_input_channel_forward_and_input_gradient_run_either_kernel(monkeypatch, nd, k, dilation, padding,
                                                                         batch, c_out):
    """A single input channel into several at stride 1 runs its forward pass and its input
    gradient on the depthwise loops when small and on the stacked grids when large
    (``SINGLE_CHANNEL_STACKED_WORK``): both routes, with a bias, against the naive reference,
    and the route taken is the one the threshold names. On the stacked grids the input gradient
    sums one channel (``_taps_one``), and so does the forward pass's last, lone channel where
    c_out is one past a multiple of four."""
    rng = np.random.default_rng(k * 10 + nd + 1)
    size = 32 if batch == 4 else {1: 40, 2: 11, 3: 6}[nd]
    x = rng.standard_normal((batch, 1) + (size,) * nd)
    w = rng.standard_normal((c_out, 1) + (k,) * nd)
    b = rng.standard_normal(c_out)
    kw = dict(padding=padding, dilation=dilation)
    ref = naive.conv(x, w, b, **kw)
    scale = naive.conv(_abs(x), _abs(w), _abs(b), **kw)
    go = rng.standard_normal(ref.shape)
    ref_gx, scale_gx = naive.conv_backward(go, x, w, **kw)[0], naive.conv_backward(_abs(go), _abs(x), _abs(w), **kw)[0]
    stacked = conv_direct._correlate_stacked
    depthwise_forward, depthwise_grad_input = conv_direct.depthwise.forward, conv_direct.depthwise.grad_input
    for work, route in ((1 << 40, "depthwise"), (0, "stacked")):
        calls = []
        monkeypatch.setattr(conv_direct, "SINGLE_CHANNEL_STACKED_WORK", work)
        monkeypatch.setattr(conv_direct, "_correlate_stacked", lambda *a: calls.append("stacked") or stacked(*a))
        monkeypatch.setattr(conv_direct.depthwise, "forward", lambda *a: calls.append("depthwise") or depthwise_forward(*a))
        monkeypatch.setattr(conv_direct.depthwise, "grad_input",
                            lambda *a: calls.append("depthwise") or depthwise_grad_input(*a))
        y = conv_fn(nd)(x, w, b, algorithm="direct", **kw)
        gx = conv_backward_fn(nd)(go, x, w, algorithm="direct", needs=(True, False, False), **kw)[0]
        assert calls == [route, route]
        check(y, ref, scale, np.float64, route)
        check(gx, ref_gx, scale_gx, np.float64, route + " grad_x")


#: (spatial, kernel, stride, padding, dilation, groups, c_out, layouts): im2col's layouts, each
#: of whose copy kernels runs between GEMMs, as ``layouts`` names them with samples interleaved
#: and not: exact columns interleaved or one sample at a time, the grid, the grid with the depth
#: stacked.
IM2COL_LAYOUTS = [
    ((7, 6), 3, 2, (1, 0), 1, 2, 72, ("interleaved", "exact")),
    ((6, 5), (2, 3), 1, 1, (2, 1), 1, 36, ("interleaved", "exact")),
    ((9, 8), 3, 1, 1, 1, 1, 4, ("interleaved", "grid")),
    ((6, 10, 10), 3, 1, 1, 1, 1, 4, ("stacked", "stacked")),
]


def _im2col_layout(geom):
    if conv_im2col._stacks_depth(geom):
        return "stacked"
    if conv_im2col._on_grid_layout(geom):
        return "grid"
    return "interleaved" if conv_im2col._interleaves(geom) else "exact"


@pytest.mark.parametrize("route", ["serial", "parallel"])
@pytest.mark.parametrize("interleave", [True, False])
@pytest.mark.parametrize("spatial, kernel, stride, padding, dilation, groups, c_out, layouts", IM2COL_LAYOUTS)
def test_im2col_copies_run_parallel_or_serial(monkeypatch, route, interleave, spatial, kernel, stride, padding,
                                              dilation, groups, c_out, layouts):
    """im2col's copy kernels (unfold, fold, the interleaved result put back, the grid's placing
    and picking, the epilogue) run parallel when BLAS's threads sleep when idle and serial while
    they spin: the forward with its epilogue and a residual, and both gradients, against the
    naive reference either way."""
    from numbaconv import _threads
    from numbaconv._geometry import conv_geometry

    monkeypatch.setattr(_threads, "blas_spins", route == "serial")
    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 0)
    monkeypatch.setattr(conv_im2col, "INTERLEAVE_MAX_WIDTH", 1 << 20 if interleave else 0)
    nd = len(spatial)
    rng = np.random.default_rng(c_out + nd)
    x = rng.standard_normal((3, 2 * groups) + spatial)
    kernel = (kernel,) * nd if isinstance(kernel, int) else kernel
    w = rng.standard_normal((c_out, 2) + kernel)
    b = rng.standard_normal(c_out)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    geom = conv_geometry(f"conv{nd}d", x, w, b, stride, padding, dilation, groups, "zeros", nd)
    assert _im2col_layout(geom) == layouts[0 if interleave else 1]
    _im2col_matches_naive(x, w, b, kw, geom, 1 << 24, rng)


def test_copies_between_gemms_stay_serial_while_blas_spins(monkeypatch):
    """The rule behind the test above: a kernel that runs between GEMMs goes parallel only past
    the size threshold and only while BLAS's threads do not spin; other kernels ignore BLAS."""
    from numbaconv import _threads
    from numbaconv.kernels.cpu._window import runs_serial

    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 100)
    monkeypatch.setattr(_threads, "spin_window", 0.0)  # threads that sleep at once
    for spins in (True, False):
        monkeypatch.setattr(_threads, "blas_spins", spins)
        assert runs_serial(99) and not runs_serial(100)
        assert runs_serial(10**9, beside_blas=True) == spins
        assert runs_serial(99, beside_blas=True)


def test_kernels_go_parallel_from_a_smaller_size_while_the_threads_spin(monkeypatch):
    """Where Numba's threads spin for a while after each kernel, a kernel that starts in that
    window finds them awake and goes parallel from a PARALLEL_AWAKE_DIVISOR-th of the size: right
    after a parallel kernel, or right after its own last call (a loop over one kernel), but not
    right after some other kernel that ran serial (the threads have been asleep since before
    it). Each call records what the rule reads."""
    import math
    import time

    from numbaconv import _threads
    from numbaconv.kernels.cpu import elementwise
    from numbaconv.kernels.cpu._window import runs_serial

    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 100)
    monkeypatch.setattr(numbaconv.config, "PARALLEL_AWAKE_DIVISOR", 4)
    mine, other = object(), object()
    for window, awake in ((0.0, False), (3600.0, True)):  # sleep at once; spin for an hour
        monkeypatch.setattr(_threads, "spin_window", window)
        monkeypatch.setattr(_threads, "last_parallel_end", time.perf_counter())
        monkeypatch.setattr(_threads, "last_kernel", other)
        assert runs_serial(99, kernel=mine) != awake and runs_serial(25) != awake and runs_serial(24)
        assert runs_serial(99, factor=2) != awake and runs_serial(49, factor=2)
        monkeypatch.setattr(_threads, "last_parallel_end", -math.inf)  # long ago
        assert runs_serial(99, kernel=mine)
        monkeypatch.setattr(_threads, "last_kernel", mine)
        monkeypatch.setattr(_threads, "last_kernel_end", time.perf_counter())
        assert runs_serial(99, kernel=mine) != awake and runs_serial(99, kernel=other)
        assert not runs_serial(100, kernel=other)
    # a call records the kernel and, when it ran parallel, the end of a parallel kernel
    x = np.zeros(10, np.float32)
    monkeypatch.setattr(_threads, "last_parallel_end", -math.inf)
    before = time.perf_counter()
    elementwise.forward(elementwise.RELU, x, np.float32(0), np.empty_like(x))  # 10 < 25: serial
    assert _threads.last_kernel is elementwise.forward and _threads.last_kernel_end >= before
    assert _threads.last_parallel_end == -math.inf
    monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", 0)
    elementwise.forward(elementwise.RELU, x, np.float32(0), np.empty_like(x))
    assert _threads.last_parallel_end >= before


# --------------------------------------------------------------------------- Winograd's tiles


@st.composite
def winograd_cases(draw):
    """3x3 convolutions at unit stride (1x3x3 in 3-D), one group: what algorithm="winograd" runs,
    over sizes that do and do not divide into its 4x4 tiles."""
    nd = draw(st.sampled_from((2, 3)))
    mode = draw(st.sampled_from(naive.PADDING_MODES))
    padding = (0,) * (nd - 2) + tuple(draw(st.integers(0, 2)) for _ in range(2))
    spatial = (draw(st.integers(1, 3)),) if nd == 3 else ()
    for p in padding[nd - 2:]:
        low = max(1, 3 - 2 * p, p + 1 if mode == "reflect" else p)
        spatial += (draw(st.integers(low, 11)),)
    c_in, c_out = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    return Case(
        n=draw(st.integers(1, 3)), c_in=c_in, c_out=c_out, spatial=spatial,
        weight_shape=(c_out, c_in) + (1,) * (nd - 2) + (3, 3),
        kwargs=dict(padding=padding if draw(st.booleans()) or nd == 3 else padding[-1] if padding[0] == padding[1]
                    else padding, padding_mode=mode),
        bias=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)),
        layouts=tuple(draw(st.sampled_from(LAYOUTS)) for _ in range(3)), seed=draw(st.integers(0, 2**16)),
    )


@EXAMPLES
@given(case=winograd_cases())
def test_winograd_forward_matches_naive(case):
    x, w, b = case.arrays()
    copies = snapshot(x, w, b)
    y = conv_fn(case.nd)(x, w, b, algorithm="winograd", **case.kwargs)
    check(y, naive.conv(x, w, b, **case.kwargs), tile_scale(naive.conv(_abs(x), _abs(w), _abs(b), **case.kwargs)),
          case.dtype, f"conv{case.nd}d forward, algorithm=winograd")
    assert_unmodified((x, w, b), copies)


@EXAMPLES
@given(case=winograd_cases())
def test_winograd_backward_matches_naive(case):
    """The input gradient by Winograd's tiles (a padding of at most 2 leaves its complement
    non-negative), the weight gradient by im2col's GEMM. The input gradient's tiles lie on the
    padded input's grid, whose borders a padding mode other than zeros folds back onto the
    input, so its scale is the largest of each plane (``tile_scale`` with one tile a plane)."""
    x, w, _ = case.arrays()
    go = case.grad_out(naive.conv(x, w, None, **case.kwargs).shape)
    copies = snapshot(go, x, w)
    refs = naive.conv_backward(go, x, w, **case.kwargs)
    scales = naive.conv_backward(_abs(go), _abs(x), _abs(w), **case.kwargs)
    grads = conv_backward_fn(case.nd)(go, x, w, algorithm="winograd", **case.kwargs)
    scales = (tile_scale(scales[0], tile=max(scales[0].shape[-2:])),) + scales[1:]
    for name, got, ref, scale in zip(("grad_x", "grad_weight", "grad_bias"), grads, refs, scales):
        check(got, ref, scale, case.dtype, f"conv{case.nd}d_backward {name}, algorithm=winograd")
    assert_unmodified((go, x, w), copies)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("epilogue", [(1.0, -np.inf, np.inf), (0.0, 0.0, np.inf), (0.1, -np.inf, 6.0)])
@pytest.mark.parametrize("workspace", [1, 60000, 1 << 28])
def test_winograd_epilogue_and_chunks_match_naive(monkeypatch, epilogue, residual, workspace):
    """The kernel entry the inference graph calls: bias, residual and activation applied as the
    tiles' outputs are put in place, the batch's planes a chunk at a time (one plane, several,
    all); both routes (one thread and parallel)."""
    from numbaconv._geometry import conv_geometry
    from numbaconv.kernels.cpu import conv_winograd

    rng = np.random.default_rng(workspace % 97)
    x = rng.standard_normal((3, 5, 10, 13)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    r = rng.standard_normal((3, 6, 10, 13)).astype(np.float32) if residual else None
    slope, lo, hi = epilogue
    pre = naive.conv(x, w, b, padding=1) + (0 if r is None else r)
    ref = np.clip(np.where(pre < 0, pre * slope, pre), lo, hi)
    scale = naive.conv(_abs(x), _abs(w), _abs(b), padding=1) + (0 if r is None else np.abs(r))
    geom = conv_geometry("conv2d", x, w, b, 1, 1, 1, 1, "zeros", 2)
    assert conv_winograd._planes_per_chunk(geom, 4, workspace) == {1: 1, 60000: 2, 1 << 28: 3}[workspace]
    for threshold in (1 << 40, 1):
        monkeypatch.setattr(numbaconv.config, "PARALLEL_MIN_ELEMENTS", threshold)
        out = np.full((3, 6, 1, 10, 13), np.nan, np.float32)
        conv_winograd.forward(x.reshape(3, 5, 1, 10, 13), w.reshape(6, 5, 1, 3, 3), b, out, geom, workspace,
                              epilogue, r)
        check(out.reshape(3, 6, 10, 13), ref, tile_scale(scale), np.float32, f"winograd epilogue {epilogue}")


@pytest.mark.parametrize("where", ["input", "weight"])
def test_winograd_gives_nan_and_inf_to_the_outputs_that_read_them(where):
    """Winograd's transforms mix a tile's inputs, so a call with a NaN or an infinity runs im2col
    instead: only the outputs whose windows read one get it, as in the reference."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 9, 10))
    w = rng.standard_normal((4, 3, 3, 3))
    if where == "input":
        x[0, 0, 1, 2], x[1, 2, 5, 5], x[1, 0, 8, 9] = np.nan, np.inf, -np.inf
    else:
        w[1, 2, 0, 1] = np.inf
    with np.errstate(invalid="ignore"):
        ref = naive.conv(x, w, None, 1, 1)
    for dtype in DTYPES:
        y = numbaconv.conv2d(x.astype(dtype), w.astype(dtype), padding=1, algorithm="winograd")
        assert_same_nonfinite(y, ref)


@pytest.mark.parametrize("kwargs, what", [
    (dict(stride=2, padding=1), "stride"),
    (dict(dilation=2, padding=2), "dilation"),
    (dict(groups=2, padding=1), "groups"),
])
def test_winograd_refuses_what_it_cannot_run(kwargs, what):
    """algorithm="winograd" names what it runs and what it was given, before any kernel."""
    x = np.ones((1, 4, 8, 8), np.float32)
    w = np.ones((4, 4 // kwargs.get("groups", 1), 3, 3), np.float32)
    with pytest.raises(ValueError, match=f"winograd.*{what}"):
        numbaconv.conv2d(x, w, algorithm="winograd", **kwargs)
    with pytest.raises(ValueError, match="winograd"):
        numbaconv.conv2d(x, np.ones((4, 4, 5, 5), np.float32), padding=2, algorithm="winograd")
    with pytest.raises(ValueError, match="winograd.*padding"):  # the input gradient's complement would crop
        numbaconv.conv2d_backward(np.ones((1, 4, 12, 12), np.float32), x, np.ones((4, 4, 3, 3), np.float32),
                                  padding=3, algorithm="winograd")


@pytest.mark.parametrize("dtype", DTYPES)
def test_blocked_algorithm_runs_forward_passes_of_one_group(dtype):
    """algorithm="blocked" (the loops with vectors along the output channels, the weight packed on
    each call) gives the forward pass of 1-D to 3-D convolutions, with stride, dilation, padding
    and a bias; it refuses the gradients and grouped convolutions by name, before any kernel."""
    rng = np.random.default_rng(5)
    for ndim, kw in ((1, dict(stride=2, padding=1, dilation=2)), (2, dict(stride=2, padding=3)), (3, dict(padding=1))):
        x = rng.standard_normal((2, 3, *(9,) * ndim)).astype(dtype)
        w = rng.standard_normal((18, 3, *(3,) * ndim)).astype(dtype)  # 18 channels: a block and part of one
        b = rng.standard_normal(18).astype(dtype)
        conv = getattr(numbaconv, f"conv{ndim}d")
        assert_close(conv(x, w, b, algorithm="blocked", **kw), naive.conv(x, w, b, **kw), what=f"conv{ndim}d")
    go = np.ones_like(conv(x, w, algorithm="blocked", **kw))
    with pytest.raises(ValueError, match="algorithm 'blocked' runs forward passes.*input gradient"):
        numbaconv.conv3d_backward(go, x, w, algorithm="blocked", **kw)
    with pytest.raises(ValueError, match="algorithm 'blocked' runs forward passes.*groups 3"):
        numbaconv.conv2d(rng.standard_normal((1, 6, 5, 5)), rng.standard_normal((6, 2, 3, 3)), groups=3,
                         algorithm="blocked")


@pytest.mark.parametrize("channels", [3, 40])  # a zero-padded copy of the input, or a channels-last one
def test_blocked_algorithm_holds_no_more_than_its_workspace(channels):
    """What ``numbaconv bench`` quotes the blocked loops' peak memory against: besides its output,
    a call holds at most ``conv_blocked.workspace_bytes`` (the packed weight and the input's
    copy), counted from a fresh thread, whose scratch buffers are still to be allocated."""
    import threading
    import tracemalloc

    from numbaconv._geometry import conv_geometry
    from numbaconv.kernels.cpu import conv_blocked

    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, channels, 15, 15)).astype(np.float32)
    w, b = rng.standard_normal((24, channels, 3, 3)).astype(np.float32), rng.standard_normal(24).astype(np.float32)
    geom = conv_geometry("conv2d", x, w, b, 2, 1, 1, 1, "zeros", 2)
    numbaconv.conv2d(x, w, b, stride=2, padding=1, algorithm="blocked")  # compiled before the count
    peak = []

    def call():
        tracemalloc.start()
        try:
            y = numbaconv.conv2d(x, w, b, stride=2, padding=1, algorithm="blocked")
            peak.append(tracemalloc.get_traced_memory()[1] - y.nbytes)
        finally:
            tracemalloc.stop()
        assert_close(y, naive.conv(x, w, b, stride=2, padding=1), what="blocked conv2d")

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    workspace = conv_blocked.workspace_bytes(geom, 4)
    assert workspace >= 4 * (2 * 24 * channels * 9 // 2)  # the packed weight at the least
    assert 0 < peak[0] <= workspace + 4096  # a bias of whole blocks and such, below a page


def test_autotune_times_winograd_only_where_it_runs(monkeypatch):
    """The autotune mode's candidates: Winograd's tiles for the forward pass and input gradient of
    a 3x3 stride-1 convolution, never its weight gradient (im2col's) nor a strided one; the
    blocked loops for forward passes with one group."""
    from numbaconv._geometry import conv_geometry
    from numbaconv.kernels.cpu import candidates

    x, w = np.zeros((2, 4, 9, 9), np.float32), np.zeros((4, 4, 3, 3), np.float32)
    plain = conv_geometry("conv2d", x, w, None, 1, 1, 1, 1, "zeros", 2)
    strided = conv_geometry("conv2d", x, w, None, 2, 1, 1, 1, "zeros", 2)
    grouped = conv_geometry("conv2d", x, w[:, :2], None, 2, 1, 1, 2, "zeros", 2)
    assert list(candidates(plain, "forward")) == ["direct", "im2col", "winograd", "blocked"]
    assert list(candidates(plain, "grad_input")) == ["direct", "im2col", "winograd"]
    assert list(candidates(plain, "grad_weight")) == ["direct", "im2col"]
    assert list(candidates(strided, "forward")) == ["direct", "im2col", "blocked"]
    assert list(candidates(grouped, "forward")) == ["direct", "im2col"]  # the blocked loops: one group
    numbaconv.clear_autotune_cache()
    rng = np.random.default_rng(3)
    for stride in (1, 2):
        xs, ws = rng.standard_normal((2, 4, 9, 9)), rng.standard_normal((4, 4, 3, 3))
        y = numbaconv.conv2d(xs, ws, stride=stride, padding=1, algorithm="tune")
        assert_close(y, naive.conv(xs, ws, None, stride, 1))
    numbaconv.clear_autotune_cache()
